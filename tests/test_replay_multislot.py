"""Multi-slot (CCB) export and offline evaluation over a log the real Service wrote, in a world whose truth is
known: the user's segment decides which action is clicked, and a slot lower on the page is clicked less."""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import vowpalwabbit

from ranker.app import create_app
from ranker.core import dsjson
from ranker.core.schemas import MultiSlotRankRequest
from ranker.core.settings import load_settings
from ranker.evaluation.importance import importance
from ranker.evaluation.jobs import run_pending
from ranker.evaluation.output import write
from ranker.evaluation.replay import (
    BUILT_INS,
    Candidate,
    DsjsonFile,
    LoopLog,
    MultiSlotEvent,
    policy_candidates,
    replay,
)
from ranker.evaluation.search import graduation, grid, search
from ranker.learning.trainer import Trainer
from ranker.logdata.export import export, import_dsjson
from ranker.serving.engine import Engine
from ranker.serving.service import Service

VW_TEST_FILE = Path(__file__).parent / "data" / "dsjson_cb.json"
K, SEGMENTS, EVENTS, DEFERRED = 5, 4, 1500, 5
SLOT_WEIGHT = {"top": 1.0, "side": 0.6, "bottom": 0.4}
LEARNER = Candidate("learner", "--ccb_explore_adf --epsilon 0.05 --cb_type mtr -q ::")
V1 = "/personalizer/v1.0"


def click_probability(segment: int, action: int, slot: str) -> float:
    """In segment s, action (s + 1) mod K is clicked 80% of the time in the top slot, every other one 10%; the
    side and bottom slots are clicked 0.6 and 0.4 times as often. a0 is never the best action."""
    return (0.8 if action == (segment + 1) % K else 0.1) * SLOT_WEIGHT[slot]


def rank_request(event_id: str, segment: int, bottom: bool, **extra) -> MultiSlotRankRequest:
    """Every request fills top (baseline a0) and side (baseline a1, never a4); every third one also bottom
    (baseline a4, a3 or a4 only), which stays empty when the slots above took both."""
    actions = [{"id": f"a{i}", "features": [{"item": {"kind": f"k{i}"}}]} for i in range(K)]
    slots = [
        {"id": "top", "features": [{"pos": {"p": "top"}}], "baselineAction": "a0"},
        {"id": "side", "features": [{"pos": {"p": "side"}}], "baselineAction": "a1", "excludedActions": ["a4"]},
    ]
    if bottom:
        slots.append(
            {
                "id": "bottom",
                "features": [{"pos": {"p": "bottom"}}],
                "baselineAction": "a4",
                "excludedActions": ["a0", "a1", "a2"],
            }
        )
    body = {"contextFeatures": [{"user": {"segment": f"s{segment}"}}], "actions": actions, "slots": slots}
    return MultiSlotRankRequest.model_validate({**body, "eventId": event_id, **extra})


