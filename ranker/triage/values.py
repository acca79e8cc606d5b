"""Point-in-time values of the triaged entities: what a pattern is tested on.

An entity's *values* as of a moment are its attributes from the attribute history (the latest change at or
before that moment) and its signal features computed only from events up to that moment, shaped exactly as
Rank-time enrichment (:mod:`ranker.signals.enrich`) merges the entity into a context::

    {"account": {"id": "acme", "industry": "fintech", "contract": {"plan": "pro", ...},
                 "reporting_api_trend": -0.8, "days_to_renewal": 90, ...}}

The outer name is where the triage loop's ``entities`` setting puts the entity's id (``account = "account.id"``
gives ``account``; without that setting, the entity type). So a pattern's condition paths read like the
loop's rules' paths: ``account.industry``, ``account.reporting_api_trend``, ``account.contract.plan``.

Exactness: a feature's window ends at the moment, not at the end of its day. Whole days before the moment's
day come from the per-day buckets, added up in SQL by segments of age that end where the features' windows
end (so each segment lies wholly inside or outside each window, and ``compute`` sees one row per
segment); the moment's own day is folded from the raw events up to the moment (an event after it is never
counted). A ``sum`` may differ from enrichment's in its last bits (SQL adds in another order). Event times
are the events' own times (a late event that arrived after the moment but happened before it is counted, as a
rebuild would). Attribute history older than ``signals.retention_days`` is pruned down to each entity's
latest row, so reads before the retention see that.

Cost: one query for the attributes, one for the buckets' totals, one for the distinct values, one for the
days of ``last`` features and one for the moment's day of raw events, per 2,000 entities
(:class:`ranker.store.signals.SignalStore`); then the same :func:`ranker.signals.features.compute` that
enrichment runs, per entity.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from ..signals.features import DAY_NS, Buckets, Definitions, compute, kinds_of
from ..signals.ingest import fold_into
from ..store import parse_time, timestamp
from ..store.signals import SignalStore

Values = dict[str, Any]
# Wants per query: SQLite reads a JSON parameter of any size, but smaller chunks keep each read short and
# the rows of one chunk in memory.
CHUNK = 2000


def namespace(settings) -> list[str]:
    """Where the triaged entity sits in a context: the object holding its id in the triage loop's ``entities``
    setting (``account.id`` -> ``["account"]``), else the entity type."""
    entity = settings.triage.entity
    loop = settings.loops.get(settings.triage.loop)
    path = loop.entities.get(entity) if loop is not None else None
    return path.rpartition(".")[0].split(".") if path else [entity]


def values_at(signal_store: SignalStore, settings, entity_ids: list[str] | None, at: datetime) -> dict[str, Values]:
    """Each entity's values as of ``at`` (see the module's docstring for their shape), by id. ``entity_ids``
    None: every entity of the triage type with attributes as of ``at`` or an event in the features' windows
    before it. An id unknown at ``at`` is left out."""
    at = _utc(at)
    if entity_ids is None:
        at_ns = _ns(at)
        first_ns = (at_ns // DAY_NS - max(_days(settings), 1) + 1) * DAY_NS
        entity_ids = signal_store.ids_known(settings.triage.entity, timestamp(at), first_ns, at_ns)
    found = values_at_many(signal_store, settings, [(entity_id, at) for entity_id in entity_ids])
    return {entity_id: values for entity_id, values in zip(entity_ids, found, strict=True) if values is not None}


def values_at_many(signal_store: SignalStore, settings, wants: list[tuple[str, datetime]]) -> list[Values | None]:
    """The values of each ``(entity id, moment)`` (an entity may be wanted at several moments), in the wants'
    order; None for an entity unknown at its moment (no attributes yet and no events in the windows)."""
    out: list[Values | None] = []
    reader = _Reader(signal_store, settings)
    for start in range(0, len(wants), CHUNK):
        out.extend(reader.read(wants[start : start + CHUNK]))
    return out


class _Reader:
    def __init__(self, signal_store: SignalStore, settings):
        self.store = signal_store
        self.entity = settings.triage.entity
        self.signals = settings.signals
        self.features = settings.signals.of(self.entity)
        self.days = _days(settings)
        self.definitions = Definitions(settings.signals)
        self.kinds = kinds_of(settings.signals)
        self.namespace = namespace(settings)
        # Ages (days before the moment's day) where some feature's window, or a change's earlier window, ends;
        # segment i holds the ages [starts[i], bounds[i]).
        ends = set()
        for feature in self.features:
            if feature.from_events:
                span = feature.days(settings.signals.retention_days)
                ends.update((span // 2, span) if feature.aggregate == "change" else (span,))
        self.bounds = sorted(ends)
        self.starts = [1, *self.bounds[:-1]]
        self.raw = [f.name for f in self.features if f.aggregate == "last"]

    def read(self, wants: list[tuple[str, datetime]]) -> list[Values | None]:
        moments = [(entity_id, _utc(at)) for entity_id, at in wants]
        nss = [_ns(at) for _, at in moments]
        rows = self.store.attributes_as_of(self.entity, [(i, timestamp(at)) for i, at in moments])
        by_want: dict[int, list[tuple]] = defaultdict(list)
        distinct_by_want: dict[int, list[tuple]] = defaultdict(list)
        if self.days:
            # whole days before the moment's day: the buckets added up in SQL by segments of age that end
            # where the features' windows do, each segment given to compute() as one row on a day inside it
            todays = [n // DAY_NS for n in nss]
            spans = [(i, day) for (i, _), day in zip(moments, todays, strict=True)]
            totals, distinct, raw = self.store.window_totals(self.entity, spans, self.bounds, self.raw)
            for index, feature, segment, *row in totals:
                if feature not in self.raw:
                    by_want[index].append((feature, todays[index] - self.starts[segment], *row, None))
            for index, feature, segment, value in distinct:
                distinct_by_want[index].append((feature, todays[index] - self.starts[segment], value))
            for row in raw:
                by_want[row[0]].append(row[1:])
            # the moment's own day, from the raw events up to the moment
            today = [(i, day * DAY_NS, n) for (i, _), day, n in zip(moments, todays, nss, strict=True)]
            events: dict[int, list[tuple]] = defaultdict(list)
            for row in self.store.events_between(self.entity, today):
                events[row[0]].append(row[1:])
            for index, rows_of_day in events.items():
                folded = fold_into(Buckets(), rows_of_day, self.definitions, self.kinds)
                entity_id = moments[index][0]
                for key, row in folded.rows.items():
                    if key[0] == self.entity and key[1] == entity_id:
                        by_want[index].append((key[2], key[3], *row))
                for key, values in folded.distinct.items():
                    if key[0] == self.entity and key[1] == entity_id:
                        distinct_by_want[index].extend((key[2], key[3], value) for value in values)
        out: list[Values | None] = []
        for index, (entity_id, _) in enumerate(moments):
            row = rows.get(index)
            if row is None and index not in by_want and index not in distinct_by_want:
                out.append(None)
                continue
            attributes, times = (json.loads(row[0]), json.loads(row[1])) if row else ({}, {})
            epoch_times = {path: parse_time(t).timestamp() for path, t in times.items()}
            features, _ = compute(
                self.features,
                self.signals.retention_days,
                by_want.get(index, []),
                distinct_by_want.get(index, []),
                attributes,
                epoch_times,
                nss[index],
            )
            obj: Values = {**attributes, **features, "id": entity_id}
            for name in reversed(self.namespace):
                obj = {name: obj}
            out.append(obj)
        return out


def _days(settings) -> int:
    days = [
        f.days(settings.signals.retention_days) for f in settings.signals.of(settings.triage.entity) if f.from_events
    ]
    return max(days, default=0)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000
