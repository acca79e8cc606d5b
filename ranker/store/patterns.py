"""Stored risk patterns: the mined ones (replaced as a set by each mining) and the switches that enable or
disable any pattern by name. Tables: ``triage_patterns``, ``triage_pattern_switches`` (migrations)."""

from __future__ import annotations

import sqlite3
from typing import Any

from .sqlite import Store


def replace_mined(store: Store, entity: str, patterns: list[tuple[str, str]], at: str) -> None:
    """Make ``patterns`` (``(name, JSON text)``, best first) the mined patterns of the entity type, in one
    commit; switches stay."""

    def run(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM triage_patterns WHERE entity = ?", (entity,))
        conn.executemany(
            "INSERT INTO triage_patterns (name, entity, position, pattern, mined_at) VALUES (?, ?, ?, ?, ?)",
            [(name, entity, position, text, at) for position, (name, text) in enumerate(patterns)],
        )

    store.write(run)


def mined(store: Store, entity: str | None = None) -> list[dict[str, Any]]:
    """The mined patterns ``(name, entity, pattern JSON, mined_at)``, best first."""
    if entity is None:
        return store.read("SELECT name, entity, pattern, mined_at FROM triage_patterns ORDER BY entity, position")
    return store.read(
        "SELECT name, entity, pattern, mined_at FROM triage_patterns WHERE entity = ? ORDER BY position", (entity,)
    )


def switches(store: Store) -> dict[str, bool]:
    """Pattern name -> enabled, for the patterns switched by name."""
    return {
        row["name"]: bool(row["enabled"]) for row in store.read("SELECT name, enabled FROM triage_pattern_switches")
    }


def switch(store: Store, name: str, enabled: bool, at: str) -> None:
    store.write(
        lambda conn: conn.execute(
            "INSERT INTO triage_pattern_switches (name, enabled, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled, updated_at = excluded.updated_at",
            (name, int(enabled), at),
        )
    )
