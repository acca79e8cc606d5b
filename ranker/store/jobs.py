"""The queue of evaluation and feature-importance jobs (table ``jobs``).

The API's side goes through the service's :class:`~ranker.store.sqlite.Store` (group commit); the runner's side
works on the trainer's own connection: claim the oldest pending job, record its result, requeue what a stopped
process left running.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .sqlite import Store


def create(store: Store, loop: str, kind: str, job_id: str, request: str, status: str, at: str) -> bool:
    """Queue a job; False when the loop has a job of this kind and id already."""
    values = (loop, kind, job_id, request, status, at, at)
    sql = (
        "INSERT OR IGNORE INTO jobs (loop, kind, id, request, status, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    return bool(store.write(lambda conn: conn.execute(sql, values).rowcount))


def get(store: Store, loop: str, kind: str, job_id: str) -> dict[str, Any] | None:
    rows = store.read("SELECT * FROM jobs WHERE loop = ? AND kind = ? AND id = ?", (loop, kind, job_id))
    return rows[0] if rows else None


def page(store: Store, loop: str, kind: str, top: int, skip: int) -> list[dict[str, Any]]:
    """The loop's jobs of a kind, oldest first: ``top`` of them (-1: all) after the first ``skip``."""
    sql = "SELECT * FROM jobs WHERE loop = ? AND kind = ? ORDER BY created_at, id LIMIT ? OFFSET ?"
    return store.read(sql, (loop, kind, top if top >= 0 else 2**62, skip))  # -1: PostgreSQL's LIMIT is not negative


def delete(store: Store, loop: str, kind: str, job_id: str) -> bool:
    sql = "DELETE FROM jobs WHERE loop = ? AND kind = ? AND id = ?"
    return bool(store.write(lambda conn: conn.execute(sql, (loop, kind, job_id)).rowcount))


def claim_oldest(conn: sqlite3.Connection, pending: str, running: str, at: str) -> dict[str, Any] | None:
    """The oldest pending job, marked running; None when none is pending. One process wins a race for a job."""
    while True:
        cursor = conn.execute("SELECT * FROM jobs WHERE status = ? ORDER BY created_at, id LIMIT 1", (pending,))
        found = cursor.fetchone()
        if found is None:
            return None
        row = dict(zip([d[0] for d in cursor.description], found, strict=True))
        claimed = conn.execute(
            "UPDATE jobs SET status = ?, updated_at = ? WHERE loop = ? AND kind = ? AND id = ? AND status = ?",
            (running, at, row["loop"], row["kind"], row["id"], pending),
        ).rowcount
        if claimed:
            return row


def finish(conn: sqlite3.Connection, row: dict[str, Any], status: str, result: str, at: str) -> None:
    """Record a job's end (a job deleted while it ran stays deleted)."""
    conn.execute(
        "UPDATE jobs SET status = ?, result = ?, updated_at = ? WHERE loop = ? AND kind = ? AND id = ?",
        (status, result, at, row["loop"], row["kind"], row["id"]),
    )


def requeue(conn: sqlite3.Connection, running: str, pending: str, at: str) -> int:
    """Queue again the jobs left running; how many."""
    return conn.execute("UPDATE jobs SET status = ?, updated_at = ? WHERE status = ?", (pending, at, running)).rowcount
