"""The trainer's process: ``ranker train`` runs it, and ``ranker serve`` keeps one running beside gunicorn.

:func:`run` runs a :class:`~ranker.learning.trainer.Trainer` in this process until SIGTERM or SIGINT (or its parent
process is gone); :class:`Supervisor` starts ``python -m ranker train`` and starts it again when it exits.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from ..core.settings import Settings
from ..outbox.delivery import Sender
from .trainer import Trainer

log = logging.getLogger("ranker.trainer")


def run(
    settings: Settings, *, once: bool = False, parent_pid: int | None = None, **options: Any
) -> dict[str, Any] | None:
    """Run a trainer in this process until SIGTERM or SIGINT (``once``: learn what is due, then return).

    With ``parent_pid`` it also stops when that process is gone (a killed ``ranker serve`` leaves no
    trainer behind). With an ``[outbox]`` delivery set, a thread of this process delivers the outbox
    (:class:`ranker.outbox.delivery.Sender`). ``ranker train`` calls this; ``options`` go to :class:`Trainer`.
    """
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if parent_pid is not None:

        def watch_parent() -> None:
            while not stop.wait(0.5):
                if os.getppid() != parent_pid:
                    log.warning("parent process %d is gone; stopping", parent_pid)
                    stop.set()

        threading.Thread(target=watch_parent, name="ranker-trainer-parent", daemon=True).start()
    with Trainer(settings, **options) as trainer:
        if not once:
            if settings.outbox.delivery is not None:  # approved messages go out from this process too
                Sender(settings.outbox, trainer.database, stop, trainer.leading).start()  # on the leader only
            trainer.run_forever(stop)
            return None
        with trainer.lease(stop) as held:
            return trainer.run_once() if held else None


class Supervisor:
    """Keeps one trainer process (``python -m ranker train``) running until stopped.

    ``ranker serve`` runs one beside the gunicorn master. The trainer inherits the environment, so it reads
    the same settings (``RANKER_CONFIG``, ``RANKER_*``). When it exits for any reason it is started again,
    after ``backoff`` seconds, doubling up to ``max_backoff`` while it keeps dying within a minute; started
    again, it only opens an existing decision log.
    """

    def __init__(
        self,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ):
        self.argv = argv or [sys.executable, "-m", "ranker", "train", "--parent-pid", str(os.getpid())]
        # A trainer started again never creates the decision log: one deleted while serving stays deleted.
        self.restart_argv = self.argv if argv else [*self.argv, "--no-create-database"]
        self.env = env
        self.backoff, self.max_backoff = backoff, max_backoff
        self.restarts = 0
        self.process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="ranker-trainer-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def halt(self) -> None:
        """Start no new trainer from now on (safe in a signal handler); ``stop`` ends the running one."""
        self._stop.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the trainer (SIGTERM, then SIGKILL after ``timeout``) and stop restarting it."""
        with self._lock:
            self._stop.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._thread.join(timeout)

    def _watch(self) -> None:
        delay = self.backoff
        while True:
            with self._lock:
                if self._stop.is_set():
                    return
                self.process = subprocess.Popen(self.restart_argv if self.restarts else self.argv, env=self.env)
                started = time.monotonic()
            while self.process.poll() is None:
                if self._stop.wait(0.2):
                    return
            if self._stop.is_set():
                return
            if time.monotonic() - started > 60:
                delay = self.backoff
            log.error(
                "trainer (pid %d) exited with %s; starting it again in %.1f s",
                self.process.pid,
                self.process.returncode,
                delay,
            )
            self.restarts += 1
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.max_backoff)
