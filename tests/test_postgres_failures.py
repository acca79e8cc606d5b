"""A connection to PostgreSQL lost during COMMIT: the query reached the server, which commits it, and its answer
never comes back. The request cannot know whether it was written: it answers 503 in the error shape, and a
Rank retried with the same eventId finds its first attempt committed (409); a retried Reward is kept twice."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
import requests
from conftest import RANK_KEY
from postgres import log_rows
from signals_config import ACTIONS, CONFIG, SIGNALS_KEY

from ranker.app import create_app
from ranker.core.settings import load_settings

RANK = "/personalizer/v1.0/rank"
RANK_HEADERS = {"Ocp-Apim-Subscription-Key": RANK_KEY}
BODY = {
    "contextFeatures": [{"plan": "enterprise"}],
    "actions": [{"id": "a", "features": [{"kind": "guide"}]}, {"id": "b", "features": [{"kind": "call"}]}],
}


class DroppingProxy:
    """A Unix-socket proxy in front of the cluster's socket. Once ``drop`` is set, the next message from the
    client that holds a COMMIT goes on to the server and the client's connection is closed at once: the server
    commits, its answer is thrown away."""

    def __init__(self, target: Path, port: int):
        self.folder = Path(tempfile.mkdtemp(prefix="pgproxy-"))
        self.target = str(target)
        self.drop = threading.Event()
        self.dropped = threading.Event()
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(self.folder / f".s.PGSQL.{port}"))
        self.listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(self.target)
        muted = threading.Event()

        def answers() -> None:
            with contextlib.suppress(OSError):
                while (data := upstream.recv(65536)) and not muted.is_set():
                    client.sendall(data)

        threading.Thread(target=answers, daemon=True).start()
        with client, upstream, contextlib.suppress(OSError):
            while data := client.recv(65536):
                dropping = self.drop.is_set() and b"COMMIT" in data
                if dropping:
                    muted.set()
                upstream.sendall(data)
                if dropping:
                    self.drop.clear()
                    self.dropped.set()  # before the shutdown: the request may answer before this thread runs again
                    client.shutdown(socket.SHUT_RDWR)
                    time.sleep(2)  # the server finishes the query before it notices the client went
                    return

    def close(self) -> None:
        self.listener.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def proxied(pg_cluster):
    url = pg_cluster.database()
    proxy = DroppingProxy(pg_cluster.folder / f".s.PGSQL.{pg_cluster.port}", pg_cluster.port)
    yield url, url.replace(f"host={pg_cluster.folder}", f"host={proxy.folder}"), proxy
    proxy.close()


def test_a_connection_lost_during_commit_answers_503_and_a_retry_says_what_was_committed(tmp_path, proxied):
    url, through_proxy, proxy = proxied
    settings = load_settings(None, environ={}, overrides={"data_dir": tmp_path, "database_url": through_proxy})
    client = create_app(settings).test_client()
    assert client.post(RANK, json={**BODY, "eventId": "warm"}).status_code == 201

    proxy.drop.set()
    lost = client.post(RANK, json={**BODY, "eventId": "e1"})
    assert proxy.dropped.is_set()
    assert lost.status_code == 503 and lost.json["error"]["code"] == "StoreUnavailable", lost.json
    assert "may or may not have been made" in lost.json["error"]["message"]
    # the server committed it: the retry (on a new connection) is told so, and nothing is logged twice
    retried = client.post(RANK, json={**BODY, "eventId": "e1"})
    assert retried.status_code == 409 and retried.json["error"]["code"] == "EventIdAlreadyExists"
    assert log_rows(tmp_path, url, "SELECT count(*) AS n FROM decisions WHERE event_id = 'e1'") == [{"n": 1}]

    proxy.dropped.clear()
    proxy.drop.set()
    reward = "/personalizer/v1.0/events/e1/reward"
    assert client.post(reward, json={"value": 1.0}).status_code == 503 and proxy.dropped.is_set()
    assert client.post(reward, json={"value": 1.0}).status_code == 204
    rewards = "SELECT count(*) AS n FROM rewards r JOIN decisions d ON d.id = r.decision_id WHERE d.event_id = 'e1'"
    assert log_rows(tmp_path, url, rewards) == [{"n": 2}]  # a Reward is not idempotent: both attempts count


def test_a_rank_waiting_on_a_read_holds_none_of_its_workers_other_ranks(serve, pg_cluster) -> None:
    """Enriched Ranks whose read of an entity waits on a table lock held by another session: the worker's
    other Ranks are answered meanwhile (the reads are parked, not waited for in the worker's poller). Each
    enriched Rank answers 503 at ``commit_timeout``, whether its read was started (the database cancels it) or
    still waited for a reader thread (4 per worker, one per pool connection), and logs nothing; once the lock is
    gone an enriched Rank is answered, enriched."""
    url = pg_cluster.database()
    timeout = 3.0
    server = serve(CONFIG, database_url=url, workers="1", commit_timeout=str(timeout))
    keys = {"Ocp-Apim-Subscription-Key": SIGNALS_KEY}
    rank_url = server.url + RANK
    accounts = [f"acme-{i}" for i in range(6)]
    for account in accounts:
        put = requests.put(
            f"{server.url}/entities/account/{account}", json={"attributes": {"plan": "enterprise"}}, headers=keys
        )
        assert put.status_code == 200, put.text

    def body(event_id: str, account: str | None = None) -> dict:
        context = [{"account": {"id": account}}] if account else [{"plan": "team"}]
        return {"contextFeatures": context, "actions": ACTIONS, "eventId": event_id}

    answers: dict[str, tuple[requests.Response, float]] = {}

    def send(event_id: str, account: str) -> None:
        started = time.monotonic()
        response = requests.post(rank_url, json=body(event_id, account), headers=RANK_HEADERS, timeout=60)
        answers[event_id] = (response, time.monotonic() - started)

    waiting = [f"enriched-{a}" for a in accounts[:5]]  # four reads started, the fifth waits for a reader thread
    with psycopg.connect(url, autocommit=True) as outside:
        outside.execute("BEGIN")
        outside.execute("LOCK TABLE signal_versions IN ACCESS EXCLUSIVE MODE")
        senders = [threading.Thread(target=send, args=(e, a)) for e, a in zip(waiting, accounts, strict=False)]
        for sender in senders:
            sender.start()
            time.sleep(0.1)
        for n in range(20):
            started = time.monotonic()
            plain = requests.post(rank_url, json=body(f"plain-{n}"), headers=RANK_HEADERS, timeout=60)
            assert plain.status_code == 201, plain.text
            assert time.monotonic() - started < 1.0, "a Rank waited for another request's read"
        for sender in senders:
            sender.join(timeout + 5)
        assert set(answers) == set(waiting), "an enriched Rank was still waiting well after commit_timeout"
        for event_id, (response, elapsed) in answers.items():
            assert response.status_code == 503 and response.json()["error"]["code"] == "StoreUnavailable"
            assert timeout - 0.2 <= elapsed <= timeout + 1.0, (event_id, elapsed, response.json())
        outside.execute("COMMIT")
    enriched = requests.post(rank_url, json=body("after", accounts[5]), headers=RANK_HEADERS, timeout=10)
    assert enriched.status_code == 201, enriched.text
    logged = log_rows(
        server.data_dir, url, "SELECT event_id, record FROM decisions WHERE event_id NOT LIKE ?", ("plain-%",)
    )
    assert [row["event_id"] for row in logged] == ["after"]
    assert json.loads(logged[0]["record"])["c"]["account"]["plan"] == "enterprise"