class World:
    """A multi-slot loop's log written by the Service two hours ago: a first phase served by the untrained
    model, then one by the model the trainer learned from it (so the logged probabilities are not uniform).
    Clicks are rewarded through Service.reward_slots; unclicked slots get the default reward 0. The service
    stamps rewards with the wall clock, so each is then dated with its decision, as if it had come at once."""

    def __init__(self, data_dir: Path, seed: int = 11):
        loops = {
            "default": {"policy": "multislot", "rewardWaitTime": "PT1S", "explorationPercentage": 0.5},
            "single": {"rewardWaitTime": "PT1S"},
        }
        self.settings = load_settings(
            environ={}, overrides={"data_dir": data_dir, "synchronous": "NORMAL", "loops": loops}
        )
        self.rng = random.Random(seed)
        self.start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
        self.segments: dict[str, int] = {}
        self.rewards: dict[str, dict[str, float]] = {}  # event id -> slot id -> what the trainer learns
        first = EVENTS // 3
        self.serve(Service(self.settings), range(first), self.start)
        with Trainer(self.settings) as trainer:
            assert trainer.run_once(now=self.start + timedelta(minutes=1))["loops"]["default"]["published"]
        self.service = Service(self.settings)  # a new worker: it serves the published model
        assert self.service.loops["default"].engine.version != "0"
        later = self.start + timedelta(minutes=2)
        self.serve(self.service, range(first, EVENTS), later)
        loop = self.service.loops["default"]
        for n in range(DEFERRED):  # never activated: not events
            request = rank_request(f"deferred{n}", 0, bottom=False, deferActivation=True)
            self.service.rank_multislot(loop, request, now=later + timedelta(minutes=1))

    def serve(self, service: Service, numbers: range, start: datetime) -> None:
        loop = service.loops["default"]
        for n in numbers:
            event = f"e{n}"
            segment = self.segments[event] = self.rng.randrange(SEGMENTS)
            request = rank_request(event, segment, bottom=n % 3 == 0)
            response = service.rank_multislot(loop, request, now=start + timedelta(milliseconds=10 * n))
            self.rewards[event] = {}
            clicks = []
            for slot in response["slots"]:
                if slot["rewardActionId"] is None:
                    continue
                clicked = self.rng.random() < click_probability(segment, int(slot["rewardActionId"][1:]), slot["id"])
                self.rewards[event][slot["id"]] = 1.0 if clicked else 0.0
                if clicked:
                    clicks.append((slot["id"], 1.0))
            if clicks:
                service.reward_slots(loop, event, clicks)
        service.store.write(
            lambda conn: conn.execute(
                "UPDATE rewards SET received_at = (SELECT created_at FROM decisions d WHERE d.id = decision_id)"
            )
        )

    def log(self) -> LoopLog:
        return LoopLog(self.settings, "default")

    def records(self) -> list[tuple[str, str]]:
        """(event id, record) of the events, in the order they were logged."""
        rows = self.service.store.read(
            "SELECT event_id, record FROM decisions WHERE loop = 'default' AND event_id LIKE 'e%' ORDER BY id"
        )
        return [(row["event_id"], row["record"]) for row in rows]

    def pairs(self) -> list[dict]:
        """Every filled (event, slot), in log order: its slot id, the event's segment, what the record logged
        (chosen index, probability, candidates, baseline) and the reward."""
        out = []
        for event_id, record in self.records():
            obj = json.loads(record)
            for k, (slot, outcome) in enumerate(zip(obj["c"]["_slots"], obj["_outcomes"], strict=True)):
                out.append(
                    {
                        "event": event_id,
                        "slot": outcome["_id"],
                        "segment": self.segments[event_id],
                        "chosen": outcome["_a"][0],
                        "p": outcome["_p"][0],
                        "candidates": slot["_inc"],
                        "baseline": obj["_ba"][k],
                        "reward": self.rewards[event_id][outcome["_id"]],
                    }
                )
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("multislot"))


@pytest.fixture(scope="module")
def report(world):
    return replay(world.log(), [*BUILT_INS, LEARNER])


def exported(settings, loop: str = "default") -> list[str]:
    out = io.StringIO()
    count = export(settings, loop, out)
    lines = out.getvalue().splitlines()
    assert count == len(lines)
    return lines


