"""The trainer joins decisions with their rewards, learns each exactly once, checkpoints and publishes models."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import vowpalwabbit

from ranker.core import dsjson
from ranker.core.schemas import RankRequest
from ranker.core.settings import Settings, load_settings
from ranker.learning.supervisor import Supervisor
from ranker.learning.trainer import APPRENTICE_WINDOW, Trainer
from ranker.logdata.join import aggregate
from ranker.serving.engine import Engine, vw_arguments
from ranker.serving.loopconfig import apprentice_metrics
from ranker.serving.service import Service, timestamp
from ranker.store import models

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)  # every decision made at T0 is due by then
ACTIONS = [
    {
        "id": f"a{i}",
        "features": [
            {"item": {"kind": f"k{i % 3}", "price": i / 10, "tag": f"t{i}", "fresh": i % 2 == 0, "vendor": f"v{i % 4}"}}
        ],
    }
    for i in range(10)
]
ACTION_IDS = [a["id"] for a in ACTIONS]


def settings_for(data_dir: Path, **loops: dict) -> Settings:
    loops = loops or {"default": {}}
    loops = {name: {"rewardWaitTime": "PT1S", **loop} for name, loop in loops.items()}
    return load_settings(environ={}, overrides={"data_dir": data_dir, "synchronous": "NORMAL", "loops": loops})


def request(event_id: str, segment: str = "s0", actions: list[dict] = ACTIONS, **extra) -> RankRequest:
    return RankRequest.model_validate(
        {
            "contextFeatures": [{"account": {"segment": segment, "seats": 40}}, {"user": {"role": "cs-manager"}}],
            "actions": actions,
            "eventId": event_id,
            **extra,
        }
    )


def rank(service: Service, event_id: str, loop: str = "default", at: datetime = T0, **kwargs) -> dict:
    return service.rank(service.loops[loop], request(event_id, **kwargs), now=at)


def reward(service: Service, event_id: str, value: float, at: datetime, loop: str = "default") -> None:
    assert service.store.add_reward(loop, event_id, value, timestamp(at))


def record(service: Service, event_id: str, loop: str = "default") -> str:
    return service.store.decision(loop, event_id)["record"]


def vw_model(service: Service, lines: list[str], loop: str = "default") -> bytes:
    """What VW learns in-process from ``lines``, through pyvw's public API."""
    ws = vowpalwabbit.Workspace(service.loops[loop].engine.arguments + " --dsjson --quiet")
    for line in lines:
        examples = ws.parse(line)
        ws.learn(examples)
        ws.finish_example(examples)
    path = service.settings.data_dir / "expected.vw"
    ws.save(str(path))
    ws.finish()
    return path.read_bytes()


@pytest.fixture
def make(tmp_path: Path):
    """``make(**loops) -> (service, trainer)`` on one temporary data folder; trainers are closed after."""
    trainers: list[Trainer] = []

    def build(**loops: dict) -> tuple[Service, Trainer]:
        settings = settings_for(tmp_path, **loops)
        trainers.append(Trainer(settings))
        return Service(settings), trainers[-1]

    yield build
    for trainer in trainers:
        trainer.close()


# -- the join -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "values", "expected"),
    [
        ("earliest", [0.4, -0.2, 0.5, 0.2], 0.4),
        ("sum", [0.4, -0.2, 0.5, 0.2], 0.9),
        ("sum", [0.8, 0.7], 1.0),
        ("sum", [-0.8, -0.7], -1.0),
        ("average", [0.4, -0.2, 0.5, 0.2], 0.225),
        ("min", [0.4, -0.2, 0.5, 0.2], -0.2),
        ("max", [0.4, -0.2, 0.5, 0.2], 0.5),
        ("median", [0.4, -0.2, 0.5, 0.2], 0.3),
        ("median", [0.4, -0.2, 0.5], 0.4),
    ],
)
def test_aggregate(how, values, expected):
    assert aggregate(values, how) == pytest.approx(expected)


