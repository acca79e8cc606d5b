"""The signals' storage interface: entities, deduplicated events, time buckets. The only SQL of signals.

Writes go through the decision log's group commit (:meth:`ranker.store.Store.write`): an ingested batch is
one op, committed before its answer. Tables (``ranker.migrations``): ``signal_entities`` (current attributes,
each leaf's update time, a version raised by every change the entity's features could see),
``signal_entity_history`` (attributes as of each update, for point-in-time reads), ``signal_versions`` (a
version per entity, raised by every change), ``signal_events`` (raw events, one row per log record naming its
account and user, unique by the record's identity so redeliveries are ignored),
``signal_buckets`` and ``signal_distinct`` (see :mod:`ranker.signals.features`).

On PostgreSQL an ingested batch commits without the write turn (which only orders decision ids), in a
transaction of its own, so several processes' batches go in at once and the database uses more than one CPU
(``Store.write(..., concurrent=True)``). What keeps that safe: ingestion holds an advisory lock shared
(``SIGNALS_SHARED``) and every other write of these tables takes it exclusively before its first statement
(``SIGNALS_EXCLUSIVE``: entity changes, deletion, rebuild, prune see no ingestion half done, and keep their
read-then-write one at a time); and every ingestion takes its rows' locks in one order (events, buckets,
distinct values, versions; each table's rows sorted), so no two writers wait on each other in a cycle. A
record delivered twice at once is still stored once: the second insert waits for the first's commit.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from .sqlite import Store

# (identity key, event time ns, event name, account id or None, user id or None, attributes JSON)
EventRow = tuple[bytes, int, str, str | None, str | None, str]
# the events column holding each entity type's id (a fixed mapping: these names go into SQL text)
ID_COLUMN = {"account": "account", "user": "user"}
# what new events add: (bucket rows, distinct rows) as ranker.signals.features.Buckets gives them
Fold = Callable[[list[EventRow]], tuple[list[tuple], list[tuple]]]

_BUCKET_HEAD = (
    "INSERT INTO signal_buckets (type, entity_id, feature, day, count, total, low, high, newest, last_value) "
)
_BUCKET_TAIL = (
    " ON CONFLICT (type, entity_id, day, feature) DO UPDATE SET "
    # the stored row's columns named with their table: bare, PostgreSQL finds them ambiguous with excluded's
    "count = b.count + excluded.count, total = b.total + excluded.total, "
    "low = coalesce(min(b.low, excluded.low), b.low, excluded.low), "
    "high = coalesce(max(b.high, excluded.high), b.high, excluded.high), "
    "last_value = CASE WHEN excluded.last_value IS NOT NULL AND (b.last_value IS NULL OR excluded.newest > b.newest "
    "OR (excluded.newest = b.newest AND excluded.last_value > b.last_value)) THEN excluded.last_value "
    "ELSE b.last_value END, newest = max(b.newest, excluded.newest)"
).replace("b.", "signal_buckets.")
_EVENT_HEAD = "INSERT OR IGNORE INTO signal_events (key, at, name, account, user, attributes) "
_EVENT_INSERT = _EVENT_HEAD + "VALUES (?, ?, ?, ?, ?, ?)"
_EVENT_COLUMNS = "key, at, name, account, user, attributes"
_DISTINCT_HEAD = "INSERT OR IGNORE INTO signal_distinct (type, entity_id, feature, day, value) "
_TOUCH_HEAD = "INSERT INTO signal_versions (type, id, version) "
_TOUCH_TAIL = " ON CONFLICT (type, id) DO UPDATE SET version = signal_versions.version + 1"
_TOUCH = _TOUCH_HEAD + "VALUES (?, ?, 1)" + _TOUCH_TAIL
# PostgreSQL: ingestion commits without the write turn, concurrently (PostgresStore._write_loop), holding this
# advisory lock shared; every other write of these tables takes it exclusively before its first statement.
SIGNALS_LOCK = 0x72616E6B65720006
SIGNALS_SHARED = f"SELECT pg_advisory_xact_lock_shared({SIGNALS_LOCK})"
SIGNALS_EXCLUSIVE = {"sqlite": None, "postgresql": f"SELECT pg_advisory_xact_lock({SIGNALS_LOCK})"}
# Rows per multi-row statement, largest first: a batch goes out in a few statements of these sizes, each
# prepared once per connection (SQLite's statement cache) rather than one statement per row size.
_CHUNKS = (256, 64, 16, 4, 1)


def _bucket_order(row: tuple) -> tuple:
    return row[0], row[1], row[3], row[2]  # the primary key's order: type, entity_id, day, feature


def _distinct_order(row: tuple) -> tuple:
    return row[0], row[1], row[3], row[2], row[4]  # type, entity_id, day, feature, value


@functools.lru_cache(maxsize=64)
def _statement(head: str, tail: str, rows: int, width: int, constant: str = "") -> str:
    row = "(" + ", ".join(["?"] * width) + constant + ")"
    return head + "VALUES " + ", ".join([row] * rows) + tail


def insert_rows(conn, head: str, rows: Sequence[tuple], tail: str = "", constant: str = "") -> None:
    """Insert ``rows`` with a few multi-row statements instead of one per row: each statement lets the writer
    thread drop the GIL, and getting it back from busy request threads can take a switch interval (see
    :func:`ranker.store.sqlite._run_merged`). ``constant``: SQL text appended to every row's values.

    On PostgreSQL all rows go in one statement, as literals (:meth:`ranker.store.pgsql.Connection.
    insert_literals`): binding a thousand parameters cost the writer more CPU than the database spent on the
    rows; a value with no literal there is bound as below."""
    if not rows:
        return
    literal = getattr(conn, "insert_literals", None)
    if literal is not None and literal(head, rows, tail, constant) is not None:
        return
    width = len(rows[0])
    i, n = 0, len(rows)
    for size in _CHUNKS:
        while n - i >= size:
            params = [value for row in rows[i : i + size] for value in row]
            conn.execute(_statement(head, tail, size, width, constant), params)
            i += size


# The batched reads' wants as a table j(key, value), per engine (see SignalStore's point-in-time reads).
WANTS = {
    "sqlite": "json_each(?) j",
    "postgresql": "(SELECT value, n - 1 AS key FROM jsonb_array_elements(?::jsonb) WITH ORDINALITY AS e(value, n)) j",
}
# Attributes as of each want's time: the latest history row at or before it. SQLite finds it by the time's
# max in a correlated subquery; PostgreSQL walks the primary key backwards from the time, once per want.
AS_OF = {
    "sqlite": (
        f"SELECT j.key AS i, h.attributes, h.times FROM {WANTS['sqlite']} CROSS JOIN signal_entity_history h "
        "WHERE h.type = ?2 AND h.id = j.value ->> 0 AND h.updated_at = (SELECT max(updated_at) FROM "
        "signal_entity_history WHERE type = ?2 AND id = j.value ->> 0 AND updated_at <= j.value ->> 1)"
    ),
    "postgresql": (
        f"SELECT j.key AS i, h.attributes, h.times FROM {WANTS['postgresql']} CROSS JOIN LATERAL (SELECT attributes, "
        "times FROM signal_entity_history WHERE type = ? AND id = j.value ->> 0 AND updated_at <= j.value ->> 1 "
        "ORDER BY updated_at DESC LIMIT 1) h"
    ),
}


class OutOfOrder(ValueError):
    """A change dated before the entity's latest change: history is appended in time order."""


