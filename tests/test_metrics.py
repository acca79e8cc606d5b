"""GET /metrics: request counts, latencies and errors by loop, the learning state, and a real multi-worker server."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from conftest import ADMIN_KEY, KEYED_CONFIG, OTHER_KEY, RANK_KEY
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from ranker.app import create_app
from ranker.core.schemas import RankRequest
from ranker.core.settings import load_settings
from ranker.learning.trainer import Trainer
from ranker.server.metrics import LATENCY_BUCKETS, prepare_multiprocess_dir
from ranker.store import models

CARDS = {"Ocp-Apim-Subscription-Key": RANK_KEY}
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}
ADMIN = {"Ocp-Apim-Subscription-Key": ADMIN_KEY}
ADMIN_BEARER = {"Authorization": f"Bearer {ADMIN_KEY}"}
ACTIONS = [{"id": f"a{i}", "features": [{"item": {"kind": f"k{i}"}}]} for i in range(4)]


def rank_body(**extra):
    return {"contextFeatures": [{"user": {"role": "admin"}}], "actions": ACTIONS, **extra}


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name: [(labels, value)]."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def series(samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """One sample name as {label values: value}; every sample must have exactly ``labels``."""
    out = {}
    for sample_labels, value in samples.get(name, []):
        assert set(sample_labels) == set(labels), (name, sample_labels)
        out[tuple(sample_labels[label] for label in labels)] = value
    return out


def check_histograms(samples, expected_counts: dict[tuple[str, str], float]) -> None:
    """Latency histograms by (loop, operation): the expected counts, cumulative buckets, a positive sum."""
    assert series(samples, "ranker_request_duration_seconds_count", "loop", "operation") == expected_counts
    sums = series(samples, "ranker_request_duration_seconds_sum", "loop", "operation")
    buckets = series(samples, "ranker_request_duration_seconds_bucket", "loop", "operation", "le")
    for key, count in expected_counts.items():
        assert 0 < sums[key] < 60
        ladder = [buckets[(*key, le)] for le in [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]]
        assert ladder == sorted(ladder) and ladder[-1] == count, (key, ladder)
    assert len(buckets) == len(expected_counts) * (len(LATENCY_BUCKETS) + 1)


def within(value: float, low: float, high: float) -> bool:
    return low - 1e-6 <= value <= high + 1e-6


@pytest.fixture
def keyed(tmp_path):
    path = tmp_path / "ranker.toml"
    path.write_text(KEYED_CONFIG.replace('policy = "default"', 'policy = "default"\nrewardWaitTime = "PT10S"'))
    settings = load_settings(path, environ={}, overrides={"data_dir": tmp_path})
    app = create_app(settings)
    return app.test_client(), app.extensions["ranker"], settings


def test_requests_latencies_and_errors_by_loop_operation_and_code(keyed):
    client, _, _ = keyed
    prefixes = ["/personalizer/v1.0", "/personalizer/v1.1-preview.3", "/personalizer"]
    for i in range(5):  # every URL shape counts as the same operation
        assert client.post(f"{prefixes[i % 3]}/rank", json=rank_body(eventId=f"c{i}"), headers=CARDS).status_code == 201
    assert client.post("/personalizer/v1.0/rank", json=rank_body(eventId="c0"), headers=CARDS).status_code == 409
    assert client.post("/personalizer/v1.0/rank", json={"contextFeatures": []}, headers=CARDS).status_code == 400
    for i in range(3):
        reward = client.post(f"/personalizer/v1.0/events/c{i}/reward", json={"value": 1}, headers=CARDS)
        assert reward.status_code == 204
    missing = client.post("/personalizer/v1.0/events/missing/reward", json={"value": 1}, headers=CARDS)
    assert missing.status_code == 404
    assert client.post("/personalizer/v1.0/events/c4/activate", headers=CARDS).status_code == 204
    for i in range(2):
        assert client.post("/personalizer/v1.0/rank", json=rank_body(eventId=f"o{i}"), headers=OTHER).status_code == 201
    assert client.post("/personalizer/v1.0/rank", json=rank_body()).status_code == 401
    assert client.get("/personalizer/v1.0/configurations/service", headers=CARDS).status_code == 403
    assert client.get("/personalizer/v1.0/configurations/service", headers=ADMIN).status_code == 200
    assert client.get("/nowhere").status_code == 404
    assert client.get("/healthz").status_code == 200

    response = client.get("/metrics", headers=ADMIN)
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    samples = parse(response.get_data(as_text=True))

    # Only the Personalizer operations; a rejected key counts under no loop.
    assert series(samples, "ranker_requests_total", "loop", "operation", "status") == {
        ("cards", "rank", "201"): 5,
        ("cards", "rank", "409"): 1,
        ("cards", "rank", "400"): 1,
        ("cards", "reward", "204"): 3,
        ("cards", "reward", "404"): 1,
        ("cards", "activate", "204"): 1,
        ("other", "rank", "201"): 2,
        ("", "rank", "401"): 1,
        ("", "get_service_configuration", "403"): 1,
        ("cards", "get_service_configuration", "200"): 1,
    }
    assert series(samples, "ranker_errors_total", "loop", "operation", "code") == {
        ("cards", "rank", "EventIdAlreadyExists"): 1,
        ("cards", "rank", "InvalidRankRequest"): 1,
        ("cards", "reward", "ResourceNotFound"): 1,
        ("", "rank", "Unauthorized"): 1,
        ("", "get_service_configuration", "OperationNotAllowed"): 1,
        ("", "", "ResourceNotFound"): 1,
    }
    check_histograms(
        samples,
        {
            ("cards", "rank"): 7,
            ("cards", "reward"): 4,
            ("cards", "activate"): 1,
            ("other", "rank"): 2,
            ("", "rank"): 1,
            ("", "get_service_configuration"): 1,
            ("cards", "get_service_configuration"): 1,
        },
    )


def test_metrics_need_an_admin_key_when_loops_have_keys(keyed, tmp_path):
    keyed_client, _, _ = keyed
    assert keyed_client.get("/metrics").get_json()["error"]["code"] == "Unauthorized"
    assert keyed_client.get("/metrics", headers=CARDS).get_json()["error"]["code"] == "OperationNotAllowed"
    assert keyed_client.get("/metrics", headers=ADMIN).status_code == 200
    # Prometheus sends a key as a bearer token (authorization.credentials in its scrape config).
    response = keyed_client.get("/metrics", headers={**ADMIN_BEARER, "Accept": "application/openmetrics-text"})
    assert response.status_code == 200 and response.content_type.startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).endswith("# EOF\n")
    samples = parse(keyed_client.get("/metrics", headers=ADMIN).get_data(as_text=True))
    assert series(samples, "ranker_errors_total", "loop", "operation", "code") == {
        ("", "metrics", "Unauthorized"): 1,
        ("", "metrics", "OperationNotAllowed"): 1,
    }
    assert "ranker_requests_total" not in samples  # scrapes are not API requests

    # Without keys (served on loopback only) no key is needed.
    assert create_app({"data_dir": tmp_path / "open"}).test_client().get("/metrics").status_code == 200


def test_learning_state_follows_the_log_the_trainer_and_the_model_store(keyed):
    client, service, settings = keyed
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=100)
    loop = service.loops["cards"]
    # e1 is deferred and never activated: the trainer joins it without learning from it.
    for i, (offset, deferred) in enumerate([(0, False), (0, True), (0, False), (50, False), (50, False), (100, False)]):
        request = RankRequest.model_validate(rank_body(eventId=f"e{i}", deferActivation=deferred))
        service.rank(loop, request, now=start + timedelta(seconds=offset))

    def scrape() -> tuple[dict, float, float]:
        """(gauges by name and loop, seconds from ``start`` to just before and just after the scrape)."""
        before = (datetime.now(UTC) - start).total_seconds()
        samples = parse(client.get("/metrics", headers=ADMIN).get_data(as_text=True))
        after = (datetime.now(UTC) - start).total_seconds()
        names = ["ranker_events_logged", "ranker_events_learned_total", "ranker_events_skipped_total"]
        names += ["ranker_trainer_lag_seconds", "ranker_model_version"]
        gauges = {name: {labels["loop"]: value for labels, value in samples[name]} for name in names}
        return gauges, before, after

    def version(loop: str) -> int:
        current = models.current(settings.data_dir, loop)
        return 0 if current is None else int(current[0])

    gauges, before, after = scrape()
    assert gauges["ranker_events_logged"] == {"cards": 6, "other": 0}
    assert gauges["ranker_events_learned_total"] == gauges["ranker_events_skipped_total"] == {"cards": 0, "other": 0}
    assert gauges["ranker_model_version"] == {"cards": 0, "other": 0}
    # e0 was due at start + 10 s (rewardWaitTime) + 1 s (the trainer's commit grace).
    assert within(gauges["ranker_trainer_lag_seconds"]["cards"], before - 11, after - 11)
    assert gauges["ranker_trainer_lag_seconds"]["other"] == 0

    # A wait time set through the API counts; the change publishes a fresh model.
    put = client.put("/personalizer/v1.0/configurations/service", json={"rewardWaitTime": "PT30S"}, headers=ADMIN)
    assert put.status_code == 200
    gauges, before, after = scrape()
    assert within(gauges["ranker_trainer_lag_seconds"]["cards"], before - 31, after - 31)
    assert gauges["ranker_model_version"] == {"cards": version("cards"), "other": 0} and version("cards") >= 1

    with Trainer(settings) as trainer:
        trainer.run_once(now=start + timedelta(seconds=45))  # e0..e2 are due, e3 is not
        gauges, before, after = scrape()
        assert gauges["ranker_events_learned_total"]["cards"] == 2
        assert gauges["ranker_events_skipped_total"]["cards"] == 1
        assert within(gauges["ranker_trainer_lag_seconds"]["cards"], before - 81, after - 81)  # e3: start + 50 + 31
        assert gauges["ranker_model_version"]["cards"] == version("cards") >= 2

        trainer.run_once()  # now: e3 and e4 are due, e5 (start + 100) is not
        gauges, _, _ = scrape()
        assert gauges["ranker_events_learned_total"] == {"cards": 4, "other": 0}
        assert gauges["ranker_events_skipped_total"] == {"cards": 1, "other": 0}
        assert gauges["ranker_trainer_lag_seconds"] == {"cards": 0, "other": 0}
        assert gauges["ranker_events_logged"] == {"cards": 6, "other": 0}
        assert gauges["ranker_model_version"] == {"cards": version("cards"), "other": 0}

    # Retention deletes the oldest decisions, DELETE logs all of them; new ones count on.
    with sqlite3.connect(settings.database_path) as conn:
        cutoff = (start + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert conn.execute("DELETE FROM decisions WHERE loop = 'cards' AND created_at < ?", (cutoff,)).rowcount == 3
    conn.close()
    assert scrape()[0]["ranker_events_logged"] == {"cards": 3, "other": 0}
    assert client.delete("/personalizer/v1.0/logs", headers=ADMIN).status_code == 204
    assert scrape()[0]["ranker_events_logged"] == {"cards": 0, "other": 0}
    for i in range(3):
        assert client.post("/personalizer/v1.0/rank", json=rank_body(), headers=CARDS).status_code == 201
        gauges, _, _ = scrape()
        assert gauges["ranker_events_logged"] == {"cards": i + 1, "other": 0}
        assert gauges["ranker_trainer_lag_seconds"] == {"cards": 0, "other": 0}


def test_an_app_refuses_a_multiprocess_folder_set_after_prometheus_client_was_imported(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        create_app({"data_dir": tmp_path})


def test_a_starting_server_empties_its_folder_and_removes_those_of_stopped_servers(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    root = tmp_path / "metrics"
    for name in (str(gone.pid), str(os.getpid()), "notes", "4242"):
        (root / name).mkdir(parents=True)
        (root / name / "counter_1.db").write_bytes(b"x")
    own = prepare_multiprocess_dir(root / "4242")
    assert own == root / "4242" and list(own.iterdir()) == []
    assert sorted(p.name for p in root.iterdir()) == sorted([str(os.getpid()), "notes", "4242"])
    assert (root / str(os.getpid()) / "counter_1.db").exists()


def test_a_real_server_adds_up_its_workers_and_keeps_the_counts_of_a_killed_one(serve):
    config = KEYED_CONFIG.replace(
        'policy = "default"', 'policy = "default"\nrewardWaitTime = "PT1S"\nmodelExportFrequency = "PT1S"'
    )
    server = serve(config)
    workers = server.worker_pids()
    assert len(workers) == 2
    folder = Path(server.data_dir) / "metrics" / str(server.master_pid())
    url = server.url + "/personalizer/v1.0"
    sent: Counter = Counter()
    lock = threading.Lock()
    counter = iter(range(10**9))

    def client() -> None:
        session = requests.Session()  # a connection of its own: each lands on one worker or the other
        for _ in range(10):
            with lock:
                n = next(counter)
            status = session.post(url + "/rank", json=rank_body(eventId=f"e{n}"), headers=CARDS).status_code
            reward = session.post(url + f"/events/e{n}/reward", json={"value": n % 2}, headers=CARDS).status_code
            missing = session.post(url + f"/events/x{n}/reward", json={"value": 1}, headers=CARDS).status_code
            with lock:
                sent[("rank", status)] += 1
                sent[("reward", reward)] += 1
                sent[("reward", missing)] += 1

    def served_by(pid: int) -> float:
        """Ranks counted in one worker's own file."""
        path = folder / f"counter_{pid}.db"
        if not path.exists():
            return 0
        merged = {m.name: m for m in MultiProcessCollector.merge([str(path)])}
        requests_metric = merged.get("ranker_requests")
        if requests_metric is None:
            return 0
        return sum(s.value for s in requests_metric.samples if s.labels.get("operation") == "rank")

    assert folder.is_dir(), "the server has no metrics folder"
    deadline = time.monotonic() + 30
    while not all(served_by(pid) for pid in workers):  # until both workers have answered some
        assert time.monotonic() < deadline, "one worker answered every request"
        threads = [threading.Thread(target=client) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    unauthorized = requests.post(url + "/rank", json=rank_body()).status_code
    assert unauthorized == 401
    ranks = sent[("rank", 201)]
    assert set(sent) == {("rank", 201), ("reward", 204), ("reward", 404)}
    assert sent[("reward", 204)] == sent[("reward", 404)] == ranks

    expected_requests = {
        ("cards", "rank", "201"): ranks,
        ("cards", "reward", "204"): ranks,
        ("cards", "reward", "404"): ranks,
        ("", "rank", "401"): 1,
    }
    expected_errors = {("cards", "reward", "ResourceNotFound"): ranks, ("", "rank", "Unauthorized"): 1}

    def scrape() -> dict:
        response = requests.get(server.url + "/metrics", headers=ADMIN_BEARER)  # a new connection each time
        assert response.status_code == 200
        return parse(response.text)

    for _ in range(4):  # whichever worker answers, the counts are the sums over both
        samples = scrape()
        assert series(samples, "ranker_requests_total", "loop", "operation", "status") == expected_requests
        assert series(samples, "ranker_errors_total", "loop", "operation", "code") == expected_errors
        check_histograms(samples, {("cards", "rank"): ranks, ("cards", "reward"): 2 * ranks, ("", "rank"): 1})
    assert sum(served_by(pid) for pid in workers) == ranks + 1

    # The real trainer learns everything within a few seconds (rewardWaitTime 1 s), and publishes.
    deadline = time.monotonic() + 30
    while True:
        samples = scrape()
        current = models.current(server.data_dir, "cards")
        gauges = {
            name: {labels["loop"]: value for labels, value in samples[name]}
            for name in ("ranker_events_logged", "ranker_events_learned_total", "ranker_trainer_lag_seconds")
        }
        version = {labels["loop"]: value for labels, value in samples["ranker_model_version"]}
        if gauges["ranker_events_learned_total"]["cards"] == ranks and current and version["cards"] == int(current[0]):
            break
        assert time.monotonic() < deadline, (gauges, version, current)
        time.sleep(0.2)
    assert gauges["ranker_events_logged"] == {"cards": ranks, "other": 0}
    assert gauges["ranker_trainer_lag_seconds"] == {"cards": 0, "other": 0}
    assert version["other"] == 0 and version["cards"] >= 1

    # A killed worker is replaced; what it counted is still in the sums.
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(set(server.worker_pids()) - {workers[0]}) < 2:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.1)
    for _ in range(4):
        samples = scrape()
        assert series(samples, "ranker_requests_total", "loop", "operation", "status") == expected_requests
        assert series(samples, "ranker_errors_total", "loop", "operation", "code") == expected_errors