# Rewards of one decision as (seconds after the decision, value), in the order they are posted. The first
# one posted arrives after the 1 s window; the one at exactly 1 s is inside it.
REWARDS_A = [(1.5, 0.9), (0.6, 0.5), (0.1, 0.4), (0.3, -0.2), (1.0, 0.2)]
REWARDS_B = [(0.2, 0.8), (0.05, 0.7), (1.01, -1.0)]
EXPECTED = {
    # how: (reward learned for A, for B)
    "earliest": (0.4, 0.7),
    "sum": (0.9, 1.0),  # B's 1.5 is clamped
    "average": (0.225, 0.75),
    "min": (-0.2, 0.7),
    "max": (0.5, 0.8),
    "median": (0.3, 0.75),
}


@pytest.mark.parametrize("how", sorted(EXPECTED))
def test_rewards_within_the_window_are_aggregated(make, how):
    service, trainer = make(default={"rewardAggregation": how})
    rank(service, "A", segment="s1")
    rank(service, "B", segment="s2", at=T0 + timedelta(seconds=5))
    for offset, value in REWARDS_A:
        reward(service, "A", value, T0 + timedelta(seconds=offset))
    for offset, value in REWARDS_B:
        reward(service, "B", value, T0 + timedelta(seconds=5 + offset))

    report = trainer.run_once(now=LATER)

    assert (report["learned"], report["skipped"]) == (2, 0)
    a, b = EXPECTED[how]
    expected = vw_model(service, [dsjson.labeled(record(service, "A"), a), dsjson.labeled(record(service, "B"), b)])
    assert trainer.model("default") == expected
    # The comparison tells labels apart: a reward off by 0.05 gives another model.
    other = vw_model(service, [dsjson.labeled(record(service, "A"), a + 0.05), dsjson.labeled(record(service, "B"), b)])
    assert other != expected


def test_default_reward_deferred_and_ineligible_decisions(make):
    service, trainer = make(default={"defaultReward": -0.5})
    rank(service, "no-reward")
    rank(service, "deferred-never", deferActivation=True)
    rank(service, "deferred-late", deferActivation=True)
    rank(service, "deferred-in-time", deferActivation=True)
    rank(service, "nothing-eligible", excludedActions=ACTION_IDS)
    rank(service, "rewarded")
    assert service.store.activate("default", "deferred-late", timestamp(T0 + timedelta(seconds=1.2)))
    assert service.store.activate("default", "deferred-in-time", timestamp(T0 + timedelta(seconds=0.9)))
    reward(service, "deferred-never", 1.0, T0 + timedelta(seconds=0.5))
    reward(service, "deferred-late", 1.0, T0 + timedelta(seconds=0.5))
    reward(service, "deferred-in-time", 1.0, T0 + timedelta(seconds=0.5))
    reward(service, "rewarded", 0.3, T0 + timedelta(seconds=0.5))
    assert record(service, "nothing-eligible") is None

    report = trainer.run_once(now=LATER)

    assert (report["learned"], report["skipped"]) == (3, 3)
    lines = [
        dsjson.labeled(record(service, "no-reward"), -0.5),
        dsjson.labeled(record(service, "deferred-in-time"), 1.0),
        dsjson.labeled(record(service, "rewarded"), 0.3),
    ]
    assert trainer.model("default") == vw_model(service, lines)
    state = trainer.state("default")
    assert (state["learned"], state["skipped"], state["last_decision_id"]) == (3, 3, 6)


def test_logging_only_logs_and_never_learns(make):
    service, trainer = make(default={"learningMode": "LoggingOnly"})
    for n in range(20):
        rank(service, f"e{n}")
        reward(service, f"e{n}", 1.0, T0 + timedelta(seconds=0.5))

    report = trainer.run_once(now=LATER)

    assert (report["learned"], report["skipped"]) == (0, 20)
    assert trainer.state("default")["last_decision_id"] == 20  # passed over, not waiting
    assert trainer.model("default") == vw_model(service, [])  # the untrained model
    assert models.current(service.settings.data_dir, "default") is None
    assert service.store.counts() == {"decisions": 20, "rewards": 20}  # the log keeps them


