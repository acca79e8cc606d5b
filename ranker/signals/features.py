"""Feature values from time buckets.

Each event a feature reads adds to a bucket per (entity, feature, UTC day): its count, the sum, lowest and
highest of a numeric field, the newest event's time and (for ``last``) that event's field value, and for
``distinct`` the set of values seen that day. Buckets are maintained as events arrive (late ones included)
and are rebuilt from the raw events when definitions change; a feature's value at a time is read from the
buckets of its window, ending with the day of that time. Out of buckets, every value also carries the time
of the newest signal behind it.

Pure functions: no SQL (:mod:`ranker.store.signals`), no HTTP.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

from ..core.rules import MISSING, lookup
from .definitions import Feature, SignalSettings

DAY_NS = 86_400 * 10**9
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode

# A contribution of one event to one feature: (feature name, what it adds: None, a number, or JSON text)
Contribution = tuple[str, Any]


def attribute(attributes: dict[str, Any], path: str) -> Any:
    """An event attribute by OpenTelemetry's flat dotted name (``api.name``), else by nesting; or MISSING."""
    if path in attributes:
        return attributes[path]
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):  # a flat prefix holding a nested value: "http.request" + "method"
        head = ".".join(parts[:i])
        if head in attributes:
            return lookup(attributes[head], ".".join(parts[i:])) if isinstance(attributes[head], dict) else MISSING
    return MISSING


def is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


class Definitions:
    """The feature definitions, indexed for ingestion: per event name and entity type, what to add."""

    def __init__(self, settings: SignalSettings):
        self.settings = settings
        self.by_event: dict[str, dict[str, list[Feature]]] = defaultdict(lambda: defaultdict(list))
        for feature in settings.features:
            if feature.from_events:
                self.by_event[feature.event][feature.entity].append(feature)
        self.by_event = {name: dict(types) for name, types in self.by_event.items()}
        self.by_entity = {entity: settings.of(entity) for entity in ("account", "user")}

    def reads(self, entity: str, name: str) -> bool:
        """Whether a feature of the entity type reads events of this name."""
        return bool(self.by_event.get(name, {}).get(entity))

    def contributions(self, entity: str, name: str, attributes: dict[str, Any]) -> list[Contribution]:
        """What an event adds to its entity's features: ``(feature, value)`` for each feature reading it."""
        features = self.by_event.get(name, {}).get(entity)
        if not features:
            return []
        out = []
        for feature in features:
            if feature.where and not all(c.test(attribute(attributes, c.path)) for c in feature.where):
                continue
            aggregate = feature.aggregate
            if feature.field is None:
                out.append((feature.name, None))
                continue
            value = attribute(attributes, feature.field)
            if aggregate in ("sum", "min", "max"):
                if is_number(value):
                    out.append((feature.name, value))
            elif value is not MISSING and value is not None:
                if aggregate == "last" and not (type(value) in (str, bool) or is_number(value)):
                    continue  # a feature value is a string, number or boolean, as VW reads it
                out.append((feature.name, _dumps(value)))
        return out


class Buckets:
    """Accumulates contributions into bucket rows (``fold``), as ingestion, rebuilds and point-in-time reads do.

    ``rows[(entity type, id, feature, day)] = [count, total, low, high, newest ns, last value JSON]`` and
    ``distinct[(entity type, id, feature, day)] = {value JSON}``.
    """

    def __init__(self) -> None:
        self.rows: dict[tuple, list] = {}
        self.distinct: dict[tuple, set[str]] = defaultdict(set)

    def fold(self, entity: str, entity_id: str, time_ns: int, contributions: Iterable[Contribution], kinds) -> None:
        day = time_ns // DAY_NS
        for feature, value in contributions:
            key = (entity, entity_id, feature, day)
            row = self.rows.get(key)
            if row is None:
                row = self.rows[key] = [0, 0.0, None, None, time_ns, None]
            row[0] += 1
            kind = kinds.get((entity, feature))
            if kind in ("sum", "min", "max"):
                row[1] += value
                row[2] = value if row[2] is None else min(row[2], value)
                row[3] = value if row[3] is None else max(row[3], value)
            elif kind == "distinct":
                self.distinct[key].add(value)
            if time_ns > row[4] or (time_ns == row[4] and kind == "last" and (row[5] is None or value > row[5])):
                row[4] = time_ns
                if kind == "last":
                    row[5] = value
            elif kind == "last" and row[5] is None:
                row[5] = value

    def bucket_rows(self) -> list[tuple]:
        return [(*key, *row) for key, row in self.rows.items()]

    def distinct_rows(self) -> list[tuple]:
        return [(*key, value) for key, values in self.distinct.items() for value in values]


