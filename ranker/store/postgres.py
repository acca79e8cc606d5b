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
  on: the WAL is flushed). ``commit_timeout`` bounds the wait for the turn (``lock_timeout``). Signal
  ingestion writes no ids: each of its batches commits after the turn's, in a transaction of its own without
  the turn, concurrently with other processes' (:mod:`ranker.store.signals`).

About 500 lines: the writer loop, its pipelined commit and the model store share the connection handling.
- **Leadership by a session advisory lock.** The trainer holds ``pg_try_advisory_lock(TRAINER)`` on a
  connection of its own; when its process dies the server ends the session and the lock goes with it, and a
  standby's next try (every 0.2 s) wins. TCP keepalives on that session bound how long a vanished host keeps
  it. The checkpoint's compare-and-set stays the fence: a trainer that lost the lock and does not know yet
  cannot save over its successor's checkpoint.
- **Models in the database.** ``model_versions`` and ``model_current``; each worker's refresher thread reads
  ``model_current`` with the loop's configuration (one query of both primary keys per loop every 0.1 s, never
  inside a request) and loads a new version from a file it writes into ``<data_dir>/models-cache``. Polling,
  not LISTEN/NOTIFY: it needs no extra connection per worker, and survives reconnects without a catch-up
  read; the cost is ten indexed reads per second per worker and loop.