def test_waits_for_the_window_and_stops_at_the_first_decision_not_due(make):
    service, trainer = make()
    rank(service, "first")
    rank(service, "later", at=T0 + timedelta(seconds=30))
    rank(service, "logged-late", at=T0)  # committed after "later" although made at T0
    grace = trainer.commit_grace

    # Inside the reward window plus the commit grace nothing is learned.
    assert trainer.run_once(now=T0 + timedelta(seconds=1) + grace - timedelta(microseconds=1))["learned"] == 0
    assert trainer.run_once(now=T0 + timedelta(seconds=1) + grace)["learned"] == 1
    # "logged-late" is due, but "later" before it is not: the trainer waits rather than skip "later".
    assert trainer.run_once(now=T0 + timedelta(seconds=20))["learned"] == 0
    assert trainer.state("default")["last_decision_id"] == 1
    assert trainer.run_once(now=LATER)["learned"] == 2
    lines = [dsjson.labeled(record(service, e), 0.0) for e in ("first", "later", "logged-late")]
    assert trainer.model("default") == vw_model(service, lines)


def test_rewards_through_the_service_and_two_loops(make):
    service, trainer = make(cards={}, news={"rewardAggregation": "sum"})
    now = datetime.now(UTC)
    for n in range(6):
        service.rank(service.loops["cards"], request(f"c{n}"), now=now)
    for n in range(4):
        service.rank(service.loops["news"], request(f"n{n}", segment="s3"), now=now)
    service.reward(service.loops["cards"], "c1", 1.0)
    service.reward(service.loops["news"], "n2", 0.5)
    service.reward(service.loops["news"], "n2", 0.25)

    report = trainer.run_once(now=now + timedelta(seconds=3))

    assert report["loops"]["cards"]["learned"] == 6
    assert report["loops"]["news"]["learned"] == 4
    cards = [dsjson.labeled(record(service, f"c{n}", "cards"), 1.0 if n == 1 else 0.0) for n in range(6)]
    news = [dsjson.labeled(record(service, f"n{n}", "news"), 0.75 if n == 2 else 0.0) for n in range(4)]
    assert trainer.model("cards") == vw_model(service, cards, "cards")
    assert trainer.model("news") == vw_model(service, news, "news")
    for loop in ("cards", "news"):
        version, path = models.current(service.settings.data_dir, loop)
        assert version == report["loops"][loop]["published"]
        assert path.read_bytes() == trainer.model(loop)


# -- checkpoints and restarts -----------------------------------------------------------------------


def test_checkpoint_resume_learns_each_decision_once(make, tmp_path):
    service, trainer = make()
    for n in range(30):
        rank(service, f"e{n}", segment=f"s{n % 4}")
        reward(service, f"e{n}", (n % 5) / 4, T0 + timedelta(seconds=0.5))

    assert trainer.run_once(now=LATER)["learned"] == 30
    assert trainer.run_once(now=LATER)["learned"] == 0
    restarted = Trainer(settings_for(tmp_path))
    try:
        assert restarted.run_once(now=LATER)["learned"] == 0
        for n in range(30, 45):
            rank(service, f"e{n}", segment=f"s{n % 4}", at=T0 + timedelta(seconds=10))
            reward(service, f"e{n}", (n % 5) / 4, T0 + timedelta(seconds=10.5))
        assert restarted.run_once(now=LATER)["learned"] == 15
        assert restarted.state("default")["learned"] == 45
        lines = [dsjson.labeled(record(service, f"e{n}"), (n % 5) / 4) for n in range(45)]
        assert restarted.model("default") == vw_model(service, lines)
    finally:
        restarted.close()