def test_the_export_is_each_record_labeled_per_slot_and_vw_parses_every_line(world):
    lines = exported(world.settings)

    records = dict(world.records())
    assert len(lines) == EVENTS + DEFERRED  # the decision with no action left has no record
    for event_id, record in records.items():
        slots = [outcome["_id"] for outcome in dsjson.split_multislot(record)[1]["_outcomes"]]
        assert dsjson.labeled_slots(record, [world.rewards[event_id][slot] for slot in slots]) in lines
    skipped = [line for line in lines if '"_skipLearn":true' in line]
    assert len(skipped) == DEFERRED and all('"_skipLearn":true,"_outcomes":[' in line for line in skipped)
    unfilled = sum(len(world.rewards[e]) == 2 and int(e[1:]) % 3 == 0 for e in records)
    assert unfilled > 0  # some events asked for the bottom slot and left it empty: it is not in their record

    # VW's DSJSON parser reads every line: shared, actions and slots, each slot labeled with its own cost
    ws = vowpalwabbit.Workspace("--ccb_explore_adf --dsjson --quiet")
    for line in lines:
        examples = ws.parse(line)
        obj = json.loads(line)
        if obj.get("_skipLearn"):
            assert len(examples) == 1  # VW's parser drops the decision: nothing to learn
            ws.finish_example(examples)
            continue
        outcomes = obj["_outcomes"]
        assert len(examples) == 1 + len(obj["c"]["_multi"]) + len(outcomes)
        for example, outcome in zip(examples[-len(outcomes) :], outcomes, strict=True):
            label = example.get_label(vowpalwabbit.LabelType.CONDITIONAL_CONTEXTUAL_BANDIT).outcome
            assert label.cost == -world.rewards[obj["EventId"]][outcome["_id"]]
            assert [(p.action, p.score) for p in label.action_probs] == [
                (a, pytest.approx(p)) for a, p in zip(outcome["_a"], outcome["_p"], strict=True)
            ]
        ws.finish_example(examples)
    ws.finish()


def slot_predictions(arguments: str, model: bytes, probes: list[str], path: Path) -> list[list[dict[int, float]]]:
    """Each probe's per-slot probabilities, predicted by the serving Engine with this model."""
    path.write_bytes(model)
    engine = Engine(arguments, str(path))
    try:
        return [engine.predict_slots(probe) for probe in probes]
    finally:
        engine.close()


def test_vw_trained_from_the_export_equals_the_trainers_model(world, tmp_path):
    with Trainer(world.settings) as trainer:
        trainer.run_once()
        model = trainer.model("default")
    arguments = world.service.loops["default"].engine.arguments
    lines = exported(world.settings)

    # byte for byte without the _skipLearn lines, which VW's parser drops but still counts as examples
    learned = [line for line in lines if '"_skipLearn":true' not in line]
    ws = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet")
    for line in learned:
        examples = ws.parse(line)
        ws.learn(examples)
        ws.finish_example(examples)
    ws.save(str(tmp_path / "in-process.vw"))
    ws.finish()
    assert (tmp_path / "in-process.vw").read_bytes() == model

    # VW's own reader (-d) over the whole file: its model predicts exactly what the trainer's does
    path = tmp_path / "export.json"
    path.write_text("\n".join(lines) + "\n")
    ws = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet -d {path} -f {tmp_path / 'd.vw'}")
    ws.run_parser()
    ws.finish()
    probes = [json.dumps(json.loads(record)["c"]) for _, record in world.records()[::150]]
    expected = slot_predictions(arguments, model, probes, tmp_path / "probe.vw")
    assert slot_predictions(arguments, (tmp_path / "d.vw").read_bytes(), probes, tmp_path / "probe.vw") == expected
    # the probes tell models apart: one trained without the last 20 decisions predicts otherwise
    ws = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet")
    for line in learned[:-20]:
        examples = ws.parse(line)
        ws.learn(examples)
        ws.finish_example(examples)
    ws.save(str(tmp_path / "other.vw"))
    ws.finish()
    assert slot_predictions(arguments, (tmp_path / "other.vw").read_bytes(), probes, tmp_path / "p.vw") != expected


def test_import_refuses_multislot_lines_and_multislot_loops_line_by_line(world):
    lines = exported(world.settings)[:3]

    assert import_dsjson(world.settings, "single", lines) == (
        0,
        [(n, "a multi-slot (CCB) line: ranker import reads single-slot (CB) lines only") for n in (1, 2, 3)],
    )
    imported, errors = import_dsjson(world.settings, "default", ["", *VW_TEST_FILE.read_text().splitlines()[:2]])
    assert imported == 0
    assert [n for n, _ in errors] == [2, 3] and all("is multi-slot" in message for _, message in errors)
    assert not world.service.store.read("SELECT id FROM decisions WHERE loop = 'single'")


