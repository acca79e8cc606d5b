"""The decision log: SQLite in WAL mode, written through group commits.

Every acknowledged Rank, Reward and Activate is committed before its response. Requests of one process
hand their writes to a single writer thread, which runs everything queued so far in one transaction and
then wakes each request with its own result: many requests share one fsync, each still waits for it.
"""

from __future__ import annotations

import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from .errors import StoreUnavailable
from .migrations import migrations

BATCH_LIMIT = 512


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def migrate(path: Path) -> list[str]:
    """Apply pending migrations (serialised across processes by a lock file); return their names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = connect(path)
        try:
            db = sqlite_utils.Database(conn)
            pending = [m.name for m in migrations.pending(db)]
            migrations.apply(db)
            return pending
        finally:
            conn.close()


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

    def write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(conn)`` inside the next group commit and return its result once committed."""
        self._ensure_writer()
        op = _Op(fn)
        self._queue.put(op)
        if not op.done.wait(self.commit_timeout):
            raise StoreUnavailable(f"no commit within {self.commit_timeout} s")
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
        while True:
            batch = [pending.get()]
            while len(batch) < BATCH_LIMIT:
                try:
                    batch.append(pending.get_nowait())
                except queue.Empty:
                    break
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
            for op in batch:
                op.done.set()

    @staticmethod
    def _commit(conn: sqlite3.Connection, batch: list[_Op]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in batch:
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
        columns = ", ".join(row)
        marks = ", ".join("?" * len(row))
        sql = f"INSERT OR IGNORE INTO decisions ({columns}) VALUES ({marks})"
        values = tuple(row.values())
        return self.write(lambda conn: conn.execute(sql, values).rowcount == 1)

    def add_reward(self, loop: str, event_id: str, value: float, at: str) -> bool:
        """Keep a reward for a logged decision; False when the loop has no such event."""
        sql = (
            "INSERT INTO rewards (decision_id, value, received_at) "
            "SELECT id, ?, ? FROM decisions WHERE loop = ? AND event_id = ?"
        )
        return self.write(lambda conn: conn.execute(sql, (value, at, loop, event_id)).rowcount == 1)

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