def test_changed_learning_settings_retrain_from_the_log(make, tmp_path):
    service, trainer = make()
    for n in range(10):
        rank(service, f"e{n}")
        reward(service, f"e{n}", 0.2, T0 + timedelta(seconds=0.2))
        reward(service, f"e{n}", 0.9, T0 + timedelta(seconds=0.4))
    assert trainer.run_once(now=LATER)["learned"] == 10
    trainer.close()

    changed = Trainer(settings_for(tmp_path, default={"rewardAggregation": "max"}))
    try:
        assert changed.run_once(now=LATER)["learned"] == 10
        lines = [dsjson.labeled(record(service, f"e{n}"), 0.9) for n in range(10)]
        assert changed.model("default") == vw_model(service, lines)
    finally:
        changed.close()


# -- publishing ---------------------------------------------------------------------------------------


def test_published_model_serves_what_was_learned(make):
    service, trainer = make(default={"explorationPercentage": 0.5})
    served = {}
    for n in range(300):
        served[n] = rank(service, f"e{n}", segment=f"s{n % 3}")["rewardActionId"]
        reward(service, f"e{n}", 1.0 if served[n] == "a3" else 0.0, T0 + timedelta(seconds=0.5))
    assert "a3" in served.values() and set(served.values()) != {"a3"}

    report = trainer.run_once(now=LATER)

    version, path = models.current(service.settings.data_dir, "default")
    assert version == report["loops"]["default"]["published"]
    engine = Engine(service.loops["default"].engine.arguments, str(path), version)
    try:
        for segment in ("s0", "s1", "s2"):
            req = request("probe", segment=segment)
            c_json = dsjson.context_json(
                dsjson.merge(req.contextFeatures, "c"), [(a.id, a.features[0]) for a in req.actions], True
            )
            pmf = engine.predict(c_json, len(ACTIONS))
            assert pmf[ACTION_IDS.index("a3")] == pytest.approx(1 - 0.5 + 0.5 / 10, abs=1e-6)
            assert [p for i, p in enumerate(pmf) if i != 3] == pytest.approx([0.05] * 9, abs=1e-6)
    finally:
        engine.close()


def test_publishes_at_most_once_per_export_frequency_and_only_news(make):
    service, trainer = make(default={"modelExportFrequency": "PT1M"})
    rank(service, "e0")
    first = trainer.run_once(now=LATER)["loops"]["default"]["published"]
    assert first is not None
    rank(service, "e1", at=T0 + timedelta(seconds=1))
    assert trainer.run_once(now=LATER + timedelta(seconds=30))["loops"]["default"]["published"] is None
    second = trainer.run_once(now=LATER + timedelta(seconds=61))["loops"]["default"]["published"]
    assert second is not None and second > first
    assert models.current(service.settings.data_dir, "default")[1].read_bytes() == trainer.model("default")
    # Nothing new learned: no new version, however long it has been.
    assert trainer.run_once(now=LATER + timedelta(hours=5))["loops"]["default"]["published"] is None
    assert models.versions(service.settings.data_dir, "default") == [first, second]


def test_model_store_versions_pointer_and_prune(tmp_path):
    assert models.current(tmp_path, "cards") is None
    published = [models.publish(tmp_path, "cards", f"model {n}".encode()) for n in range(8)]
    assert published == sorted(published) and len(set(published)) == 8
    version, path = models.current(tmp_path, "cards")
    assert version == published[-1] and path.read_bytes() == b"model 7"
    stamp = models.stamp(tmp_path, "cards")

    deleted = models.prune(tmp_path, "cards", keep=3)

    assert deleted == published[:5]
    assert models.versions(tmp_path, "cards") == published[5:]
    assert models.current(tmp_path, "cards") == (version, path)
    # Numbering goes on after a prune; the pointer moves and its stamp changes.
    newer = models.publish(tmp_path, "cards", b"model 8")
    assert newer > published[-1]
    assert models.current(tmp_path, "cards")[0] == newer
    assert models.stamp(tmp_path, "cards") != stamp
    assert not [p for p in (tmp_path / "models" / "cards").iterdir() if p.name.endswith(".tmp")]
    assert models.current(tmp_path, "other") is None