def kinds_of(settings: SignalSettings) -> dict[tuple[str, str], str]:
    """(entity type, feature name) -> aggregate, for :meth:`Buckets.fold`."""
    return {(f.entity, f.name): f.aggregate for f in settings.features}


def _day_of(value: Any) -> int | None:
    """The UTC day number of an ISO date or date-time, or None."""
    if not isinstance(value, str):
        return None
    try:
        if len(value) == 10:
            return (date.fromisoformat(value) - date(1970, 1, 1)).days
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return int(moment.timestamp() // 86_400)


def compute(
    features: list[Feature],
    retention_days: int,
    buckets: list[tuple],
    distinct: list[tuple],
    attributes: dict[str, Any],
    attribute_times: dict[str, float],
    now_ns: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    """The features' values at ``now_ns`` and the epoch seconds of the newest signal behind each.

    ``buckets``: rows ``(feature, day, count, total, low, high, newest ns, last JSON)`` of the entity;
    ``distinct``: rows ``(feature, day, value JSON)``. A value with nothing behind it (a minimum of no events,
    a date attribute that is missing) is left out; counts, sums, distinct counts and changes of no events are 0.
    """
    today = now_ns // DAY_NS
    by_feature: dict[str, list[tuple]] = defaultdict(list)
    for row in buckets:
        if row[1] <= today:
            by_feature[row[0]].append(row)
    values: dict[str, Any] = {}
    times: dict[str, float] = {}
    for feature in features:
        name = feature.name
        if not feature.from_events:
            day = _day_of(lookup(attributes, feature.field))
            if day is not None:
                values[name] = day - today if feature.aggregate == "days_until" else today - day
                newest = _newest_under(attribute_times, feature.field)
                if newest is not None:
                    times[name] = newest
            continue
        span = feature.days(retention_days)
        window = span // 2 if feature.aggregate == "change" else span
        start = today - window + 1
        rows = [r for r in by_feature.get(name, ()) if r[1] >= start]
        if rows:
            times[name] = max(r[6] for r in rows) / 1e9
        aggregate = feature.aggregate
        if aggregate == "count":
            values[name] = sum(r[2] for r in rows)
        elif aggregate == "change":
            before = sum(r[2] for r in by_feature.get(name, ()) if start - window <= r[1] < start)
            values[name] = (sum(r[2] for r in rows) - before) / max(before, 1)
            older = [r[6] for r in by_feature.get(name, ()) if start - window <= r[1] < start]
            if older and name not in times:
                times[name] = max(older) / 1e9
        elif aggregate == "distinct":
            values[name] = len({r[2] for r in distinct if r[0] == name and start <= r[1] <= today})
        elif not rows:
            if aggregate == "sum":
                values[name] = 0.0
            continue
        elif aggregate == "sum":
            values[name] = math.fsum(r[3] for r in rows)
        elif aggregate == "min":
            values[name] = min(r[4] for r in rows if r[4] is not None)
        elif aggregate == "max":
            values[name] = max(r[5] for r in rows if r[5] is not None)
        elif aggregate == "last":
            newest = max((r for r in rows if r[7] is not None), key=lambda r: (r[6], r[7]), default=None)
            if newest is not None:
                values[name] = json.loads(newest[7])
        elif aggregate == "days_since_last":
            values[name] = today - max(r[6] for r in rows) // DAY_NS
    return values, times


def _newest_under(times: dict[str, float], path: str) -> float | None:
    if path in times:
        return times[path]
    under = [t for p, t in times.items() if p.startswith(path + ".")]
    return max(under) if under else None