def test_replay_reports_every_slot_and_all_of_them_pooled(world, report):
    pairs = world.pairs()
    filled = {slot: sum(p["slot"] == slot for p in pairs) for slot in SLOT_WEIGHT}

    assert report.multislot and report.events == EVENTS and report.samples == len(pairs)
    assert report.skipped == {"not_activated": DEFERRED}
    assert report.slots == ["top", "side", "bottom"]  # in the order first seen
    assert filled["top"] == filled["side"] == EVENTS and 0 < filled["bottom"] < EVENTS // 3
    assert [row["policy"] for row in report.policies] == ["Online", "Baseline", "Random", "learner"]
    for row in report.policies:
        assert row["n"] == len(pairs) and list(row["slots"]) == report.slots
        assert {slot: values["n"] for slot, values in row["slots"].items()} == filled
        assert row["dr"] is None and row["dm"] is None and report.reward_model is None


def test_online_ips_of_each_slot_is_its_mean_logged_reward(world, report):
    pairs = world.pairs()
    online = report.policies[0]

    for slot in SLOT_WEIGHT:
        mean = np.mean([p["reward"] for p in pairs if p["slot"] == slot])
        assert online["slots"][slot]["ips"] == pytest.approx(mean, abs=1e-12)
        lo, hi = online["slots"][slot]["interval"]
        assert lo < mean < hi
    assert online["ips"] == pytest.approx(np.mean([p["reward"] for p in pairs]), abs=1e-12)
    # each slot's interval is bounded by its own weight bound: 1 / the smallest product of logged probabilities
    for slot, data in report.slot_data["learner"].items():
        assert report.policies[3]["slots"][slot]["w_max"] == pytest.approx(1 / np.min(data.logged_probability))
    assert report.policies[3]["w_max"] == max(row["w_max"] for row in report.policies[3]["slots"].values())
    # lower slots are clicked less, as the world says
    assert online["slots"]["top"]["ips"] > online["slots"]["side"]["ips"] > online["slots"]["bottom"]["ips"]


def prefix_products(pairs: list[dict], value) -> list[float]:
    """Per pair, ``value(pair)`` times the values of its event's earlier slots (pairs come in log order)."""
    out: list[float] = []
    for i, pair in enumerate(pairs):
        earlier = out[-1] if i and pairs[i - 1]["event"] == pair["event"] else 1.0
        out.append(earlier * value(pair))
    return out


def test_segments_of_a_multislot_source_hold_the_pairs_of_their_events(world, report):
    by_segment = replay(world.log(), BUILT_INS, by=["user.segment"], min_segment_events=1)
    segments = by_segment.segments["user.segment"]
    assert sum(s["events"] for s in segments) == by_segment.events
    assert sum(s["samples"] for s in segments) == by_segment.samples
    for segment in segments:
        online = segment["policies"][0]
        assert online["policy"] == "Online" and online["n"] == segment["samples"]
        rewards = [p["reward"] for p in world.pairs() if f"s{p['segment']}" == segment["segment"]]
        assert online["ips"] == pytest.approx(np.mean(rewards), abs=1e-12)


