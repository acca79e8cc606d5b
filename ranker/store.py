"""The decision log: SQLite in WAL mode, written through group commits.

Every acknowledged Rank, Reward and Activate is committed before its response. Requests of one process
hand their writes to a single writer thread, which runs everything queued so far in one transaction and
then wakes each request with its own result: many requests share one fsync, each still waits for it.

The writer threads of all processes take turns through an exclusive ``flock`` on ``ranker.lock`` around
each transaction. SQLite's own lock would serialise them too, but a writer that finds it taken sleeps in
the busy handler (1, 2, 5, ... up to 100 ms at a time) instead of waking when it is released: that made
hundreds of milliseconds of tail latency with two workers. Waiting on the flock also lets the queue of the
waiting process grow, so its next transaction carries more requests.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from .errors import StoreUnavailable
from .migrations import migrations

BATCH_LIMIT = 512


def timestamp(moment: datetime) -> str:
    """A time as the log writes it: ISO 8601 in UTC with microseconds, sorting as text in time order."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """A time read from the log (or an import); without a zone it is UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class _Op:
    """One write: ``fn`` to run, and for a plain single-row insert, its statement head and values."""

    __slots__ = ("fn", "insert", "result", "error", "_done", "_claim")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], insert: tuple[str, tuple] | None) -> None:
        self.fn = fn
        self.insert = insert
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


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
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


def migrate(path: Path) -> list[str]:
    """Apply pending migrations (serialised across processes by the write turn); return their names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with write_turn(path):
        conn = connect(path)
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


class Store:
    """Writes of one process go through one writer thread; reads use their own connection."""

    def __init__(self, path: Path, synchronous: str = "FULL", commit_timeout: float = 10.0):
        self.path = Path(path)
        self.synchronous = synchronous
        self.commit_timeout = commit_timeout
        migrate(self.path)
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_pid: int | None = None
        self._start_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._read_conn: sqlite3.Connection | None = None
        self._read_pid: int | None = None

    # -- writes -------------------------------------------------------------------------------

    def write(self, fn: Callable[[sqlite3.Connection], Any], insert: tuple[str, tuple] | None = None) -> Any:
        """Run ``fn(conn)`` inside the next group commit and return its result once committed.

        ``fn`` may run a second time after its batch was rolled back, so it must only run SQL on ``conn``.
        ``insert`` describes ``fn`` when it is a single-row ``INSERT OR IGNORE`` returning whether the row
        went in: the statement up to ``VALUES `` and the row's values. Such ops of one batch go out as
        one multi-row statement.
        """
        self._ensure_writer()
        op = _Op(fn, insert)
        self._queue.put(op)
        if not op.wait(self.commit_timeout):
            if op.claim():  # the writer never took it, and now never will: nothing was written
                raise StoreUnavailable(f"no commit within {self.commit_timeout} s")
            op.wait(-1)  # it is inside a transaction already: answer with what that transaction did
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
        lock = open(self.path.with_suffix(".lock"), "a")  # noqa: SIM115 (held for the thread's lifetime)
        while True:
            batch = [pending.get()]
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
                    if conn is None:
                        conn = connect(self.path, self.synchronous)
                    self._commit(conn, batch)
                except Exception as exc:
                    failure = StoreUnavailable(f"the decision log could not commit: {exc}")
                    for op in batch:
                        op.result, op.error = None, failure
                    if conn is not None:
                        try:
                            conn.close()
                        finally:
                            conn = None
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
            for op in batch:
                op.finish()

    @staticmethod
    def _commit(conn: sqlite3.Connection, batch: list[_Op]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _run_merged(conn, batch):
                conn.execute("COMMIT")
                return
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
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
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- reads --------------------------------------------------------------------------------

    def read(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        with self._read_lock:
            if self._read_conn is None or self._read_pid != os.getpid():
                self._read_conn = connect(self.path, self.synchronous)
                self._read_conn.row_factory = sqlite3.Row
                self._read_pid = os.getpid()
            try:
                return [dict(row) for row in self._read_conn.execute(sql, params)]
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
        sql = (
            "INSERT INTO rewards (decision_id, value, received_at) "
            "SELECT id, ?, ? FROM decisions WHERE loop = ? AND event_id = ? AND slots IS NULL"
        )
        return self.write(lambda conn: conn.execute(sql, (value, at, loop, event_id)).rowcount == 1)

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
        sql = "UPDATE decisions SET activated_at = coalesce(activated_at, ?) WHERE loop = ? AND event_id = ?"
        return self.write(lambda conn: conn.execute(sql, (at, loop, event_id)).rowcount == 1)

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


def served_versions(conn: sqlite3.Connection, loop: str, since: str) -> set[str]:
    """The model versions that served the loop's decisions from ``since`` on (the trainer's connection)."""
    rows = conn.execute(
        "SELECT DISTINCT model_version FROM decisions WHERE loop = ? AND created_at >= ?", (loop, since)
    ).fetchall()
    return {version for (version,) in rows if version is not None}
