"""The decision log: SQLite in WAL mode, written through group commits.

Every acknowledged Rank, Reward and Activate is committed before its response. Requests of one process
hand their writes to a single writer thread, which runs everything queued so far in one transaction and
then wakes each request with its own result: many requests share one fsync, each still waits for it.

The writer threads of all processes take turns through an exclusive ``flock`` on ``ranker.lock`` around
each transaction. SQLite's own lock would serialise them too, but a writer that finds it taken sleeps in
the busy handler (1, 2, 5, ... up to 100 ms at a time) instead of waking when it is released: that made
hundreds of milliseconds of tail latency with two workers. Waiting on the flock also lets the queue of the
waiting process grow, so its next transaction carries more requests.

``commit_timeout`` bounds how long a request waits for its commit, whatever holds it up: the write turn,
SQLite's lock taken by another program, or a batch ahead of it. A request whose op the writer has not
taken by then answers 503 and its op is never written; once taken, the writer gives up the transaction
(rolled back, never half written) when the earliest deadline of its batch passes before ``COMMIT``.

The store also watches the database file itself: a store serves the file it opened, and when that file is
deleted or replaced under it (the path names another inode, or nothing), writes are not acknowledged (503)
and ``check`` fails. Only ``ranker serve`` and ``ranker migrate`` create a database at start-up; a gunicorn
worker started later opens an existing one or none, so it never makes an empty log beside a deleted one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils

from ..core.errors import StoreUnavailable
from .decisions import DecisionLog
from .migrations import migrations

BATCH_LIMIT = 512
# The writer connection's page cache (KiB): signal ingestion updates pages all over the event indexes and
# buckets, which SQLite's default 2 MiB cache cannot hold, so each batch read most of them back from the OS.
WRITER_CACHE_KIB = 65_536
# The writer checkpoints the WAL itself, after its write turn and at most this often (seconds), instead of
# SQLite doing it inside the COMMIT that crosses 1,000 pages: there, the copy back into the database ran
# while this process held the write turn, and every other process's writer waited for it. Half a second
# keeps checkpoints (each an fsync of the database) about as rare as before under Rank load, and lets a page
# that ingestion rewrites many times a second be copied back once.
CHECKPOINT_EVERY = 0.5
BUSY_SLACK_MS = 100  # how far past a deadline SQLite's busy handler may keep the writer waiting

log = logging.getLogger("ranker")


class _Op:
    """One write: ``fn`` to run, and for a plain single-row insert, its statement head and values."""

    __slots__ = ("fn", "insert", "deadline", "concurrent", "result", "error", "notify", "_done", "_claim")
    waits_for = "commit"  # what a request given up on waited for (``Store.give_up``)

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        insert: tuple[str, tuple] | None,
        deadline: float,
        concurrent: bool = False,
    ) -> None:
        self.fn = fn
        self.insert = insert
        self.concurrent = concurrent  # see Store.write
        self.deadline = deadline  # time.monotonic() by which it is committed, or its request answers 503
        self.result: Any = None
        self.error: BaseException | None = None
        self.notify: Callable[[_Op], None] | None = None  # called by the writer once the op is finished
        # A bare lock, held until the op is committed: cheaper to make, wait on and release than an Event.
        self._done = threading.Lock()
        self._done.acquire()
        # Taken once, by the writer about to run the op or by a request giving up on it: never both.
        self._claim = threading.Lock()

    def claim(self) -> bool:
        return self._claim.acquire(blocking=False)

    def wait(self, timeout: float) -> bool:
        return self._done.acquire(timeout=timeout)

    def finish(self) -> None:
        self._done.release()
        if self.notify is not None:
            self.notify(self)


def connect(path: Path, synchronous: str = "FULL", create: bool = True) -> sqlite3.Connection:
    """Open the decision log; with ``create`` False a missing file is an error, not a new empty database."""
    uri = f"file:{quote(str(Path(path).absolute()))}?mode={'rwc' if create else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextlib.contextmanager
def write_turn(path: Path) -> Iterator[None]:
    """Hold the decision log's write turn, the lock the group commits take, e.g. around a transaction of a
    process that writes without a ``Store``: the workers then wait on the lock, not in SQLite's busy handler."""
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def open_log(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection to the existing decision log, migrated; a ValueError when there is none.

    A reader never creates the log: it may run in the trainer beside a server whose log was deleted.
    """
    if not path.exists():
        raise ValueError(f"there is no decision log at {path}; ranker serve or ranker migrate creates it")
    migrate(path, create=False)
    return connect(path, synchronous, create=False)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on an autocommit connection (a trainer's, an import's): committed when the block
    ends, rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(path: Path, create: bool = True) -> list[str]:
    """Apply pending migrations (serialised across processes by the write turn); return their names.

    With ``create`` False the database must exist: ``sqlite3.OperationalError`` otherwise.
    """
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    with write_turn(path):
        conn = connect(path, create=create)
        try:
            db = sqlite_utils.Database(conn)
            pending = [m.name for m in migrations.pending(db)]
            migrations.apply(db)
            return pending
        finally:
            conn.close()


def _run_merged(conn: sqlite3.Connection, batch: list[_Op]) -> bool:
    """Run a batch with as few statements as possible; False when it must be redone op by op.

    Each statement lets the writer thread drop the GIL, and getting it back from busy request threads
    can take a switch interval, so consecutive inserts with the same statement head become one
    multi-row INSERT and no op gets a savepoint. The caller rolls back and redoes the batch with a
    savepoint per op when an op raises, or when an insert was ignored (a duplicate event id), which the
    multi-row statement cannot attribute to its row.
    """
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    i = 0
    while i < len(batch):
        op = batch[i]
        if op.insert is None:
            try:
                op.result = op.fn(conn)
            except Exception as exc:
                if getattr(exc, "sqlstate", None) == "40P01":  # PostgreSQL broke a deadlock: each writer is redone
                    log.warning("a write was chosen to break a deadlock; it is redone: %s", exc)
                return False
            i += 1
            continue
        head, values = op.insert
        group = [op]
        most = max(1, limit // max(1, len(values)))
        while i + len(group) < len(batch) and len(group) < most:
            other = batch[i + len(group)].insert
            if other is None or other[0] != head or len(other[1]) != len(values):
                break
            group.append(batch[i + len(group)])
        row = "(" + ", ".join("?" * len(values)) + ")"
        params = [value for member in group for value in member.insert[1]]
        try:
            if conn.execute(head + ", ".join([row] * len(group)), params).rowcount != len(group):
                return False
        except Exception:  # the engine's error (the PostgreSQL store runs this too): redo op by op
            return False
        for member in group:
            member.result = True
        i += len(group)
    return True


def writer_connection(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """The connection a store's writer thread commits through (its cache; its checkpoints are the writer's
    own: see CHECKPOINT_EVERY and :func:`checkpoint`)."""
    conn = connect(path, synchronous, create=False)
    conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL's committed pages back into the database. The writer runs it after its write turn: a
    PASSIVE checkpoint waits for no one, and the other processes' writers go on meanwhile."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as exc:  # e.g. the file went: the next commit reports that; the WAL only grows
        log.warning("checkpoint of the decision log failed: %s", exc)


def file_identity(path: Path) -> tuple[int, int]:
    """What tells one file from another at ``path``: its device and inode (``FileNotFoundError`` if none)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _is_busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class Store(DecisionLog):
    """Writes of one process go through one writer thread; reads use their own connection.

    ``create`` False (gunicorn's workers): the database must exist already; a store that finds none answers
    503 to every write and fails :meth:`check` instead of creating one.
    """

    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)  # the engine's errors: the log failed, not the op
    engine = "sqlite"  # the switch of the few statements written per engine (e.g. ranker.store.signals)
    # Set by a worker that serves requests in greenlets of its poller thread (ranker.server.inline_worker):
    # ``suspend(op)`` parks the calling request until the op is finished and returns True, or returns False
    # at once when the caller is not one of those requests (it then waits in ``write`` as usual).
    suspend: Callable[[_Op], bool] | None = None

    def __init__(self, path: Path, synchronous: str = "FULL", commit_timeout: float = 10.0, create: bool = True):
        self.path = Path(path)
        self.synchronous = synchronous
        self.commit_timeout = commit_timeout
        self.identity: tuple[int, int] | None = None  # the file this store serves
        try:
            migrate(self.path, create=create)
            self.identity = file_identity(self.path)
        except (sqlite3.Error, OSError) as exc:
            if create:
                raise
            log.error("decision log %s cannot be opened: %s", self.path, exc)
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._busy_ms = 0  # the writer connection's busy timeout
        self._writer: threading.Thread | None = None
        self._writer_pid: int | None = None
        self._start_lock = threading.Lock()
        # Two read connections, each under its lock: one for the main thread and one for the others. A request
        # served in the poller (ranker.server.inline_worker, the worker's main thread) then never waits behind
        # a long read of a thread's request, e.g. /metrics counting the log (WAL readers wait for no writer).
        self._read_conns: dict[bool, tuple[threading.Lock, list]] = {
            main: (threading.Lock(), [None, None]) for main in (True, False)
        }

    def check(self) -> None:
        """Raise ``StoreUnavailable`` unless the database path still names the file this store opened.

        One stat; the writer calls it before and after each transaction, ``/healthz`` on each call.
        """
        if self.identity is None:
            raise StoreUnavailable(f"the decision log {self.path} did not exist when this worker started")
        try:
            found = file_identity(self.path)
        except FileNotFoundError:
            found = None
        if found != self.identity:
            what = "deleted" if found is None else "replaced by another file"
            raise StoreUnavailable(f"the decision log {self.path} was {what} while serving; restart the server")

    # -- writes -------------------------------------------------------------------------------

    def write(
        self, fn: Callable[[sqlite3.Connection], Any], insert: tuple[str, tuple] | None = None, concurrent: bool = False
    ) -> Any:
        """Run ``fn(conn)`` inside the next group commit and return its result once committed.

        ``fn`` may run a second time after its batch was rolled back, so it must only run SQL on ``conn``.
        ``insert`` describes ``fn`` when it is a single-row ``INSERT OR IGNORE`` returning whether the row
        went in: the statement up to ``VALUES `` and the row's values. Such ops of one batch go out as
        one multi-row statement. ``concurrent``: ``fn`` needs no write turn and may commit while other
        processes write (the PostgreSQL store commits it in a transaction of its own; SQLite has one
        writer at a time anyway): see :meth:`ranker.store.postgres.PostgresStore._write_loop`. Raises
        ``StoreUnavailable`` when it is not committed within ``commit_timeout`` seconds; it is then not
        written either.
        """
        deadline = time.monotonic() + self.commit_timeout
        op = _Op(fn, insert, deadline, concurrent)
        # A request served in its worker's poll round is parked with its op, which the worker queues with the
        # round's others and resumes once the writer has finished it (or gives up on at its deadline).
        if self.suspend is None or not self.suspend(op):
            self._ensure_writer()
            self._queue.put(op)
            if not op.wait(self.commit_timeout):
                if self.give_up(op):
                    raise op.error
                # Inside a transaction already: the writer rolls it back once the deadline has passed, so this
                # wait lasts at most as long as a COMMIT that started just before it.
                op.wait(-1)
        if isinstance(op.error, self.errors):  # e.g. a full disk: the log is what failed, not the request
            raise StoreUnavailable(f"the decision log could not write: {op.error}") from op.error
        if op.error is not None:
            raise op.error
        return op.result

    def enqueue(self, ops: list[_Op]) -> None:
        """Queue parked ops for the writer (see ``suspend``): each one's ``notify`` is called once it is finished."""
        self._ensure_writer()
        for op in ops:
            self._queue.put(op)

    def give_up(self, op: _Op) -> bool:
        """Fail an op whose deadline has passed, unless the writer has taken it (it is then committed or rolled
        back by that deadline); whether it was failed. A failed op is never written."""
        if not op.claim():
            return False
        op.result, op.error = None, StoreUnavailable(f"no {op.waits_for} within {self.commit_timeout} s")
        return True

    def _ensure_writer(self) -> None:
        # The writer thread belongs to the process that started it; a forked worker starts its own.
        if self._writer_pid == os.getpid() and self._writer is not None and self._writer.is_alive():
            return
        with self._start_lock:
            if self._writer_pid == os.getpid() and self._writer is not None and self._writer.is_alive():
                return
            self._queue = queue.SimpleQueue()
            self._writer = threading.Thread(target=self._write_loop, name="ranker-store-writer", daemon=True)
            self._writer_pid = os.getpid()
            self._writer.start()

    def _write_loop(self) -> None:
        conn: sqlite3.Connection | None = None
        pending = self._queue
        lock = None
        checkpointed = time.monotonic()
        while True:
            batch = [pending.get()]
            if lock is None:
                try:
                    lock = open(self.path.with_suffix(".lock"), "a")  # noqa: SIM115 (held from now on)
                except OSError as exc:  # e.g. the data folder was deleted: the log is gone, the thread stays
                    failure = StoreUnavailable(f"the decision log's lock cannot be opened: {exc}")
                    for op in batch:
                        if op.claim():
                            op.result, op.error = None, failure
                            op.finish()
                    continue
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                while len(batch) < BATCH_LIMIT:
                    try:
                        batch.append(pending.get_nowait())
                    except queue.Empty:
                        break
                # An op whose request already gave up (and answered 503) is dropped, never written.
                batch = [op for op in batch if op.claim()]
                if not batch:
                    continue
                try:
                    # Never write into a file the server no longer serves, and never acknowledge a commit
                    # that went into one: the file may go between the two checks, not after the second.
                    self.check()
                    if conn is None:
                        conn = writer_connection(self.path, self.synchronous)
                        self._busy_ms = 30000  # connect's busy timeout
                    self._commit(conn, batch)
                    self.check()
                except Exception as exc:
                    failure = exc if isinstance(exc, StoreUnavailable) else None
                    failure = failure or StoreUnavailable(f"the decision log could not commit: {exc}")
                    for op in batch:
                        op.result, op.error = None, failure
                    if conn is not None:  # open again next time: the file may be back, or a new one in place
                        try:
                            conn.close()
                        finally:
                            conn = None
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
            for op in batch:
                op.finish()
            if conn is not None and time.monotonic() - checkpointed >= CHECKPOINT_EVERY:
                checkpoint(conn)
                checkpointed = time.monotonic()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        """Commit the batch's ops, all but those whose deadline passes first: each of those gets a
        ``StoreUnavailable`` error and nothing of it is written."""
        batch = list(batch)
        while batch:
            deadline = min(op.deadline for op in batch)
            if self._begin(conn, deadline, batch):
                try:
                    if _run_merged(conn, batch) or self._run_one_by_one(conn, batch, deadline):
                        if time.monotonic() < deadline:
                            conn.execute("COMMIT")
                            return
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            now = time.monotonic()
            for op in batch:
                if op.deadline <= now:
                    op.result, op.error = None, StoreUnavailable(f"no commit within {self.commit_timeout} s")
            batch = [op for op in batch if op.deadline > now]

    def _begin(self, conn: sqlite3.Connection, deadline: float, batch: list[_Op] = ()) -> bool:
        """Start a write transaction for ``batch``, waiting for SQLite's lock until ``deadline``; False when it
        stayed taken."""
        wait_ms = int((deadline - time.monotonic()) * 1000)
        if wait_ms <= 0:
            return False
        # Set only when it is off by more than BUSY_SLACK_MS: each statement can cost the writer a switch
        # interval (see _run_merged), and the oldest op's deadline is mostly about commit_timeout away.
        if abs(self._busy_ms - wait_ms) > BUSY_SLACK_MS:
            conn.execute(f"PRAGMA busy_timeout={wait_ms}")
            self._busy_ms = wait_ms
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return False
            raise
        return True

    def _run_one_by_one(self, conn: sqlite3.Connection, batch: list[_Op], deadline: float) -> bool:
        """Roll back what :func:`_run_merged` did and run the ops again, each under a savepoint; False when
        SQLite's lock could not be had again before ``deadline``."""
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if not self._begin(conn, deadline, batch):
            return False
        for op in batch:
            op.result, op.error = None, None
            conn.execute("SAVEPOINT op")
            try:
                op.result = op.fn(conn)
                conn.execute("RELEASE op")
            except Exception as exc:  # one failing op does not sink its batch
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                op.error = exc
        return True

    # -- reads --------------------------------------------------------------------------------

    def read(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        return self._read(sql, params, True)

    def read_rows(self, sql: str, params: tuple | dict = ()) -> list[tuple]:
        """As :meth:`read`, the rows as tuples: for reads of many thousands of rows (a dict each costs more
        than the row)."""
        return self._read(sql, params, False)

    def _read(self, sql: str, params: tuple | dict, as_dicts: bool) -> list:
        lock, kept = self._read_conns[threading.current_thread() is threading.main_thread()]
        with lock:
            try:
                if kept[1] != os.getpid():  # the first read, or the first after a fork
                    kept[0] = connect(self.path, self.synchronous, create=False)
                    kept[0].row_factory = sqlite3.Row
                    kept[1] = os.getpid()
                if as_dicts:
                    return [dict(row) for row in kept[0].execute(sql, params)]
                cursor = kept[0].cursor()
                cursor.row_factory = None
                return cursor.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"the decision log could not be read: {exc}") from exc

    # -- the log's operations -----------------------------------------------------------------