def test_baseline_and_random_are_the_slots_baseline_and_a_uniform_choice_among_its_candidates(world, report):
    pairs = world.pairs()
    # slot k is weighed by the probability of the event's logged slots 0..k, under the policy and the logging
    logged = prefix_products(pairs, lambda p: p["p"])
    baseline = prefix_products(pairs, lambda p: float(p["chosen"] == p["baseline"]))
    uniform = prefix_products(pairs, lambda p: 1 / len(p["candidates"]))
    for slot in SLOT_WEIGHT:
        mine = [i for i, p in enumerate(pairs) if p["slot"] == slot]
        assert report.slot_data["Online"][slot].logged_probability.tolist() == pytest.approx([logged[i] for i in mine])
        assert report.slot_data["Online"][slot].target_probability.tolist() == pytest.approx([logged[i] for i in mine])
        assert report.slot_data["Baseline"][slot].target_probability.tolist() == [baseline[i] for i in mine]
        assert report.slot_data["Random"][slot].target_probability.tolist() == pytest.approx([uniform[i] for i in mine])
    # the side slot's candidates are the actions it may take that the top slot left: 4 or 3 of them
    assert {len(p["candidates"]) for p in pairs if p["slot"] == "side"} == {3, 4}
    # the logged probabilities are the trained model's in the second phase: Random's estimate differs from Online's
    rows = {row["policy"]: row for row in report.policies}
    assert rows["Random"]["slots"]["top"]["ips"] != pytest.approx(rows["Online"]["slots"]["top"]["ips"], abs=1e-3)

    # In the top slot (nothing before it) the truth is known: the baseline a0 earns 0.1 in every segment, a uniform
    # choice (0.8 + 4 * 0.1) / 5. IPS is unbiased: within 3 standard errors of it.
    for name, truth in (("Baseline", 0.1), ("Random", 0.24)):
        top = rows[name]["slots"]["top"]
        lo, hi = top["gaussian_interval"]["ips"]
        assert abs(top["ips"] - truth) <= 3 * (hi - lo) / (2 * 1.96), (name, top["ips"])


def test_a_vw_candidate_is_scored_per_slot_before_it_learns_and_beats_random(world, report):
    # VW learning each labeled line gives, before updating, each slot's probability of its logged action given
    # the logged earlier slots: the candidate's target probabilities, slot by slot
    # (slot k weighed by the product over slots 0..k)
    ws = vowpalwabbit.Workspace(f"{LEARNER.arguments} --dsjson --quiet")
    expected: dict[str, list[float]] = {slot: [] for slot in SLOT_WEIGHT}
    for event_id, record in world.records():
        outcomes = dsjson.split_multislot(record)[1]["_outcomes"]
        examples = ws.parse(dsjson.labeled_slots(record, [world.rewards[event_id][o["_id"]] for o in outcomes]))
        ws.learn(examples)
        prefix = 1.0
        for outcome, scores in zip(outcomes, examples[0].get_decision_scores(), strict=True):
            prefix *= dict(scores)[outcome["_a"][0]]
            expected[outcome["_id"]].append(prefix)
        ws.finish_example(examples)
    ws.finish()

    for slot, values in expected.items():
        assert report.slot_data["learner"][slot].target_probability.tolist() == pytest.approx(values, abs=1e-7)
        assert len(set(np.round(values, 3))) > 2  # the learner's PMF moved as it learned
    rows = {row["policy"]: row for row in report.policies}
    assert rows["learner"]["slots"]["top"]["interval"][0] > rows["Random"]["slots"]["top"]["interval"][1]
    assert rows["learner"]["snips"] > rows["Random"]["interval"][1]


def test_a_file_replays_as_the_loop_it_was_exported_from_and_two_processes_agree(world, report, tmp_path):
    path = tmp_path / "export.json"
    export(world.settings, "default", path)

    from_file = replay(DsjsonFile(path), [*BUILT_INS, LEARNER])

    assert DsjsonFile(path).multislot() and world.log().multislot()
    assert from_file.policies == report.policies
    assert (from_file.skipped, from_file.events, from_file.slots) == (report.skipped, report.events, report.slots)
    assert replay(world.log(), [*BUILT_INS, LEARNER], workers=2).policies == report.policies
    # a multi-slot line without _inc, _ba or labels on every slot, as other DSJSON writers make them
    obj = json.loads(path.read_text().splitlines()[0])
    for slot in obj["c"]["_slots"]:
        del slot["_inc"]
    del obj["_ba"]
    unlabeled = json.loads(path.read_text().splitlines()[1])
    del unlabeled["_outcomes"][0]["_label_cost"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(obj) + "\n" + json.dumps(unlabeled) + "\nnot json\n")
    events = list(DsjsonFile(other).events())
    assert [type(e).__name__ for e in events] == ["MultiSlotEvent", "Skipped", "Skipped"]
    assert [e.reason for e in events[1:]] == ["unlabeled", "invalid"]
    first = events[0]
    assert isinstance(first, MultiSlotEvent) and "_outcomes" in first.line.split(',"c":', 1)[1]
    top = first.slots[0]
    assert (top.candidates, top.baseline) == (K, 0)  # every action, and the first one, without _inc and _ba


