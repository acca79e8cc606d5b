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
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils

from ..errors import StoreUnavailable
from .migrations import migrations

BATCH_LIMIT = 512
# A loop's configuration set through the API (ranker.loopconfig combines it with the settings file).
LOOP_CONFIG_SELECT = "SELECT service, policy, updated_at FROM loop_config WHERE loop = ?"
LOOP_CONFIG_UPSERT = (
    "INSERT INTO loop_config (loop, service, policy, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(loop) DO UPDATE SET service = excluded.service, policy = excluded.policy, "
    "updated_at = excluded.updated_at"
)
BUSY_SLACK_MS = 100  # how far past a deadline SQLite's busy handler may keep the writer waiting

log = logging.getLogger("ranker")


def timestamp(moment: datetime) -> str:
    """A time as the log writes it: ISO 8601 in UTC with microseconds, sorting as text in time order."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """A time read from the log (or an import); without a zone it is UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class _Op:
    """One write: ``fn`` to run, and for a plain single-row insert, its statement head and values."""

    __slots__ = ("fn", "insert", "deadline", "result", "error", "_done", "_claim")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], Any], insert: tuple[str, tuple] | None, deadline: float
    ) -> None:
        self.fn = fn
        self.insert = insert
        self.deadline = deadline  # time.monotonic() by which it is committed, or its request answers 503
        self.result: Any = None
        self.error: BaseException | None = None
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


def loop_config_row(conn: sqlite3.Connection, loop: str) -> tuple | None:
    """The loop's ``(service, policy, updated_at)`` set through the API, read on an open connection."""
    return conn.execute(LOOP_CONFIG_SELECT, (loop,)).fetchone()


def save_loop_config(conn: sqlite3.Connection, loop: str, service: str | None, policy: str | None, at: str) -> None:
    conn.execute(LOOP_CONFIG_UPSERT, (loop, service, policy, at))


def add_reward(conn: sqlite3.Connection, loop: str, event_id: str, value: float, at: str) -> bool:
    """:meth:`Store.add_reward` inside the caller's transaction (e.g. a triage approval that also activates)."""
    sql = (
        "INSERT INTO rewards (decision_id, value, received_at) "
        "SELECT id, ?, ? FROM decisions WHERE loop = ? AND event_id = ? AND slots IS NULL"
    )
    return conn.execute(sql, (value, at, loop, event_id)).rowcount == 1


def activate(conn: sqlite3.Connection, loop: str, event_id: str, at: str) -> bool:
    """:meth:`Store.activate` inside the caller's transaction."""
    sql = "UPDATE decisions SET activated_at = coalesce(activated_at, ?) WHERE loop = ? AND event_id = ?"
    return conn.execute(sql, (at, loop, event_id)).rowcount == 1


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
            except Exception:
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
        except sqlite3.Error:
            return False
        for member in group:
            member.result = True
        i += len(group)
    return True


