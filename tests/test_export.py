"""DSJSON export and import: VW reads the export and trains the trainer's model; imports seed a loop's log."""

from __future__ import annotations

import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import vowpalwabbit

from ranker.core import dsjson
from ranker.core.schemas import RankRequest
from ranker.core.settings import Settings, load_settings
from ranker.learning.trainer import Trainer
from ranker.logdata.export import export, import_dsjson
from ranker.serving.service import Service, timestamp

# the first 6 lines of VowpalWabbit/vowpal_wabbit test/train-sets/dsjson_cb.json (commit da668bf)
VW_TEST_FILE = Path(__file__).parent / "data" / "dsjson_cb.json"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)
ACTIONS = [{"id": f"a{i}", "features": [{"item": {"kind": f"k{i % 3}", "price": i / 4}}]} for i in range(6)]


def settings_for(data_dir: Path, **loops: dict) -> Settings:
    loops = {name: {"rewardWaitTime": "PT1S", **loop} for name, loop in (loops or {"default": {}}).items()}
    return load_settings(environ={}, overrides={"data_dir": data_dir, "synchronous": "NORMAL", "loops": loops})


def rank(service: Service, event_id: str, segment: str, at: datetime, loop: str = "default", **extra) -> dict:
    body = {"contextFeatures": [{"user": {"segment": segment}}], "actions": ACTIONS, "eventId": event_id, **extra}
    return service.rank(service.loops[loop], RankRequest.model_validate(body), now=at)


def reward(service: Service, event_id: str, value: float, at: datetime, loop: str = "default") -> None:
    assert service.store.add_reward(loop, event_id, value, timestamp(at))


def record(service: Service, event_id: str, loop: str = "default") -> str | None:
    return service.store.decision(loop, event_id)["record"]


def exported(settings: Settings, loop: str = "default", **kwargs) -> list[str]:
    out = io.StringIO()
    count = export(settings, loop, out, now=kwargs.pop("now", LATER), **kwargs)
    lines = out.getvalue().splitlines()
    assert count == len(lines)
    return lines


def vw_learn(arguments: str, lines: list[str]) -> vowpalwabbit.Workspace:
    """VW trained in this process from DSJSON lines, through pyvw's public API."""
    ws = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet")
    for line in lines:
        examples = ws.parse(line)
        ws.learn(examples)
        ws.finish_example(examples)
    return ws


def saved(ws: vowpalwabbit.Workspace, path: Path) -> bytes:
    ws.save(str(path))
    ws.finish()
    return path.read_bytes()


def predictions(arguments: str, model: bytes, probes: list[str], path: Path) -> list[list[float]]:
    path.write_bytes(model)
    ws = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet -t -i {path}")
    out = []
    for line in probes:
        examples = ws.parse(line)
        out.append(ws.predict(examples))
        ws.finish_example(examples)
    ws.finish()
    return out


@pytest.fixture
def logged(tmp_path):
    """A loop's log through the real Service: rewarded, unrewarded, late-rewarded, deferred, ineligible."""
    settings = settings_for(tmp_path, default={"rewardAggregation": "average", "defaultReward": -0.25})
    service = Service(settings)
    expected = {}  # event id -> (reward the trainer learns, shown)
    for n in range(60):
        at = T0 + timedelta(seconds=n)
        event = f"e{n}"
        deferred = n % 10 == 3
        rank(service, event, f"s{n % 4}", at, deferActivation=deferred)
        if n % 10 == 7:
            rank(service, f"none{n}", "s0", at, excludedActions=[a["id"] for a in ACTIONS])
        if deferred and n % 20 == 3:
            assert service.store.activate("default", event, timestamp(at + timedelta(seconds=0.5)))
        values = [(n % 3) / 2, (n % 5) / 4][: n % 3]
        for i, value in enumerate(values):
            reward(service, event, value, at + timedelta(seconds=0.2 * (i + 1)))
        reward(service, event, 1.0, at + timedelta(seconds=1.5))  # after the window: never counts
        shown = not deferred or n % 20 == 3
        expected[event] = (sum(values) / len(values) if values else -0.25, shown)
    return settings, service, expected


