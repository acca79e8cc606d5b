"""The database as an engine choice: one object per engine behind one interface, chosen by the settings.

:func:`open_database` gives a :class:`SqliteDatabase` (the decision log in ``data_dir``, models as files beside
it) or, with ``database_url`` set, a :class:`ranker.store.postgres.PostgresDatabase` (log, models and
configuration in one PostgreSQL database shared by every node). Callers never branch on the engine; what
they get from either:

- ``migrate(create)``, ``connect(create)`` (a connection for a process of its own: the trainer, an import),
  ``open_log()`` (an existing, migrated log), ``store(commit_timeout, create)`` (the service's group commit);
- ``write_turn()``: what serialises a writer with the group commits (SQLite: the lock file; PostgreSQL: every
  transaction takes it, see :func:`ranker.store.sqlite.transaction`);
- ``identity()`` / ``check(identity)``: the file a process opened is still the log (PostgreSQL: nothing to
  check);
- ``lease(stop)`` / ``leading()``: the trainer's leadership, one trainer per log;
- ``config_turn()``: configuration changes through the API, one at a time; ``triage_turn()``: triage passes;
- ``models``: the published models and the ``CURRENT`` pointer (:class:`FileModels` or the database's).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import models as files
from .sqlite import Store, connect, file_identity, migrate, open_log, write_turn

log = logging.getLogger("ranker")
_opened: dict[tuple[str, Path], Any] = {}
_opened_lock = threading.Lock()


def open_database(settings: Any) -> Any:
    """The database the settings name: PostgreSQL when ``database_url`` is set, else SQLite in ``data_dir``."""
    if settings.database_url is not None:
        from .postgres import PostgresDatabase

        key = (settings.database_url.get_secret_value(), Path(settings.data_dir))
        with _opened_lock:  # one per database and process: it holds the process's connection pool
            if key not in _opened:
                _opened[key] = PostgresDatabase(*key)
            return _opened[key]
    return SqliteDatabase(settings.database_path, settings.synchronous, Path(settings.data_dir))


class FileModels:
    """Published models as files: ``<data_dir>/models/<loop>/<version>.vw`` and ``CURRENT``
    (:mod:`ranker.store.models`)."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir

    def publish(self, loop: str, model: bytes, conn: Any = None) -> str:
        return files.publish(self.data_dir, loop, model)

    def current(self, loop: str) -> tuple[str, Path] | None:
        return files.current(self.data_dir, loop)

    def served(self, loop: str) -> str | None:
        """The version ``CURRENT`` names (None before the first), without its model."""
        current = files.current(self.data_dir, loop)
        return current[0] if current else None

    def stamp(self, loop: str) -> Any:
        return files.stamp(self.data_dir, loop)

    def versions(self, loop: str) -> list[str]:
        return files.versions(self.data_dir, loop)

    def path(self, loop: str, version: str) -> Path | None:
        path = files.loop_dir(self.data_dir, loop) / f"{version}.vw"
        return path if path.exists() else None

    def created(self, loop: str, version: str) -> datetime:
        return datetime.fromtimestamp(os.stat(files.loop_dir(self.data_dir, loop) / f"{version}.vw").st_mtime, UTC)

    def prune(self, loop: str, keep: int, also_keep: set[str] = frozenset(), conn: Any = None) -> list[str]:
        return files.prune(self.data_dir, loop, keep, also_keep)


class SqliteDatabase:
    """The decision log in one SQLite file (WAL), the models as files beside it."""

    engine = "sqlite"

    def __init__(self, path: Path, synchronous: str = "FULL", data_dir: Path | None = None):
        self.path = Path(path)
        self.synchronous = synchronous
        self.data_dir = data_dir or self.path.parent
        self.models = FileModels(self.data_dir)
        self.name = str(self.path)
        self.errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        self._held = False

    def migrate(self, create: bool = True) -> list[str]:
        return migrate(self.path, create=create)

    def connect(self, create: bool = True) -> sqlite3.Connection:
        return connect(self.path, self.synchronous, create=create)

    def open_log(self) -> sqlite3.Connection:
        return open_log(self.path, self.synchronous)

    def store(self, commit_timeout: float = 10.0, create: bool = True) -> Store:
        return Store(self.path, self.synchronous, commit_timeout, create)

    def write_turn(self) -> contextlib.AbstractContextManager:
        return write_turn(self.path)

    def identity(self) -> Any:
        return file_identity(self.path)

    def check(self, identity: Any) -> bool:
        """Whether the path still names the file of ``identity``."""
        try:
            return file_identity(self.path) == identity
        except FileNotFoundError:
            return False

    @contextlib.contextmanager
    def config_turn(self) -> Iterator[None]:
        with open(self.data_dir / "config.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def triage_turn(self) -> Iterator[None]:
        """One triage pass at a time on this log (the trainer's and a ``ranker triage run``)."""
        with open(self.data_dir / "triage.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def lease(self, stop: threading.Event, acquired: Callable[[], None] = lambda: None) -> Iterator[bool]:
        """Hold the data folder's trainer lock (yield True), or wait for it until ``stop`` (False)."""
        with open(self.data_dir / "trainer.lock", "w") as lock:
            waiting = False
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waiting:
                        logging.getLogger("ranker.trainer").info("another trainer holds %s; waiting for it", lock.name)
                        waiting = True
                    if stop.wait(0.2):
                        yield False
                        return
            acquired()
            self._held = True
            try:
                yield True
            finally:
                self._held = False

    def leading(self) -> bool:
        """Whether this process holds the lease (a lock on a local file stays held while it does)."""
        return self._held
