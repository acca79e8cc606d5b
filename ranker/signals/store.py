"""The signals' storage interface: entities, deduplicated events, time buckets. The only SQL of signals.

Writes go through the decision log's group commit (:meth:`ranker.store.Store.write`): an ingested batch is
one op, committed before its answer. Tables (``ranker.migrations``): ``signal_entities`` (current attributes,
each leaf's update time, a version raised by every change the entity's features could see),
``signal_entity_history`` (attributes as of each update, for point-in-time reads), ``signal_events`` (raw
events, one row per entity, keyed by the record's identity so redeliveries are ignored),
``signal_buckets`` and ``signal_distinct`` (see :mod:`ranker.signals.features`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from ..store import Store

# (entity type, entity id, event time ns, identity key, event name, attributes JSON)
EventRow = tuple[str, str, int, bytes, str, str]
# what new events add: (bucket rows, distinct rows) as ranker.signals.features.Buckets gives them
Fold = Callable[[list[EventRow]], tuple[list[tuple], list[tuple]]]

_BUCKET_UPSERT = (
    "INSERT INTO signal_buckets (type, entity_id, feature, day, count, total, low, high, newest, last_value) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (type, entity_id, day, feature) DO UPDATE SET "
    "count = count + excluded.count, total = total + excluded.total, "
    "low = coalesce(min(low, excluded.low), low, excluded.low), "
    "high = coalesce(max(high, excluded.high), high, excluded.high), "
    "last_value = CASE WHEN excluded.last_value IS NOT NULL AND (last_value IS NULL OR excluded.newest > newest "
    "OR (excluded.newest = newest AND excluded.last_value > last_value)) THEN excluded.last_value ELSE last_value END, "
    "newest = max(newest, excluded.newest)"
)
_EVENT_INSERT = (
    "INSERT OR IGNORE INTO signal_events (type, entity_id, at, key, name, attributes) VALUES (?, ?, ?, ?, ?, ?)"
)
_DISTINCT_INSERT = "INSERT OR IGNORE INTO signal_distinct (type, entity_id, feature, day, value) VALUES (?, ?, ?, ?, ?)"
_TOUCH = (
    "INSERT INTO signal_entities (type, id, attributes, times, version, updated_at) VALUES (?, ?, '{}', '{}', 1, ?) "
    "ON CONFLICT (type, id) DO UPDATE SET version = version + 1"
)


class SignalStore:
    """What ingestion, the entities API, enrichment and the ``ranker signals`` commands need of the database."""

    def __init__(self, store: Store):
        self.store = store

    # -- entities -------------------------------------------------------------------------------

    def upsert_entity(
        self,
        entity: str,
        entity_id: str,
        change: Callable[[dict[str, Any], dict[str, str]], tuple[dict[str, Any], dict[str, str]]],
        at: str,
    ) -> tuple[dict[str, Any], dict[str, str], bool]:
        """Apply ``change(attributes, times)`` to the entity's current attributes inside one transaction (so
        concurrent changes are not lost); keep the result, and a history row, when it differs. Returns
        (attributes, times, whether it changed)."""

        def run(conn: sqlite3.Connection):
            row = conn.execute(
                "SELECT attributes, times FROM signal_entities WHERE type = ? AND id = ?", (entity, entity_id)
            ).fetchone()
            before = (json.loads(row[0]), json.loads(row[1])) if row else ({}, {})
            attributes, times = change(*before)
            if row is not None and (attributes, times) == before:
                return attributes, times, False
            texts = (json.dumps(attributes), json.dumps(times))
            conn.execute(
                "INSERT INTO signal_entities (type, id, attributes, times, version, updated_at) "
                "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (type, id) DO UPDATE SET attributes = excluded.attributes, "
                "times = excluded.times, version = version + 1, updated_at = excluded.updated_at",
                (entity, entity_id, *texts, at),
            )
            conn.execute(
                "INSERT OR REPLACE INTO signal_entity_history (type, id, updated_at, attributes, times) "
                "VALUES (?, ?, ?, ?, ?)",
                (entity, entity_id, at, *texts),
            )
            return attributes, times, True

        return self.store.write(run)

    def entity(self, entity: str, entity_id: str, at: str | None = None) -> dict[str, Any] | None:
        """The entity's attributes and their times (JSON texts), now or as of ``at`` (an ISO time of the
        log's format); None when it has none and no events."""
        if at is None:
            rows = self.store.read(
                "SELECT attributes, times, version FROM signal_entities WHERE type = ? AND id = ?",
                (entity, entity_id),
            )
            return rows[0] if rows else None
        rows = self.store.read(
            "SELECT attributes, times FROM signal_entity_history WHERE type = ? AND id = ? AND updated_at <= ? "
            "ORDER BY updated_at DESC LIMIT 1",
            (entity, entity_id, at),
        )
        if rows:
            return rows[0]
        known = self.store.read("SELECT 1 FROM signal_entities WHERE type = ? AND id = ?", (entity, entity_id))
        return {"attributes": "{}", "times": "{}"} if known else None

    def entity_rows(self, keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Current rows (type, id, attributes, times, version) of several entities, in one indexed query."""
        where = " OR ".join(["(type = ? AND id = ?)"] * len(keys))
        params = tuple(part for key in keys for part in key)
        sql = f"SELECT type, id, attributes, times, version FROM signal_entities WHERE {where}"
        return self.store.read(sql, params)

    def delete_entity(self, entity: str, entity_id: str) -> bool:
        """Forget the entity: attributes, history, events and buckets. False when there was nothing."""

        def run(conn: sqlite3.Connection) -> bool:
            found = False
            for table, column in (
                ("signal_entities", "id"),
                ("signal_entity_history", "id"),
                ("signal_events", "entity_id"),
                ("signal_buckets", "entity_id"),
                ("signal_distinct", "entity_id"),
            ):
                sql = f"DELETE FROM {table} WHERE type = ? AND {column} = ?"
                found = conn.execute(sql, (entity, entity_id)).rowcount > 0 or found
            return found

        return self.store.write(run)

    # -- events ---------------------------------------------------------------------------------

    def record_events(self, events: list[EventRow], fold: Fold, at: str) -> int:
        """Keep the events not seen before (by entity and identity) and add them to the buckets, in one
        commit; return how many were new. Redeliveries and duplicates within the batch count once."""

        def run(conn: sqlite3.Connection) -> int:
            insert = conn.execute
            sql = _EVENT_INSERT
            new = [event for event in events if insert(sql, event).rowcount == 1]
            if not new:
                return 0
            buckets, distinct = fold(new)
            conn.executemany(_BUCKET_UPSERT, buckets)
            if distinct:
                conn.executemany(_DISTINCT_INSERT, distinct)
            conn.executemany(_TOUCH, [(entity, entity_id, at) for entity, entity_id in {e[:2] for e in new}])
            return len(new)

        return self.store.write(run)

    def buckets(self, entity: str, entity_id: str, first_day: int) -> tuple[list[tuple], list[tuple]]:
        """The entity's bucket rows ``(feature, day, count, total, low, high, newest, last_value)`` and distinct
        rows ``(feature, day, value)`` from ``first_day`` on."""
        params = (entity, entity_id, first_day)
        rows = self.store.read(
            "SELECT feature, day, count, total, low, high, newest, last_value FROM signal_buckets "
            "WHERE type = ? AND entity_id = ? AND day >= ?",
            params,
        )
        distinct = self.store.read(
            "SELECT feature, day, value FROM signal_distinct WHERE type = ? AND entity_id = ? AND day >= ?", params
        )
        return [tuple(r.values()) for r in rows], [tuple(r.values()) for r in distinct]

    def events(self, entity: str, entity_id: str, since_ns: int, until_ns: int) -> list[EventRow]:
        """The entity's raw events in ``[since_ns, until_ns]``, oldest first."""
        rows = self.store.read(
            "SELECT type, entity_id, at, key, name, attributes FROM signal_events "
            "WHERE type = ? AND entity_id = ? AND at >= ? AND at <= ? ORDER BY at",
            (entity, entity_id, since_ns, until_ns),
        )
        return [tuple(r.values()) for r in rows]

    def counts(self) -> dict[str, int]:
        return self.store.read(
            "SELECT (SELECT count(*) FROM signal_entities) AS entities, (SELECT count(*) FROM signal_events) AS events"
        )[0]

    # -- maintenance ----------------------------------------------------------------------------

    def rebuild(self, fold: Fold, at: str, chunk: int = 20_000) -> int:
        """Recompute every bucket from the raw events (after feature definitions changed), in one commit;
        return the number of events read."""

        def run(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM signal_buckets")
            conn.execute("DELETE FROM signal_distinct")
            cursor = conn.execute("SELECT type, entity_id, at, key, name, attributes FROM signal_events")
            total = 0
            while rows := cursor.fetchmany(chunk):
                total += len(rows)
                buckets, distinct = fold(rows)
                conn.executemany(_BUCKET_UPSERT, buckets)
                conn.executemany(_DISTINCT_INSERT, distinct)
            conn.execute("UPDATE signal_entities SET version = version + 1")
            return total

        return self.store.write(run)

    def prune(self, before_ns: int, before_day: int, before: str) -> dict[str, int]:
        """Delete events, buckets and attribute history older than the retention (the latest history row of
        each entity stays: it is the attributes as of any later time)."""

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            return {
                "events": conn.execute("DELETE FROM signal_events WHERE at < ?", (before_ns,)).rowcount,
                "buckets": conn.execute("DELETE FROM signal_buckets WHERE day < ?", (before_day,)).rowcount
                + conn.execute("DELETE FROM signal_distinct WHERE day < ?", (before_day,)).rowcount,
                "history": conn.execute(
                    "DELETE FROM signal_entity_history AS h WHERE updated_at < ? AND EXISTS (SELECT 1 FROM "
                    "signal_entity_history n WHERE n.type = h.type AND n.id = h.id AND n.updated_at > h.updated_at "
                    "AND n.updated_at <= ?)",
                    (before, before),
                ).rowcount,
            }

        return self.store.write(run)
