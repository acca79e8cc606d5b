"""Risk patterns: conjunctions of conditions on an entity's values (:mod:`ranker.triage.values`), either mined
from past renewals (:mod:`ranker.triage.mining`, stored) or written by hand in the settings
(``[[triage.patterns]]``). Any pattern can be disabled or enabled again by name; a switch outlives a new
mining, so a pattern a reviewer disabled stays disabled when mining finds it again.

Conditions use the rules' language (:class:`ranker.core.rules.Condition`) and the rules' paths:
``{path = "account.industry", equals = "fintech"}``, ``{path = "account.reporting_api_trend", lte = -0.5}``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from ..core.rules import MISSING, Condition, lookup
from ..store import Store, timestamp
from ..store import patterns as stored


class UnknownPattern(LookupError):
    pass


@dataclass
class Pattern:
    """A risk pattern and, when mined, how it did on past renewals: ``support`` renewals matched it, of which
    ``churned`` churned (``churn_rate``, its Wilson 95 % interval ``low``-``high``, ``lift`` over the base
    rate); on the held-out renewals, ``holdout_support`` matched and ``holdout_rate`` of them churned."""

    name: str
    conditions: list[Condition]
    description: str
    source: Literal["mined", "settings"] = "settings"
    enabled: bool = True
    support: int | None = None
    churned: int | None = None
    churn_rate: float | None = None
    low: float | None = None
    high: float | None = None
    lift: float | None = None
    holdout_support: int | None = None
    holdout_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. base_rate, horizon, holdout_churned

    def matched(
        self, values: dict[str, Any], times: dict[str, float] | None = None, now: datetime | None = None
    ) -> dict[str, Any] | None:
        """The values that matched, by condition path, when every condition holds on ``values``; else None.
        ``times``/``now`` serve conditions with ``fresh_within`` (as in the rules)."""
        out: dict[str, Any] = {}
        for condition in self.conditions:
            if not condition.holds(values, times, now):
                return None
            value = lookup(values, condition.path)
            out[condition.path] = None if value is MISSING else value
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["conditions"] = [c.model_dump(by_alias=True, exclude_none=True) for c in self.conditions]
        extra = out.pop("extra")
        out.update(extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pattern:
        known = {name for name in cls.__dataclass_fields__ if name != "extra"}
        args = {k: v for k, v in data.items() if k in known}
        args["conditions"] = [Condition.model_validate(c) for c in data["conditions"]]
        return cls(**args, extra={k: v for k, v in data.items() if k not in known})


def name_of(conditions: list[Condition]) -> str:
    """A mined pattern's name: stable for the same conditions (``m-`` and 8 hex digits)."""
    text = json.dumps(
        sorted(json.dumps(c.model_dump(by_alias=True, exclude_none=True), sort_keys=True) for c in conditions)
    )
    return "m-" + hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def describe(conditions: list[Condition]) -> str:
    """The conditions in words: ``account.industry is 'fintech' and account.reporting_api_trend <= -0.5``."""
    return " and ".join(_words(c) for c in conditions)


def _words(c: Condition) -> str:
    if c.equals is not None:
        return f"{c.path} is {json.dumps(c.equals)}"
    if c.in_ is not None:
        return f"{c.path} in {json.dumps(c.in_)}"
    if c.not_in is not None:
        return f"{c.path} not in {json.dumps(c.not_in)}"
    if c.gte is not None:
        return f"{c.path} >= {c.gte:g}"
    if c.lte is not None:
        return f"{c.path} <= {c.lte:g}"
    if c.exists is not None:
        return f"{c.path} {'exists' if c.exists else 'is missing'}"
    return f"{c.path} fresh within {c.fresh_within}"


def listing(patterns: list[Pattern]) -> str:
    """Patterns as a text table: name, source, state, figures of their mining, the pattern in words."""
    head = ("name", "source", "state", "support", "rate", "95% interval", "holdout")
    lines = ["{:<20} {:<8} {:<8} {:>7} {:>6}  {:<13} {:>11}  pattern".format(*head)]
    for p in patterns:
        mined = p.support is not None
        rate = f"{p.churn_rate:.1%}" if mined and p.churn_rate is not None else "-"
        interval = f"{p.low:.1%}-{p.high:.1%}" if mined and p.low is not None else "-"
        holdout = f"{p.holdout_rate:.0%} of {p.holdout_support}" if p.holdout_rate is not None else "-"
        state = "enabled" if p.enabled else "disabled"
        support = str(p.support) if mined else "-"
        row = f"{p.name:<20} {p.source:<8} {state:<8} {support:>7} {rate:>6}  {interval:<13} {holdout:>11}"
        lines.append(f"{row}  {p.description}")
    if not patterns:
        lines.append("(none: write [[triage.patterns]] in the settings, or run `ranker patterns mine`)")
    return "\n".join(lines)


# -- the patterns of a service ---------------------------------------------------------------------


def _log(store) -> Store:
    return getattr(store, "store", store)  # a SignalStore holds the Store


def all_patterns(store, settings) -> list[Pattern]:
    """Every pattern, enabled or not: the settings' first (in their order), then the mined ones of the triage
    entity type, best first. A mined pattern named like one of the settings is left out."""
    log = _log(store)
    switches = stored.switches(log)
    out = []
    for definition in settings.triage.patterns:
        out.append(
            Pattern(
                name=definition.name,
                conditions=list(definition.when),
                description=definition.description or describe(definition.when),
                source="settings",
                enabled=switches.get(definition.name, definition.enabled),
            )
        )
    names = {p.name for p in out}
    for row in stored.mined(log, settings.triage.entity):
        if row["name"] in names:
            continue
        pattern = Pattern.from_dict(json.loads(row["pattern"]))
        pattern.source = "mined"
        pattern.enabled = switches.get(row["name"], True)
        pattern.extra["mined_at"] = row["mined_at"]
        out.append(pattern)
    return out


def enabled_patterns(store, settings) -> list[Pattern]:
    """The patterns triage flags accounts with: hand-written ones of the settings and stored mined ones,
    each unless disabled."""
    return [p for p in all_patterns(store, settings) if p.enabled]


def set_enabled(store, settings, name: str, enabled: bool, now: datetime | None = None) -> Pattern:
    """Enable or disable a pattern (mined or of the settings) by name; :class:`UnknownPattern` when there is
    none of that name."""
    for pattern in all_patterns(store, settings):
        if pattern.name == name:
            stored.switch(_log(store), name, enabled, timestamp(now or datetime.now(UTC)))
            pattern.enabled = enabled
            return pattern
    raise UnknownPattern(f"no pattern {name!r}; `ranker patterns list` shows them")


def save_mined(store, entity: str, patterns: list[Pattern], now: datetime | None = None) -> None:
    """Make ``patterns`` (best first) the stored mined patterns of the entity type, in one commit."""
    rows = []
    for pattern in patterns:
        data = pattern.to_dict()
        data.pop("enabled", None)  # the switches say
        rows.append((pattern.name, json.dumps(data)))
    stored.replace_mined(_log(store), entity, rows, timestamp(now or datetime.now(UTC)))
