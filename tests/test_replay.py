"""Replay of candidate policies over logs the real Service wrote, in a simulated world whose truth is known."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import vowpalwabbit

from ranker.core import dsjson
from ranker.core.schemas import RankRequest
from ranker.core.settings import load_settings
from ranker.evaluation import cressie_read_interval, scheduling
from ranker.evaluation.compare import paired_difference
from ranker.evaluation.learners import Learners
from ranker.evaluation.output import write
from ranker.evaluation.replay import (
    BUILT_INS,
    DEFAULT_REWARD_MODEL,
    Candidate,
    DsjsonFile,
    Event,
    LoopLog,
    Skipped,
    policy_candidates,
    replay,
)
from ranker.evaluation.scheduling import regressor
from ranker.learning.trainer import Trainer
from ranker.logdata.export import export, read_decision
from ranker.serving.service import Service, timestamp

VW_TEST_FILE = Path(__file__).parent / "data" / "dsjson_cb.json"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)
K, SEGMENTS = 5, 4
LEARNER = Candidate("learner", "--cb_explore_adf --epsilon 0.05 --cb_type mtr -q ::")


def click_probability(segment: int, action: int) -> float:
    """The world: in segment s, action (s + 1) mod K is clicked 80% of the time, every other one 10%."""
    return 0.8 if action == (segment + 1) % K else 0.1


def rank_request(event_id: str, segment: int, **extra) -> RankRequest:
    actions = [{"id": f"a{i}", "features": [{"item": {"kind": f"k{i}", "weight": i / K}}]} for i in range(K)]
    body = {"contextFeatures": [{"user": {"segment": f"s{segment}"}}], "actions": actions, "eventId": event_id}
    return RankRequest.model_validate({**body, **extra})


class World:
    """A log written by the Service: a first phase served by the untrained model, then one by the model the
    trainer learned from it (so the logged probabilities are not uniform), rewards drawn from the world."""

    def __init__(self, data_dir: Path, events: int = 1600, seed: int = 3):
        loops = {"default": {"rewardWaitTime": "PT1S", "explorationPercentage": 0.5}}
        self.settings = load_settings(
            environ={}, overrides={"data_dir": data_dir, "synchronous": "NORMAL", "loops": loops}
        )
        self.rng = random.Random(seed)
        self.segments: dict[str, int] = {}
        self.rewards: dict[str, float] = {}  # what the trainer learns for each shown decision
        first = events // 3
        self.serve(Service(self.settings), range(first), T0)
        with Trainer(self.settings) as trainer:
            assert trainer.run_once(now=T0 + timedelta(minutes=1))["loops"]["default"]["published"]
        self.service = Service(self.settings)  # a new worker: it serves the published model
        assert self.service.loops["default"].engine.version != "0"
        self.serve(self.service, range(first, events), T0 + timedelta(minutes=2))
        # deferred decisions never activated, and a request with no eligible action: not events
        loop = self.service.loops["default"]
        for n in range(5):
            self.service.rank(loop, rank_request(f"deferred{n}", 0, deferActivation=True), now=LATER)
        everything = [f"a{i}" for i in range(K)]
        self.service.rank(loop, rank_request("none", 0, excludedActions=everything), now=LATER)

    def serve(self, service: Service, numbers: range, start: datetime) -> None:
        segments = {n: self.rng.randrange(SEGMENTS) for n in numbers}
        loop = service.loops["default"]
        with ThreadPoolExecutor(4) as pool:
            responses = list(
                pool.map(
                    lambda n: service.rank(
                        loop, rank_request(f"e{n}", segments[n]), now=start + timedelta(milliseconds=10 * n)
                    ),
                    numbers,
                )
            )
        ids = {row["event_id"]: row["id"] for row in service.store.read("SELECT id, event_id FROM decisions")}
        rewards = []
        for n, response in zip(numbers, responses, strict=True):
            event = f"e{n}"
            self.segments[event] = segments[n]
            clicked = self.rng.random() < click_probability(segments[n], int(response["rewardActionId"][1:]))
            self.rewards[event] = 1.0 if clicked else 0.0
            if clicked:
                rewards.append((ids[event], 1.0, timestamp(start + timedelta(milliseconds=10 * n + 300))))
        service.store.write(
            lambda conn: conn.executemany(
                "INSERT INTO rewards (decision_id, value, received_at) VALUES (?, ?, ?)", rewards
            )
        )

    def log(self) -> LoopLog:
        return LoopLog(self.settings, "default", now=LATER + timedelta(minutes=1))

    def records(self) -> list[tuple[str, str]]:
        """(event id, record) of the events, in the order they were logged."""
        rows = self.service.store.read("SELECT event_id, record FROM decisions WHERE event_id LIKE 'e%' ORDER BY id")
        return [(row["event_id"], row["record"]) for row in rows]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def report(world):
    return replay(world.log(), [*BUILT_INS, LEARNER])


def test_replayed_records_are_exactly_the_logged_ones(world, report):
    events = list(world.log().events())

    replayed = [event for event in events if isinstance(event, Event)]
    assert [s.reason for s in events if isinstance(s, Skipped)] == ["not_activated"] * 5
    records = world.records()
    assert [event.line for event in replayed] == [dsjson.labeled(rec, world.rewards[e]) for e, rec in records]
    assert report.events == len(records) and report.skipped == {"not_activated": 5}

    # The learner's probabilities of the logged actions are what VW, predicting on each logged record before
    # learning from it, gives: the record itself is what VW sees, nothing is mapped again.
    ws = vowpalwabbit.Workspace(f"{LEARNER.arguments} --dsjson --quiet")
    expected = []
    for event_id, rec in records:
        head = json.loads(rec[: rec.index(',"c":')] + "}")
        examples = ws.parse(dsjson.labeled(rec, world.rewards[event_id]))
        expected.append(ws.predict(examples)[head["a"][0] - 1])
        ws.learn(examples)
        ws.finish_example(examples)
    ws.finish()
    assert report.data["learner"].target_probability.tolist() == pytest.approx(expected, abs=1e-7)
    assert len(set(np.round(expected, 3))) > 2  # the learner's PMF moved as it learned


def test_online_ips_is_the_logged_mean_reward(world, report):
    rows = {row["policy"]: row for row in report.policies}
    rewards = [world.rewards[event_id] for event_id, _ in world.records()]

    assert rows["Online"]["ips"] == pytest.approx(np.mean(rewards), abs=1e-12)
    assert rows["Online"]["n"] == len(rewards)
    lo, hi = rows["Online"]["interval"]
    assert lo < np.mean(rewards) < hi
    # Online's logged probabilities are the model's after the first phase, not uniform: Random differs
    assert rows["Random"]["ips"] != pytest.approx(rows["Online"]["ips"], abs=1e-3)


def test_built_in_target_probabilities(world, report):
    heads = [json.loads(rec[: rec.index(',"c":')] + "}") for _, rec in world.records()]
    chosen = np.array([head["a"][0] - 1 for head in heads])
    logged = np.array([head["p"][0] for head in heads])

    assert report.data["Online"].target_probability.tolist() == logged.tolist()
    assert report.data["Baseline"].target_probability.tolist() == (chosen == 0).astype(float).tolist()
    assert report.data["Random"].target_probability.tolist() == [1 / K] * len(heads)


def test_a_learning_candidate_beats_random_and_the_estimates_cover_the_truth(world, report):
    rows = {row["policy"]: row for row in report.policies}
    segments = [world.segments[event_id] for event_id, _ in world.records()]
    truth = {
        "Random": np.mean([np.mean([click_probability(s, a) for a in range(K)]) for s in segments]),
        "Baseline": np.mean([click_probability(s, 0) for s in segments]),
    }

    assert rows["learner"]["interval"][0] > rows["Random"]["interval"][1]
    assert rows["learner"]["snips"] > 0.6 > 0.35 > rows["Random"]["snips"]  # the truth: 0.77 at best, 0.24
    # IPS and DR are unbiased: within 3 standard errors of the truth (their intervals' coverage is a 95% matter,
    # checked over many replications in test_estimators)
    for name, value in truth.items():
        for estimator in ("ips", "dr"):
            lo, hi = rows[name]["gaussian_interval"][estimator]
            assert abs(rows[name][estimator] - value) <= 3 * (hi - lo) / (2 * 1.96), (name, estimator, value)
    assert rows["learner"]["dr"] > 0.6


def test_intervals_use_the_known_weight_bound_and_are_narrower_for_it(report):
    narrowed = []
    for row in report.policies:
        data = report.data[row["policy"]]
        bound = 1 / float(np.min(data.logged_probability))  # a target probability is at most 1
        assert row["w_max"] == pytest.approx(bound)
        lower, upper = cressie_read_interval(data.weights, data.reward, r_min=0.0, r_max=1.0, w_max=bound)
        assert row["interval"] == [lower, upper]
        if np.mean(data.weights) < 1:  # mass the logged actions miss: the unseen point takes w_max, not infinity
            lower, upper = cressie_read_interval(data.weights, data.reward, r_min=0.0, r_max=1.0, w_max=math.inf)
            assert lower <= row["interval"][0] and row["interval"][1] <= upper
            assert row["interval"][1] - row["interval"][0] < 0.7 * (upper - lower)
            narrowed.append(row["policy"])
    assert narrowed == ["Baseline"]


def test_each_policy_is_compared_with_online_and_a_reference_on_the_same_events(world, report):
    rows = {row["policy"]: row for row in report.policies}
    # the learner is better than what was served, Random worse (truth: 0.77 at best, 0.24, and Online 0.44)
    assert rows["learner"]["versus"]["Online"]["verdict"] == "better"
    assert rows["Random"]["versus"]["Online"]["verdict"] == "worse"
    assert rows["Online"]["versus"] == {} and report.references == ["Online"]
    expected = paired_difference(report.data["learner"], report.data["Online"], r_min=0.0, r_max=1.0)
    assert rows["learner"]["versus"]["Online"] == expected
    table = report.table().splitlines()
    assert table[0].split()[-2:] == ["vs", "Online"] and table[4].endswith("better")

    against = replay(world.log(), [*BUILT_INS, LEARNER], reward_model=None, reference="Random")
    rows = {row["policy"]: row for row in against.policies}
    assert against.references == ["Online", "Random"] and set(rows["learner"]["versus"]) == {"Online", "Random"}
    assert rows["learner"]["versus"]["Random"]["verdict"] == "better" and rows["Random"]["versus"].keys() == {"Online"}
    with pytest.raises(ValueError, match="reference 'Nobody' is not a candidate"):
        replay(world.log(), BUILT_INS, reference="Nobody")


def test_a_dsjson_file_replays_as_the_loop_it_was_exported_from(world, report, tmp_path):
    path = tmp_path / "export.json"
    export(world.settings, "default", path, now=LATER + timedelta(minutes=1))

    from_file = replay(DsjsonFile(path), [*BUILT_INS, LEARNER])

    assert from_file.policies == report.policies
    assert from_file.skipped == report.skipped and from_file.events == report.events


def test_two_processes_give_the_same_report(world, report):
    assert replay(world.log(), [*BUILT_INS, LEARNER], workers=2).policies == report.policies


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reward_model_read_from_a_policy_estimates_as_one_of_its_own(world, report, workers):
    """The default reward model learns what LEARNER's regressor learns, so LEARNER's workspace reports its scores
    (the report fixture); written so that no policy's regressor is the same, it learns in a workspace of its own:
    every estimate, DM and DR included, is the same."""
    assert regressor(LEARNER.arguments) == regressor(DEFAULT_REWARD_MODEL) is not None
    own = "--cb_adf --cb_type=mtr -q ::"
    assert regressor(own) is not None and regressor(own) != regressor(LEARNER.arguments)
    alone = replay(world.log(), [*BUILT_INS, LEARNER], reward_model=own, workers=workers)
    assert alone.policies == report.policies and report.policies[-1]["dr"] is not None


def test_which_reward_model_a_policy_reports_for():
    """Only an epsilon-greedy policy over VW's MTR regressor learns what a ``--cb_adf`` reward model learns."""
    model = regressor("--cb_adf -q ::")
    assert model is not None
    assert regressor("--cb_explore_adf --epsilon=0.3 -q ::") == model == regressor("--cb_explore_adf -q ::")
    assert regressor("--cb_explore_adf --cb_type mtr -q ::") == regressor("--cb_adf --cb_type mtr -q ::") != model
    for arguments in [
        "--cb_explore_adf --bag 3 -q ::",  # other exploration learns other regressors
        "--cb_explore_adf --softmax --lambda 10 -q ::",
        "--cb_explore_adf --first_only -q ::",
        "--cb_explore_adf --cb_type ips -q ::",  # how scores are read is checked for MTR's update only
        "--cb_adf --cb_type dr -q ::",
        "--ccb_explore_adf -q ::",
    ]:
        assert regressor(arguments) is None, arguments
    # a reward model is read from the first policy of its regressor; one without such a policy learns alone
    jobs = [SHARING[3], SHARING[0], SHARING[1], DEFAULT_REWARD_MODEL, "--cb_adf --cb_type mtr -q ui"]
    assert scheduling.served_models(jobs) == {3: 1}