def test_export_is_the_logged_records_labeled_as_the_trainer_joins_them(logged):
    settings, service, expected = logged

    lines = exported(settings)

    # one line per decision with a record, in the order they were logged; the ineligible ones have none
    assert len(lines) == 60
    for n, line in enumerate(lines):
        reward_, shown = expected[f"e{n}"]
        assert line == dsjson.labeled(record(service, f"e{n}"), reward_, skip_learn=not shown)
    assert sum('"_skipLearn":true' in line for line in lines) == 3
    # VW's DSJSON parser reads every line: the shared context and the six actions, the label on a[0]
    ws = vowpalwabbit.Workspace("--cb_explore_adf --dsjson --quiet")
    for line in lines:
        head = json.loads(line[: line.index(',"c":')] + "}")
        examples = ws.parse(line)
        if head.get("_skipLearn"):
            assert len(examples) == 1  # VW's parser drops the decision: nothing to learn
            ws.finish_example(examples)
            continue
        assert len(examples) == 1 + len(ACTIONS)
        labels = [e.get_label(vowpalwabbit.LabelType.CONTEXTUAL_BANDIT).costs for e in examples[1:]]
        chosen = head["a"][0]
        assert [len(costs) for costs in labels] == [int(i == chosen) for i in range(1, len(ACTIONS) + 1)]
        cost = labels[chosen - 1][0]
        assert (cost.action, cost.probability) == (chosen, pytest.approx(head["p"][0]))
        assert cost.cost == pytest.approx(head["_label_cost"])
        ws.finish_example(examples)
    ws.finish()


def test_vw_trained_from_the_export_equals_the_trainers_model(logged, tmp_path):
    settings, service, _ = logged
    trainer = Trainer(settings)
    try:
        assert trainer.run_once(now=LATER)["learned"] == 57  # 60, less the 3 deferred ones never activated
        model = trainer.model("default")
    finally:
        trainer.close()
    arguments = service.loops["default"].engine.arguments
    lines = exported(settings)

    # byte for byte without the _skipLearn lines, which VW's parser drops but still counts as examples
    learned = [line for line in lines if '"_skipLearn":true' not in line]
    assert saved(vw_learn(arguments, learned), tmp_path / "in-process.vw") == model

    # VW's own reader (-d) over the whole file: its model predicts exactly what the trainer's does
    path = tmp_path / "export.json"
    path.write_text("\n".join(lines) + "\n")
    ws = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet -d {path} -f {tmp_path / 'd.vw'}")
    ws.run_parser()
    ws.finish()
    records = [record(service, f"e{n}") for n in range(0, 60, 7)]
    probes = [dsjson.predict_line(rec[rec.index(',"c":') + 5 : -1], len(ACTIONS)) for rec in records]
    expected = predictions(arguments, model, probes, tmp_path / "probe.vw")
    assert predictions(arguments, (tmp_path / "d.vw").read_bytes(), probes, tmp_path / "probe.vw") == expected
    # the probes tell models apart: one trained without the last decision predicts otherwise
    other = saved(vw_learn(arguments, learned[:-1]), tmp_path / "other.vw")
    assert predictions(arguments, other, probes, tmp_path / "probe.vw") != expected


def test_export_time_range_and_decisions_still_in_their_window(logged):
    settings, service, expected = logged

    window = exported(settings, start=T0 + timedelta(seconds=10), end=(T0 + timedelta(seconds=20)).isoformat())
    assert [json.loads(line)["EventId"] for line in window] == [f"e{n}" for n in range(10, 20)]

    # at T0 + 30.5 s, decisions made after T0 + 28.5 s (rewardWaitTime and the trainer's commit grace of 1 s
    # before) may still get rewards: they are left out
    early = exported(settings, now=T0 + timedelta(seconds=30.5))
    assert [json.loads(line)["EventId"] for line in early] == [f"e{n}" for n in range(29)]


