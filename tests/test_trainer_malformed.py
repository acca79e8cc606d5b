"""A record the server never writes (a bad copy, a manual edit) is skipped with a log line; the trainer goes on."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import vowpalwabbit

from ranker.core import dsjson
from ranker.core.schemas import MultiSlotRankRequest, RankRequest
from ranker.core.settings import load_settings
from ranker.learning.trainer import Trainer
from ranker.serving.service import Service, timestamp

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)
ACTIONS = [{"id": f"a{i}", "features": [{"item": {"kind": f"k{i % 3}", "tag": f"t{i}"}}]} for i in range(4)]
SLOTS = [{"id": "hero", "baselineAction": "a0"}, {"id": "side", "baselineAction": "a1"}]

# How a record can be broken (single-slot), each a function of the good record
SINGLE = {
    "not JSON": lambda good: "garbage",
    "cut short": lambda good: good[:-7],
    "no context": lambda good: json.dumps({"a": [1], "p": [1.0]}),
    "action out of range": lambda good: re.sub(r'"a":\[\d+', '"a":[99', good, count=1),
    "zero probability": lambda good: re.sub(r'"p":\[[^,\]]+', '"p":[0', good, count=1),
    "a probability as text": lambda good: re.sub(r'"p":\[[^,\]]+', '"p":["x"', good, count=1),
}
MULTI = {
    "not JSON after _outcomes": lambda good: good.replace('"_outcomes":[', '"_outcomes":[}', 1),
    "an outcome without its slot": lambda good: re.sub(r'("_outcomes":\[\{)"_id"', r'\1"_ix"', good),
    "an outcome's action out of range": lambda good: re.sub(r'"_a":\[\d+', '"_a":[77', good, count=1),
}


def _settings(tmp_path: Path, database_url: str | None, **loop):
    loop = {"rewardWaitTime": "PT1S", **loop}
    overrides = {"data_dir": tmp_path, "synchronous": "NORMAL", "loops": {"default": loop}}
    if database_url:
        overrides["database_url"] = database_url
    return load_settings(environ={}, overrides=overrides)


def _edit(settings, event_id: str, record: str) -> None:
    """Change a decision's record behind the server's back, as a bad copy or a manual edit would."""
    if settings.database_url is None:
        with sqlite3.connect(settings.data_dir / "ranker.db") as conn:
            conn.execute("UPDATE decisions SET record = ? WHERE event_id = ?", (record, event_id))
        conn.close()
        return
    import psycopg

    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        conn.execute("UPDATE decisions SET record = %s WHERE event_id = %s", (record, event_id))


def _vw_model(arguments: str, lines: list[str], folder: Path) -> bytes:
    ws = vowpalwabbit.Workspace(arguments + " --dsjson --quiet")
    for line in lines:
        examples = ws.parse(line)
        ws.learn(examples)
        ws.finish_example(examples)
    path = folder / "expected.vw"
    ws.save(str(path))
    ws.finish()
    return path.read_bytes()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_malformed_single_slot_records_are_skipped_and_every_good_one_learned_once(tmp_path, database_url, caplog):
    settings = _settings(tmp_path, database_url)
    service = Service(settings)
    loop = service.loops["default"]
    names = list(SINGLE)
    events = [f"e{n}" for n in range(len(names) * 2)]  # a good decision between two broken ones
    for n, event_id in enumerate(events):
        body = {"contextFeatures": [{"u": {"seg": f"s{n % 3}"}}], "actions": ACTIONS, "eventId": event_id}
        service.rank(loop, RankRequest.model_validate(body), now=T0 + timedelta(milliseconds=n))
        assert service.store.add_reward("default", event_id, n / 20, timestamp(T0 + timedelta(seconds=0.5)))
    records = {e: service.store.decision("default", e)["record"] for e in events}
    broken = {f"e{2 * k + 1}": name for k, name in enumerate(names)}
    for event_id, name in broken.items():
        _edit(settings, event_id, SINGLE[name](records[event_id]))

    with caplog.at_level(logging.ERROR, logger="ranker"), Trainer(settings) as trainer:
        report = trainer.run_once(now=LATER)
        assert (report["learned"], report["skipped"], report["malformed"]) == (len(names), len(names), len(names))
        good = [dsjson.labeled(records[e], n / 20) for n, e in enumerate(events) if e not in broken]
        assert trainer.model("default") == _vw_model(loop.engine.arguments, good, tmp_path)
        assert trainer.state("default")["last_decision_id"] == len(events)
        assert trainer.run_once(now=LATER)["learned"] == 0  # passed over once, not again

    ids = {row["event_id"]: row["id"] for row in service.store.read("SELECT id, event_id FROM decisions", ())}
    logged = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    for event_id in broken:
        assert any(f"decision {ids[event_id]} skipped" in line for line in logged), (event_id, logged)

    # a new trainer from the checkpoint goes on with what comes next
    body = {"contextFeatures": [{"u": {"seg": "s9"}}], "actions": ACTIONS, "eventId": "next"}
    service.rank(loop, RankRequest.model_validate(body), now=T0 + timedelta(seconds=5))
    with Trainer(settings) as trainer:
        assert trainer.run_once(now=LATER)["learned"] == 1


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_malformed_multislot_records_are_skipped_and_the_trainer_goes_on(tmp_path, database_url, caplog):
    settings = _settings(tmp_path, database_url, policy="multislot")
    service = Service(settings)
    loop = service.loops["default"]
    names = list(MULTI)
    events = [f"e{n}" for n in range(len(names) * 2)]
    for n, event_id in enumerate(events):
        body = {"contextFeatures": [{"u": {"seg": f"s{n % 3}"}}], "actions": ACTIONS, "slots": SLOTS}
        service.rank_multislot(loop, MultiSlotRankRequest.model_validate({**body, "eventId": event_id}), now=T0)
        rewards = [("hero", 1.0), ("side", n / 10)]
        service.store.add_slot_rewards("default", event_id, rewards, timestamp(T0 + timedelta(seconds=0.5)))
    records = {e: service.store.decision("default", e)["record"] for e in events}
    broken = {f"e{2 * k + 1}": name for k, name in enumerate(names)}
    for event_id, name in broken.items():
        changed = MULTI[name](records[event_id])
        assert changed != records[event_id]
        _edit(settings, event_id, changed)

    with caplog.at_level(logging.ERROR, logger="ranker"), Trainer(settings) as trainer:
        report = trainer.run_once(now=LATER)
        assert (report["learned"], report["malformed"]) == (len(names), len(names))
        good = [dsjson.labeled_slots(records[e], [1.0, n / 10]) for n, e in enumerate(events) if e not in broken]
        assert trainer.model("default") == _vw_model(loop.engine.arguments, good, tmp_path)
    assert sum("malformed" in r.getMessage() for r in caplog.records) == len(names)


def test_the_server_writes_no_record_the_check_refuses():
    good = dsjson.decision_line(
        "e", "2030-01-01T12:00:00.000Z", '{"u":1,"_multi":[{"x":1},{"x":2}]}', [1, 0], [0.9, 0.1]
    )
    assert dsjson.record_problem(good) is None
    for name, breaking in SINGLE.items():
        assert dsjson.record_problem(breaking(good)) is not None, name