def _worker_processes() -> list[int]:
    """This process's children that are replay workers (``python -m ranker.evaluation.learners``)."""
    workers = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):  # gone since
                if b"ranker.evaluation.learners" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    workers.append(int(pid))
    return workers


def test_a_worker_killed_mid_replay_fails_the_replay_and_leaves_no_process(world):
    killed = []

    def kill_the_workers(events: int) -> None:
        if not killed:
            killed.extend(_worker_processes())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    candidates = [*BUILT_INS, LEARNER, Candidate("other", "--cb_explore_adf --cb_type ips -q ::")]
    with pytest.raises(RuntimeError, match="a replay worker process died"):
        replay(world.log(), candidates, workers=2, progress=kill_the_workers)
    assert len(killed) == 1
    assert _worker_processes() == []
    # the next replay is not affected
    assert replay(world.log(), candidates, workers=2).events == replay(world.log(), candidates).events
    assert _worker_processes() == []


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("bad_first", [True, False])
def test_arguments_vw_does_not_take_are_bad_input_in_either_process(world, workers, bad_first):
    """On two processes one of the two candidates learns in the worker: either way the replay says which
    arguments VW refused, as a ValueError (the CLI's and the API's bad input), and leaves no process behind."""
    bad = Candidate("bad", "--cb_explore_adf --softmax --squarecb")
    candidates = [*BUILT_INS, bad, LEARNER] if bad_first else [*BUILT_INS, LEARNER, bad]
    with pytest.raises(
        ValueError, match="VW does not take the arguments '--cb_explore_adf --softmax --squarecb'.*prediction type"
    ):
        replay(world.log(), candidates, reward_model=None, workers=workers)
    assert _worker_processes() == []


