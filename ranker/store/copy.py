"""``ranker migrate --copy-to``: copy an SQLite decision log, its models and configuration into PostgreSQL.

How a user moves up from one machine: stop ``ranker serve``, copy, set ``database_url``, start the nodes. The
target is an empty database (migrated here), or one this copy left half-done: the copy resumes where it
stopped. Rows keep their ids (the trainer's checkpoint names decisions by id), each table is copied in id
order, a batch per transaction, so an interrupted copy leaves whole batches and the next run goes on after
the last id copied; tables keyed otherwise are copied with ``ON CONFLICT DO NOTHING``. The identity
sequences then continue after the largest id SQLite ever gave out (retention never makes one reused).
Finally the counts of every table are compared.

Copied: decisions, rewards, the trainer's checkpoints, loop configuration, jobs, mode switches, the signals'
entities, events and buckets, the outbox, the triage's patterns, items, transitions and suppressions, the review
pages' sessions and secret (signed-in reviewers stay signed in), and the published models with the ``CURRENT``
pointer. Tables not on PostgreSQL yet (``NOT_COPIED``) refuse the copy when they hold rows, rather than lose
them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from . import models as files
from .decisions import timestamp
from .pgsql import Connection
from .postgres import PostgresDatabase
from .sqlite import open_log

BATCH = 5000
# (table, columns, the id column copied in order or None for a keyed table, its key)
TABLES: list[tuple[str, str, str | None, str]] = [
    (
        "decisions",
        "id, loop, event_id, created_at, record, action_ids, reward_action_id, probability, explanation, "
        "model_version, policy, learning_mode, deferred, activated_at, slots, explored",
        "id",
        "",
    ),
    ("rewards", "id, decision_id, value, received_at, slot_id", "id", ""),
    ("mode_switches", "id, loop, switched_at, from_mode, to_mode, evidence", "id", ""),
    (
        "trainer_state",
        "loop, settings, last_decision_id, model, learned, skipped, updated_at, published_version, "
        "published_learned, published_at, generation, apprentice",
        None,
        "loop",
    ),
    ("loop_config", "loop, service, policy, updated_at", None, "loop"),
    ("jobs", "loop, kind, id, request, status, result, created_at, updated_at", None, "loop, kind, id"),
    ("signal_entities", "type, id, attributes, times, updated_at", None, "type, id"),
    ("signal_versions", "type, id, version", None, "type, id"),
    ("signal_entity_history", "type, id, updated_at, attributes, times", None, "type, id, updated_at"),
    ("signal_events", "id, key, at, name, account, user, attributes", "id", ""),
    (
        "signal_buckets",
        "type, entity_id, feature, day, count, total, low, high, newest, last_value",
        None,
        "type, entity_id, day, feature",
    ),
    ("signal_distinct", "type, entity_id, feature, day, value", None, "type, entity_id, day, feature, value"),
    (
        "outbox",
        "id, key, source, recipient, subject, body, created_at, state, attempts, next_attempt_at, sent_at, last_error",
        "id",
        "",
    ),
    ("triage_patterns", "name, entity, position, pattern, mined_at", None, "name"),
    ("triage_pattern_switches", "name, enabled, updated_at", None, "name"),
    (
        "triage_items",
        "id, account, renewal_date, pattern_name, pattern, risk, value, evidence, loop, event_id, action_id, ranking, "
        "explanation, draft_subject, draft_body, drafted_by, draft_note, recipient, state, decided_by, decided_at, "
        "final_subject, final_body, reward, dismiss_reason, dismiss_text, outcome, outcome_at, created_at",
        "id",
        "",
    ),
    ("triage_transitions", "id, item_id, at, who, from_state, to_state, detail", "id", ""),
    ("triage_suppressions", "account, until, reason, item_id, created_at", None, "account"),
    ("review_sessions", "id_sha256, loop, role, key_sha256, created_at, expires_at", None, "id_sha256"),
    ("review_secret", "id, secret", None, "id"),
]
IDENTITIES = (
    "decisions",
    "rewards",
    "mode_switches",
    "signal_events",
    "outbox",
    "triage_items",
    "triage_transitions",
)  # ids continue after the copy
NOT_COPIED: tuple[str, ...] = ()  # tables not on PostgreSQL yet (a log with rows there is refused)


class CopyError(RuntimeError):
    """The copy cannot be made (a target that is not empty, data it would lose, counts that differ)."""


def copy_to_postgres(
    source: Path, data_dir: Path, target: PostgresDatabase, say: Callable[[str], None] = lambda _: None
) -> dict[str, int]:
    """Copy the SQLite log at ``source`` (models from ``data_dir``) into ``target``; return the rows per table."""
    src = open_log(source)
    src.row_factory = None
    target.migrate()
    dst = target.connect()
    try:
        _check(src, dst, source)
        counts: dict[str, int] = {}
        for table, columns, order, key in TABLES:
            counts[table] = _copy_table(src, dst, table, columns, order, key)
            say(f"{table}: {counts[table]} rows")
        counts["model_versions"] = _copy_models(dst, data_dir, src)
        say(f"model_versions: {counts['model_versions']} models")
        for table in IDENTITIES:
            ever = src.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
            largest = max(
                ever[0] if ever else 0, src.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]
            )
            if largest:
                dst.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), ?)", (largest,))
        for table, _, _, _ in TABLES:
            theirs = dst.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            if theirs != counts[table]:
                raise CopyError(f"{table}: {counts[table]} rows in the SQLite log, {theirs} in PostgreSQL")
        dst.execute("UPDATE ranker_copy SET finished_at = ?", (timestamp(datetime.now(UTC)),))
        return counts
    finally:
        src.close()
        dst.close()


def _check(src: sqlite3.Connection, dst: Connection, source: Path) -> None:
    """Refuse data the copy would lose, and a target that is neither empty nor this copy's."""
    for table in NOT_COPIED:
        if src.execute(f"SELECT count(*) FROM {table}").fetchone()[0]:
            raise CopyError(f"the log has rows in {table}, which PostgreSQL does not hold yet; nothing copied")
    dst.execute("CREATE TABLE IF NOT EXISTS ranker_copy (source TEXT NOT NULL, started_at TEXT, finished_at TEXT)")
    copied = dst.execute("SELECT source FROM ranker_copy").fetchone()
    if copied is None:
        used = any(dst.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() for table, _, _, _ in TABLES)
        used = used or dst.execute("SELECT 1 FROM model_versions LIMIT 1").fetchone()
        if used:
            raise CopyError("the PostgreSQL database is not empty (and holds no copy of this log to resume)")
        dst.execute(
            "INSERT INTO ranker_copy (source, started_at) VALUES (?, ?)",
            (str(source.absolute()), timestamp(datetime.now(UTC))),
        )
    elif copied[0] != str(source.absolute()):
        raise CopyError(f"the PostgreSQL database holds a copy of another log ({copied[0]})")


