"""Speaking PostgreSQL for the store (:mod:`ranker.store.postgres`): the statement translation, a connection
with the surface of ``sqlite3.Connection`` the store's functions use, the advisory lock keys, and the schema.

The store's functions are written once, in the SQL both engines speak; :func:`translate` rewrites what
differs, so callers never branch on the engine.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.pq import Escaping, TransactionStatus

from .decisions import timestamp

WRITE_TURN = 0x72616E6B65720001  # pg_advisory_xact_lock key of the write turn
TRAINER = 0x72616E6B65720002  # pg_advisory_lock key of the trainer's leadership
CONFIG = 0x72616E6B65720003  # pg_advisory_xact_lock key of configuration changes
MIGRATE = 0x72616E6B65720004
TRIAGE = 0x72616E6B65720005  # pg_advisory_lock key of the triage passes, one at a time
# 0x72616E6B65720006: the signals' ingestion lock, ranker.store.signals.SIGNALS_LOCK (kept there: no psycopg)
TAKE_TURN = f"SELECT pg_advisory_xact_lock({WRITE_TURN})"
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 1, "keepalives_count": 3}
ERRORS = (psycopg.Error,)  # the engine's errors: the log failed, not the op

_QUOTED_OR_PARAM = re.compile(r"'[^']*'|\?|(?<![:\w]):([A-Za-z_]\w*)|%|(?<![\w.\"])user(?![\w\"])")
# SQLite's two-argument min and max are PostgreSQL's least and greatest (the aggregates take one argument)
_SCALAR_MIN_MAX = re.compile(r"\b(min|max)\(([^(),]+),([^(),]+)\)")


@functools.lru_cache(maxsize=2048)
def translate(sql: str, params: bool = True) -> str:
    """The statement in PostgreSQL's words: placeholders ``%s`` / ``%(name)s``, ``INSERT OR IGNORE`` as
    ``ON CONFLICT DO NOTHING``, ``BEGIN IMMEDIATE`` as a transaction in the write turn."""
    head = sql.lstrip()
    if head.upper().startswith("BEGIN IMMEDIATE"):
        return f"BEGIN; {TAKE_TURN}"
    if head.upper().startswith(("INSERT OR REPLACE", "PRAGMA")):
        raise NotImplementedError(f"not a statement the PostgreSQL store speaks: {head[:40]}")
    ignore = head.upper().startswith("INSERT OR IGNORE")
    if ignore:
        sql = "INSERT" + head[len("INSERT OR IGNORE") :]
    if params:

        def replace(match: re.Match) -> str:
            text = match.group(0)
            if text == "?":
                return "%s"
            if text == "%":
                return "%%"
            if text == "user":  # a column of signal_events; a reserved word (CURRENT_USER) in PostgreSQL
                return '"user"'
            if match.group(1):
                return f"%({match.group(1)})s"
            return text

        sql = _QUOTED_OR_PARAM.sub(replace, sql)
    else:
        sql = re.sub(r"(?<![\w.\"])user(?![\w\"])", '"user"', sql)
    sql = _SCALAR_MIN_MAX.sub(
        lambda m: f"{'least' if m.group(1) == 'min' else 'greatest'}({m.group(2)},{m.group(3)})", sql
    )
    return sql + " ON CONFLICT DO NOTHING" if ignore else sql


_ROWS = "__ROWS__"  # where insert_literals puts the rows in a translated statement


@functools.lru_cache(maxsize=64)
def _with_rows(head: str, tail: str) -> str:
    return translate(head + "VALUES " + _ROWS + tail, False)


class Cursor:
    """The part of ``sqlite3.Cursor`` the store uses, over a psycopg cursor."""

    def __init__(self, cursor: psycopg.Cursor, conn: Connection):
        self._cursor = cursor
        self._conn = conn

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def description(self):
        return self._cursor.description

    @property
    def lastrowid(self) -> int:
        return self._conn.raw.execute("SELECT lastval()").fetchone()[0]

    def fetchone(self):
        return self._cursor.fetchone()

    def fetchall(self):
        return self._cursor.fetchall()

    def fetchmany(self, size: int):
        return self._cursor.fetchmany(size)

    def __iter__(self):
        return iter(self._cursor)

    def close(self) -> None:
        self._cursor.close()


class Connection:
    """The part of ``sqlite3.Connection`` the store's functions use, over a psycopg connection in autocommit
    mode (transactions are explicit, as on SQLite with ``isolation_level=None``)."""

    IntegrityError = psycopg.IntegrityError
    Error = psycopg.Error

    def __init__(self, raw: psycopg.Connection):
        self.raw = raw
        self.total_changes = 0  # rows changed by this connection's statements, as sqlite3 counts them
        self._escaping: tuple[Escaping, str] | None = None

    def execute(self, sql: str, params: tuple | list | dict = ()) -> Cursor:
        cursor = self.raw.cursor()
        if params:
            cursor.execute(translate(sql), params)
        else:
            cursor.execute(translate(sql, False))
        self.total_changes += max(cursor.rowcount, 0) if cursor.description is None else 0
        return Cursor(cursor, self)

    def executemany(self, sql: str, rows: Any) -> None:
        rows = list(rows)
        if rows:
            cursor = self.raw.cursor()
            cursor.executemany(translate(sql), rows)
            self.total_changes += max(cursor.rowcount, 0)

    def insert_literals(self, head: str, rows: list[tuple], tail: str = "", constant: str = "") -> int | None:
        """``head`` (``INSERT ... (columns) ``, the store's SQL), ``VALUES`` with every row as literals, then
        ``tail``: one statement, sent as text (no placeholders to bind, one round trip, nothing to prepare).
        Returns the rows it changed; None, with nothing sent, when a value has no literal here (see
        :func:`literals`): the caller then binds them."""
        if self._escaping is None:
            self._escaping = (Escaping(self.raw.pgconn), self.raw.info.encoding)
        values = literals(rows, *self._escaping, constant)
        if values is None:
            return None
        # Each such statement is run once: psycopg would otherwise keep its text (up to its last 100) to count
        # executions towards preparing it, megabytes for batches of this size.
        raw, cursor = self.raw, self.raw.cursor()
        threshold, raw.prepare_threshold = raw.prepare_threshold, None
        try:
            cursor.execute(_with_rows(head, tail).replace(_ROWS, values, 1))
        finally:
            raw.prepare_threshold = threshold
        self.total_changes += max(cursor.rowcount, 0)
        return cursor.rowcount

    def getlimit(self, _category: int) -> int:
        return 32767  # bind parameters per statement (PostgreSQL's limit is 65535)

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the schema -------------------------------------------------------------------------------------------
# Named as the SQLite migrations they match (ranker.store.migrations); append new ones at the END.

MIGRATIONS: list[tuple[str, str]] = [
    (
        "create_decisions_and_rewards",
        """
        CREATE TABLE decisions (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,  -- the order decisions were committed in
            loop TEXT NOT NULL,
            event_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            record TEXT,
            action_ids TEXT NOT NULL,
            reward_action_id TEXT,
            probability DOUBLE PRECISION,
            explanation TEXT NOT NULL,
            model_version TEXT,
            policy TEXT,
            learning_mode TEXT NOT NULL,
            deferred INTEGER NOT NULL,
            activated_at TEXT
        );
        CREATE UNIQUE INDEX idx_decisions_loop_event_id ON decisions (loop, event_id);
        CREATE INDEX idx_decisions_loop_created_at ON decisions (loop, created_at);
        CREATE TABLE rewards (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            decision_id BIGINT NOT NULL REFERENCES decisions (id),
            value DOUBLE PRECISION NOT NULL,
            received_at TEXT NOT NULL
        );
        CREATE INDEX idx_rewards_decision_id ON rewards (decision_id);
        """,
    ),
    (
        "create_trainer_state",
        """
        CREATE TABLE trainer_state (
            loop TEXT PRIMARY KEY,
            settings TEXT NOT NULL,
            last_decision_id BIGINT NOT NULL DEFAULT 0,
            model BYTEA,
            learned BIGINT NOT NULL DEFAULT 0,
            skipped BIGINT NOT NULL DEFAULT 0,
            updated_at TEXT NOT NULL,
            published_version TEXT,
            published_learned BIGINT NOT NULL DEFAULT 0,
            published_at TEXT,
            generation BIGINT NOT NULL DEFAULT 0,
            apprentice TEXT
        );
        CREATE INDEX idx_decisions_loop_id ON decisions (loop, id);
        """,
    ),
    (
        "create_loop_config",
        "CREATE TABLE loop_config (loop TEXT PRIMARY KEY, service TEXT, policy TEXT, updated_at TEXT NOT NULL)",
    ),
    (
        "create_jobs",
        """
        CREATE TABLE jobs (
            loop TEXT, kind TEXT, id TEXT, request TEXT NOT NULL, status TEXT NOT NULL, result TEXT,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (loop, kind, id)
        );
        CREATE INDEX idx_jobs_status_created_at ON jobs (status, created_at);
        """,
    ),
    (
        "create_mode_switches",
        """
        CREATE TABLE mode_switches (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, loop TEXT NOT NULL, switched_at TEXT NOT NULL,
            from_mode TEXT NOT NULL, to_mode TEXT NOT NULL, evidence TEXT NOT NULL
        )
        """,
    ),
    ("add_slots", "ALTER TABLE decisions ADD COLUMN slots TEXT; ALTER TABLE rewards ADD COLUMN slot_id TEXT"),
    ("add_explored", "ALTER TABLE decisions ADD COLUMN explored INTEGER"),
    (
        "create_signals",
        """
        CREATE TABLE signal_entities (
            type TEXT NOT NULL, id TEXT NOT NULL, attributes TEXT NOT NULL, times TEXT NOT NULL,
            updated_at TEXT NOT NULL, PRIMARY KEY (type, id)
        );
        CREATE TABLE signal_versions (
            type TEXT NOT NULL, id TEXT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (type, id)
        );
        CREATE TABLE signal_entity_history (
            type TEXT NOT NULL, id TEXT NOT NULL, updated_at TEXT NOT NULL, attributes TEXT NOT NULL,
            times TEXT NOT NULL, PRIMARY KEY (type, id, updated_at)
        );
        CREATE TABLE signal_events (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, key BYTEA NOT NULL UNIQUE, at BIGINT NOT NULL,
            name TEXT NOT NULL, account TEXT, "user" TEXT, attributes TEXT NOT NULL
        );
        CREATE INDEX signal_events_account ON signal_events (account, at) WHERE account IS NOT NULL;
        CREATE INDEX signal_events_user ON signal_events ("user", at) WHERE "user" IS NOT NULL;
        CREATE TABLE signal_buckets (
            type TEXT NOT NULL, entity_id TEXT NOT NULL, feature TEXT NOT NULL, day INTEGER NOT NULL,
            count BIGINT NOT NULL, total DOUBLE PRECISION NOT NULL, low DOUBLE PRECISION, high DOUBLE PRECISION,
            newest BIGINT NOT NULL, last_value TEXT, PRIMARY KEY (type, entity_id, day, feature)
        );
        CREATE TABLE signal_distinct (
            type TEXT NOT NULL, entity_id TEXT NOT NULL, feature TEXT NOT NULL, day INTEGER NOT NULL,
            value TEXT NOT NULL, PRIMARY KEY (type, entity_id, day, feature, value)
        );
        """,
    ),
    (
        "create_outbox",
        """
        CREATE TABLE outbox (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, key TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
            recipient TEXT NOT NULL, subject TEXT NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL,
            state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at TEXT NOT NULL, sent_at TEXT,
            last_error TEXT
        );
        CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
        """,
    ),
    (
        "create_models",
        # The published models (files in data_dir on SQLite) and the version workers serve (CURRENT).
        """
        CREATE TABLE model_versions (
            loop TEXT NOT NULL, version TEXT NOT NULL, model BYTEA NOT NULL, created_at TEXT NOT NULL,
            PRIMARY KEY (loop, version)
        );
        CREATE TABLE model_current (loop TEXT PRIMARY KEY, version TEXT NOT NULL, changed_at TEXT NOT NULL);
        """,
    ),
    (
        "create_triage_patterns",
        """
        CREATE TABLE triage_patterns (
            name TEXT PRIMARY KEY, entity TEXT NOT NULL, position INTEGER NOT NULL, pattern TEXT NOT NULL,
            mined_at TEXT NOT NULL
        );
        CREATE TABLE triage_pattern_switches (
            name TEXT PRIMARY KEY, enabled INTEGER NOT NULL, updated_at TEXT NOT NULL
        );
        """,
    ),
    (
        "create_triage",
        """
        CREATE TABLE triage_items (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, account TEXT NOT NULL, renewal_date TEXT NOT NULL,
            pattern_name TEXT NOT NULL, pattern TEXT NOT NULL, risk DOUBLE PRECISION NOT NULL, value DOUBLE PRECISION,
            evidence TEXT NOT NULL, loop TEXT NOT NULL, event_id TEXT, action_id TEXT, ranking TEXT NOT NULL,
            explanation TEXT, draft_subject TEXT, draft_body TEXT, drafted_by TEXT NOT NULL, draft_note TEXT,
            recipient TEXT, state TEXT NOT NULL, decided_by TEXT, decided_at TEXT, final_subject TEXT, final_body TEXT,
            reward DOUBLE PRECISION, dismiss_reason TEXT, dismiss_text TEXT, outcome TEXT, outcome_at TEXT,
            created_at TEXT NOT NULL, UNIQUE (account, renewal_date)
        );
        CREATE INDEX triage_items_state ON triage_items (state, renewal_date);
        CREATE TABLE triage_transitions (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            item_id BIGINT NOT NULL REFERENCES triage_items (id), at TEXT NOT NULL, who TEXT NOT NULL,
            from_state TEXT, to_state TEXT NOT NULL, detail TEXT
        );
        CREATE INDEX triage_transitions_item ON triage_transitions (item_id, id);
        CREATE TABLE triage_suppressions (
            account TEXT PRIMARY KEY, until TEXT NOT NULL, reason TEXT NOT NULL, item_id BIGINT,
            created_at TEXT NOT NULL
        );
        """,
    ),
    (
        "create_review_sessions",
        """
        CREATE TABLE review_sessions (
            id_sha256 TEXT PRIMARY KEY, loop TEXT NOT NULL, role TEXT NOT NULL, key_sha256 TEXT NOT NULL,
            created_at TEXT NOT NULL, expires_at TEXT NOT NULL
        );
        CREATE INDEX review_sessions_expiry ON review_sessions (expires_at);
        CREATE TABLE review_secret (id INTEGER PRIMARY KEY CHECK (id = 1), secret BYTEA NOT NULL);
        """,
    ),
]


def migrate(url: str) -> list[str]:
    """Apply pending migrations in one transaction (serialised across nodes); return their names."""
    with psycopg.connect(url, autocommit=True) as raw:
        with raw.transaction():
            raw.execute(f"SELECT pg_advisory_xact_lock({MIGRATE})")
            raw.execute(
                "CREATE TABLE IF NOT EXISTS ranker_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            done = {name for (name,) in raw.execute("SELECT name FROM ranker_migrations")}
            pending = [(name, sql) for name, sql in MIGRATIONS if name not in done]
            for name, sql in pending:
                raw.execute(sql)
                raw.execute(
                    "INSERT INTO ranker_migrations (name, applied_at) VALUES (%s, %s)",
                    (name, timestamp(datetime.now(UTC))),
                )
    return [name for name, _ in pending]


def literals(rows: list[tuple], escaping: Escaping, encoding: str, constant: str = "") -> str | None:
    """``rows`` as SQL ``(literal, ...), (...)`` (``constant``: SQL text appended to every row's values); None
    when a value is not text, bytes, a whole number, a finite float or None, or is text PostgreSQL cannot hold
    (a NUL) or the connection's encoding cannot write: the statement-by-statement path then binds it and
    answers as it always did."""
    out = []
    for row in rows:
        words = []
        for value in row:
            kind = type(value)
            if kind is str:
                if "\x00" in value:
                    return None
                if value.isascii() and "'" not in value and "\\" not in value:
                    words.append(f"'{value}'")  # what libpq's quoting gives it, without the call
                    continue
                try:
                    words.append(escaping.escape_literal(value.encode(encoding)).decode(encoding))
                except (UnicodeError, psycopg.Error):
                    return None
            elif value is None:
                words.append("NULL")
            elif kind is int:
                words.append(str(value))
            elif kind is float and math.isfinite(value):
                words.append(repr(value))  # the shortest text that reads back as the same double
            elif kind is bytes:
                # bytea's hex form; an E'' string reads the same whatever standard_conforming_strings says
                words.append(f"E'\\\\x{value.hex()}'::bytea")
            else:
                return None
        out.append("(" + ", ".join(words) + constant + ")")
    return ", ".join(out)