def test_logging_only_decisions_keep_their_real_rewards(tmp_path):
    settings = settings_for(tmp_path, quiet={"learningMode": "LoggingOnly"})
    service = Service(settings)
    for n in range(5):
        rank(service, f"q{n}", "s1", T0, loop="quiet")
        reward(service, f"q{n}", n / 4, T0 + timedelta(seconds=0.5), loop="quiet")
    with Trainer(settings) as trainer:
        assert trainer.run_once(now=LATER)["loops"]["quiet"]["skipped"] == 5

    lines = exported(settings, "quiet")

    assert lines == [dsjson.labeled(record(service, f"q{n}", "quiet"), n / 4) for n in range(5)]


def test_import_of_vw_test_file_seeds_a_loop_the_trainer_learns(tmp_path):
    settings = settings_for(tmp_path, default={"rewardWaitTime": "PT10M"})
    original = VW_TEST_FILE.read_text().splitlines()

    imported, errors = import_dsjson(settings, "default", original)

    assert (imported, errors) == (len(original), [])
    conn = sqlite3.connect(settings.database_path)
    rows = conn.execute(
        "SELECT d.event_id, d.created_at, d.record, d.action_ids, d.reward_action_id, d.probability, d.deferred, "
        "r.value, r.received_at FROM decisions d LEFT JOIN rewards r ON r.decision_id = d.id ORDER BY d.id"
    ).fetchall()
    conn.close()
    assert len(rows) == len(original)
    for line, (event_id, created_at, rec, action_ids, chosen, probability, deferred, value, received_at) in zip(
        original, rows, strict=True
    ):
        source = json.loads(line)
        stored = json.loads(rec)
        assert list(stored) == ["Version", "EventId", "Timestamp", "a", "p", "c"]
        assert event_id == stored["EventId"] == source["EventId"]
        assert created_at == received_at == stored["Timestamp"]
        assert datetime.fromisoformat(created_at) == datetime.fromisoformat(source["Timestamp"])
        assert (stored["a"], stored["p"]) == (source["a"], source["p"])
        tags = [entry["_tag"] for entry in source["c"]["_multi"]]
        assert [entry["_id"] for entry in stored["c"]["_multi"]] == tags == json.loads(action_ids)
        assert {k: v for k, v in stored["c"].items() if k != "_multi"} == {"FromUrl": source["c"]["FromUrl"]}
        assert [{k: v for k, v in e.items() if k != "_id"} for e in stored["c"]["_multi"]] == source["c"]["_multi"]
        assert chosen == tags[source["a"][0] - 1] and probability == source["p"][0]
        assert value == -source["_label_cost"] and deferred == 0

    # the trainer learns them, into the model VW trains from the original file
    with Trainer(settings) as trainer:
        assert trainer.run_once(now=datetime(2021, 2, 5, tzinfo=UTC))["learned"] == len(original)
        model = trainer.model("default")
    arguments = Service(settings).loops["default"].engine.arguments
    assert model == saved(vw_learn(arguments, original), tmp_path / "vw.vw")

    # importing the file again adds nothing: every EventId is reported as already there
    again, errors = import_dsjson(settings, "default", original)
    assert again == 0
    assert [n for n, _ in errors] == list(range(1, len(original) + 1))
    assert all("already in loop 'default'" in message for _, message in errors)


def _line(**changes) -> str:
    obj = json.loads(VW_TEST_FILE.read_text().splitlines()[1])
    for key, value in changes.items():
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    return json.dumps(obj)


