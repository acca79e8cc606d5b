"""Business rules applied before the model: entitlements, availability, strategic priority.

Rules are data in a loop's configuration. An entitlement or availability rule that acts on an action
removes it from the candidates (it gets probability 0 and can never be chosen); a priority rule multiplies
its probability by a factor after the model, and the distribution is renormalised. Each decision keeps
the reasons, so a person can ask why an action was or was not offered.

Conditions compare JSON values: a boolean never equals a number, ``gte``/``lte`` hold only for numbers,
and a condition on a missing path holds only for ``not_in`` and ``exists = false``. Date windows without
a time zone are read as UTC.

``fresh_within`` (an ISO 8601 duration) tests how old the signal behind a value is: it holds when the
newest signal behind the path (an entity attribute's update or a feature's newest event, from Rank-time
enrichment, :mod:`ranker.signals.enrich`) is at most that old; a value with no signal time fails it.
It may stand alone or go with one other test, and then both must hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .durations import parse_duration

_MISSING = object()
MISSING = _MISSING  # what :func:`lookup` answers for an absent path, for callers of :meth:`Condition.test`
# Combined priority factors outside this range are rescaled (in log space) so that the largest is 1:
# products of many factors would otherwise overflow to inf or underflow to 0 and break renormalisation.
_FACTOR_RANGE = (1e-200, 1e200)


def lookup(features: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (``account.plan``) of a feature object, or a sentinel when absent."""
    value: Any = features
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def signal_time(times: dict[str, float], path: str) -> float | None:
    """The newest signal time behind ``path``: its own, or the newest of the values under it."""
    if path in times:
        return times[path]
    prefix = path + "."
    under = [t for p, t in times.items() if p.startswith(prefix)]
    return max(under) if under else None


class Condition(BaseModel):
    """A test on the value at ``path``: one of equals, in, not_in, gte, lte, exists; and/or fresh_within."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    path: str = Field(min_length=1)
    equals: Any = None
    in_: list[Any] | None = Field(None, alias="in")
    not_in: list[Any] | None = None
    gte: float | None = Field(None, strict=True, allow_inf_nan=False)
    lte: float | None = Field(None, strict=True, allow_inf_nan=False)
    exists: bool | None = None
    fresh_within: str | None = None
    _max_age: float | None = PrivateAttr(None)  # fresh_within in seconds
    _tests: bool = PrivateAttr(True)  # whether a test other than fresh_within is set

    @field_validator("fresh_within")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = [
            name for name in ("equals", "in_", "not_in", "gte", "lte", "exists") if getattr(self, name) is not None
        ]
        if len(tests) > 1 or not tests and self.fresh_within is None:
            raise ValueError(
                f"condition on {self.path!r} needs exactly one of equals, in, not_in, gte, lte, exists "
                "(fresh_within may stand alone or go with one of them)"
            )
        self._max_age = parse_duration(self.fresh_within).total_seconds() if self.fresh_within else None
        self._tests = bool(tests)
        return self

    def holds(
        self, features: dict[str, Any], times: dict[str, float] | None = None, now: datetime | None = None
    ) -> bool:
        """Whether the condition holds on ``features``; ``times`` maps paths to the epoch seconds of their
        newest signal, which ``fresh_within`` compares with ``now``."""
        if self._max_age is not None:
            newest = signal_time(times or {}, self.path)
            if newest is None or now is None or _utc(now).timestamp() - newest > self._max_age:
                return False
            if not self._tests:
                return True
        return self.test(lookup(features, self.path))

    def test(self, value: Any) -> bool:
        """The test on a value already looked up (:data:`MISSING` when absent); ``fresh_within`` aside."""
        if self.exists is not None:
            return (value is not _MISSING) == self.exists
        if value is _MISSING:
            return self.not_in is not None
        if self.equals is not None:
            return _same(value, self.equals)
        if self.in_ is not None:
            return any(_same(value, item) for item in self.in_)
        if self.not_in is not None:
            return not any(_same(value, item) for item in self.not_in)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return value >= self.gte if self.gte is not None else value <= self.lte


class ActionMatch(BaseModel):
    """Which actions a rule is about: listed ids, and/or actions whose features meet conditions."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str] | None = None
    features: list[Condition] | None = None

    @model_validator(mode="after")
    def _something(self) -> ActionMatch:
        if self.ids is None and self.features is None:
            raise ValueError("a rule's actions need ids or features")
        return self

    def matches(self, action_id: str, features: dict[str, Any]) -> bool:
        if self.ids is not None and action_id not in self.ids:
            return False
        return all(c.holds(features) for c in self.features or ())


class Entitlement(BaseModel):
    """The matched actions are offered only when every condition holds on the context."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    actions: ActionMatch
    requires: list[Condition] = Field(min_length=1)


class Availability(BaseModel):
    """The matched actions are withdrawn when disabled or outside [start, end)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    actions: ActionMatch
    disabled: bool = False
    start: datetime | None = None
    end: datetime | None = None

    @model_validator(mode="after")
    def _window(self) -> Availability:
        if self.start is not None and self.end is not None and _utc(self.start) >= _utc(self.end):
            raise ValueError(f"availability {self.name!r}: start must be before end")
        return self

    def withdraws(self, now: datetime) -> bool:
        if self.disabled:
            return True
        now = _utc(now)
        if self.start is not None and now < _utc(self.start):
            return True
        return self.end is not None and now >= _utc(self.end)


