"""The trainer's part of the store: its checkpoint per loop, publications, retention and mode switches.

The trainer is one process with one connection of its own (SQLite in autocommit mode); each function is one
statement or one transaction on it. The checkpoint's exactly-once rule lives in :func:`save_checkpoint`: the
UPDATE applies only when the stored checkpoint is still the one the trainer's workspace started from.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from .decisions import save_loop_config
from .sqlite import transaction

_STATE_COLUMNS = (
    "loop, settings, last_decision_id, length(model) AS model_bytes, learned, skipped, updated_at, "
    "published_version, published_learned, published_at, apprentice"
)


def state(conn: sqlite3.Connection, loop: str) -> dict[str, Any] | None:
    """The stored checkpoint of a loop, without the model bytes (with their size)."""
    cursor = conn.execute(f"SELECT {_STATE_COLUMNS} FROM trainer_state WHERE loop = ?", (loop,))
    row = cursor.fetchone()
    return None if row is None else dict(zip([d[0] for d in cursor.description], row, strict=True))


def model(conn: sqlite3.Connection, loop: str) -> bytes | None:
    """The checkpointed model bytes of a loop (None before anything was learned)."""
    row = conn.execute("SELECT model FROM trainer_state WHERE loop = ?", (loop,)).fetchone()
    return None if row is None else row[0]


def stamp(conn: sqlite3.Connection, loop: str) -> tuple | None:
    """``(settings, last_decision_id, learned, generation)`` of the stored checkpoint: changed, it is stale."""
    return conn.execute(
        "SELECT settings, last_decision_id, learned, generation FROM trainer_state WHERE loop = ?", (loop,)
    ).fetchone()


def open_checkpoint(conn: sqlite3.Connection, loop: str, fingerprint: str, now: str) -> tuple:
    """The loop's checkpoint, created empty for these learning settings when there is none: ``(settings,
    last_decision_id, model, learned, skipped, published_learned, published_at, generation, apprentice)``."""
    conn.execute(
        "INSERT OR IGNORE INTO trainer_state (loop, settings, updated_at) VALUES (?, ?, ?)", (loop, fingerprint, now)
    )
    return conn.execute(
        "SELECT settings, last_decision_id, model, learned, skipped, published_learned, published_at, "
        "generation, apprentice FROM trainer_state WHERE loop = ?",
        (loop,),
    ).fetchone()


def restart(conn: sqlite3.Connection, loop: str, fingerprint: str, now: str) -> None:
    """Start the loop's learning over with new settings: no model, nothing learned, from the first decision."""
    conn.execute(
        "UPDATE trainer_state SET settings = ?, last_decision_id = 0, model = NULL, learned = 0, "
        "skipped = 0, published_learned = 0, apprentice = NULL, updated_at = ? WHERE loop = ?",
        (fingerprint, now, loop),
    )


def save_checkpoint(
    conn: sqlite3.Connection,
    loop: str,
    *,
    fingerprint: str,
    from_id: int,
    generation: int,
    last_id: int,
    model: bytes,
    learned: int,
    skipped: int,
    apprentice: str,
    now: str,
) -> bool:
    """Store the model with the last decision handled, in one statement; False (nothing written) unless the
    stored checkpoint is the one the trainer started from (same settings, ``from_id`` and generation)."""
    cursor = conn.execute(
        "UPDATE trainer_state SET last_decision_id = ?, model = ?, learned = ?, skipped = ?, apprentice = ?, "
        "updated_at = ? WHERE loop = ? AND settings = ? AND last_decision_id = ? AND generation = ?",
        (last_id, model, learned, skipped, apprentice, now, loop, fingerprint, from_id, generation),
    )
    return cursor.rowcount == 1


def generation(conn: sqlite3.Connection, loop: str) -> int:
    """How many times the loop's model was imported or reset (a publication checks it has not moved)."""
    return conn.execute("SELECT generation FROM trainer_state WHERE loop = ?", (loop,)).fetchone()[0]


def record_publication(conn: sqlite3.Connection, loop: str, version: str, learned: int, at: str) -> None:
    conn.execute(
        "UPDATE trainer_state SET published_version = ?, published_learned = ?, published_at = ? WHERE loop = ?",
        (version, learned, at, loop),
    )


def decision_times(conn: sqlite3.Connection, loop: str, after_id: int, limit: int) -> Iterator[tuple[int, str]]:
    """``(id, created_at)`` of the loop's decisions after ``after_id`` in id order, read row by row (a caller
    that stops early reads no further)."""
    cursor = conn.execute(
        "SELECT id, created_at FROM decisions WHERE loop = ? AND id > ? ORDER BY id LIMIT ?", (loop, after_id, limit)
    )
    try:
        yield from cursor
    finally:
        cursor.close()


def delete_older(conn: sqlite3.Connection, loop: str, before: str, through_id: int) -> int:
    """Delete the loop's decisions made before ``before`` with ids up to ``through_id``, and their rewards, in
    one transaction; how many decisions went."""
    where, params = "loop = ? AND created_at < ? AND id <= ?", (loop, before, through_id)
    with transaction(conn):
        conn.execute(f"DELETE FROM rewards WHERE decision_id IN (SELECT id FROM decisions WHERE {where})", params)
        return conn.execute(f"DELETE FROM decisions WHERE {where}", params).rowcount


def switch_mode(
    conn: sqlite3.Connection,
    loop: str,
    *,
    service: str,
    policy: str | None,
    at: str,
    from_mode: str,
    to_mode: str,
    evidence: str,
) -> None:
    """Store the loop's new service configuration and the switch with its evidence, in one transaction."""
    with transaction(conn):
        save_loop_config(conn, loop, service, policy, at)
        conn.execute(
            "INSERT INTO mode_switches (loop, switched_at, from_mode, to_mode, evidence) VALUES (?, ?, ?, ?, ?)",
            (loop, at, from_mode, to_mode, evidence),
        )


def served_versions(conn: sqlite3.Connection, loop: str, since: str) -> set[str]:
    """The model versions that served the loop's decisions from ``since`` on (kept for explanations)."""
    rows = conn.execute(
        "SELECT DISTINCT model_version FROM decisions WHERE loop = ? AND created_at >= ?", (loop, since)
    ).fetchall()
    return {version for (version,) in rows if version is not None}