def test_log_retention_deletes_only_old_learned_decisions(make):
    service, trainer = make(default={"logRetentionDays": 2})
    for n in range(4):
        rank(service, f"old{n}", at=T0)
        reward(service, f"old{n}", 1.0, T0 + timedelta(seconds=0.5))
    rank(service, "recent", at=T0 + timedelta(days=3))
    # Three days later the old decisions are learned, then deleted with their rewards; the recent one,
    # not yet due, stays.
    report = trainer.run_once(now=T0 + timedelta(days=3, seconds=1))
    assert report["learned"] == 4
    remaining = service.store.read("SELECT event_id FROM decisions")
    assert remaining == [{"event_id": "recent"}]
    assert service.store.counts() == {"decisions": 1, "rewards": 0}


def test_log_retention_keeps_everything_by_default(make):
    service, trainer = make()
    rank(service, "old", at=T0)
    trainer.run_once(now=T0 + timedelta(days=400))
    assert service.store.counts()["decisions"] == 1


# -- Apprentice ---------------------------------------------------------------------------------------


def test_apprentice_learns_to_imitate_the_baseline(make):
    service, trainer = make(default={"learningMode": "Apprentice"})
    # The client's baseline depends on the segment: it lists that segment's favourite action first.
    favourite = {"s0": "a4", "s1": "a7", "s2": "a1"}
    for n in range(240):
        segment = f"s{n % 3}"
        actions = sorted(ACTIONS, key=lambda a: a["id"] != favourite[segment])
        response = rank(service, f"e{n}", segment=segment, actions=actions)
        assert response["rewardActionId"] == favourite[segment]
        # The real reward says the baseline is bad; Apprentice learns to imitate it all the same.
        reward(service, f"e{n}", -1.0, T0 + timedelta(seconds=0.5))

    assert trainer.run_once(now=LATER)["learned"] == 240

    version, path = models.current(service.settings.data_dir, "default")
    engine = Engine(service.loops["default"].engine.arguments, str(path), version)
    try:
        for segment, action in favourite.items():
            req = request("probe", segment=segment)  # actions in their usual order
            c_json = dsjson.context_json(
                dsjson.merge(req.contextFeatures, "c"), [(a.id, a.features[0]) for a in req.actions], True
            )
            pmf = engine.predict(c_json, len(ACTIONS))
            assert ACTION_IDS[max(range(len(pmf)), key=pmf.__getitem__)] == action
    finally:
        engine.close()

    # Progress over the window: every baseline reward counted, and the model matched more as it learned.
    metrics = apprentice_metrics(trainer.state("default")["apprentice"])
    assert metrics["numberOfEvents"] == 240 and metrics["sumOfRewards"] == -240
    early = json.loads(trainer.state("default")["apprentice"])[:30]
    late = json.loads(trainer.state("default")["apprentice"])[-60:]
    assert sum(m for _, m, _ in late) / 60 > 0.9 > sum(m for _, m, _ in early) / 30
    assert metrics["sumOfImitatedRewards"] == -metrics["numberOfImitatedEvents"]


def test_apprentice_progress_is_a_window_of_the_latest_decisions():
    events = [[f"t{i}", i % 2 == 0, 1.0] for i in range(1500)]
    metrics = apprentice_metrics(json.dumps(events[-APPRENTICE_WINDOW:]))
    assert metrics["numberOfEvents"] == 1000 and metrics["startTime"] == "t500"
    assert metrics["numberOfImitatedEvents"] == 500 and metrics["sumOfImitatedRewards"] == 500.0
    assert apprentice_metrics(None) is None


# -- crash safety -------------------------------------------------------------------------------------

CRASH_CONFIG = """
[loops.cards]
rewardWaitTime = "PT1S"
rewardAggregation = "average"
modelExportFrequency = "PT1S"

[loops.coach]
rewardWaitTime = "PT1S"
learningMode = "Apprentice"
modelExportFrequency = "PT1S"
"""