class Priority(BaseModel):
    """Multiply the matched actions' probabilities by ``factor`` (>1 boosts, <1 buries), when ``when`` holds."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    actions: ActionMatch
    factor: float = Field(gt=0, le=1e6)
    when: list[Condition] = Field(default_factory=list)


class Discovery(BaseModel):
    """Give each matched action at least ``min_probability`` while it was chosen in less than ``max_share`` of
    the loop's decisions over the last ``window`` (ISO 8601 duration), when ``when`` holds.

    The floor is mixed into the final distribution before the draw (:func:`ranker.serving.discovery.floor`), so the
    probability logged is the one the action was drawn with. Entitlements and availability come first: an
    excluded action gets no floor. Multi-slot Rank mixes it into each slot's distribution (see
    :mod:`ranker.serving.discovery`)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    actions: ActionMatch
    min_probability: float = Field(gt=0, le=1)
    max_share: float = Field(gt=0, le=1)
    window: str = "P7D"
    when: list[Condition] = Field(default_factory=list)

    @model_validator(mode="after")
    def _window(self) -> Discovery:

        if parse_duration(self.window).total_seconds() < 1:
            raise ValueError(f"discovery {self.name!r}: window must be at least 1 second")
        return self


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entitlements: list[Entitlement] = Field(default_factory=list)
    availability: list[Availability] = Field(default_factory=list)
    priority: list[Priority] = Field(default_factory=list)
    discovery: list[Discovery] = Field(default_factory=list)

    @property
    def test_freshness(self) -> bool:
        """Whether a condition on the context uses ``fresh_within`` (so Rank needs the signal times)."""
        conditions = [c for r in self.entitlements for c in r.requires] + [c for r in self.priority for c in r.when]
        return any(c.fresh_within is not None for c in conditions)


@dataclass(slots=True)
class Verdict:
    """What the rules did to one Rank call."""

    eligible: list[int]  # indices into the request's actions, in request order
    factors: list[float]  # one per eligible action
    excluded: dict[str, list[str]]  # action id -> reasons
    reweighted: dict[str, list[dict[str, Any]]]  # action id -> [{"rule", "factor"}]
    # eligible position -> the discovery rules that match the action and whose ``when`` holds
    discovery: dict[int, list[Discovery]] = field(default_factory=dict)


def apply(
    rules: Rules,
    context: dict[str, Any],
    actions: list[tuple[str, dict[str, Any]]],
    excluded_ids: set[str],
    now: datetime,
    times: dict[str, float] | None = None,
) -> Verdict:
    """Decide which actions may be offered for this context and with which priority factors.

    ``times``: the newest signal time (epoch seconds) of context paths that enrichment added, for
    ``fresh_within``."""
    if not (rules.entitlements or rules.availability or rules.priority or rules.discovery or excluded_ids):
        return Verdict(list(range(len(actions))), [1.0] * len(actions), {}, {})
    withdrawn_all = [r for r in rules.availability if r.withdraws(now)]
    failed_entitlements = [r for r in rules.entitlements if not all(c.holds(context, times, now) for c in r.requires)]
    active_priority = [r for r in rules.priority if all(c.holds(context, times, now) for c in r.when)]
    active_discovery = [r for r in rules.discovery if all(c.holds(context, times, now) for c in r.when)]
    discovery: dict[int, list[Discovery]] = {}
    eligible, factors = [], []
    excluded: dict[str, list[str]] = {}
    reweighted: dict[str, list[dict[str, Any]]] = {}
    for index, (action_id, features) in enumerate(actions):
        reasons = ["excludedActions"] if action_id in excluded_ids else []
        reasons += [f"entitlement:{r.name}" for r in failed_entitlements if r.actions.matches(action_id, features)]
        reasons += [f"availability:{r.name}" for r in withdrawn_all if r.actions.matches(action_id, features)]
        if reasons:
            excluded[action_id] = reasons
            continue
        applied = [rule for rule in active_priority if rule.actions.matches(action_id, features)]
        if applied:
            reweighted[action_id] = [{"rule": rule.name, "factor": rule.factor} for rule in applied]
        found = [rule for rule in active_discovery if rule.actions.matches(action_id, features)]
        if found:
            discovery[len(eligible)] = found
        eligible.append(index)
        factors.append([rule.factor for rule in applied])
    return Verdict(eligible, _combine(factors), excluded, reweighted, discovery)


def _combine(factor_lists: list[list[float]]) -> list[float]:
    """Each action's product of factors; rescaled so the largest is 1 when a product leaves a safe range."""
    products = [math.prod(fs) for fs in factor_lists]
    low, high = _FACTOR_RANGE
    if all(low <= p <= high for p in products):
        return products
    logs = [math.fsum(math.log(f) for f in fs) for fs in factor_lists]
    top = max(logs)
    return [math.exp(x - top) for x in logs]


def _same(value: Any, expected: Any) -> bool:
    """JSON equality: booleans are not numbers (Python's ``True == 1`` does not carry over)."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return type(value) is type(expected) and value == expected
    if isinstance(value, dict) and isinstance(expected, dict):
        return value.keys() == expected.keys() and all(_same(value[k], expected[k]) for k in value)
    if isinstance(value, list) and isinstance(expected, list):
        return len(value) == len(expected) and all(_same(a, b) for a, b in zip(value, expected, strict=True))
    return value == expected


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
