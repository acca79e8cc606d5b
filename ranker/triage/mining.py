"""Mining churn patterns from past renewals.

1. Renewals (:func:`renewals`): an entity's attribute history records a renewal each time its outcome
   attribute (``triage.outcome``) is written with a value; the renewal's date is the renewal-date attribute
   (``triage.renewal_date``) the entity held in that same change. An account may have several. A recording
   made before the renewal's cut-off (its date minus ``triage.horizon``) is not taken: it is a value carried
   over from an earlier renewal, or an outcome known so early that the values at the cut-off may already
   reflect it. Written again for the same date (a correction), the latest outcome counts.
2. Values (:func:`ranker.triage.values.values_at_many`): each renewal's account as of its cut-off, never
   anything after it.
3. Candidates: one condition per categorical value (``equals``, a string or a boolean seen on at least
   ``min_support`` renewals, on paths with at most :data:`MAX_CATEGORIES` values) and per numeric threshold
   (``gte`` and ``lte`` at every 5 % quantile of the path's values; trends such as ``change`` features are numeric
   and get thresholds the same way). The outcome and renewal-date attributes and the id are left out.
4. Search: a beam over conjunctions of up to ``triage.max_conditions`` conditions (the best single
   conditions, then each of the beam extended by any candidate on another path), keeping those with at least
   ``min_support`` renewals whose churn rate is significantly above the base rate (the interval's lower end
   above it) and, for a conjunction, where every condition earns its place: with the other conditions holding,
   the renewals it keeps churn more than those it drops, significantly after a Bonferroni correction for the
   number of paths it was chosen from (a one-sided two-proportion z-test at 5 % / paths), and the
   interval's lower end is above the rate of the pattern without it. A noise condition that drops a few
   renewals by luck does not pass. Ranked by the lower end of the
   Wilson 95 % interval of the churn rate; near-duplicates (matching mostly the same renewals as a better
   pattern) are left out.
5. Honesty: a deterministic share (``triage.holdout``, by a hash of the account and renewal date) of the
   renewals is held out of all of this; each pattern's churn rate on them is reported beside the mined one.

Counting is numpy: a boolean matrix of candidates x renewals, conjunctions by matrix products.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from statistics import NormalDist
from typing import Any

import numpy as np

from ..core.durations import parse_duration
from ..core.rules import MISSING, Condition, lookup
from ..store import parse_time
from ..store.signals import SignalStore
from .patterns import Pattern, describe, name_of
from .values import namespace, values_at_many

Z = 1.959963984540054  # the 97.5 % quantile of the standard normal: a 95 % interval
MAX_CATEGORIES = 50
QUANTILES = tuple(i / 20 for i in range(1, 20))  # every 5 %
BEAM = 30
TOP = 10  # patterns kept: each flags accounts, so a reviewer should be able to read them all
OVERLAP = 0.8  # Jaccard overlap of matched renewals above which a worse pattern is a near-duplicate


@dataclass
class Renewal:
    entity_id: str
    renewal: date
    outcome: Any
    churned: bool
    recorded_at: datetime
    cutoff: datetime
    holdout: bool = False


@dataclass
class Mined:
    """What a mining found: the patterns (best first) and the figures behind them."""

    patterns: list[Pattern]
    renewals: int
    mined: int
    held_out: int
    base_rate: float | None
    holdout_base_rate: float | None
    candidates: int
    horizon: str
    entity: str
    outcome: str
    seconds: dict[str, float] = field(default_factory=dict)
    # the settings' hand-written patterns, with their figures on the same renewals (not searched: a check)
    written: list[Pattern] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "outcome": self.outcome,
            "horizon": self.horizon,
            "renewals": self.renewals,
            "mined": self.mined,
            "heldOut": self.held_out,
            "baseRate": self.base_rate,
            "holdoutBaseRate": self.holdout_base_rate,
            "candidates": self.candidates,
            "seconds": self.seconds,
            "patterns": [p.to_dict() for p in self.patterns],
            "handWritten": [p.to_dict() for p in self.written],
        }


def wilson(k: np.ndarray | int, n: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval (95 %) of a proportion k/n (Wilson 1927; Agresti & Coull 1998): the interval
    of p for which |k/n - p| <= z sqrt(p(1-p)/n). Sound for small n and rates near 0 or 1."""
    k = np.asarray(k, dtype=np.float64)
    n = np.maximum(np.asarray(n, dtype=np.float64), 1e-12)
    p = k / n
    z2 = Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z * np.sqrt(np.maximum(p * (1 - p) / n + z2 / (4 * n * n), 0)) / (1 + z2 / n)
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