def test_candidates_of_the_other_kind_are_refused(world):
    with pytest.raises(ValueError, match="'cb' is not a multi-slot policy.*--ccb_explore_adf"):
        replay(world.log(), [*BUILT_INS, Candidate("cb", "--cb_explore_adf --epsilon 0.1")])
    with pytest.raises(ValueError, match="'ccb' is not a single-slot policy.*--cb_explore_adf"):
        replay(DsjsonFile(VW_TEST_FILE), [Candidate("ccb", "--ccb_explore_adf")])
    with pytest.raises(ValueError, match="--cb_explore_adf .* or --ccb_explore_adf"):
        Candidate("both", "--cb_explore_adf --ccb_explore_adf")

    # policy files: by default those of the source's kind; named ones whatever their kind
    shipped = json.loads((world.settings.policies_dir / "multislot.json").read_text())
    assert [(c.name, c.arguments) for c in policy_candidates(world.settings, multislot=True)] == [
        (shipped["name"], shipped["arguments"])
    ]
    assert "multislot" not in [c.name for c in policy_candidates(world.settings)]
    assert [c.name for c in policy_candidates(world.settings, ["multislot", "default"])] == ["multislot", "default"]


def test_report_json_table_and_cumulative_curves(world, report, tmp_path):
    json_path, _ = write(report, tmp_path / "out")

    body = json.loads(json_path.read_text())
    assert (body["multislot"], body["slots"], body["samples"]) == (True, report.slots, report.samples)
    assert body["slots_not_reported"] == 0
    online = body["policies"][0]
    assert set(online["slots"]) == {"top", "side", "bottom"} and online["slots"]["top"]["n"] == EVENTS
    curve = body["cumulative"]
    assert curve["event"][-1] == report.events and len(curve["timestamp"]) == len(curve["event"])
    for row in body["policies"]:
        assert curve["ips"][row["policy"]][-1] == pytest.approx(row["ips"])
        for slot, values in row["slots"].items():
            assert curve["slots"][slot]["snips"][row["policy"]][-1] == pytest.approx(values["snips"])
    # at the first checkpoint (one event), a slot that event did not fill has no estimate yet
    first = world.records()[0][0]
    for slot in SLOT_WEIGHT:
        assert (curve["slots"][slot]["ips"]["Online"][0] is None) == (slot not in world.rewards[first])
    assert curve["slots"]["side"]["ips"]["Online"][0] == world.rewards[first]["side"]  # weight 1: the reward

    table = report.table().splitlines()
    assert table[0].split() == ["policy", "slot", "n", "IPS", "SNIPS", "95%", "interval", "vs", "Online"]
    assert len(table) == 1 + 4 * 4  # each policy: overall, then top, side and bottom
    # each row's paired difference with Online, per slot too: in the top slot, where the world's preferences are
    # sharpest, the learner (trained) beats a fresh model's serving and Random is worse
    learner, random_row = report.policies[3], report.policies[2]
    assert learner["slots"]["top"]["versus"]["Online"]["verdict"] == "better"
    assert random_row["slots"]["top"]["versus"]["Online"]["verdict"] == "worse"
    assert random_row["versus"]["Online"]["interval"][1] < 0
    assert report.policies[0]["versus"] == {} and table[1].rstrip().endswith("-")
    assert table[14].split()[:2] == ["top", "1500"] and table[14].endswith("better")
    assert table[1].split()[:3] == ["Online", "overall", str(report.samples)]
    assert table[2].split()[:2] == ["top", str(EVENTS)]