def file_identity(path: Path) -> tuple[int, int]:
    """What tells one file from another at ``path``: its device and inode (``FileNotFoundError`` if none)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _is_busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class Store:
    """Writes of one process go through one writer thread; reads use their own connection.

    ``create`` False (gunicorn's workers): the database must exist already; a store that finds none answers
    503 to every write and fails :meth:`check` instead of creating one.
    """

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
        self._read_lock = threading.Lock()
        self._read_conn: sqlite3.Connection | None = None
        self._read_pid: int | None = None

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

    def write(self, fn: Callable[[sqlite3.Connection], Any], insert: tuple[str, tuple] | None = None) -> Any:
        """Run ``fn(conn)`` inside the next group commit and return its result once committed.

        ``fn`` may run a second time after its batch was rolled back, so it must only run SQL on ``conn``.
        ``insert`` describes ``fn`` when it is a single-row ``INSERT OR IGNORE`` returning whether the row
        went in: the statement up to ``VALUES `` and the row's values. Such ops of one batch go out as
        one multi-row statement. Raises ``StoreUnavailable`` when it is not committed within
        ``commit_timeout`` seconds; it is then not written either.
        """
        self._ensure_writer()
        deadline = time.monotonic() + self.commit_timeout
        op = _Op(fn, insert, deadline)
        self._queue.put(op)
        if not op.wait(self.commit_timeout):
            if op.claim():  # the writer never took it, and now never will: nothing was written
                raise StoreUnavailable(f"no commit within {self.commit_timeout} s")
            # Inside a transaction already: the writer rolls it back once the deadline has passed, so this
            # wait lasts at most as long as a COMMIT that started just before it.
            op.wait(-1)
        if isinstance(op.error, sqlite3.Error):  # e.g. a full disk: the log is what failed, not the request
            raise StoreUnavailable(f"the decision log could not write: {op.error}") from op.error
        if op.error is not None:
            raise op.error
        return op.result

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
                        conn = connect(self.path, self.synchronous, create=False)
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

    def _commit(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        """Commit the batch's ops, all but those whose deadline passes first: each of those gets a
        ``StoreUnavailable`` error and nothing of it is written."""
        batch = list(batch)
        while batch:
            deadline = min(op.deadline for op in batch)
            if self._begin(conn, deadline):
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

    def _begin(self, conn: sqlite3.Connection, deadline: float) -> bool:
        """Start a write transaction, waiting for SQLite's lock until ``deadline``; False when it stayed taken."""
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
        if not self._begin(conn, deadline):
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
        with self._read_lock:
            try:
                if self._read_conn is None or self._read_pid != os.getpid():
                    self._read_conn = connect(self.path, self.synchronous, create=False)
                    self._read_conn.row_factory = sqlite3.Row
                    self._read_pid = os.getpid()
                if as_dicts:
                    return [dict(row) for row in self._read_conn.execute(sql, params)]
                cursor = self._read_conn.cursor()
                cursor.row_factory = None
                return cursor.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"the decision log could not be read: {exc}") from exc

    # -- the log's operations -----------------------------------------------------------------

    def record_decision(self, row: dict[str, Any]) -> bool:
        """Insert a decision; False when the loop already has this event id."""
        head = f"INSERT OR IGNORE INTO decisions ({', '.join(row)}) VALUES "
        sql = head + "(" + ", ".join("?" * len(row)) + ")"
        values = tuple(row.values())
        return self.write(lambda conn: conn.execute(sql, values).rowcount == 1, insert=(head, values))

    def add_reward(self, loop: str, event_id: str, value: float, at: str) -> bool:
        """Keep a reward for a logged single-slot decision; False when the loop has no such event (or it is
        multi-slot: its rewards name their slots, :meth:`add_slot_rewards`)."""
        return self.write(lambda conn: add_reward(conn, loop, event_id, value, at))

    def add_slot_rewards(self, loop: str, event_id: str, values: list[tuple[str, float]], at: str) -> None:
        """Keep the rewards of a multi-slot decision's slots, all or none.

        Raises ``LookupError`` when the loop has no such event, ``ValueError`` naming what is wrong when the
        decision is single-slot or a slot id is not one of its slots.
        """

        def insert(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT id, slots FROM decisions WHERE loop = ? AND event_id = ?", (loop, event_id))
            found = row.fetchone()
            if found is None:
                raise LookupError(event_id)
            decision_id, slots = found
            if slots is None:
                raise ValueError("the event was ranked by the single-slot API; reward it there")
            known = {slot["id"] for slot in json.loads(slots)}
            unknown = [slot_id for slot_id, _ in values if slot_id not in known]
            if unknown:
                raise ValueError(f"the event has no slot {unknown[0]!r}")
            conn.executemany(
                "INSERT INTO rewards (decision_id, value, received_at, slot_id) VALUES (?, ?, ?, ?)",
                [(decision_id, value, at, slot_id) for slot_id, value in values],
            )

        self.write(insert)

    def activate(self, loop: str, event_id: str, at: str) -> bool:
        """Mark a decision activated (the first activation counts); False when there is no such event."""
        return self.write(lambda conn: activate(conn, loop, event_id, at))

    def decision(self, loop: str, event_id: str) -> dict[str, Any] | None:
        rows = self.read("SELECT * FROM decisions WHERE loop = ? AND event_id = ?", (loop, event_id))
        return rows[0] if rows else None

    def rewards(self, loop: str, event_id: str) -> list[dict[str, Any]]:
        return self.read(
            "SELECT r.value, r.received_at FROM rewards r JOIN decisions d ON d.id = r.decision_id "
            "WHERE d.loop = ? AND d.event_id = ? ORDER BY r.id",
            (loop, event_id),
        )

    def counts(self) -> dict[str, int]:
        row = self.read(
            "SELECT (SELECT count(*) FROM decisions) AS decisions, (SELECT count(*) FROM rewards) AS rewards"
        )[0]
        return dict(row)

    # -- a loop's configuration and learning state ---------------------------------------------

    def loop_config(self, loop: str) -> dict[str, Any] | None:
        """The loop's configuration set through the API: ``{"service", "policy", "updated_at"}``, or None."""
        rows = self.read(LOOP_CONFIG_SELECT, (loop,))
        return rows[0] if rows else None

    def save_loop_config(self, loop: str, service: str | None, policy: str | None, updated_at: str) -> None:
        """Store the loop's configuration set through the API (JSON texts; None for none)."""
        self.write(lambda conn: save_loop_config(conn, loop, service, policy, updated_at))

    def apprentice_window(self, loop: str) -> str | None:
        """The trainer's stored Apprentice window of the loop (JSON), or None."""
        rows = self.read("SELECT apprentice FROM trainer_state WHERE loop = ?", (loop,))
        return rows[0]["apprentice"] if rows else None

    def reset_learning(self, loop: str, fingerprint: str, model: bytes, publish: Callable[[], str]) -> str:
        """Make ``model`` the trainer's starting point for the decisions logged from now on, and ``publish`` it
        in the same write turn (a trainer that learned on from the previous model then finds the generation
        raised and cannot publish over it). Returns what ``publish`` returned."""
        now = timestamp(datetime.now(UTC))
        published: list[str] = []

        def reset(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO trainer_state (loop, settings, updated_at) VALUES (?, ?, ?) ON CONFLICT(loop) DO NOTHING",
                (loop, fingerprint, now),
            )
            conn.execute(
                "UPDATE trainer_state SET settings = ?, model = ?, learned = 0, skipped = 0, published_learned = 0, "
                "last_decision_id = (SELECT coalesce(max(id), 0) FROM decisions WHERE loop = ?), "
                "generation = generation + 1, updated_at = ? WHERE loop = ?",
                (fingerprint, model, loop, now, loop),
            )
            published.append(publish())

        self.write(reset)
        return published[-1]

    def log_range(self, loop: str) -> tuple[str | None, str | None]:
        """The times of the loop's first and last logged decisions (None, None when there is none)."""
        row = self.read(
            "SELECT min(created_at) AS first, max(created_at) AS last FROM decisions WHERE loop = ?", (loop,)
        )
        return row[0]["first"], row[0]["last"]

    def delete_log(self, loop: str) -> None:
        """Delete the loop's decisions and their rewards."""

        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM rewards WHERE decision_id IN (SELECT id FROM decisions WHERE loop = ?)", (loop,))
            conn.execute("DELETE FROM decisions WHERE loop = ?", (loop,))

        self.write(delete)

    # -- counts for the metrics ------------------------------------------------------------------

    def ping(self) -> None:
        """A read of the log (StoreUnavailable when it cannot be read)."""
        self.read("SELECT 1")

    def learning_counts(self) -> dict[str, dict[str, Any]]:
        """Per loop the trainer has state for: ``{"last_decision_id", "learned", "skipped"}``."""
        rows = self.read("SELECT loop, last_decision_id, learned, skipped FROM trainer_state")
        return {row["loop"]: row for row in rows}

    def id_range(self, loop: str) -> tuple[int | None, int | None]:
        """The loop's first and last decision ids (None, None when it has none)."""
        row = self.read(
            "SELECT (SELECT min(id) FROM decisions WHERE loop = :loop) AS first, "
            "(SELECT max(id) FROM decisions WHERE loop = :loop) AS last",
            {"loop": loop},
        )[0]
        return row["first"], row["last"]

    def count_ids(self, loop: str, after_id: int, through_id: int) -> int:
        """How many of the loop's decisions have ``after_id < id <= through_id``."""
        sql = "SELECT count(*) AS n FROM decisions WHERE loop = ? AND id > ? AND id <= ?"
        return self.read(sql, (loop, after_id, through_id))[0]["n"]

    def next_decision_time(self, loop: str, after_id: int) -> str | None:
        """When the loop's first decision after ``after_id`` was made, or None."""
        sql = "SELECT created_at FROM decisions WHERE loop = ? AND id > ? ORDER BY id LIMIT 1"
        rows = self.read(sql, (loop, after_id))
        return rows[0]["created_at"] if rows else None

    # -- explanations and discovery -----------------------------------------------------------

    def exposures(self, loop: str, since: str) -> tuple[int, dict[str, int]]:
        """The loop's decisions from ``since`` on: how many, and how many chose each action (single-slot)."""
        rows = self.read(
            "SELECT reward_action_id AS action, count(*) AS n FROM decisions "
            "WHERE loop = ? AND created_at >= ? GROUP BY reward_action_id",
            (loop, since),
        )
        return sum(r["n"] for r in rows), {r["action"]: r["n"] for r in rows if r["action"] is not None}

    def event_rewards(self, loop: str, event_id: str) -> list[dict[str, Any]]:
        """Every reward of a decision, in the order received, with its slot (null for a single-slot decision)."""
        return self.read(
            "SELECT r.value, r.received_at, r.slot_id FROM rewards r JOIN decisions d ON d.id = r.decision_id "
            "WHERE d.loop = ? AND d.event_id = ? ORDER BY r.id",
            (loop, event_id),
        )