# -- renewals ----------------------------------------------------------------------------------------


def _date(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value) if len(value) == 10 else parse_time(value).astimezone(UTC).date()
    except ValueError:
        return None


def held_out(entity_id: str, renewal: date, share: float) -> bool:
    """Whether a renewal is in the holdout: a hash of the account and date, the same on every run."""
    digest = hashlib.blake2b(f"{entity_id}\x00{renewal.isoformat()}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def renewals(signal_store: SignalStore, settings, entity_ids: list[str] | None = None) -> list[Renewal]:
    """The past renewals with a known outcome, read from the attribute history (see the module's docstring)."""
    triage = settings.triage
    horizon = parse_duration(triage.horizon)
    churned = {json.dumps(v) for v in triage.churned}
    found: dict[tuple[str, date], Renewal] = {}
    last_written: dict[str, str | None] = {}
    for row in signal_store.history(triage.entity, entity_ids):
        entity_id = row["id"]
        attributes = json.loads(row["attributes"])
        written = json.loads(row["times"]).get(triage.outcome)
        before = last_written.get(entity_id)
        last_written[entity_id] = written
        outcome = lookup(attributes, triage.outcome)
        if written is None or written == before or outcome is MISSING or isinstance(outcome, dict | list):
            continue
        renewal = _date(lookup(attributes, triage.renewal_date))
        if renewal is None:
            continue
        recorded = parse_time(row["updated_at"])
        cutoff = datetime(renewal.year, renewal.month, renewal.day, tzinfo=UTC) - horizon
        if recorded < cutoff:
            continue
        found[(entity_id, renewal)] = Renewal(
            entity_id,
            renewal,
            outcome,
            json.dumps(outcome) in churned,
            recorded,
            cutoff,
            held_out(entity_id, renewal, triage.holdout),
        )
    return sorted(found.values(), key=lambda r: (r.renewal, r.entity_id))


# -- candidate conditions ----------------------------------------------------------------------------


def _leaves(obj: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in obj.items():
        path = prefix + key
        if isinstance(value, dict):
            _leaves(value, path + ".", out)
        elif not isinstance(value, list):
            out[path] = value


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def candidates(
    values: list[dict[str, Any]], min_support: int, skip: set[str], fit: np.ndarray | None = None
) -> tuple[list[Condition], np.ndarray]:
    """Candidate conditions and their boolean matrix (candidates x renewals). Thresholds and supports come from
    the renewals ``fit`` marks (the mined ones: the holdout has no say in what is tried), the matrix covers all."""
    columns: dict[str, list[Any]] = {}
    n = len(values)
    fit = np.ones(n, dtype=bool) if fit is None else fit
    fitted = int(fit.sum())
    for i, obj in enumerate(values):
        flat: dict[str, Any] = {}
        _leaves(obj, "", flat)
        for path, value in flat.items():
            if path in skip:
                continue
            column = columns.get(path)
            if column is None:
                column = columns[path] = [MISSING] * n
            column[i] = value
    conditions: list[Condition] = []
    masks: list[np.ndarray] = []
    for path in sorted(columns):
        column = columns[path]
        numbers = np.array(
            [v if type(v) in (int, float) and math.isfinite(v) else np.nan for v in column], dtype=np.float64
        )
        present = ~np.isnan(numbers) & fit
        if present.sum() >= min_support:
            thresholds = sorted({_round(q) for q in np.quantile(numbers[present], QUANTILES)})
            for threshold in thresholds:
                for test in ("lte", "gte"):
                    mask = numbers <= threshold if test == "lte" else numbers >= threshold
                    if min_support <= int((mask & fit).sum()) < fitted:
                        conditions.append(Condition(path=path, **{test: threshold}))
                        masks.append(mask)
        categories: dict[str, list[int]] = {}
        for i, v in enumerate(column):
            if type(v) in (str, bool):
                categories.setdefault(json.dumps(v), []).append(i)
        if 0 < len(categories) <= MAX_CATEGORIES:
            for key, rows in sorted(categories.items()):
                mask = np.zeros(n, dtype=bool)
                mask[rows] = True
                if min_support <= int((mask & fit).sum()) < fitted:
                    conditions.append(Condition(path=path, equals=json.loads(key)))
                    masks.append(mask)
    matrix = np.array(masks, dtype=bool) if masks else np.zeros((0, n), dtype=bool)
    # the same renewals matched twice (a threshold equal to another's): keep the first
    _, first = np.unique(np.packbits(matrix, axis=1), axis=0, return_index=True) if len(masks) else ([], [])
    keep = sorted(int(i) for i in first)
    return [conditions[i] for i in keep], matrix[keep]


# -- search ------------------------------------------------------------------------------------------


@dataclass
class _Found:
    members: tuple[int, ...]
    support: int
    churned: int
    low: float
    high: float


def search(
    matrix: np.ndarray,
    churn: np.ndarray,
    paths: list[str],
    min_support: int,
    max_conditions: int,
    beam: int = BEAM,
) -> list[_Found]:
    """Conjunctions of candidates (rows of ``matrix``) by beam search; every one kept, best first."""
    n = matrix.shape[1]
    if n == 0 or matrix.shape[0] == 0:
        return []
    base = churn.mean()
    y = churn.astype(np.float32)
    as_float = matrix.astype(np.float32)
    support = matrix.sum(axis=1)
    churned = as_float @ y
    low, high = wilson(churned, support)
    ok = (support >= min_support) & (low > base)
    found: dict[tuple[int, ...], _Found] = {}
    level = []
    for i in np.flatnonzero(ok):
        item = _Found((int(i),), int(support[i]), int(round(churned[i])), float(low[i]), float(high[i]))
        found[item.members] = item
        level.append(item)
    masks_of: dict[tuple[int, ...], np.ndarray] = {}
    refused: set[tuple[int, ...]] = set()
    # one-sided, Bonferroni over the paths a condition could be on (a pattern is extended by the best of many;
    # the thresholds of one path are nearly the same test, so they are not counted apart)
    z_add = NormalDist().inv_cdf(1 - 0.05 / max(len(set(paths)), 1))

    def mask_of(members: tuple[int, ...]) -> np.ndarray:
        if members not in masks_of:
            masks_of[members] = np.logical_and.reduce(matrix[list(members)], axis=0)
        return masks_of[members]

    def earns_its_place(members: tuple[int, ...], low: float) -> bool:
        """Each condition separates: with the others holding, the renewals it keeps churn more than those it
        drops, significantly (two-proportion z-test at z_add), and the pattern's lower end is above the rate of
        the pattern without it."""
        kept = mask_of(members)
        n1, k1 = int(kept.sum()), int(churn[kept].sum())
        for left_out in members:
            others = mask_of(tuple(m for m in members if m != left_out))
            dropped = others & ~kept
            n2, k2 = int(dropped.sum()), int(churn[dropped].sum())
            if n2 == 0 or low <= (k1 + k2) / (n1 + n2) or _z(k1, n1, k2, n2) <= z_add:
                return False
        return True

    path_ids = {p: i for i, p in enumerate(dict.fromkeys(paths))}
    path_of = np.array([path_ids[p] for p in paths], dtype=np.int64)
    for _ in range(max_conditions - 1):
        level.sort(key=lambda f: (-f.low, f.members))
        level = level[:beam]
        if not level:
            break
        masks = np.array([np.logical_and.reduce(matrix[list(f.members)], axis=0) for f in level], dtype=np.float32)
        both = as_float @ masks.T  # candidates x beam: renewals matching both
        both_churned = as_float @ (masks * y).T
        lows, highs = wilson(both_churned, both)
        following = []
        for b, parent in enumerate(level):
            used = {int(path_of[m]) for m in parent.members}
            good = (
                (both[:, b] >= min_support)
                & (lows[:, b] > parent.churned / parent.support)
                & ~np.isin(path_of, list(used))
            )
            for i in np.flatnonzero(good):
                members = tuple(sorted((*parent.members, int(i))))
                if members in found or members in refused:
                    continue
                if not earns_its_place(members, float(lows[i, b])):
                    refused.add(members)
                    continue
                item = _Found(
                    members, int(both[i, b]), int(round(both_churned[i, b])), float(lows[i, b]), float(highs[i, b])
                )
                found[members] = item
                following.append(item)
        level = following
    return sorted(found.values(), key=lambda f: (-f.low, len(f.members), f.members))


def _z(k1: int, n1: int, k2: int, n2: int) -> float:
    """The two-proportion z statistic of k1/n1 above k2/n2 (pooled variance)."""
    pooled = (k1 + k2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return (k1 / n1 - k2 / n2) / spread if spread > 0 else 0.0


def _distinct(found: list[_Found], matrix: np.ndarray, top: int) -> list[_Found]:
    """The best patterns, leaving out one whose matched renewals mostly equal a better one's."""
    chosen: list[tuple[_Found, np.ndarray]] = []
    for item in found:
        mask = np.logical_and.reduce(matrix[list(item.members)], axis=0)
        if any((mask & other).sum() / max((mask | other).sum(), 1) >= OVERLAP for _, other in chosen):
            continue
        chosen.append((item, mask))
        if len(chosen) == top:
            break
    return [item for item, _ in chosen]


# -- the whole mining --------------------------------------------------------------------------------


def mine(
    signal_store: SignalStore, settings, top: int = TOP, exclude: list[str] | None = None, beam: int = BEAM
) -> Mined:
    """Mine the churn patterns of ``settings.triage`` (entity, outcome, renewal date, horizon, min_support,
    holdout, max_conditions) from the store; nothing is stored (see :func:`ranker.triage.patterns.save_mined`)."""
    triage = settings.triage
    clock = time.perf_counter()
    seconds: dict[str, float] = {}
    found = renewals(signal_store, settings)
    seconds["renewals"] = time.perf_counter() - clock
    values = values_at_many(signal_store, settings, [(r.entity_id, r.cutoff) for r in found])
    kept = [(r, v) for r, v in zip(found, values, strict=True) if v is not None]
    seconds["values"] = time.perf_counter() - clock - sum(seconds.values())
    prefix = ".".join(namespace(settings)) + "."
    skip = {prefix + "id", prefix + triage.outcome, prefix + triage.renewal_date}
    skip |= {prefix + p if not p.startswith(prefix) else p for p in exclude or []}
    churn_all = np.array([r.churned for r, _ in kept], dtype=bool)
    holdout = np.array([r.holdout for r, _ in kept], dtype=bool)
    conditions, matrix = candidates([v for _, v in kept], triage.min_support, skip, ~holdout)
    mining, check = matrix[:, ~holdout], matrix[:, holdout]
    churn, churn_check = churn_all[~holdout], churn_all[holdout]
    seconds["candidates"] = time.perf_counter() - clock - sum(seconds.values())
    paths = [c.path for c in conditions]
    results = search(mining, churn, paths, triage.min_support, triage.max_conditions, beam)
    best = _distinct(results, mining, top)
    seconds["search"] = time.perf_counter() - clock - sum(seconds.values())
    base = float(churn.mean()) if len(churn) else None
    holdout_base = float(churn_check.mean()) if len(churn_check) else None
    figures = _Figures(churn, churn_check, triage.horizon)
    patterns = []
    for item in best:
        chosen = [conditions[i] for i in item.members]
        mask = np.logical_and.reduce(mining[list(item.members)], axis=0)
        held = np.logical_and.reduce(check[list(item.members)], axis=0) if check.shape[1] else np.zeros(0, bool)
        patterns.append(figures.of(Pattern(name_of(chosen), chosen, describe(chosen), "mined"), mask, held))
    written = []
    for definition in triage.patterns:
        pattern = Pattern(definition.name, list(definition.when), definition.description or describe(definition.when))
        matches = np.array([pattern.matched(v) is not None for _, v in kept], dtype=bool)
        written.append(figures.of(pattern, matches[~holdout], matches[holdout]))
    return Mined(
        patterns=patterns,
        renewals=len(kept),
        mined=int((~holdout).sum()),
        held_out=int(holdout.sum()),
        base_rate=base,
        holdout_base_rate=holdout_base,
        candidates=len(conditions),
        horizon=triage.horizon,
        entity=triage.entity,
        outcome=triage.outcome,
        seconds={k: round(v, 3) for k, v in seconds.items()},
        written=written,
    )


class _Figures:
    """A pattern's figures from the renewals it matches, in the mined part and in the holdout."""

    def __init__(self, churn: np.ndarray, churn_check: np.ndarray, horizon: str):
        self.churn, self.churn_check, self.horizon = churn, churn_check, horizon
        self.base = float(churn.mean()) if len(churn) else None

    def of(self, pattern: Pattern, mask: np.ndarray, held: np.ndarray) -> Pattern:
        support, churned = int(mask.sum()), int((mask & self.churn).sum())
        held_support, held_churned = int(held.sum()), int((held & self.churn_check).sum())
        low, high = wilson(churned, support)
        pattern.support, pattern.churned = support, churned
        pattern.churn_rate = churned / support if support else None
        pattern.low, pattern.high = (float(low), float(high)) if support else (None, None)
        pattern.lift = pattern.churn_rate / self.base if self.base and support else None
        pattern.holdout_support = held_support
        pattern.holdout_rate = held_churned / held_support if held_support else None
        pattern.extra.update(holdout_churned=held_churned, base_rate=self.base, horizon=self.horizon)
        return pattern


def table(mined: Mined) -> str:
    """The patterns as a text table, with the figures behind them."""
    base = "-" if mined.base_rate is None else f"{mined.base_rate:.1%}"
    held = "-" if mined.holdout_base_rate is None else f"{mined.holdout_base_rate:.1%}"
    lines = [
        f"{mined.renewals} past renewals of {mined.entity} ({mined.outcome}), values as of {mined.horizon} before "
        f"each: {mined.mined} mined (churn {base}), {mined.held_out} held out (churn {held}); "
        f"{mined.candidates} candidate conditions",
        "",
        f"{'#':>2}  {'name':<11} {'support':>7} {'churned':>7} {'rate':>6}  {'95% interval':<13} {'lift':>5}  "
        f"{'holdout':>11}  pattern",
    ]
    lines += [_row(str(i), p) for i, p in enumerate(mined.patterns, 1)]
    if not mined.patterns:
        lines.append("(no pattern: too few renewals, or none churns above the base rate with min_support renewals)")
    if mined.written:
        lines += ["", "Hand-written patterns ([[triage.patterns]]) on the same renewals:"]
        lines += [_row("-", p) for p in mined.written]
    return "\n".join(lines)


def _row(rank: str, p: Pattern) -> str:
    holdout = "-" if p.holdout_rate is None else f"{p.holdout_rate:.0%} of {p.holdout_support}"
    lift = "-" if p.lift is None else f"{p.lift:.1f}"
    rate = "-" if p.churn_rate is None else f"{p.churn_rate:.1%}"
    interval = "-" if p.low is None else f"{p.low:.1%}-{p.high:.1%}"
    name = p.name if len(p.name) <= 11 else p.name[:10] + "…"
    return (
        f"{rank:>2}  {name:<11} {p.support:>7} {p.churned:>7} {rate:>6}  {interval:<13} {lift:>5}  "
        f"{holdout:>11}  {p.description}"
    )


def with_overrides(settings, **triage: Any):
    """The settings with some ``triage`` fields replaced (those given, not None), checked."""
    changes = {k: v for k, v in triage.items() if v is not None}
    if not changes:
        return settings
    updated = type(settings.triage).model_validate({**settings.triage.model_dump(by_alias=True), **changes})
    return settings.model_copy(update={"triage": updated})