def test_search_importance_and_graduation_use_multislot_policies(world):
    assert all(arguments.startswith("--ccb_explore_adf ") for arguments in grid("--ccb_explore_adf -q ::"))

    result = search(world.log(), budget_seconds=0, current="--cb_explore_adf --epsilon 0.2")

    # the single-slot current policy cannot be replayed here: Personalizer's default and the base, as CCB
    assert sorted(row["arguments"] for row in result.rows) == sorted(
        [
            "--ccb_explore_adf --epsilon 0.2 --power_t 0 -l 0.001 --cb_type mtr -q ::",
            "--ccb_explore_adf -q :: --epsilon 0.2",
        ]
    )
    assert result.online["n"] == len(world.pairs()) and result.events == EVENTS

    rows = importance(world.log(), LEARNER.arguments)
    assert {row["namespace"] for row in rows} == {"item", "pos", "user"}  # the slots' features are scored too
    assert rows[0]["namespace"] == "user"  # the segment decides which action is clicked

    evidence = graduation(world.log(), LEARNER.arguments, 100)
    assert evidence["events"] == EVENTS and evidence["graduate"] is True, evidence


def test_an_evaluation_job_reports_each_slot_with_its_slot_id(world):
    client = create_app(world.settings).test_client()
    window = {"startTime": world.start.isoformat(), "endTime": datetime.now(UTC).isoformat()}
    policy = {"name": "learner", "arguments": LEARNER.arguments}

    refused = client.put(
        f"{V1}/evaluations/cb", json={"name": "cb", **window, "policies": [{**policy, "arguments": "--cb_explore_adf"}]}
    )
    assert refused.status_code == 400
    assert refused.get_json()["error"]["code"] == "InvalidPolicyConfiguration"
    assert refused.get_json()["error"]["target"] == "policies[0]"
    assert client.put(f"{V1}/evaluations/ev", json={"name": "ev", **window, "policies": [policy]}).status_code == 200
    assert run_pending(world.settings) == 1

    evaluation = client.get(f"{V1}/evaluations/ev").get_json()
    assert evaluation["status"] == "Succeeded", evaluation
    results = {(v["name"], v["slotId"]): v for v in evaluation["content"]["value"]}
    names = ["Online", "Baseline", "Random", "learner"]
    assert list(results) == [(name, "") for name in names] + [
        (name, slot) for name in names for slot in ("top", "side", "bottom")
    ]
    pairs = world.pairs()
    for slot in SLOT_WEIGHT:
        online = results[("Online", slot)]["summary"]
        assert online["ips"] == pytest.approx(np.mean([p["reward"] for p in pairs if p["slot"] == slot]))
        assert online["events"] == sum(p["slot"] == slot for p in pairs)
        assert results[("learner", slot)]["timeseries"]["data"]
    overall = results[("Online", "")]["summary"]
    assert overall["events"] == len(pairs) and overall["dr"] is None
    # the learner beats what was served (a fresh, uniform model) by the lower end of its interval: it is the optimum
    learned = [v for v in evaluation["content"]["value"] if v["name"] == "learner" and not v["slotId"]][0]
    served = [v for v in evaluation["content"]["value"] if v["name"] == "Online" and not v["slotId"]][0]
    assert learned["summary"]["confidenceInterval"][0] > served["summary"]["confidenceInterval"][0]
    assert evaluation["optimalPolicy"] == "learner"


# five lines of VowpalWabbit/vowpal_wabbit test/train-sets/ccb_data.json (EventIds 0000000-0000002: two slots,
# 0000007-0000008: one slot), the reference of VW's CCB DSJSON: no _inc, with _o and VWState
VW_CCB_FILE = Path(__file__).parent / "data" / "ccb_data.json"


