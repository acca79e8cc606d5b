"""Several nodes on one PostgreSQL database: one trainer leads, a standby takes over when it dies, learning
stays exactly once, and every request a node acknowledged is in the database when another node is killed.

Nodes are processes with data folders of their own (nothing shared but the database), on the session's
throwaway cluster (tests/postgres.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import requests
from azure.ai.personalizer import PersonalizerClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ResourceExistsError
from postgres import log_rows
from test_trainer import build_log

from ranker.core.settings import load_settings
from ranker.harness import Server
from ranker.learning.trainer import Trainer
from ranker.store.postgres import TRAINER

TAKEOVER_SECONDS = 10.0


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took ``condition`` to hold; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - started


def scalar(url: str, sql: str) -> object:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchone()[0]


def handled(url: str) -> int:
    return scalar(url, "SELECT coalesce(sum(learned + skipped), 0)::bigint FROM trainer_state")


def leader_pid(url: str) -> int | None:
    """The process whose session holds the trainer's advisory lock (its application_name names it)."""
    name = scalar(
        url,
        "SELECT max(a.application_name) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.granted "
        f"AND l.locktype = 'advisory' AND ((l.classid::bigint << 32) | l.objid::bigint) = {TRAINER}",
    )
    return None if name is None else int(name.rsplit(" ", 1)[1])


def checkpoints(url: str) -> dict[str, tuple]:
    rows = log_rows(Path(), url, "SELECT loop, last_decision_id, learned, skipped, model FROM trainer_state")
    return {row["loop"]: (row["last_decision_id"], row["learned"], row["skipped"], bytes(row["model"])) for row in rows}