"""

from __future__ import annotations

import contextlib
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
from psycopg.pq import Escaping
from psycopg.rows import dict_row

from ..core.errors import StoreUnavailable
from .decisions import timestamp
from .pgsql import CONFIG, ERRORS, KEEPALIVES, TAKE_TURN, TRAINER, TRIAGE, Connection, literals, migrate, translate
from .signals import SIGNALS_SHARED
from .sqlite import BATCH_LIMIT, Store

__all__ = ["TRAINER", "Connection", "DatabaseModels", "PostgresDatabase", "PostgresStore", "translate"]

log = logging.getLogger("ranker")

# The conflict key of each table whose single-row inserts a batch merges (Store.record_decision's ``insert``).
INSERT_KEYS = {"decisions": ("loop", "event_id")}
_MERGED_INSERT = re.compile(r"^INSERT OR IGNORE INTO (\w+) \(([^)]*)\) VALUES $")
# A write whose connection broke during the transaction may have been committed (the COMMIT reached the server,
# its answer did not come back): the request answers 503 with this message, and a retry is safe for a Rank
# (its event id: 409 when the first attempt went in) and an Activate, not for a Reward (kept twice).
LOST_IN_COMMIT = (
    "the connection to the database was lost during the commit, which may or may not have been made; "
    "retry: a Rank retried with the same eventId answers 409 if its first attempt was committed, and a "
    "record sent again is stored once"
)
# A worker's look for changes: the loop's configuration and its model pointer, in one round trip
LOOK = (
    "SELECT c.service, c.policy, c.updated_at, m.version, m.changed_at FROM (SELECT 1) AS one "
    "LEFT JOIN loop_config AS c ON c.loop = ? LEFT JOIN model_current AS m ON m.loop = ?"
)
POOL_SIZE = 4  # read connections per process; a node holds workers x (POOL_SIZE + 1 writer) + the trainer's 3
# -- the service's store ----------------------------------------------------------------------------------


class PostgresStore(Store):
    """:class:`~ranker.store.sqlite.Store` on PostgreSQL: the same group commit and operations; writes on the
    writer thread's connection inside the write turn, reads on the database's pool."""

    engine = "postgresql"

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
        self._reads: queue.SimpleQueue = queue.SimpleQueue()  # parked reads, for the reader threads
        self._reader_pid: int | None = None

    def check(self) -> None:
        """Nothing to check: there is no file to lose (a database that cannot be reached fails the reads)."""

    def _read(self, sql: str, params: tuple | dict, as_dicts: bool) -> list:
        # A request served in its worker's poll round (ranker.server.inline_worker) is parked with its read, as
        # with a write: a round trip, or a wait for one of the pool's connections, would hold every other
        # request of the worker. A reader thread runs it; the sweep gives up one not started by its deadline,
        # and a started one is cancelled by the database at that deadline (503 either way, as for a write).
        if self.suspend is not None:
            op = _Read(self, sql, params, as_dicts, time.monotonic() + self.commit_timeout)
            if self.suspend(op):
                if op.error is not None:
                    raise op.error
                return op.result
        return self._query(sql, params, as_dicts)

    def _query(self, sql: str, params: tuple | dict, as_dicts: bool, deadline: float | None = None) -> list:
        """The rows of a read on the pool; with ``deadline`` (``time.monotonic()``), the database cancels the
        read when it has not ended by then (in a transaction of its own, with ``statement_timeout``)."""
        try:
            with self.database.connection() as raw:
                cursor = raw.cursor(row_factory=dict_row) if as_dicts else raw.cursor()
                with contextlib.nullcontext() if deadline is None else raw.transaction():
                    if deadline is not None:
                        left_ms = int((deadline - time.monotonic()) * 1000)
                        if left_ms <= 0:
                            raise StoreUnavailable(f"no read within {self.commit_timeout} s")
                        cursor.execute("SELECT set_config('statement_timeout', %s, true)", (str(left_ms),))
                    cursor.execute(translate(sql), params) if params else cursor.execute(translate(sql, False))
                    return cursor.fetchall()
        except psycopg.Error as exc:  # e.g. the server is gone, a table this engine does not hold yet, or late
            raise StoreUnavailable(f"the decision log could not be read: {_reason(exc)}") from None

    def enqueue(self, ops: list) -> None:
        """Queue parked ops: writes for the writer thread, reads for the reader threads."""
        writes = []
        for op in ops:
            if type(op) is _Read:
                self._start_readers()
                self._reads.put(op)
            else:
                writes.append(op)
        if writes:
            super().enqueue(writes)

    def _start_readers(self) -> None:
        # One reader thread per pool connection. As the writer thread, they belong to the process that started
        # them, and are daemons: a worker exits without waiting for a read that the database holds up.
        if self._reader_pid == os.getpid():
            return
        with self._start_lock:
            if self._reader_pid != os.getpid():
                self._reads = queue.SimpleQueue()
                for n in range(POOL_SIZE):
                    threading.Thread(target=self._read_loop, name=f"ranker-store-reader-{n}", daemon=True).start()
                self._reader_pid = os.getpid()

    def _read_loop(self) -> None:
        reads = self._reads
        while True:
            reads.get().run()

    def look(self, loop: str, models: Any) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
        """The loop's configuration and its model pointer's stamp (as :meth:`DatabaseModels.stamp`) in one read:
        one round trip per look instead of two."""
        rows = self.read(LOOK, (loop, loop))
        if not rows:
            return None, None
        row = rows[0]
        config = None if row["updated_at"] is None else {k: row[k] for k in ("service", "policy", "updated_at")}
        return config, None if row["version"] is None else (row["version"], row["changed_at"])

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
            # The batch in the write turn first (Ranks wait for no ingestion), then ops written ``concurrent``
            # (signal ingestion: see .signals) each in a transaction of its own without the turn, answered once
            # it is committed.
            rest = [op for op in batch if not op.concurrent]
            for group in ([rest] if rest else []) + [[op] for op in batch if op.concurrent]:
                try:
                    if conn is None:
                        conn = self.database.connect(create=False)
                    self._commit(conn, group)
                except Exception as exc:
                    if conn is not None and conn.raw.broken:  # the server may have committed before it went
                        failure = StoreUnavailable(LOST_IN_COMMIT)
                    else:
                        failure = StoreUnavailable(f"the decision log could not commit: {_reason(exc)}")
                    for op in group:
                        op.result, op.error = None, failure
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                        conn = None
                for op in group:
                    op.finish()

    def _commit(self, conn: Connection, batch: list) -> None:
        if not self._commit_pipelined(conn, batch):
            super()._commit(conn, batch)

    def _commit_pipelined(self, conn: Connection, batch: list) -> bool:
        """A batch of merged inserts alone (Ranks) in one round trip: BEGIN, the turn, one multi-row INSERT and
        COMMIT sent as one query, each op learning from RETURNING whether its row went in.

        Each wait for the server is a wake-up of the server process and of this thread, which then waits for
        the GIL behind the busy request threads (up to a switch interval, 5 ms): on a busy worker those waits,
        not the commit's own work, made the commit's latency. So the statements go out together as one
        simple-protocol query and the thread waits once; psycopg's pipeline mode sends them together too, but
        waits once per statement. The values go into the query as literals (:func:`.pgsql.literals`), on one
        ``ClientCursor`` per connection: half the CPU of having the cursor bind them, for a batch of 8. False,
        with nothing written, for any other batch or value, or when a statement failed: :meth:`Store._commit`
        then commits it statement by statement.
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
        cursor, escaping, encoding = self._client_cursor(conn)
        rows = literals([op.insert[1] for op in batch], escaping, encoding)
        if rows is None:
            return False
        table, columns = match.group(1), [c.strip() for c in match.group(2).split(",")]
        key = INSERT_KEYS[table]
        sql = (
            f"BEGIN; SET LOCAL lock_timeout = {wait_ms}; {TAKE_TURN}; "
            f"INSERT INTO {table} ({match.group(2)}) VALUES {rows} "
            f"ON CONFLICT DO NOTHING RETURNING {', '.join(key)}; COMMIT"
        )
        try:
            cursor.execute(sql)
            for _ in range(3):  # BEGIN, SET, the turn: the INSERT's rows come fourth
                cursor.nextset()
            inserted = cursor.fetchall()
        except psycopg.Error:
            if conn.raw.broken:
                raise  # committed or not, nobody can tell: the batch answers 503 (LOST_IN_COMMIT)
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

    def _client_cursor(self, conn: Connection) -> tuple[psycopg.ClientCursor, Escaping, str]:
        """The writer connection's ``ClientCursor``, libpq's quoting and the connection's text encoding, made
        once per connection."""
        cached = getattr(self, "_cursor_of", None)
        if cached is None or cached[0] is not conn:
            raw = conn.raw
            cached = self._cursor_of = (conn, psycopg.ClientCursor(raw), Escaping(raw.pgconn), raw.info.encoding)
        return cached[1], cached[2], cached[3]

    def _begin(self, conn: Connection, deadline: float, batch: list = ()) -> bool:
        """Start a transaction in the write turn (for ops written ``concurrent``: holding the signals' lock
        shared), waiting for it until ``deadline``; False when it stayed taken."""
        wait_ms = int((deadline - time.monotonic()) * 1000)
        if wait_ms <= 0:
            return False
        turn = SIGNALS_SHARED if batch and all(op.concurrent for op in batch) else TAKE_TURN
        try:
            conn.execute(f"BEGIN; SET LOCAL lock_timeout = {wait_ms}; {turn}")
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

    def served(self, loop: str) -> str | None:
        """The version ``model_current`` names (None before the first), without its model."""
        rows = self.database.read("SELECT version FROM model_current WHERE loop = ?", (loop,))
        return rows[0]["version"] if rows else None

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
            from .models import write_atomic

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


