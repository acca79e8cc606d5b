"""A real ``ranker serve`` on a free loopback port: for the tests, the benchmarks and the simulations.

One harness for every place that starts a server, so they all wait for the same readiness (every worker booted
and listening, the trainer running) and stop it the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .core.settings import Settings


def wait_for(condition, seconds: float = 30.0, poll: float = 0.05) -> bool:
    """Whether ``condition()`` comes true within ``seconds`` (asked every ``poll`` seconds): for tests and
    scripts waiting on another process (a trainer's pass, a sender, a browser's page)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return condition()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time so far of the processes ``pids`` (Linux /proc); a process gone counts nothing."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Server:
    """``python -m ranker serve`` with its own data folder, on a free loopback port.

    ``config`` is the text of a settings file (written into the data folder); ``settings`` become
    ``RANKER_<NAME>`` variables (``workers=1``, ``null_endpoint=1``). Ready once ``/healthz`` answers 200, every
    worker has booted and listens on the port, and the trainer runs. A context manager; ``stop`` ends it.
    """

    def __init__(
        self,
        data_dir: Path,
        config: str | None = None,
        *,
        python: str = sys.executable,
        cwd: Path | None = None,
        port: int = 0,
        ready_timeout: float = 60,
        **settings: Any,
    ):
        self.data_dir = Path(data_dir)
        self.workers = int(settings.get("workers", Settings.model_fields["workers"].default))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
        env.update({"RANKER_DATA_DIR": str(self.data_dir), "RANKER_PORT": str(self.port)})
        env.update({f"RANKER_{k.upper()}": str(v) for k, v in settings.items()})
        argv = [python, "-m", "ranker", "serve"]
        if config is not None:
            path = self.data_dir / "ranker.toml"
            path.write_text(config)
            argv += ["--config", str(path)]
        self.log_path = self.data_dir / "server.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115  (closed by stop)
        self.process = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until a worker answers, every worker has booted and listens, and the trainer runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-4000:]}")
            pids = self.worker_pids()
            # Connections made before every worker listens would all go to the first ones.
            if (
                self.healthy()
                and len(pids) == self.workers
                and all(self.listens(pid) for pid in pids)
                and self.trainer_pid() is not None
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready within {timeout} s")

    def children(self, pid: int) -> list[tuple[int, str]]:
        """(pid, command line) of a process's children."""
        out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True)
        rows = [line.split(None, 1) for line in out.stdout.splitlines() if line.strip()]
        return [(int(row[0]), row[1] if len(row) > 1 else "") for row in rows]

    def master_pid(self) -> int | None:
        """The gunicorn master, a child of ``ranker serve``."""
        return next((pid for pid, args in self.children(self.process.pid) if "gunicorn" in args), None)

    def worker_pids(self) -> list[int]:
        master = self.master_pid()
        return [] if master is None else [pid for pid, _ in self.children(master)]

    def trainer_pid(self) -> int | None:
        return next((pid for pid, args in self.children(self.process.pid) if "-m ranker train" in args), None)

    def descendants(self) -> list[int]:
        """Every process the server runs: the gunicorn master, its workers, the trainer (Linux /proc)."""
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    children = [int(p) for p in (task / "children").read_text().split()]
                    found += children
                    todo += children
            except OSError:
                continue
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of every process of the server (Linux /proc)."""
        return cpu_seconds(self.descendants())

    def listens(self, pid: int) -> bool:
        """Whether process ``pid`` holds a socket listening on the server's port."""
        return self.sockets(pid, "0A") > 0

    def sockets(self, pid: int, state: str = "01") -> int:
        """How many TCP sockets on the server's port process ``pid`` holds in ``state`` (the kernel's code: "01"
        established, "0A" listening; Linux /proc)."""
        inodes = set()
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            return 0
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                port, found, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
                count += port == self.port and found == state and inode in inodes
        return count

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; closes the log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