def test_vws_own_ccb_file_replays_per_slot_and_vw_learns_every_line():
    lines = VW_CCB_FILE.read_text().splitlines()
    ws = vowpalwabbit.Workspace("--ccb_explore_adf --dsjson --quiet")
    for line in lines:
        examples = ws.parse(line)
        ws.learn(examples)
        ws.finish_example(examples)
    ws.finish()

    source = DsjsonFile(VW_CCB_FILE)
    report = replay(source, [*BUILT_INS, Candidate("ccb", "--ccb_explore_adf --epsilon 0.2 -q ::")])
    assert report.multislot and report.events == 5 and report.samples == 8 and not report.skipped
    rows = {row["policy"]: row for row in report.policies}
    rewards = {"MainArticle": [0.0, 0.6, 1.0], "SideBar": [0.0, 0.4, 0.0], "slot_0": [0.42, 1.0]}
    assert set(rows["Online"]["slots"]) == set(rewards)
    # Online is what was logged: the mean reward, per slot and over every filled slot
    assert rows["Online"]["ips"] == pytest.approx(sum(map(sum, rewards.values())) / 8)
    for slot_id, values in rewards.items():
        assert rows["Online"]["slots"][slot_id]["ips"] == pytest.approx(sum(values) / len(values))
    # Baseline: the _ba action of the slot. MainArticle's is Latte (1), logged on line 0000001 only
    assert rows["Baseline"]["slots"]["MainArticle"]["n"] == 3
    assert rows["Baseline"]["slots"]["MainArticle"]["ips"] == pytest.approx(0.6 / 0.25 / 3)
    # Random over a slot's candidates: 4 for the first slot, the 3 left for the second
    assert rows["Random"]["slots"]["SideBar"]["ips"] == pytest.approx(rows["Online"]["slots"]["SideBar"]["ips"])


def test_a_policy_is_not_credited_with_one_action_in_every_slot(tmp_path):
    """Two slots, reward 1 for a2 in whichever slot shows it, uniform logging: a2 fills one slot per event, so no
    policy earns more than 0.5 per filled slot. A learner that puts a2 on top earns about that, nothing below."""
    rng = random.Random(0)
    path = tmp_path / "ccb.json"
    with open(path, "w") as out:
        for n in range(3000):
            top = rng.randrange(4)
            rest = [m for m in range(4) if m != top]
            bottom = rng.choice(rest)
            c = {
                "u": {"x": 1},
                "_multi": [{"_id": f"a{m}", "id": f"a{m}"} for m in range(4)],
                "_slots": [{"_id": "top", "_inc": [0, 1, 2, 3]}, {"_id": "bottom", "_inc": rest}],
            }
            outcomes = [
                {"_id": "top", "_a": [top, *rest], "_p": [0.25] * 4, "_label_cost": -float(top == 2)},
                {
                    "_id": "bottom",
                    "_a": [bottom, *(m for m in rest if m != bottom)],
                    "_p": [1 / 3] * 3,
                    "_label_cost": -float(bottom == 2),
                },
            ]
            head = {"Version": "1", "EventId": f"e{n}", "Timestamp": "2030-01-01T00:00:00Z"}
            out.write(dsjson.ccb_line(head, c, {"_outcomes": outcomes, "_ba": [0, 1]}) + "\n")
    report = replay(DsjsonFile(path), [*BUILT_INS, Candidate("ccb", "--ccb_explore_adf --epsilon 0.05 -q ::")])
    rows = {row["policy"]: row for row in report.policies}
    lo, hi = rows["ccb"]["interval"]
    assert lo < 0.5 and hi > 0.4
    assert rows["ccb"]["slots"]["top"]["interval"][0] > 0.8
    assert rows["ccb"]["slots"]["bottom"]["interval"][0] < 0.1
    # a line VW would crash on (a namespace named with a non-ASCII first character) is refused before VW reads it
    crashing = path.read_text().splitlines()[0].replace('"c":{', '"c":{"über":{"s":1},', 1)
    bad = tmp_path / "bad.json"
    bad.write_text(crashing + "\n" + path.read_text())
    refused = replay(DsjsonFile(bad), list(BUILT_INS))
    assert refused.skipped == {"invalid": 1} and "ASCII" in refused.errors[0][1] and refused.events == 3000
    # uniform: a2 is in each slot a quarter of the time
    for slot in ("top", "bottom"):
        lo, hi = rows["Random"]["slots"][slot]["interval"]
        assert lo < 0.25 < hi