def build_log(data_dir: Path, events: int, seed: int = 7, database_url: str | None = None) -> None:
    """A decision log of ``events`` decisions in two loops, ranked by the service an hour ago, with rewards
    (in ``data_dir``, or in the PostgreSQL database ``database_url``)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "ranker.toml").write_text(CRASH_CONFIG)
    overrides = {"data_dir": data_dir, "synchronous": "NORMAL", "database_url": database_url}
    settings = load_settings(data_dir / "ranker.toml", environ={}, overrides=overrides)
    service = Service(settings)
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(hours=1)
    plan = []
    for n in range(events):
        loop = "cards" if n % 4 else "coach"
        kwargs = {"segment": f"s{rng.randrange(6)}", "deferActivation": n % 11 == 0}
        if n % 37 == 0:
            kwargs["excludedActions"] = ACTION_IDS
        plan.append((loop, f"e{n}", start + timedelta(milliseconds=n), kwargs))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: service.rank(service.loops[p[0]], request(p[1], **p[3]), now=p[2]), plan))
    rewards, activations = [], []
    for loop, event_id, at, _ in plan:
        for _ in range(rng.randrange(3)):
            rewards.append(
                (rng.choice([0.0, 0.5, 1.0]), timestamp(at + timedelta(seconds=rng.uniform(0, 1.5))), loop, event_id)
            )
        if rng.random() < 0.5:
            activations.append((timestamp(at + timedelta(seconds=rng.uniform(0, 1.5))), loop, event_id))
    service.store.write(
        lambda conn: conn.executemany(
            "INSERT INTO rewards (decision_id, value, received_at) "
            "SELECT id, ?, ? FROM decisions WHERE loop = ? AND event_id = ?",
            rewards,
        )
    )
    service.store.write(
        lambda conn: conn.executemany(
            "UPDATE decisions SET activated_at = ? WHERE loop = ? AND event_id = ? AND deferred = 1", activations
        )
    )


def copy_log(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    (target / "ranker.toml").write_text((source / "ranker.toml").read_text())
    with sqlite3.connect(source / "ranker.db") as src, sqlite3.connect(target / "ranker.db") as dst:
        src.backup(dst)
    src.close()
    dst.close()


def checkpoints(data_dir: Path) -> dict[str, tuple]:
    with sqlite3.connect(data_dir / "ranker.db", timeout=30) as conn:
        rows = conn.execute("SELECT loop, last_decision_id, learned, skipped, model FROM trainer_state").fetchall()
    conn.close()
    return {row[0]: row[1:] for row in rows}


def handled(data_dir: Path) -> int:
    """Decisions learned or skipped as of the last checkpoint."""
    with sqlite3.connect(data_dir / "ranker.db", timeout=30) as conn:
        (count,) = conn.execute("SELECT coalesce(sum(learned + skipped), 0) FROM trainer_state").fetchone()
    conn.close()
    return count


def start_trainer(data_dir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    argv = [sys.executable, "-m", "ranker", "train", "--config", str(data_dir / "ranker.toml")]
    argv += ["--data-dir", str(data_dir), "--checkpoint-events", "25", "--checkpoint-seconds", "0.05"]
    log = open(data_dir / "trainer.log", "ab")  # noqa: SIM115
    try:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def crash_and_compare(tmp_path: Path, events: int, kills: int, seed: int) -> None:
    source = tmp_path / "source"
    build_log(source, events, seed)
    crashed, reference = tmp_path / "crashed", tmp_path / "reference"
    copy_log(source, crashed)
    copy_log(source, reference)
    rng = random.Random(seed)

    # One kill in each of ``kills`` stretches of the stream, a random moment after a checkpoint past a
    # random point in it: while learning, saving, committing or publishing.
    low, high = events // 10, events * 9 // 10
    bounds = [low + (high - low) * k // kills for k in range(kills + 1)]
    targets = [rng.randrange(start, end) for start, end in itertools.pairwise(bounds)]
    for target in targets + [None]:
        process = start_trainer(crashed)
        try:
            deadline = time.monotonic() + 60
            goal = events if target is None else target
            while handled(crashed) < goal:
                assert process.poll() is None, (crashed / "trainer.log").read_text()
                assert time.monotonic() < deadline, "the trainer made no progress"
                time.sleep(0.002)
            if target is None:
                process.send_signal(signal.SIGTERM)
                assert process.wait(30) == 0
            else:
                time.sleep(rng.uniform(0, 0.02))
                process.send_signal(signal.SIGKILL)
                process.wait(10)
                assert handled(crashed) < events, "the trainer finished before it could be killed"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    settings = load_settings(reference / "ranker.toml", environ={}, overrides={"data_dir": reference})
    with Trainer(settings) as uninterrupted:
        report = uninterrupted.run_once()
    assert report["learned"] + report["skipped"] == events
    assert report["skipped"] > 0 and report["learned"] > events // 2
    assert checkpoints(crashed) == checkpoints(reference)
    # What was published between the kills is whole: VW loads it.
    for loop in ("cards", "coach"):
        version, path = models.current(crashed, loop)
        arguments = vw_arguments(settings.policy(loop).arguments, settings.loops[loop].exploration_percentage)
        Engine(arguments, str(path), version).close()


def test_sigkill_of_the_trainer_loses_and_repeats_nothing(tmp_path):
    crash_and_compare(tmp_path, events=2000, kills=3, seed=7)


@pytest.mark.slow
def test_sigkill_of_the_trainer_many_times(tmp_path):
    crash_and_compare(tmp_path, events=8000, kills=12, seed=11)


# -- one trainer at a time, kept running ------------------------------------------------------------


def test_a_second_trainer_waits_for_the_lease(make, tmp_path):
    service, first = make()
    rank(service, "e0")
    second = Trainer(settings_for(tmp_path))
    try:
        with first.lease(threading.Event()) as held:
            assert held
            gave_up = threading.Event()
            threading.Timer(0.5, gave_up.set).start()
            started = time.monotonic()
            with second.lease(gave_up) as second_held:
                assert not second_held
            assert time.monotonic() - started >= 0.45
        with second.lease(threading.Event()) as second_held:
            assert second_held
            assert second.run_once(now=LATER)["learned"] == 1
    finally:
        second.close()


def lease_held(data_dir: Path) -> bool:
    """Whether a trainer holds the data folder's lease (tried without waiting)."""
    with open(data_dir / "trainer.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def test_supervisor_restarts_a_killed_trainer(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    env["RANKER_DATA_DIR"] = str(tmp_path)
    supervisor = Supervisor(env=env, backoff=0.1).start()
    try:
        deadline = time.monotonic() + 30
        while supervisor.process is None or not lease_held(tmp_path):
            assert time.monotonic() < deadline, "the trainer did not start"
            time.sleep(0.05)
        first = supervisor.process
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        while supervisor.process is first or not lease_held(tmp_path):
            assert time.monotonic() < deadline, "the trainer was not started again"
            time.sleep(0.05)
        assert supervisor.restarts == 1
        assert supervisor.process.poll() is None
    finally:
        supervisor.stop()
    assert supervisor.process.returncode == 0  # stopped by SIGTERM, it checkpointed and exited cleanly
    assert not lease_held(tmp_path)


def test_trainer_stops_when_its_parent_is_killed(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    env["RANKER_DATA_DIR"] = str(tmp_path)
    script = (
        "import os, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-m', 'ranker', 'train', '--parent-pid', str(os.getpid())])\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 30
        while not lease_held(tmp_path):
            assert time.monotonic() < deadline, "the trainer did not start"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()
    while lease_held(tmp_path):
        assert time.monotonic() < deadline, "the orphaned trainer kept running"
        time.sleep(0.05)