def _inserted_all(conn, events: list[EventRow]) -> bool:
    """Insert the events (ignoring the ones stored before); whether every one of them went in."""
    before = conn.total_changes
    insert_rows(conn, _EVENT_HEAD, events)
    return conn.total_changes - before == len(events)


def _unseen(conn, events: list[EventRow]) -> list[EventRow]:
    """The events whose identity is not stored yet, each identity once, in their order."""
    keys = [event[0] for event in events]
    seen = set()
    for i in range(0, len(keys), 500):
        part = keys[i : i + 500]
        sql = f"SELECT key FROM signal_events WHERE key IN ({', '.join('?' * len(part))})"
        seen.update(bytes(row[0]) for row in conn.execute(sql, part).fetchall())
    unseen = []
    for event in events:
        if event[0] not in seen:
            seen.add(event[0])
            unseen.append(event)
    return unseen


class SignalStore:
    """What ingestion, the entities API, enrichment and the ``ranker signals`` commands need of the database."""

    def __init__(self, store: Store):
        self.store = store

    def _exclusive(self, conn) -> None:
        """Before a write of the signals' tables other than ingestion: wait for the ingestions committing
        concurrently (PostgreSQL), and keep new ones out until this transaction ends."""
        sql = SIGNALS_EXCLUSIVE[self.store.engine]
        if sql:
            conn.execute(sql)

    # -- entities -------------------------------------------------------------------------------

    def upsert_entity(
        self,
        entity: str,
        entity_id: str,
        change: Callable[[dict[str, Any], dict[str, str]], tuple[dict[str, Any], dict[str, str]]],
        at: str,
        in_order: bool = False,
    ) -> tuple[dict[str, Any], dict[str, str], bool]:
        """Apply ``change(attributes, times)`` to the entity's current attributes inside one transaction (so
        concurrent changes are not lost); keep the result, and a history row, when it differs. Returns
        (attributes, times, whether it changed). ``in_order``: :class:`OutOfOrder` (nothing written) when
        ``at`` is before the entity's latest change (a dated change, importing history, must come in order)."""

        def run(conn: sqlite3.Connection):
            self._exclusive(conn)
            row = conn.execute(
                "SELECT attributes, times, updated_at FROM signal_entities WHERE type = ? AND id = ?",
                (entity, entity_id),
            ).fetchone()
            if in_order and row is not None and at < row[2]:
                raise OutOfOrder(
                    f"the change is dated {at}, before the entity's latest change ({row[2]}): "
                    "dated changes must come in time order"
                )
            before = (json.loads(row[0]), json.loads(row[1])) if row else ({}, {})
            attributes, times = change(*before)
            if row is not None and (attributes, times) == before:
                return attributes, times, False
            texts = (json.dumps(attributes), json.dumps(times))
            conn.execute(
                "INSERT INTO signal_entities (type, id, attributes, times, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (type, id) DO UPDATE SET attributes = excluded.attributes, times = excluded.times, "
                "updated_at = excluded.updated_at",
                (entity, entity_id, *texts, at),
            )
            conn.execute(_TOUCH, (entity, entity_id))
            conn.execute(
                "INSERT INTO signal_entity_history (type, id, updated_at, attributes, times) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (type, id, updated_at) DO UPDATE SET attributes = excluded.attributes, "
                "times = excluded.times",
                (entity, entity_id, at, *texts),
            )
            return attributes, times, True

        return self.store.write(run)

    def entity(self, entity: str, entity_id: str, at: str | None = None) -> dict[str, Any] | None:
        """The entity's attributes and their times (JSON texts), now or as of ``at`` (an ISO time of the
        log's format); None when it has none and no events."""
        if at is None:
            rows = self.store.read(
                "SELECT coalesce(e.attributes, '{}') AS attributes, coalesce(e.times, '{}') AS times, v.version "
                "FROM signal_versions v LEFT JOIN signal_entities e ON e.type = v.type AND e.id = v.id "
                "WHERE v.type = ? AND v.id = ?",
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
        known = self.store.read("SELECT 1 FROM signal_versions WHERE type = ? AND id = ?", (entity, entity_id))
        return {"attributes": "{}", "times": "{}"} if known else None

    # -- point-in-time reads of many entities (pattern mining, triage) ---------------------------
    # Each takes a list of wants and answers rows tagged with the want's index, in one query: the wants
    # travel as one JSON parameter (a list of arrays), so 10,000 entities cost one statement, not 10,000.
    # The wants as a table ``j(key, value)`` (key: the want's index from 0, value: its JSON array) is what the
    # engines spell differently (WANTS, switched by the store's engine), and the attributes' read (AS_OF).
    # CROSS JOIN keeps the wants the outer loop (SQLite's planner otherwise scans the big table and probes
    # them); the wants' numbers are CAST, as PostgreSQL's ->> answers text.

    def ids_known(self, entity: str, at: str, first_ns: int, at_ns: int) -> list[str]:
        """Ids of the entities of a type with attributes as of ``at`` or an event in ``[first_ns, at_ns]``."""
        column = ID_COLUMN[entity]
        rows = self.store.read(
            "SELECT id FROM signal_entity_history WHERE type = ? AND updated_at <= ? UNION "
            f"SELECT {column} FROM signal_events WHERE {column} IS NOT NULL AND at >= ? AND at <= ? ORDER BY 1",
            (entity, at, first_ns, at_ns),
        )
        return [row["id"] for row in rows]

    def attributes_as_of(self, entity: str, wants: list[tuple[str, str]]) -> dict[int, tuple[str, str]]:
        """For wants ``(id, ISO time)``: want index -> (attributes, times) JSON texts of the entity's latest
        history row at or before that time (wants with none are left out)."""
        rows = self.store.read(AS_OF[self.store.engine], (json.dumps(wants), entity))
        return {row["i"]: (row["attributes"], row["times"]) for row in rows}

    def window_totals(
        self, entity: str, wants: list[tuple[str, int]], bounds: list[int], raw: list[str]
    ) -> tuple[list[tuple], list[tuple], list[tuple]]:
        """The buckets of the days before each want's day, added up by age segment in SQL (so a point-in-time
        read of thousands of entities moves one row per feature and segment, not one per day).

        ``wants``: ``(id, day)``; ``bounds``: ascending ages in days that end segments (a day ``age`` days
        before the want's day, 1 <= age < bounds[-1], is in the first segment whose bound exceeds ``age``).
        Returns totals ``(want index, feature, segment, count, total, low, high, newest)``, distinct values
        ``(want index, feature, segment, value)``, and for the features in ``raw`` (those whose value is the
        newest event's, ``last``) their day rows ``(want index, feature, day, count, total, low, high, newest,
        last_value)``."""
        wanted = WANTS[self.store.engine]
        # the wants as plain columns first: a JSON path read per bucket row would cost more than the row
        wants_cte = (
            "WITH w(i, id, day) AS MATERIALIZED (SELECT j.key, j.value ->> 0, CAST(j.value ->> 1 AS INTEGER) "
            f"FROM {wanted}) "
        )
        cases = " ".join(f"WHEN w.day - b.day < {int(bound)} THEN {i}" for i, bound in enumerate(bounds))
        days = (
            "FROM w CROSS JOIN {table} b WHERE b.type = ? AND b.entity_id = w.id AND b.day < w.day "
            "AND b.day > w.day - ?"
        )
        params = (json.dumps(wants), entity, int(bounds[-1]))
        totals = self.store.read_rows(
            f"{wants_cte}SELECT w.i, b.feature, CASE {cases} END AS segment, CAST(sum(b.count) AS BIGINT), "
            "sum(b.total), min(b.low), max(b.high), max(b.newest) "
            + days.format(table="signal_buckets")
            + " GROUP BY 1, 2, 3",
            params,
        )
        distinct = self.store.read_rows(
            f"{wants_cte}SELECT DISTINCT w.i, b.feature, CASE {cases} END AS segment, b.value "
            + days.format(table="signal_distinct"),
            params,
        )
        rows = []
        if raw:
            rows = self.store.read_rows(
                f"{wants_cte}SELECT w.i, b.feature, b.day, b.count, b.total, b.low, b.high, b.newest, b.last_value "
                + days.format(table="signal_buckets")
                + f" AND b.feature IN (SELECT j.value ->> 0 FROM {wanted})",
                (*params, json.dumps([[name] for name in raw])),
            )
        return totals, distinct, rows

    def events_between(self, entity: str, wants: list[tuple[str, int, int]]) -> list[tuple]:
        """For wants ``(id, first ns, last ns)``: ``(want index, *event row)`` of the entity's raw events in
        that range, oldest first."""
        column = ID_COLUMN[entity]
        return self.store.read_rows(
            f"SELECT j.key AS i, e.key, e.at, e.name, e.account, e.user, e.attributes FROM {WANTS[self.store.engine]} "
            f"CROSS JOIN signal_events e WHERE e.{column} = j.value ->> 0 AND e.at >= CAST(j.value ->> 1 AS BIGINT) "
            "AND e.at <= CAST(j.value ->> 2 AS BIGINT) ORDER BY j.key, e.at",
            (json.dumps(wants),),
        )

    def history(self, entity: str, ids: list[str] | None = None) -> list[dict[str, Any]]:
        """The attribute history ``(id, updated_at, attributes, times)`` of the type's entities (or of
        ``ids``), each entity's rows oldest first."""
        if ids is None:
            return self.store.read(
                "SELECT id, updated_at, attributes, times FROM signal_entity_history WHERE type = ? "
                "ORDER BY id, updated_at",
                (entity,),
            )
        return self.store.read(
            f"SELECT h.id, h.updated_at, h.attributes, h.times FROM {WANTS[self.store.engine]} "
            "CROSS JOIN signal_entity_history h WHERE h.type = ? AND h.id = j.value ->> 0 ORDER BY h.id, h.updated_at",
            (json.dumps([[entity_id] for entity_id in ids]), entity),
        )

    def versions(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The versions of several entities (the known ones), in one indexed query."""
        # one primary-key search per entity (an OR of the pairs plans a costlier multi-index search)
        one = "SELECT type, id, version FROM signal_versions WHERE type = ? AND id = ?"
        params = tuple(part for key in keys for part in key)
        rows = self.store.read(" UNION ALL ".join([one] * len(keys)), params)
        return {(row["type"], row["id"]): row["version"] for row in rows}

    def delete_entity(self, entity: str, entity_id: str) -> bool:
        """Forget the entity: attributes, history, buckets, and its id in events (an event of an account and a
        user stays the other's). False when there was nothing."""
        column = ID_COLUMN[entity]

        def run(conn: sqlite3.Connection) -> bool:
            self._exclusive(conn)
            found = False
            for table, id_column in (
                ("signal_versions", "id"),
                ("signal_entities", "id"),
                ("signal_entity_history", "id"),
                ("signal_buckets", "entity_id"),
                ("signal_distinct", "entity_id"),
            ):
                sql = f"DELETE FROM {table} WHERE type = ? AND {id_column} = ?"
                found = conn.execute(sql, (entity, entity_id)).rowcount > 0 or found
            found = (
                conn.execute(f"UPDATE signal_events SET {column} = NULL WHERE {column} = ?", (entity_id,)).rowcount > 0
                or found
            )
            conn.execute("DELETE FROM signal_events WHERE account IS NULL AND user IS NULL")
            return found

        return self.store.write(run)

    # -- events ---------------------------------------------------------------------------------

    def record_events(self, events: list[EventRow], fold: Fold) -> int:
        """Keep the events not seen before (by identity) and add them to the buckets, in one commit; return
        how many were new. Redeliveries and duplicates within the batch count once."""

        # What they add if all are new (the usual case), worked out before the write turn: the writer thread
        # holds the lock all processes take turns on, so it should run SQL only.
        all_new = fold(events)
        # In index order, so consecutive rows mostly land on the page the last one did
        events = sorted(events)
        # (and each table's rows in one order: on PostgreSQL, concurrent ingestions lock rows in the same order)
        all_new = (sorted(all_new[0], key=_bucket_order), sorted(all_new[1], key=_distinct_order))

        def run(conn: sqlite3.Connection) -> int:
            # Usually every event is new: one statement for all. When some were seen before (a redelivery),
            # one read of which are stored and one insert of the others; one by one only when that insert did
            # not take them all either (another writer stored some meanwhile).
            conn.execute("SAVEPOINT events")
            new = events if _inserted_all(conn, events) else None
            if new is None:
                conn.execute("ROLLBACK TO events")
                new = _unseen(conn, events)
                if not _inserted_all(conn, new):
                    conn.execute("ROLLBACK TO events")
                    new = [event for event in events if conn.execute(_EVENT_INSERT, event).rowcount == 1]
            conn.execute("RELEASE events")
            if not new:
                return 0
            if new is events:
                buckets, distinct = all_new
            else:
                buckets, distinct = fold(new)
                buckets, distinct = sorted(buckets, key=_bucket_order), sorted(distinct, key=_distinct_order)
            insert_rows(conn, _BUCKET_HEAD, buckets, _BUCKET_TAIL)
            insert_rows(conn, _DISTINCT_HEAD, distinct)
            touched = {("account", e[3]) for e in new if e[3] is not None} | {("user", e[4]) for e in new if e[4]}
            insert_rows(conn, _TOUCH_HEAD, sorted(touched), _TOUCH_TAIL, ", 1")
            return len(new)

        return self.store.write(run, concurrent=True)

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
        column = ID_COLUMN[entity]
        rows = self.store.read(
            f"SELECT {_EVENT_COLUMNS} FROM signal_events WHERE {column} = ? AND at >= ? AND at <= ? ORDER BY at",
            (entity_id, since_ns, until_ns),
        )
        return [tuple(r.values()) for r in rows]

    def counts(self) -> dict[str, int]:
        return self.store.read(
            "SELECT (SELECT count(*) FROM signal_versions) AS entities, (SELECT count(*) FROM signal_events) AS events"
        )[0]

    # -- maintenance ----------------------------------------------------------------------------

    def rebuild(self, fold: Fold, chunk: int = 20_000) -> int:
        """Recompute every bucket from the raw events (after feature definitions changed), in one commit;
        return the number of events read."""

        def run(conn: sqlite3.Connection) -> int:
            self._exclusive(conn)
            conn.execute("DELETE FROM signal_buckets")
            conn.execute("DELETE FROM signal_distinct")
            cursor = conn.execute(f"SELECT {_EVENT_COLUMNS} FROM signal_events")
            total = 0
            while rows := cursor.fetchmany(chunk):
                total += len(rows)
                buckets, distinct = fold(rows)
                insert_rows(conn, _BUCKET_HEAD, buckets, _BUCKET_TAIL)
                insert_rows(conn, _DISTINCT_HEAD, distinct)
            conn.execute("UPDATE signal_versions SET version = version + 1")
            return total

        return self.store.write(run)

    def prune(self, before_ns: int, before_day: int, before: str) -> dict[str, int]:
        """Delete events, buckets and attribute history older than the retention (the latest history row of
        each entity stays: it is the attributes as of any later time). Events are found by a scan: this is
        maintenance, and an index on their time would cost every ingestion."""

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            self._exclusive(conn)
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