# Workspaces of four parse groups: MTR with -q :: (the two policy files, the reward model, other learning
# options), IPS with -q ::, bagging, other interactions.
SHARING = [
    "--cb_explore_adf --epsilon 0.2 --cb_type mtr -q ::",
    "--cb_explore_adf --epsilon 0.2 --power_t 0 -l 0.001 --cb_type mtr -q ::",
    DEFAULT_REWARD_MODEL,
    "--cb_explore_adf --epsilon 0.05 --l2 1e-6 --initial_t 1 --learning_rate=0.1 --cb_type mtr -q ::",
    "--cb_explore_adf --cb_type ips -q ::",
    "--cb_explore_adf --cb_type ips --epsilon 0.3 -l 0.1 -q ::",
    "--cb_explore_adf --cb_type dr --bag 3 -q ::",
    "--cb_explore_adf --cb_type mtr -q ui",
]


def test_workspaces_sharing_a_parse_score_as_they_do_alone(world):
    """Workspaces of one parse group learn each line from one parse; each reports exactly the PMFs (or the
    reward model its cost estimates) it reports when it parses every line itself."""
    events = [event for event in world.log().events() if type(event) is Event]
    lines, chosen = [event.line for event in events], [event.chosen for event in events]
    assert [len(group) for group in scheduling.parse_groups(SHARING)] == [4, 2, 1, 1]
    groups, order = scheduling.learner_groups(SHARING, range(len(SHARING)))
    assert groups[0][1][2] == 0  # the reward model is read from the first policy
    together = Learners(groups)
    try:
        together.learn(lines, chosen)
        outputs = [output for _, output in sorted(zip(order, together.outputs, strict=True))]
        for arguments, (scores, counts) in zip(SHARING, outputs, strict=True):
            alone = Learners([(False, [arguments])])
            try:
                alone.learn(lines, chosen)
                assert (scores, counts) == alone.outputs[0], arguments
                assert len(counts) == len(lines) and min(counts) == K
            finally:
                alone.close()
    finally:
        together.close()


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_workspaces_spread_over_processes_by_parse_group(workers):
    shares = scheduling.spread(SHARING, workers)
    assert 1 <= len(shares) <= workers and all(shares[1:])
    assert sorted(i for share in shares for i in share) == list(range(len(SHARING)))
    # a parse group is split only when there are more processes than groups
    for group in scheduling.parse_groups(SHARING):
        holders = [k for k, share in enumerate(shares) if set(group) & set(share)]
        assert len(holders) == 1 or workers > len(scheduling.parse_groups(SHARING))
    # the default evaluation on two processes: the reading one reads, the other learns both policies from one
    # parse, and the reward model through the first (two parses on two busy cores would take longer)
    assert scheduling.spread(SHARING[:3], 2) == [[], [0, 1, 2]]
    assert scheduling.spread(SHARING[:3], 1) == [[0, 1, 2]]


