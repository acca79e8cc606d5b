"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary folder, one server on a Unix socket there.

The server refuses to run as root, so as root the cluster belongs to an unprivileged user (``pgtest``, made
when missing) and runs through ``runuser``. ``Cluster.database()`` makes a fresh empty database and returns
its URL. Without PostgreSQL's binaries the tests that need it are skipped, except under ``CI=true``, where
they fail: CI installs PostgreSQL (``.ci/run``).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

USER = "pgtest"


def binaries() -> Path | None:
    """The folder of initdb/pg_ctl: the newest /usr/lib/postgresql/<n>/bin, or the one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class Cluster:
    """One PostgreSQL server for a test session; ``stop`` ends it and removes its folder."""

    def __init__(self, fsync: bool = False):
        self.bin = binaries()
        if self.bin is None:
            raise FileNotFoundError("PostgreSQL's binaries (initdb, pg_ctl) are not installed")
        self.root = os.geteuid() == 0
        if self.root and subprocess.run(["id", "-u", USER], capture_output=True).returncode != 0:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True
            )
        self.folder = Path(tempfile.mkdtemp(prefix="ranker-pg-"))
        self.folder.chmod(0o755)
        if self.root:
            shutil.chown(self.folder, USER, USER)
        self.data = self.folder / "data"
        self.port = 5432 + int(uuid.uuid4().int % 20000)  # names the socket file only: no TCP listener
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])
        options = f"-c listen_addresses='' -k {self.folder} -p {self.port} -c max_connections=200"
        if not fsync:  # tests kill clients, never the server: fsync only costs them time
            options += " -c fsync=off -c full_page_writes=off"
        self._run(
            [
                str(self.bin / "pg_ctl"),
                "start",
                "-w",
                "-D",
                str(self.data),
                "-l",
                str(self.folder / "log"),
                "-o",
                options,
            ]
        )
        self.admin_url = self.url("postgres")

    def _run(self, argv: list[str]) -> None:
        if self.root:
            argv = ["runuser", "-u", USER, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=self.folder)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.folder}&port={self.port}"

    def database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def copy(self, url: str) -> str:
        """A new database copied from the one ``url`` names (whose sessions are ended first); its URL."""
        import psycopg

        source = url.split("/")[3].split("?")[0]
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (source,),
            )
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {source}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run([str(self.bin / "pg_ctl"), "stop", "-m", "immediate", "-D", str(self.data)])
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def log_rows(data_dir: Path, url: str | None, sql: str, params: tuple = ()) -> list[dict]:
    """Rows of a query (``?`` placeholders) on a server's decision log: its SQLite file, or the PostgreSQL
    database ``url`` names."""
    if url is None:
        import sqlite3

        conn = sqlite3.connect(Path(data_dir) / "ranker.db")
        conn.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in conn.execute(sql, params)]
        finally:
            conn.close()
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url) as conn:
        return conn.cursor(row_factory=dict_row).execute(sql.replace("?", "%s"), params).fetchall()
