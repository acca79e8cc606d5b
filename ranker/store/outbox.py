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
