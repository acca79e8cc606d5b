"""A serving worker looks for new configuration and models in a thread of its own, never inside a request."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
import requests
from postgres import log_rows

from ranker.app import create_app
from ranker.harness import wait_for
from ranker.serving.engine import fresh_model

ACTIONS = [{"id": f"a{i}", "features": [{"item": {"kind": f"k{i}"}}]} for i in range(3)]
BODY = {"contextFeatures": [{"u": {"seg": "s1"}}], "actions": ACTIONS}
V1 = "/personalizer/v1.0"


def _app(tmp_path, database_url):
    settings = {"data_dir": tmp_path}
    if database_url:
        settings["database_url"] = database_url
    return create_app(settings)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_the_refresher_applies_configuration_and_models_with_no_request_and_stops(tmp_path, database_url):
    # two workers of one node (or two nodes): one changes the configuration, the other is left alone
    changer = _app(tmp_path, database_url)
    worker = _app(tmp_path, database_url)
    service = worker.extensions["ranker"]
    loop = service.loops["default"]
    service.start_refresher()
    service.start_refresher()  # once is enough
    try:
        before = loop.settings.exploration_percentage
        put = changer.test_client().put(f"{V1}/configurations/service", json={"explorationPercentage": 0.5})
        assert put.status_code == 200
        assert before != 0.5
        started = time.monotonic()
        assert wait_for(lambda: loop.settings.exploration_percentage == 0.5, 5)
        assert time.monotonic() - started < 1.0
        version = changer.extensions["ranker"].models.publish("default", fresh_model(loop.arguments))
        started = time.monotonic()
        assert wait_for(lambda: loop.engine.version == version, 5)
        assert time.monotonic() - started < 1.0
        refreshers = [t for t in threading.enumerate() if t.name == "ranker-refresh"]
        assert len(refreshers) == 1
    finally:
        service.stop_refresher()
    assert not refreshers[0].is_alive()

    # stopped, the worker looks inside its requests again (as under the Flask test client)
    put = changer.test_client().put(f"{V1}/configurations/service", json={"explorationPercentage": 0.25})
    assert put.status_code == 200
    time.sleep(0.3)
    assert loop.settings.exploration_percentage == 0.5
    assert worker.test_client().post(f"{V1}/rank", json=BODY).status_code == 201
    assert loop.settings.exploration_percentage == 0.25


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_ranks_do_not_wait_while_the_model_pointer_cannot_be_read(serve, database_url):
    """While something holds ``model_current`` (here: an exclusive lock), the workers' looks wait; Ranks do not."""
    server = serve(database_url=database_url)
    session = requests.Session()
    assert session.post(server.url + V1 + "/rank", json=BODY, timeout=10).status_code == 201
    with psycopg.connect(database_url) as conn:
        conn.execute("LOCK TABLE model_current IN ACCESS EXCLUSIVE MODE")
        time.sleep(0.3)  # every worker's refresher is now waiting for the lock
        slowest = 0.0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            started = time.monotonic()
            response = session.post(server.url + V1 + "/rank", json=BODY, timeout=10)
            slowest = max(slowest, time.monotonic() - started)
            assert response.status_code == 201
        conn.rollback()
    assert slowest < 0.5, slowest
    # the looks go on once the lock is gone: a model published now is served by every worker within a second
    publisher = create_app({"data_dir": server.data_dir, "database_url": database_url}).extensions["ranker"]
    version = publisher.models.publish("default", fresh_model(publisher.loops["default"].arguments))
    time.sleep(1.0)
    for n in range(20):
        assert session.post(server.url + V1 + "/rank", json={**BODY, "eventId": f"late{n}"}, timeout=10).ok
    rows = log_rows(
        server.data_dir, database_url, "SELECT model_version FROM decisions WHERE event_id LIKE ?", ("late%",)
    )
    assert {row["model_version"] for row in rows} == {version}