class _Read:
    """A read of a request parked in its worker's poller (see ``PostgresStore._read``), run by a reader thread.

    As a write's op: ``claim`` is taken once, by the reader thread about to run it or by the sweep giving up
    on it at its deadline; ``notify`` is called once it has run."""

    __slots__ = ("store", "query", "deadline", "result", "error", "notify", "_claim")
    waits_for = "read"

    def __init__(self, store: PostgresStore, sql: str, params: tuple | dict, as_dicts: bool, deadline: float):
        self.store, self.query, self.deadline = store, (sql, params, as_dicts), deadline
        self.result: Any = None
        self.error: BaseException | None = None
        self.notify: Callable[[_Read], None] | None = None
        self._claim = threading.Lock()

    def claim(self) -> bool:
        return self._claim.acquire(blocking=False)

    def run(self) -> None:
        if not self.claim():  # given up: its request answered 503 already
            return
        try:
            self.result = self.store._query(*self.query, self.deadline)
        except BaseException as exc:  # the request raises it where it read
            self.error = exc
        if self.notify is not None:
            self.notify(self)


# -- the database -----------------------------------------------------------------------------------------


class PostgresDatabase:
    """One PostgreSQL database shared by every node: see the module docstring."""

    engine = "postgresql"

    def __init__(self, url: str, data_dir: Path):
        from ..core.settings import mask_url

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
    def triage_turn(self) -> Iterator[None]:
        """One triage pass at a time across nodes: a session advisory lock on a connection of its own (a pass
        holds it for seconds, and reads on the pool meanwhile)."""
        try:
            conn = psycopg.connect(self.url, autocommit=True, **KEEPALIVES)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the database {self.name} cannot be reached: {_reason(exc)}") from None
        with conn:
            conn.execute(f"SELECT pg_advisory_lock({TRIAGE})")
            yield  # closing the connection ends the session, and the lock with it

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
    from ..core.settings import mask_url

    return " ".join(mask_url(word) for word in str(exc).split())
