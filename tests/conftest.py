"""Fixtures: ``app`` on a temporary SQLite file, ``client``, ``runner``, and ``serve`` for a real gunicorn."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from ranker.app import create_app
from ranker.settings import hash_key

RANK_KEY = "rank-key-0123456789"
ADMIN_KEY = "admin-key-0123456789"
OTHER_KEY = "other-loop-key-0123456789"

KEYED_CONFIG = f"""
[loops.cards]
policy = "default"
keys = [
  {{ role = "rank", sha256 = "{hash_key(RANK_KEY)}" }},
  {{ role = "admin", sha256 = "{hash_key(ADMIN_KEY)}" }},
]

[loops.other]
keys = [{{ role = "rank", sha256 = "{hash_key(OTHER_KEY)}" }}]
"""


@pytest.fixture
def app(tmp_path: Path):
    return create_app({"data_dir": tmp_path})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def service(app):
    return app.extensions["ranker"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A real ``ranker serve`` (gunicorn master + workers) on a free loopback port."""

    def __init__(
        self,
        data_dir: Path,
        config: str | None = None,
        python: str = sys.executable,
        cwd: Path | None = None,
        **settings: str,
    ):
        self.data_dir = data_dir
        self.workers = int(settings.get("workers", 2))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
        env.update({"RANKER_DATA_DIR": str(data_dir), "RANKER_PORT": str(self.port)})
        env.update({f"RANKER_{k.upper()}": str(v) for k, v in settings.items()})
        argv = [python, "-m", "ranker", "serve"]
        if config is not None:
            path = data_dir / "ranker.toml"
            path.write_text(config)
            argv += ["--config", str(path)]
        self.log = open(data_dir / "server.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until a worker answers, every worker has booted and the trainer runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {(self.data_dir / 'server.log').read_text()}")
            try:
                healthy = requests.get(self.url + "/healthz", timeout=1).status_code == 200
            except (requests.ConnectionError, requests.Timeout):  # workers still booting
                healthy = False
            if healthy and len(self.worker_pids()) == self.workers and self.trainer_pid() is not None:
                return
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

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

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """Start real servers: ``serve(config=None, **settings)``; all are stopped after the test."""
    servers: list[Server] = []

    def start(config: str | None = None, **settings: str) -> Server:
        data_dir = tmp_path / f"server{len(servers)}"
        data_dir.mkdir()
        servers.append(Server(data_dir, config, **settings))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
