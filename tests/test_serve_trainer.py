"""``ranker serve`` runs the trainer beside the workers, restarts it, and the workers switch to what it publishes."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import datetime

import pytest
import requests
from postgres import log_rows

from ranker.core.settings import Settings
from ranker.store import open_database

ACTIONS = [{"id": f"a{i}", "features": [{"item": {"kind": f"k{i % 3}", "tag": f"t{i}"}}]} for i in range(10)]
CONFIG = '[loops.default]\nrewardWaitTime = "PT1S"\nmodelExportFrequency = "PT1S"\n'


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_workers_serve_each_published_model_within_a_second(serve, database_url):
    server = serve(CONFIG, **({"database_url": database_url} if database_url else {}))
    assert len(server.worker_pids()) == 2 and server.trainer_pid() is not None
    url = server.url + "/personalizer/v1.0"
    stop = threading.Event()
    counter = iter(range(10**9))
    lock = threading.Lock()
    failures = []

    def load() -> None:
        session = requests.Session()
        while not stop.is_set():
            with lock:
                n = next(counter)
            body = {"contextFeatures": [{"u": {"seg": f"s{n % 3}"}}], "actions": ACTIONS, "eventId": f"e{n}"}
            response = session.post(url + "/rank", json=body, timeout=10)
            if response.status_code != 201:
                failures.append(response.text)
                continue
            value = float(response.json()["rewardActionId"] == "a3")
            session.post(url + f"/events/e{n}/reward", json={"value": value}, timeout=10)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(8)
    stop.set()
    for thread in threads:
        thread.join()
    assert not failures

    stored = open_database(Settings(data_dir=server.data_dir, database_url=database_url)).models
    published = {v: stored.created("default", v).timestamp() for v in stored.versions("default")}
    rows = log_rows(server.data_dir, database_url, "SELECT created_at, model_version FROM decisions ORDER BY id")
    served = [(datetime.fromisoformat(row["created_at"]).timestamp(), row["model_version"]) for row in rows]
    # Several versions were published and served; none was still served a second after the next one.
    assert len(published) >= 3 and {v for _, v in served} >= set(sorted(published)[:-1])
    for version, at in published.items():
        stale = [t - at for t, v in served if v < version and t > at]
        assert max(stale, default=0) <= 1.0, (version, stale)

    # the operator sees what the trainer does in the server's log
    logged = (server.data_dir / "server.log").read_text()
    assert any(f"[trainer] INFO loop default: published model {version}" in logged for version in published)

    trainer = server.trainer_pid()
    os.kill(trainer, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while server.trainer_pid() in (None, trainer):
        assert time.monotonic() < deadline, "the trainer was not started again"
        time.sleep(0.1)
    assert len(server.worker_pids()) == 2
