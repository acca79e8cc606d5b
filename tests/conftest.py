"""Fixtures: ``app`` on a temporary SQLite file, ``client``, ``runner``, and ``serve`` for a real gunicorn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ranker.app import create_app
from ranker.harness import Server
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
