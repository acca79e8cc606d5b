"""Every acknowledged Rank and Reward survives a SIGKILL of the gunicorn worker that answered it, on SQLite and
on PostgreSQL."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import vowpalwabbit
from postgres import log_rows

from ranker.harness import Server

THREADS = 8
MAX_EVENTS_PER_THREAD = 5000  # the load stops by itself: after this many events per thread
LOAD_LIMIT_SECONDS = 60.0  # or after this long
RESPAWN_TIMEOUT = 30.0
PHASE_SECONDS = 1.5  # load before the first kill, and after each replacement worker appears
PHASE_EVENTS = 150  # and at least this many acknowledged events in each phase
ACTIONS = [{"id": f"action-{i}", "features": [{"kind": f"k{i % 3}", "weight": i / 10}]} for i in range(5)]
ACTION_IDS = [a["id"] for a in ACTIONS]


def reward_value(n: int) -> float:
    return round((n % 21) / 10 - 1, 1)


@dataclass
class Load:
    """Client threads ranking unique events and rewarding each acknowledged one, until told to stop."""

    url: str
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: set[str] = field(default_factory=set)  # every event id a Rank was attempted for
    ranked: dict[str, str] = field(default_factory=dict)  # event id -> rewardActionId, for each 201
    rewarded: dict[str, float] = field(default_factory=dict)  # event id -> value, for each 204
    reward_failed: dict[str, float] = field(default_factory=dict)  # reward sent, no answer
    rank_failures: int = 0
    other_statuses: list[tuple[str, int, str]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True) for t in range(THREADS)]
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in self.threads), "a load thread did not stop"

    def acknowledged(self) -> int:
        with self.lock:
            return len(self.ranked)

    def run(self, thread: int) -> None:
        deadline = time.monotonic() + LOAD_LIMIT_SECONDS
        session = requests.Session()
        try:
            for n in range(MAX_EVENTS_PER_THREAD):
                if self.stop.is_set() or time.monotonic() > deadline:
                    break
                if not self.event(session, f"crash-{thread}-{n}", thread, n):
                    session.close()  # its connection went down with a worker
                    session = requests.Session()
        finally:
            session.close()

    def event(self, session: requests.Session, event_id: str, thread: int, n: int) -> bool:
        """Rank one event and reward it if the Rank was acknowledged; False when a request got no answer."""
        body = {"contextFeatures": [{"user": {"thread": thread, "n": n % 7}}], "actions": ACTIONS, "eventId": event_id}
        with self.lock:
            self.sent.add(event_id)
        try:
            ranked = session.post(f"{self.url}/personalizer/v1.0/rank", json=body, timeout=30)
        except requests.RequestException:
            with self.lock:
                self.rank_failures += 1
            return False
        if ranked.status_code != 201:
            with self.lock:
                self.other_statuses.append(("rank", ranked.status_code, ranked.text))
            return True
        value = reward_value(n)
        with self.lock:
            self.ranked[event_id] = ranked.json()["rewardActionId"]
        try:
            rewarded = session.post(
                f"{self.url}/personalizer/v1.0/events/{event_id}/reward", json={"value": value}, timeout=30
            )
        except requests.RequestException:
            with self.lock:
                self.reward_failed[event_id] = value
            return False
        with self.lock:
            if rewarded.status_code == 204:
                self.rewarded[event_id] = value
            else:
                self.other_statuses.append(("reward", rewarded.status_code, rewarded.text))
        return True


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def kill_busiest_worker(server: Server, load: Load) -> int:
    """SIGKILL the worker holding the most client connections; wait for its replacement and the load to go on."""
    before = set(server.worker_pids())
    held = {pid: server.sockets(pid) for pid in before}
    victim = max(held, key=held.__getitem__)
    assert held[victim] > 0, held
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(set(server.worker_pids()) - before) == 1, RESPAWN_TIMEOUT, "gunicorn to respawn a worker")
    keep_going(load)
    return victim


def keep_going(load: Load) -> None:
    """Let the load run for a phase: PHASE_SECONDS and at least PHASE_EVENTS more acknowledged events."""
    acked, until = load.acknowledged(), time.monotonic() + PHASE_SECONDS
    wait_for(
        lambda: load.acknowledged() >= acked + PHASE_EVENTS and time.monotonic() >= until,
        RESPAWN_TIMEOUT,
        "the load to go on",
    )


def read_log(data_dir: Path, url: str | None) -> tuple[list[dict], list[dict]]:
    decisions = log_rows(data_dir, url, "SELECT * FROM decisions")
    sql = "SELECT r.*, d.event_id, d.loop FROM rewards r LEFT JOIN decisions d ON d.id = r.decision_id"
    return decisions, log_rows(data_dir, url, sql)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_acknowledged_requests_survive_sigkill_of_workers(tmp_path: Path, database_url: str | None) -> None:
    server = Server(tmp_path, workers="2", **({"database_url": database_url} if database_url else {}))
    load = Load(server.url)
    try:
        assert len(server.worker_pids()) == 2
        started = time.monotonic()
        load.start()
        keep_going(load)

        first = kill_busiest_worker(server, load)
        second = kill_busiest_worker(server, load)
        load.finish()
        elapsed = time.monotonic() - started

        survivors = server.worker_pids()
        assert len(survivors) == 2 and first not in survivors and second not in survivors
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
        decisions, rewards = read_log(server.data_dir, database_url)
    finally:
        load.stop.set()
        server.stop()

    # The kills happened under load (each victim held client connections; requests in flight on them were cut
    # off), and every request that reached a live worker was answered.
    assert load.rank_failures + len(load.reward_failed) > 0
    assert load.other_statuses == []
    assert len(load.ranked) >= 3 * PHASE_EVENTS, (len(load.ranked), elapsed)

    # Every decision row is complete, whether its Rank was answered or cut off by the kill.
    by_event = {row["event_id"]: row for row in decisions}
    assert len(by_event) == len(decisions)
    workspace = vowpalwabbit.Workspace("--cb_explore_adf --dsjson --quiet")
    try:
        for row in decisions:
            event_id = row["event_id"]
            assert row["loop"] == "default" and event_id in load.sent
            assert json.loads(row["action_ids"]) == ACTION_IDS
            assert row["reward_action_id"] in ACTION_IDS and 0 < row["probability"] <= 1
            record = json.loads(row["record"])
            assert record["EventId"] == event_id
            assert record["c"]["_multi"][record["a"][0] - 1]["_id"] == row["reward_action_id"]
            assert record["p"][0] == pytest.approx(row["probability"])
            assert math.isclose(sum(record["p"]), 1.0, abs_tol=1e-6)
            examples = workspace.parse(row["record"])
            assert len(examples) == len(ACTION_IDS) + 1
            workspace.finish_example(examples)
    finally:
        workspace.finish()

    # Every acknowledged Rank is logged with the action it answered.
    missing = [e for e in load.ranked if e not in by_event]
    assert missing == [], f"{len(missing)} acknowledged ranks lost, e.g. {missing[:5]}"
    assert all(by_event[e]["reward_action_id"] == chosen for e, chosen in load.ranked.items())

    # Every acknowledged Reward is logged once with its value; none hangs without its decision.
    assert all(row["event_id"] is not None for row in rewards), "a reward row has no decision"
    logged: dict[str, list[float]] = {}
    for row in rewards:
        logged.setdefault(row["event_id"], []).append(row["value"])
    for event_id, value in load.rewarded.items():
        assert logged.get(event_id) == [value], (event_id, value, logged.get(event_id))
    for event_id, values in logged.items():
        if event_id not in load.rewarded:
            assert event_id in load.reward_failed and values == [load.reward_failed[event_id]]
