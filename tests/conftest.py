"""Fixtures: ``app`` on a temporary SQLite file, ``client``, ``runner``, and ``serve`` for a real gunicorn."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from postgres import Cluster, binaries

from ranker.app import create_app
from ranker.core.settings import hash_key
from ranker.harness import Server

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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL server for the session (tests/postgres.py); skipped without PostgreSQL's
    binaries, except under CI=true, where their absence fails the test."""
    if binaries() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs it")
        pytest.skip("PostgreSQL is not installed (CI installs it)")
    cluster = Cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def database_url(request) -> str | None:
    """None for SQLite; a fresh PostgreSQL database's URL for ``"postgresql"`` (a test's ``engine`` param)."""
    engine = getattr(request, "param", "sqlite")
    if engine == "sqlite":
        return None
    return request.getfixturevalue("pg_cluster").database()
