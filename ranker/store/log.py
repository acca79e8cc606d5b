"""Reading the decision log in order (the trainer's join, export, replay) and writing an imported one.

These work on an open connection of their caller's (a trainer's, an export's), not through the group commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from .sqlite import transaction

UNIQUE_EVENT_ID = "idx_decisions_loop_event_id"  # the index's name on PostgreSQL


def decision_batches(
    conn: sqlite3.Connection,
    loop: str,
    *,
    after_id: int = 0,
    through_id: int | None = None,
    start: str | None = None,
    end: str | None = None,
    batch: int = 1000,
) -> Iterator[tuple[list[tuple], dict[int, list[tuple[float, str, str | None]]]]]:
    """The loop's decisions with ``after_id < id <= through_id`` and ``start <= created_at < end``, in id order,
    ``batch`` at a time: ``(rows, rewards)`` with rows ``(id, created_at, record, deferred, activated_at,
    learning_mode)`` and each decision's rewards ``(value, received_at, slot_id)`` in the order received."""
    where, params = ["loop = ?"], [loop]
    for condition, value in (("id <= ?", through_id), ("created_at >= ?", start), ("created_at < ?", end)):
        if value is not None:
            where.append(condition)
            params.append(value)
    sql = (
        "SELECT id, created_at, record, deferred, activated_at, learning_mode FROM decisions "
        f"WHERE {' AND '.join(where)} AND id > ? ORDER BY id LIMIT ?"
    )
    while True:
        rows = conn.execute(sql, (*params, after_id, batch)).fetchall()
        if not rows:
            return
        rewards: dict[int, list[tuple[float, str, str | None]]] = {}
        for decision_id, value, received_at, slot_id in conn.execute(
            "SELECT decision_id, value, received_at, slot_id FROM rewards WHERE decision_id >= ? AND decision_id <= ? "
            "ORDER BY decision_id, received_at, id",
            (rows[0][0], rows[-1][0]),
        ):
            rewards.setdefault(decision_id, []).append((value, received_at, slot_id))
        yield rows, rewards
        if len(rows) < batch:
            return
        after_id = rows[-1][0]


def count_decisions(conn: sqlite3.Connection, loop: str, start: str | None = None, end: str | None = None) -> int:
    """How many decisions the loop logged with ``start <= created_at < end``."""
    sql, params = "SELECT count(*) FROM decisions WHERE loop = ?", [loop]
    for condition, moment in (("created_at >= ?", start), ("created_at < ?", end)):
        if moment is not None:
            sql += f" AND {condition}"
            params.append(moment)
    return conn.execute(sql, params).fetchone()[0]


def import_decisions(
    conn: sqlite3.Connection, database: Any, loop: str, rows: Sequence[tuple[int, dict[str, Any], float | None]]
) -> tuple[int, list[tuple[int, str]]]:
    """Write imported decisions (each with its reward, if any) in one transaction, in the log's write turn (the
    service's writers wait on it instead of retrying in SQLite's busy handler); ``database`` is the
    :func:`~ranker.store.open_database` ``conn`` belongs to. Each row goes in under a
    savepoint of its own, so one that is refused (its event id taken) leaves nothing behind.

    ``rows`` are ``(line number, row, reward)``: the row as :func:`ranker.store.decisions.decision_row` builds
    it, the reward None or a value received at the decision's time; returns how many were written and
    ``(line number, reason)`` for the others."""
    written, errors = 0, []
    with database.write_turn(), transaction(conn):
        for number, row, reward in rows:
            conn.execute("SAVEPOINT line")
            try:
                decision_id = conn.execute(
                    f"INSERT INTO decisions (loop, {', '.join(row)}) VALUES (?{', ?' * len(row)})",
                    (loop, *row.values()),
                ).lastrowid
                if reward is not None:
                    conn.execute(
                        "INSERT INTO rewards (decision_id, value, received_at) VALUES (?, ?, ?)",
                        (decision_id, reward, row["created_at"]),
                    )
            except conn.IntegrityError as exc:  # the engine's (DB-API's connection attribute)
                conn.execute("ROLLBACK TO line")
                conn.execute("RELEASE line")
                duplicate = any(name in str(exc) for name in ("decisions.loop, decisions.event_id", UNIQUE_EVENT_ID))
                errors.append(
                    (number, f"EventId {row['event_id']!r} is already in loop {loop!r}" if duplicate else str(exc))
                )
                continue
            conn.execute("RELEASE line")
            written += 1
    return written, errors
