"""The decision log on PostgreSQL: the second engine behind :mod:`ranker.store.database`'s interface.

Several ``ranker serve`` nodes share one database: decisions, rewards, the trainer's checkpoint, the published
models with their ``CURRENT`` pointer, the loops' API configuration and the job queue. What differs from
SQLite, and why:

- **One statement text for both engines.** The store's functions are written once, in the SQL both engines
  speak; :class:`Connection` adapts a psycopg connection to the surface of ``sqlite3.Connection`` they use
  and :func:`translate` rewrites what differs (``?`` and ``:name`` placeholders, ``INSERT OR IGNORE``,
  ``BEGIN IMMEDIATE``, the two-argument ``min``/``max``, the column ``user``, a reserved word here). Callers
  never branch on the engine.
- **The write turn is an advisory lock.** The trainer reads decisions in id order and takes "every decision up
  to this id is handled" as its checkpoint, so ids must become visible in the order they were given out. A
  sequence gives them out at insert time, and two transactions can commit in the other order. Every write
  transaction therefore takes ``pg_advisory_xact_lock(WRITE_TURN)`` first (the group commit's batch, and
  :func:`ranker.store.sqlite.transaction`): ids are given out and committed inside the turn, as SQLite's
  single writer does, and the lock is released only once the commit is visible. A batch carries every
  request its worker has queued, so the turn costs commits, not requests.
- **Group commit as on SQLite.** A worker's threads hand their writes to one writer thread, whose connection
  runs each batch in one transaction; a 201/204 is sent after ``COMMIT`` returned (``synchronous_commit``
  on: the WAL is flushed). ``commit_timeout`` bounds the wait for the turn (``lock_timeout``).
- **Leadership by a session advisory lock.** The trainer holds ``pg_try_advisory_lock(TRAINER)`` on a
  connection of its own; when its process dies the server ends the session and the lock goes with it, and a
  standby's next try (every 0.2 s) wins. TCP keepalives on that session bound how long a vanished host keeps
  it. The checkpoint's compare-and-set stays the fence: a trainer that lost the lock and does not know yet
  cannot save over its successor's checkpoint.
- **Models in the database.** ``model_versions`` and ``model_current``; a worker polls ``model_current`` (one
  primary-key read per loop every 0.1 s, with the configuration's) and loads a new version from a file it
  writes into ``<data_dir>/models-cache``. Polling, not LISTEN/NOTIFY: it needs no extra connection and
  thread per worker, and survives reconnects without a catch-up read; the cost is a few hundred indexed
  reads per second per node.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from ..errors import StoreUnavailable
from .sqlite import BATCH_LIMIT, Store, timestamp

log = logging.getLogger("ranker")

WRITE_TURN = 0x72616E6B65720001  # pg_advisory_xact_lock key of the write turn
TRAINER = 0x72616E6B65720002  # pg_advisory_lock key of the trainer's leadership
CONFIG = 0x72616E6B65720003  # pg_advisory_xact_lock key of configuration changes
MIGRATE = 0x72616E6B65720004
TAKE_TURN = f"SELECT pg_advisory_xact_lock({WRITE_TURN})"
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 1, "keepalives_count": 3}
ERRORS = (psycopg.Error,)
# The conflict key of each table whose single-row inserts a batch merges (Store.record_decision's ``insert``).
INSERT_KEYS = {"decisions": ("loop", "event_id")}
_MERGED_INSERT = re.compile(r"^INSERT OR IGNORE INTO (\w+) \(([^)]*)\) VALUES $")
POOL_SIZE = 4  # read connections per process; a node holds workers x (POOL_SIZE + 1 writer) + the trainer's 3

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


# -- the service's store ----------------------------------------------------------------------------------


class PostgresStore(Store):
    """:class:`~ranker.store.sqlite.Store` on PostgreSQL: the same group commit and operations; writes on the
    writer thread's connection inside the write turn, reads on the database's pool."""

    def __init__(self, database: PostgresDatabase, commit_timeout: float = 10.0, create: bool = True):
        self.database = database
        self.path = None
        self.name = database.name
        self.synchronous = "FULL"
        self.commit_timeout = commit_timeout
        self.errors = ERRORS
        self.identity = None
        if create:
            database.migrate()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_pid: int | None = None
        self._start_lock = threading.Lock()

    def check(self) -> None:
        """Nothing to check: there is no file to lose (a database that cannot be reached fails the reads)."""

    def read(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        try:
            with self.database.connection() as raw:
                cursor = raw.cursor(row_factory=dict_row)
                cursor.execute(translate(sql), params) if params else cursor.execute(translate(sql, False))
                return cursor.fetchall()
        except psycopg.Error as exc:  # e.g. the server is gone, or a table this engine does not hold yet
            raise StoreUnavailable(f"the decision log could not be read: {_reason(exc)}") from None

    def _write_loop(self) -> None:
        conn: Connection | None = None
        pending = self._queue
        while True:
            batch = [pending.get()]
            while len(batch) < BATCH_LIMIT:
                try:
                    batch.append(pending.get_nowait())
                except queue.Empty:
                    break
            batch = [op for op in batch if op.claim()]  # an op whose request gave up is never written
            if not batch:
                continue
            try:
                if conn is None:
                    conn = self.database.connect(create=False)
                self._commit(conn, batch)
            except Exception as exc:
                failure = StoreUnavailable(f"the decision log could not commit: {exc}")
                for op in batch:
                    op.result, op.error = None, failure
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
            for op in batch:
                op.finish()

    def _commit(self, conn: Connection, batch: list) -> None:
        if not self._commit_pipelined(conn, batch):
            super()._commit(conn, batch)

    def _commit_pipelined(self, conn: Connection, batch: list) -> bool:
        """A batch of merged inserts alone (Ranks) in one round trip: BEGIN, the turn, one multi-row INSERT and
        COMMIT sent together (psycopg's pipeline mode), each op learning from RETURNING whether its row went in.

        Each round trip is a wake-up of the server process and of this thread (which then waits for the GIL):
        on a busy machine three of them made the commit's latency. False, with nothing written, for any other
        batch or when a statement failed: :meth:`Store._commit` then commits it statement by statement.
        """
        head, values = batch[0].insert or ("", ())
        match = _MERGED_INSERT.match(head)
        if match is None or match.group(1) not in INSERT_KEYS:
            return False
        if any(op.insert is None or op.insert[0] != head or len(op.insert[1]) != len(values) for op in batch):
            return False
        wait_ms = int((min(op.deadline for op in batch) - time.monotonic()) * 1000)
        if wait_ms <= 0:
            return False
        table, columns = match.group(1), [c.strip() for c in match.group(2).split(",")]
        key = INSERT_KEYS[table]
        row = "(" + ", ".join(["%s"] * len(values)) + ")"
        sql = (
            f"INSERT INTO {table} ({match.group(2)}) VALUES {', '.join([row] * len(batch))} "
            f"ON CONFLICT DO NOTHING RETURNING {', '.join(key)}"
        )
        raw = conn.raw
        try:
            with raw.pipeline():
                raw.execute("BEGIN")
                raw.execute("SELECT set_config('lock_timeout', %s, true)", (str(wait_ms),))
                raw.execute(TAKE_TURN)
                cursor = raw.cursor()
                cursor.execute(sql, [value for op in batch for value in op.insert[1]])
                raw.execute("COMMIT")
            inserted = cursor.fetchall()
        except psycopg.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return False
        went_in: dict[tuple, int] = {}
        for found in inserted:
            went_in[tuple(found)] = went_in.get(tuple(found), 0) + 1
        positions = [columns.index(name) for name in key]
        for op in batch:
            found = tuple(op.insert[1][i] for i in positions)
            op.result = went_in.get(found, 0) > 0  # a duplicate event id (even within the batch) did not
            if op.result:
                went_in[found] -= 1
        return True

    def _begin(self, conn: Connection, deadline: float) -> bool:
        """Start a transaction in the write turn, waiting for it until ``deadline``; False when it stayed taken."""
        wait_ms = int((deadline - time.monotonic()) * 1000)
        if wait_ms <= 0:
            return False
        try:
            conn.execute(f"BEGIN; SET LOCAL lock_timeout = {wait_ms}; {TAKE_TURN}")
        except psycopg.errors.LockNotAvailable:
            conn.execute("ROLLBACK")
            return False
        return True


# -- models -----------------------------------------------------------------------------------------------


class DatabaseModels:
    """Published models in ``model_versions`` and the served version in ``model_current``; a node loads a
    version from a file it writes once into ``<data_dir>/models-cache/<loop>/``."""

    def __init__(self, database: PostgresDatabase):
        self.database = database

    @contextlib.contextmanager
    def _conn(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
            return
        with self.database.connection() as raw:
            yield Connection(raw)

    def publish(self, loop: str, model: bytes, conn: Connection | None = None) -> str:
        """Store the model as the loop's next version and point ``model_current`` at it; inside ``conn``'s
        transaction when given (it is in the write turn), else in one of its own."""
        with self._conn(conn) as c:
            own = not c.in_transaction
            if own:
                c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute(
                    "SELECT greatest((SELECT max(version) FROM model_versions WHERE loop = ?), "
                    "(SELECT version FROM model_current WHERE loop = ?))",
                    (loop, loop),
                ).fetchone()
                version = f"{int(row[0] or 0) + 1:010d}"
                now = timestamp(datetime.now(UTC))
                c.execute(
                    "INSERT INTO model_versions (loop, version, model, created_at) VALUES (?, ?, ?, ?)",
                    (loop, version, model, now),
                )
                c.execute(
                    "INSERT INTO model_current (loop, version, changed_at) VALUES (?, ?, ?) ON CONFLICT (loop) "
                    "DO UPDATE SET version = excluded.version, changed_at = excluded.changed_at",
                    (loop, version, now),
                )
            except BaseException:
                if own:
                    c.execute("ROLLBACK")
                raise
            if own:
                c.execute("COMMIT")
            return version

    def stamp(self, loop: str) -> tuple[str, str] | None:
        """What changes whenever the served version does: one primary-key read."""
        rows = self.database.read("SELECT version, changed_at FROM model_current WHERE loop = ?", (loop,))
        return (rows[0]["version"], rows[0]["changed_at"]) if rows else None

    def current(self, loop: str) -> tuple[str, Path] | None:
        rows = self.database.read("SELECT version FROM model_current WHERE loop = ?", (loop,))
        if not rows:
            return None
        path = self.path(loop, rows[0]["version"])
        return None if path is None else (rows[0]["version"], path)

    def versions(self, loop: str) -> list[str]:
        rows = self.database.read("SELECT version FROM model_versions WHERE loop = ? ORDER BY version", (loop,))
        return [row["version"] for row in rows]

    def path(self, loop: str, version: str) -> Path | None:
        """A file holding the version (written into this node's cache the first time), or None."""
        rows = self.database.read(
            "SELECT created_at FROM model_versions WHERE loop = ? AND version = ?", (loop, version)
        )
        if not rows:
            return None
        stamp = re.sub(r"\D", "", rows[0]["created_at"])
        path = self.database.data_dir / "models-cache" / loop / f"{version}-{stamp}.vw"
        if not path.exists():
            data = self.database.read(
                "SELECT model FROM model_versions WHERE loop = ? AND version = ?", (loop, version)
            )
            if not data:
                return None
            from ..models import write_atomic

            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, bytes(data[0]["model"]))
        return path

    def created(self, loop: str, version: str) -> datetime:
        rows = self.database.read(
            "SELECT created_at FROM model_versions WHERE loop = ? AND version = ?", (loop, version)
        )
        return datetime.fromisoformat(rows[0]["created_at"])

    def prune(self, loop: str, keep: int, also_keep: set[str] = frozenset(), conn: Connection | None = None) -> list:
        """Delete all but the newest ``keep`` versions, the served one and ``also_keep``; return the deleted."""
        if keep < 1:
            raise ValueError("keep at least one version")
        with self._conn(conn) as c:
            kept = list(also_keep) or [""]
            rows = c.execute(
                "DELETE FROM model_versions WHERE loop = ? AND version NOT IN (SELECT version FROM model_versions "
                "WHERE loop = ? ORDER BY version DESC LIMIT ?) AND version <> ALL(?) AND version NOT IN "
                "(SELECT version FROM model_current WHERE loop = ?) RETURNING version",
                (loop, loop, keep, kept, loop),
            ).fetchall()
        return sorted(version for (version,) in rows)


# -- the database -----------------------------------------------------------------------------------------


class PostgresDatabase:
    """One PostgreSQL database shared by every node: see the module docstring."""

    engine = "postgresql"

    def __init__(self, url: str, data_dir: Path):
        from ..settings import mask_url

        self.url = url
        self.name = mask_url(url)
        self.data_dir = Path(data_dir)
        self.models = DatabaseModels(self)
        self.errors = ERRORS
        self._pool = None
        self._pool_pid: int | None = None
        self._pool_lock = threading.Lock()
        self._lease: psycopg.Connection | None = None

    def migrate(self, create: bool = True) -> list[str]:
        try:
            return migrate(self.url)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the database {self.name} cannot be reached: {_reason(exc)}") from None

    def connect(self, create: bool = True) -> Connection:
        try:
            raw = psycopg.connect(self.url, autocommit=True, **KEEPALIVES)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the database {self.name} cannot be reached: {_reason(exc)}") from None
        return Connection(raw)

    def open_log(self) -> Connection:
        self.migrate()
        return self.connect()

    def store(self, commit_timeout: float = 10.0, create: bool = True) -> PostgresStore:
        return PostgresStore(self, commit_timeout, create)

    @contextlib.contextmanager
    def write_turn(self) -> Iterator[None]:
        """Nothing to hold outside a transaction: every write transaction takes the turn itself."""
        yield

    def identity(self) -> None:
        return None

    def check(self, identity: Any) -> bool:
        return True

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A connection of this process's pool (autocommit)."""
        if self._pool is None or self._pool_pid != os.getpid():
            with self._pool_lock:
                if self._pool is None or self._pool_pid != os.getpid():
                    from psycopg_pool import ConnectionPool

                    kwargs = {"autocommit": True, **KEEPALIVES}
                    self._pool = ConnectionPool(
                        self.url, min_size=1, max_size=POOL_SIZE, kwargs=kwargs, open=True, name="ranker", timeout=10
                    )
                    self._pool_pid = os.getpid()
        try:
            with self._pool.connection() as raw:
                yield raw
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the database {self.name} cannot be reached: {_reason(exc)}") from None

    def read(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        with self.connection() as raw:
            cursor = raw.cursor(row_factory=dict_row)
            cursor.execute(translate(sql), params) if params else cursor.execute(translate(sql, False))
            return cursor.fetchall()

    @contextlib.contextmanager
    def config_turn(self) -> Iterator[None]:
        """Configuration changes one at a time across nodes (a session advisory lock on a pooled connection)."""
        with self.connection() as raw:
            raw.execute(f"SELECT pg_advisory_lock({CONFIG})")
            try:
                yield
            finally:
                raw.execute(f"SELECT pg_advisory_unlock({CONFIG})")

    @contextlib.contextmanager
    def lease(self, stop: threading.Event, acquired: Callable[[], None] = lambda: None) -> Iterator[bool]:
        """Hold the trainer's leadership (yield True), or wait for it until ``stop`` (False)."""
        waiting = False
        conn = None
        try:
            while True:
                try:
                    if conn is None:
                        # named so an operator (pg_stat_activity) sees which host and process leads
                        name = f"ranker trainer {socket.gethostname()} {os.getpid()}"[:63]
                        conn = psycopg.connect(self.url, autocommit=True, application_name=name, **KEEPALIVES)
                        conn.execute("SET tcp_keepalives_idle = 5")
                        conn.execute("SET tcp_keepalives_interval = 1")
                        conn.execute("SET tcp_keepalives_count = 3")
                    if conn.execute(f"SELECT pg_try_advisory_lock({TRAINER})").fetchone()[0]:
                        break
                except psycopg.OperationalError as exc:
                    log.warning("trainer leadership: %s", _reason(exc))
                    if conn is not None:
                        conn.close()
                    conn = None
                if not waiting:
                    logging.getLogger("ranker.trainer").info("another trainer leads; standing by")
                    waiting = True
                if stop.wait(0.2):
                    yield False
                    return
            self._lease = conn
            acquired()
            yield True
        finally:
            self._lease = None
            if conn is not None:
                conn.close()  # ends the session: the lock goes with it

    def leading(self) -> bool:
        """Whether this process still holds the leadership (its session is alive)."""
        if self._lease is None:
            return False
        try:
            self._lease.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False


def _reason(exc: BaseException) -> str:
    """An error's text without the connection string (psycopg does not quote it; a proxy's error may)."""
    from ..settings import mask_url

    return " ".join(mask_url(word) for word in str(exc).split())