def test_vw_test_file_and_bad_lines(tmp_path):
    good = VW_TEST_FILE.read_text().splitlines()
    path = tmp_path / "mixed.json"
    unlabeled = json.loads(good[0])
    del unlabeled["_label_cost"]
    # in the export's shape (label, head, then c), with an action index past the four actions
    exported = dsjson.labeled(read_decision(json.loads(good[0])).record, 0.0)
    assert '"a":[4,2,1,3]' in exported
    wrong = exported.replace('"a":[4,2,1,3]', '"a":[4,2,1,9]')
    # a namespace whose name starts with a non-ASCII character: VW crashes on it (see ranker.core.schemas)
    crashing = exported.replace('"c":{', '"c":{"über":{"s":1},', 1)
    bad = ["not json", json.dumps(unlabeled), '{"a": 1}', wrong, crashing]
    path.write_text("\n".join([good[0], bad[0], *good[1:3], *bad[1:], *good[3:]]) + "\n")

    result = replay(DsjsonFile(path), [*BUILT_INS, LEARNER])

    assert result.events == len(good)
    assert result.skipped == {"invalid": 4, "unlabeled": 1}
    assert result.errors[0][0] == 2 and result.errors[0][1].startswith("invalid JSON: Expecting value")
    assert result.errors[1] == (6, "EventId must be a string of 1-256 printable characters")
    assert result.errors[2] == (7, '"a" must hold the action indices 1 to 4')
    assert result.errors[3][0] == 8 and "must start with an ASCII character" in result.errors[3][1]
    rewards = [-json.loads(line)["_label_cost"] for line in good]
    online = next(row for row in result.policies if row["policy"] == "Online")
    assert online["ips"] == pytest.approx(np.mean(rewards))
    assert result.data["Online"].logged_probability.tolist() == [json.loads(line)["p"][0] for line in good]