def start_trainer(node: Path, config: Path, url: str) -> subprocess.Popen:
    """``ranker train`` of one node: its own data folder, the shared database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    env["RANKER_DATABASE_URL"] = url
    node.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "ranker", "train", "--config", str(config), "--data-dir", str(node)]
    argv += ["--checkpoint-events", "25", "--checkpoint-seconds", "0.05"]
    with open(node / "trainer.log", "ab") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def standing_by(node: Path) -> bool:
    return "standing by" in (node / "trainer.log").read_text()


def test_a_standby_trainer_on_another_node_takes_over_and_learns_each_decision_once(tmp_path, pg_cluster):
    events = 1500
    source = pg_cluster.database()
    build_log(tmp_path / "source", events, seed=5, database_url=source)
    crashed, reference = pg_cluster.copy(source), pg_cluster.copy(source)
    config = tmp_path / "source" / "ranker.toml"
    nodes = [tmp_path / name for name in ("a", "b", "c")]

    # Three nodes' trainers, all standing by while this test holds the leadership; then two leaders die.
    processes: dict[int, subprocess.Popen] = {}
    takeovers = []
    try:
        with psycopg.connect(crashed, autocommit=True) as holder:
            holder.execute(f"SELECT pg_advisory_lock({TRAINER})")
            for node in nodes:
                process = start_trainer(node, config, crashed)
                processes[process.pid] = process
            wait_for(lambda: all(standing_by(node) for node in nodes), 60, "the trainers to stand by")
        for goal in (events // 3, 2 * events // 3):
            wait_for(lambda goal=goal: handled(crashed) >= goal, 60, "learning to go on")
            leader = processes[leader_pid(crashed)]
            leader.send_signal(signal.SIGKILL)  # mid-stream: learning, checkpointing or publishing
            leader.wait(10)
            at_kill = handled(crashed)
            assert at_kill < events, "the leader finished before it could be killed"
            takeovers.append(wait_for(lambda at_kill=at_kill: handled(crashed) > at_kill, 30, "a takeover"))
        wait_for(lambda: handled(crashed) >= events, 60, "the last trainer to finish")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)

    assert all(t < TAKEOVER_SECONDS for t in takeovers), takeovers
    settings = load_settings(config, environ={}, overrides={"data_dir": tmp_path / "ref", "database_url": reference})
    with Trainer(settings) as uninterrupted:
        report = uninterrupted.run_once()
    assert report["learned"] + report["skipped"] == events and report["skipped"] > 0
    assert checkpoints(crashed) == checkpoints(reference)  # the same models, byte for byte


# -- two serving nodes -----------------------------------------------------------------------------------

NODE_CONFIG = """
[loops.default]
rewardWaitTime = "PT1S"
modelExportFrequency = "PT1S"
"""
ACTIONS = [{"id": f"a{i}", "features": [{"kind": f"k{i % 3}"}]} for i in range(4)]


class Load:
    """Threads ranking on one node and rewarding on the other (the survivor alone once one is gone)."""

    def __init__(self, urls: list[str]):
        self.urls = urls
        self.alive = list(urls)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ranked: dict[str, str] = {}  # event id -> node that answered 201
        self.rewarded: dict[str, float] = {}  # event id -> value answered 204
        self.unanswered: set[str] = set()
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True) for t in range(6)]

    def run(self, thread: int) -> None:
        session = requests.Session()
        for n in range(100_000):
            if self.stop.is_set():
                break
            nodes = list(self.alive)
            rank_at, reward_at = nodes[n % len(nodes)], nodes[(n + 1) % len(nodes)]
            event_id = f"t{thread}-{n}"
            body = {"contextFeatures": [{"n": n % 5}], "actions": ACTIONS, "eventId": event_id}
            try:
                ranked = session.post(f"{rank_at}/personalizer/v1.0/rank", json=body, timeout=30)
            except requests.RequestException:
                session = requests.Session()
                continue
            if ranked.status_code != 201:
                self.failures.append(f"rank {ranked.status_code} {ranked.text}")
                continue
            with self.lock:
                self.ranked[event_id] = rank_at
            value = (n % 3) / 2
            try:
                rewarded = session.post(
                    f"{reward_at}/personalizer/v1.0/events/{event_id}/reward", json={"value": value}, timeout=30
                )
            except requests.RequestException:
                session = requests.Session()
                with self.lock:
                    self.unanswered.add(event_id)
                continue
            if rewarded.status_code == 204:
                with self.lock:
                    self.rewarded[event_id] = value
            else:
                self.failures.append(f"reward {rewarded.status_code} {rewarded.text}")


def kill_node(server: Server) -> None:
    """SIGKILL every process of a node: ranker serve, the gunicorn master, its workers, the trainer."""
    for pid in [server.process.pid, *server.descendants()]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.process.wait(10)


def test_two_nodes_share_one_database_and_the_survivor_serves_and_learns(tmp_path, pg_cluster):
    url = pg_cluster.database()
    nodes = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            nodes.append(Server(tmp_path / name, NODE_CONFIG, workers=1, threads=4, database_url=url))
        a, b = nodes

        # the SDK ranks on one node and rewards on the other; an event id is unique per loop across nodes
        sdk_a, sdk_b = (PersonalizerClient(n.url, AzureKeyCredential("unused"), retry_total=0) for n in nodes)
        body = {"contextFeatures": [{"n": 1}], "actions": ACTIONS, "eventId": "shared-id", "deferActivation": True}
        sdk_a.rank(body)
        with pytest.raises(ResourceExistsError) as conflict:
            sdk_b.rank(body)
        assert conflict.value.status_code == 409 and conflict.value.error.code == "EventIdAlreadyExists"
        sdk_b.activate("shared-id")
        sdk_b.reward("shared-id", {"value": 1.0})
        sql = "SELECT d.activated_at, r.value FROM decisions d JOIN rewards r ON r.decision_id = d.id"
        [shared] = log_rows(Path(), url, sql + " WHERE d.event_id = 'shared-id'")
        assert shared["activated_at"] is not None and shared["value"] == 1.0

        # the node whose trainer leads is the one killed
        wait_for(lambda: any("standing by" in n.log_path.read_text() for n in nodes), 30, "a standby trainer")
        victim, survivor = (b, a) if "standing by" in a.log_path.read_text() else (a, b)

        load = Load([a.url, b.url])
        for thread in load.threads:
            thread.start()
        wait_for(lambda: len(load.ranked) >= 200, 60, "load on both nodes")
        learned_before = scalar(url, "SELECT coalesce(sum(learned), 0) FROM trainer_state")
        kill_node(victim)
        load.alive = [survivor.url]
        killed_at, acked_at_kill = time.monotonic(), len(load.ranked)
        wait_for(lambda: len(load.ranked) >= acked_at_kill + 200, 60, "the survivor to serve")
        load.stop.set()
        for thread in load.threads:
            thread.join(60)
        # the survivor's trainer took over and learns what both nodes logged
        version_at_kill = scalar(url, "SELECT coalesce(max(version), '0') FROM model_current")
        wait_for(
            lambda: (
                scalar(url, "SELECT coalesce(sum(learned), 0) FROM trainer_state") > learned_before + 200
                and scalar(url, "SELECT max(version) FROM model_current") > version_at_kill
            ),
            TAKEOVER_SECONDS + 20,
            "the survivor's trainer to learn and publish",
        )
        took = time.monotonic() - killed_at
        assert requests.get(survivor.url + "/healthz", timeout=5).status_code == 200
    finally:
        for node in nodes:
            node.stop()

    assert load.failures == [], load.failures[:5]
    decisions = {r["event_id"]: r for r in log_rows(Path(), url, "SELECT event_id, reward_action_id FROM decisions")}
    missing = [e for e in load.ranked if e not in decisions]
    assert missing == [], f"{len(missing)} acknowledged ranks lost"
    rewards: dict[str, list[float]] = {}
    sql = "SELECT d.event_id, r.value FROM rewards r JOIN decisions d ON d.id = r.decision_id"
    for row in log_rows(Path(), url, sql):
        rewards.setdefault(row["event_id"], []).append(row["value"])
    for event_id, value in load.rewarded.items():
        assert rewards.get(event_id) == [value], (event_id, rewards.get(event_id))
    assert {node for node in load.ranked.values()} == {a.url, b.url}
    assert took < TAKEOVER_SECONDS + 20
