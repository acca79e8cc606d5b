"""Signals as library calls: ingest OTLP logs, keep entity attributes, read features, enrich a Rank's
context, import, rebuild and prune. The HTTP blueprint (:mod:`ranker.signals.api`) and the CLI are shells."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..store import Store, parse_time, timestamp
from ..store.signals import EventRow, OutOfOrder, SignalStore
from .definitions import ENTITY_TYPES, SignalSettings
from .enrich import Enricher
from .entities import check_attributes, check_id, import_rows, merge_patch, replace
from .features import DAY_NS, Buckets, Definitions, compute, kinds_of
from .ingest import extract, fold_into, fold_stored


class UnknownEntityType(LookupError):
    pass


@dataclass
class Ingested:
    records: int
    new: int  # events kept; redeliveries are not new
    rejected: int
    message: str


def ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000


class Signals:
    def __init__(self, settings: SignalSettings, store: Store):
        self.settings = settings
        self.store = SignalStore(store)
        self.definitions = Definitions(settings)
        self.kinds = kinds_of(settings)
        self.enricher = Enricher(self.store, settings)

    @staticmethod
    def check_type(entity: str) -> str:
        if entity not in ENTITY_TYPES:
            raise UnknownEntityType(f"no entity type {entity!r}; the types are {', '.join(ENTITY_TYPES)}")
        return entity

    # -- ingestion ------------------------------------------------------------------------------

    def ingest(self, request: Any, now: datetime) -> Ingested:
        """Keep the events of an ``ExportLogsServiceRequest``, committed before this returns."""
        batch = extract(request, self.settings, self.definitions, ns(now))
        if not batch.rows:
            return Ingested(batch.records, 0, batch.rejected, batch.message())
        try:
            new = self.store.record_events(batch.rows, batch.fold(self.kinds))
        finally:
            self.enricher.changed(_named(batch.rows))
        return Ingested(batch.records, new, batch.rejected, batch.message())

    # -- entities -------------------------------------------------------------------------------

    def put(
        self, entity: str, entity_id: str, attributes: Any, now: datetime, at: datetime | None = None
    ) -> dict[str, Any]:
        """Replace the entity's attributes (a ValueError says what is wrong with them). ``at``: the time the
        change happened, when it is history being imported (see :meth:`dated`)."""
        self.check_type(entity)
        check_id(entity_id)
        when = self.dated(at, now)
        change = replace(check_attributes(attributes), when)
        try:
            self.store.upsert_entity(entity, entity_id, change, when, at is not None)
        finally:
            self.enricher.changed([(entity, entity_id)])
        return self.view(entity, entity_id, now)

    def patch(
        self, entity: str, entity_id: str, patch: Any, now: datetime, at: datetime | None = None
    ) -> dict[str, Any]:
        """Merge a JSON merge patch into the entity's attributes (null removes a value); ``at`` as in put."""
        self.check_type(entity)
        check_id(entity_id)
        when = self.dated(at, now)
        change = merge_patch(check_attributes(patch, patch=True), when)
        try:
            self.store.upsert_entity(entity, entity_id, change, when, at is not None)
        finally:
            self.enricher.changed([(entity, entity_id)])
        return self.view(entity, entity_id, now)

    @staticmethod
    def dated(at: datetime | None, now: datetime) -> str:
        """The time a change is stored with: now, or ``at`` for a dated change (importing history, so that
        point-in-time reads and pattern mining see when each value held). A dated change may not be more
        than a day ahead; one before the entity's latest change is refused (OutOfOrder, a ValueError)."""
        if at is None:
            return timestamp(now)
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        if at > now + timedelta(days=1):
            raise ValueError("at is more than a day ahead")
        return timestamp(at)

    def delete(self, entity: str, entity_id: str) -> bool:
        self.check_type(entity)
        try:
            return self.store.delete_entity(entity, entity_id)
        finally:
            self.enricher.changed([(entity, entity_id)])

    def view(self, entity: str, entity_id: str, now: datetime, at: datetime | None = None) -> dict[str, Any] | None:
        """The entity's attributes and computed features now (as a Rank would add them) or as of ``at`` (from
        the attribute history and the raw events up to that instant); None when it is unknown."""
        self.check_type(entity)
        row = self.store.entity(entity, entity_id, None if at is None else timestamp(at))
        if row is None:
            return None
        attributes = json.loads(row["attributes"])
        attribute_times = json.loads(row["times"])
        if at is None:
            values, times = self.enricher.values(entity, entity_id, row["version"], ns(now), row)
            features = {f.name: values.get(f.name) for f in self.enricher.features[entity]}
        else:
            features, times = self.features_at(entity, entity_id, attributes, attribute_times, at)
            features = {f.name: features.get(f.name) for f in self.enricher.features[entity]}
        return {
            "type": entity,
            "id": entity_id,
            "asOf": timestamp(at or now),
            "attributes": attributes,
            "attributeTimes": attribute_times,
            "features": {
                name: {"value": value, "newestSignal": _iso(times.get(name))} for name, value in features.items()
            },
        }

    def features_at(self, entity, entity_id, attributes, attribute_times, at: datetime):
        at_ns = ns(at)
        days = self.enricher.days
        events = self.store.events(entity, entity_id, (at_ns // DAY_NS - days + 1) * DAY_NS, at_ns) if days else []
        buckets = fold_into(Buckets(), events, self.definitions, self.kinds)
        rows = [key[2:] + tuple(row) for key, row in buckets.rows.items()]
        distinct = [key[2:] + (value,) for key, values in buckets.distinct.items() for value in values]
        times = {path: parse_time(t).timestamp() for path, t in attribute_times.items()}
        return compute(
            self.enricher.features[entity], self.settings.retention_days, rows, distinct, attributes, times, at_ns
        )

    def import_entities(
        self, entity: str, text: str, kind: str, now: datetime, at: datetime | None = None
    ) -> dict[str, Any]:
        """Merge each good row's attributes into its entity (as PATCH does; values unchanged by a rerun keep
        the entity as it was); report the bad rows by line number. ``at``: the rows are history as of then
        (a row dated before its entity's latest change is reported as an error)."""
        self.check_type(entity)
        stamp = self.dated(at, now)
        report: dict[str, Any] = {"imported": 0, "unchanged": 0, "errors": []}
        try:
            for line, entity_id, attributes, error in import_rows(text, kind):
                if error is not None:
                    report["errors"].append({"line": line, "error": error})
                    continue
                try:
                    _, _, changed = self.store.upsert_entity(
                        entity, entity_id, _import_change(attributes, stamp), stamp, at is not None
                    )
                except OutOfOrder as exc:
                    report["errors"].append({"line": line, "error": str(exc)})
                    continue
                report["imported" if changed else "unchanged"] += 1
        finally:
            self.enricher.changed()  # the rows' entities
        return report

    # -- maintenance ----------------------------------------------------------------------------

    def rebuild(self) -> int:
        """Recompute every feature's buckets from the raw events; the number of events read."""
        try:
            return self.store.rebuild(fold_stored(self.definitions, self.kinds))
        finally:
            self.enricher.changed()

    def prune(self, now: datetime) -> dict[str, int]:
        before = ns(now) - self.settings.retention_days * DAY_NS
        return self.store.prune(before, before // DAY_NS, timestamp(datetime.fromtimestamp(before / 1e9, UTC)))


def _import_change(attributes: dict[str, Any], at: str):
    """A merge whose values keep their update time when the file says what the entity holds already, so a
    rerun of the same file changes nothing."""
    patch = merge_patch(attributes, at)

    def change(current: dict[str, Any], times: dict[str, str]):
        merged, new_times = patch(current, times)
        if merged == current:
            return current, times
        return merged, new_times

    return change


def _named(rows: list[EventRow]) -> set[tuple[str, str]]:
    """The entities events name."""
    return {("account", row[3]) for row in rows if row[3] is not None} | {
        ("user", row[4]) for row in rows if row[4] is not None
    }


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else timestamp(datetime.fromtimestamp(epoch, UTC))