def test_report_json_and_plot(report, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    json_path, png_path = write(report, tmp_path / "out")

    body = json.loads(json_path.read_text())
    assert [row["policy"] for row in body["policies"]] == ["Online", "Baseline", "Random", "learner"]
    assert body["events"] == report.events and body["plot"] == "report.png"
    curve = body["cumulative"]
    assert curve["event"][-1] == report.events and len(curve["timestamp"]) == len(curve["event"]) <= 200
    learner = next(row for row in body["policies"] if row["policy"] == "learner")
    assert curve["snips"]["learner"][-1] == pytest.approx(learner["snips"])
    assert curve["ips"]["Online"][-1] == pytest.approx(body["policies"][0]["ips"])
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = report.table().splitlines()
    assert table[0].split()[:5] == ["policy", "n", "IPS", "SNIPS", "DR"] and len(table) == 5

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    json_path, png_path = write(report, tmp_path / "bare")
    assert png_path is None and "pip install 'ranker[eval]'" in json.loads(json_path.read_text())["plot"]


def test_no_reward_model_no_dr_and_bad_candidates(world, tmp_path):
    result = replay(world.log(), BUILT_INS, reward_model=None)
    assert all(row["dr"] is None and row["ips"] is not None for row in result.policies)

    with pytest.raises(ValueError, match="--cb_explore_adf"):
        Candidate("plain", "--cb_adf")
    with pytest.raises(ValueError, match="give VW arguments"):
        Candidate("Greedy")
    with pytest.raises(ValueError, match="unique"):
        replay(world.log(), [*BUILT_INS, Candidate("Online")])
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(ValueError, match="no event to evaluate"):
        replay(DsjsonFile(empty))
    out = io.StringIO()
    assert export(world.settings, "default", out, end=T0) == 0


def test_candidates_from_policy_files_and_source_sizes(world, tmp_path):
    shipped = {path.stem: json.loads(path.read_text()) for path in world.settings.policies_dir.glob("*.json")}
    # by default, every policy file of the source's kind: the single-slot ones here, not policies/multislot.json
    single_slot = {p["name"]: p["arguments"] for p in shipped.values() if "--cb_explore_adf" in p["arguments"]}
    assert {"default", "personalizer"} <= single_slot.keys() and "multislot" in shipped
    assert {c.name: c.arguments for c in policy_candidates(world.settings)} == single_slot
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"name": "mine", "arguments": "--cb_explore_adf --softmax --lambda 4 -q ::"}))
    chosen = policy_candidates(world.settings, ["personalizer", str(mine)])
    assert [(c.name, c.arguments) for c in chosen] == [
        ("personalizer", shipped["personalizer"]["arguments"]),
        ("mine", "--cb_explore_adf --softmax --lambda 4 -q ::"),
    ]
    with pytest.raises(ValueError, match="cannot read policy"):
        policy_candidates(world.settings, ["no-such-policy"])

    # a progress bar's length: every decision of the loop in the range, every line of a file
    assert world.log().size() == len(world.records()) + 6
    assert LoopLog(world.settings, "default", start=T0 + timedelta(minutes=2), end=LATER).size() == 1600 - 1600 // 3
    assert DsjsonFile(VW_TEST_FILE).size() == len(VW_TEST_FILE.read_text().splitlines())