def _copy_table(src: sqlite3.Connection, dst: Connection, table: str, columns: str, order: str | None, key: str) -> int:
    width = len(columns.split(","))
    insert = f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * width)})"
    if order is None:  # keyed tables: what is there already is this copy's, the rest goes in batch by batch
        cursor, count = src.execute(f"SELECT {columns} FROM {table}"), 0
        while rows := cursor.fetchmany(BATCH):
            with _batch(dst):
                dst.executemany(insert + f" ON CONFLICT ({key}) DO NOTHING", rows)
            count += len(rows)
        return count
    after = dst.execute(f"SELECT coalesce(max({order}), 0) FROM {table}").fetchone()[0]
    while True:
        rows = src.execute(
            f"SELECT {columns} FROM {table} WHERE {order} > ? ORDER BY {order} LIMIT ?", (after, BATCH)
        ).fetchall()
        if not rows:
            break
        with _batch(dst):
            dst.executemany(insert, rows)
        after = rows[-1][0]
    return src.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _copy_models(dst: Connection, data_dir: Path, src: sqlite3.Connection) -> int:
    """The model files of every loop with a folder, and each loop's CURRENT."""
    copied = 0
    folder = data_dir / "models"
    loops = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []
    for loop in loops:
        with _batch(dst):
            for version in files.versions(data_dir, loop):
                path = files.loop_dir(data_dir, loop) / f"{version}.vw"
                created = timestamp(datetime.fromtimestamp(path.stat().st_mtime, UTC))
                dst.execute(
                    "INSERT INTO model_versions (loop, version, model, created_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (loop, version) DO NOTHING",
                    (loop, version, path.read_bytes(), created),
                )
                copied += 1
            current = files.current(data_dir, loop)
            if current is not None:
                dst.execute(
                    "INSERT INTO model_current (loop, version, changed_at) VALUES (?, ?, ?) ON CONFLICT (loop) "
                    "DO UPDATE SET version = excluded.version",
                    (loop, current[0], timestamp(datetime.now(UTC))),
                )
    return copied


class _batch:
    """One transaction on the target (a plain one: nothing else writes while the log is copied)."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN")

    def __exit__(self, kind, *_: object) -> None:
        self.conn.execute("ROLLBACK" if kind else "COMMIT")