MULTI = json.loads(_line())["c"]["_multi"]
BAD_LINES = [
    ('{"EventId": "x", ', "invalid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (_line(c=None), '"c" must be an object'),
    (_line(c={"FromUrl": [{"a": 1}]}), '"c._multi" must be a non-empty array'),
    (_line(c={"_multi": "x"}), '"c._multi" must be a non-empty array'),  # VW itself crashes on this one
    (_line(c={"_multi": []}), '"c._multi" must be a non-empty array'),
    (_line(a=None), '"a" must be a non-empty array'),
    (_line(a=[5, 1, 2, 3]), '"a" must hold distinct indices from 1 to 4'),
    (_line(a=[1, 1, 2, 3]), '"a" must hold distinct indices'),
    (_line(p=None), '"p" must hold a probability'),
    (_line(p=[0.5, 0.5]), '"p" must hold a probability'),
    (_line(p=[0, 0.5, 0.25, 0.25]), "positive probability"),
    (_line(EventId=None), "EventId must be a string"),
    (_line(Timestamp="yesterday"), "Timestamp must be an ISO 8601 time"),
    (_line(Timestamp=1612456289), "Timestamp must be an ISO 8601 time"),
    (_line(_label_cost=-3), "_label_cost must be a number in [-1, 1]"),
    (_line(_labelIndex=2), "the label must be on the chosen action"),
    (_line(c={"_multi": MULTI, "_slots": [{}]}), "'_slots' is not supported"),
    (_line(c={"_multi": MULTI, "é": {"x": 1}}), "must start with an ASCII character"),  # VW corrupts memory
    (_line(c={"_multi": MULTI, "u": {"v": ["a", "b"]}}), "an array holds only numbers or only objects"),
    (_line(c={"_multi": [{"_tag": "x"}, {"_tag": "x"}]}, a=[1, 2], p=[0.5, 0.5]), "ids (_id, _tag or index) repeat"),
]


def test_import_reports_bad_lines_with_their_numbers_and_writes_only_whole_lines(tmp_path):
    settings = settings_for(tmp_path)
    good = VW_TEST_FILE.read_text().splitlines()
    # a line whose reward row the database refuses: its decision must not stay behind
    refused = json.loads(good[0])
    refused["EventId"], refused["_label_cost"] = "refused", -0.5
    lines = [good[0], "", *[bad for bad, _ in BAD_LINES], good[1], good[0], json.dumps(refused), *good[2:]]
    Service(settings)  # creates the schema
    conn = sqlite3.connect(settings.database_path)
    conn.execute(
        "CREATE TRIGGER refuse AFTER INSERT ON rewards WHEN NEW.value = 0.5 "
        "BEGIN SELECT RAISE(ABORT, 'reward refused'); END"
    )
    conn.commit()

    imported, errors = import_dsjson(settings, "default", lines)

    assert imported == len(good)
    expected = [(3 + i, message) for i, (_, message) in enumerate(BAD_LINES)]
    expected += [(len(BAD_LINES) + 4, "is already in loop 'default'"), (len(BAD_LINES) + 5, "reward refused")]
    assert [n for n, _ in errors] == [n for n, _ in expected]
    for (_, message), (_, want) in zip(errors, expected, strict=True):
        assert want in message
    decisions = conn.execute("SELECT id, event_id FROM decisions ORDER BY id").fetchall()
    assert [event_id for _, event_id in decisions] == [json.loads(line)["EventId"] for line in good]
    rewards = conn.execute("SELECT decision_id FROM rewards ORDER BY decision_id").fetchall()
    assert [d for (d,) in rewards] == [d for d, _ in decisions]  # every decision has its reward, nothing else
    conn.close()


def test_export_import_round_trip(logged, tmp_path):
    settings, _, _ = logged
    lines = exported(settings)
    # a second loop in the same log, with the same default reward
    both = settings_for(
        tmp_path, default={"rewardAggregation": "average", "defaultReward": -0.25}, copy={"defaultReward": -0.25}
    )

    assert import_dsjson(both, "copy", lines) == (60, [])

    # the same records, labels and never-activated decisions: the copy exports what the original did
    assert exported(both, "copy") == lines
    # and the trainer learns the same model from both
    with Trainer(both) as trainer:
        report = trainer.run_once(now=LATER)["loops"]
        assert (report["copy"]["learned"], report["copy"]["skipped"]) == (57, 3)
        assert trainer.model("copy") == trainer.model("default")
