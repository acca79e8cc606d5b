"""The outbox (table ``outbox``): approved messages waiting for delivery, one per idempotency key."""

from __future__ import annotations

import sqlite3
from typing import Any

from .sqlite import Store

_COLUMNS = "key, source, recipient, subject, body, created_at, state, attempts, next_attempt_at"


def enqueue(conn: sqlite3.Connection, key: str, source: str, recipient: str, subject: str, body: str, at: str) -> bool:
    """Add a message inside the caller's transaction (e.g. the approval that made it); False when a message
    with this key is there already (it is not changed)."""
    sql = f"INSERT OR IGNORE INTO outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?)"
    return bool(conn.execute(sql, (key, source, recipient, subject, body, at, at)).rowcount)


def get(store: Store, key: str) -> dict[str, Any] | None:
    rows = store.read("SELECT * FROM outbox WHERE key = ?", (key,))
    return rows[0] if rows else None


def page(store: Store, state: str | None = None, top: int = 100, skip: int = 0) -> list[dict[str, Any]]:
    """Messages, newest first, of one state or all."""
    where, params = ("WHERE state = ?", (state,)) if state else ("", ())
    return store.read(f"SELECT * FROM outbox {where} ORDER BY id DESC LIMIT ? OFFSET ?", (*params, top, skip))


# -- delivery (ranker.outbox.delivery), on a sender's own autocommit connection: each statement commits alone --


def _rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def due(conn: sqlite3.Connection, now: str, limit: int) -> list[dict[str, Any]]:
    """Pending messages whose next attempt is due, oldest due first."""
    sql = "SELECT * FROM outbox WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?"
    return _rows(conn.execute(sql, (now, limit)))


def claim(conn: sqlite3.Connection, message_id: int, at: str) -> bool:
    """Mark a pending message ``sending`` (committed before any byte goes out); False when another sender took
    it first or it is no longer pending."""
    sql = (
        "UPDATE outbox SET state = 'sending', attempts = attempts + 1, next_attempt_at = ? "
        "WHERE id = ? AND state = 'pending'"
    )
    return conn.execute(sql, (at, message_id)).rowcount == 1


def mark_sent(conn: sqlite3.Connection, message_id: int, at: str) -> None:
    sql = "UPDATE outbox SET state = 'sent', sent_at = ?, last_error = NULL WHERE id = ? AND state = 'sending'"
    conn.execute(sql, (at, message_id))


def mark_retry(conn: sqlite3.Connection, message_id: int, error: str, next_attempt_at: str) -> None:
    """The receiver certainly did not take the message: pending again, for a later attempt."""
    sql = "UPDATE outbox SET state = 'pending', last_error = ?, next_attempt_at = ? WHERE id = ? AND state = 'sending'"
    conn.execute(sql, (error, next_attempt_at, message_id))


def mark_failed(conn: sqlite3.Connection, message_id: int, error: str) -> None:
    """No more attempts (refused for good, or out of attempts)."""
    conn.execute(
        "UPDATE outbox SET state = 'failed', last_error = ? WHERE id = ? AND state = 'sending'", (error, message_id)
    )


def mark_unknown(conn: sqlite3.Connection, message_id: int, error: str) -> None:
    """The receiver may have taken the message (the connection broke after it was sent): it stays ``sending``,
    never sent again by itself, with the error for the person who checks."""
    conn.execute("UPDATE outbox SET last_error = ? WHERE id = ? AND state = 'sending'", (error, message_id))


def resolve(conn: sqlite3.Connection, key: str, sent: bool, at: str) -> bool:
    """A person's answer for a message left ``sending`` or ``failed``: it did arrive (``sent``), or send it
    again (pending, due now). False when there is no such message in those states."""
    if sent:
        sql = "UPDATE outbox SET state = 'sent', sent_at = ? WHERE key = ? AND state IN ('sending', 'failed')"
    else:
        sql = (
            "UPDATE outbox SET state = 'pending', next_attempt_at = ? WHERE key = ? AND state IN ('sending', 'failed')"
        )
    return conn.execute(sql, (at, key)).rowcount == 1


def listing(conn: sqlite3.Connection, state: str | None, limit: int) -> list[dict[str, Any]]:
    """Messages, newest first, of one state or all (the CLI's list)."""
    where, params = ("WHERE state = ?", (state,)) if state else ("", ())
    return _rows(conn.execute(f"SELECT * FROM outbox {where} ORDER BY id DESC LIMIT ?", (*params, limit)))


def counts(store: Store) -> dict[str, int]:
    """Messages per state."""
    return {row["state"]: row["n"] for row in store.read("SELECT state, count(*) AS n FROM outbox GROUP BY state")}
