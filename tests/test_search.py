"""Policy search, feature importance and Apprentice graduation over logs the real Service wrote, in a simulated
world whose truth is known: the user's segment decides which action is clicked, a noise namespace decides
nothing."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import vowpalwabbit

from ranker.core.schemas import RankRequest
from ranker.core.settings import load_settings
from ranker.evaluation.importance import importance
from ranker.evaluation.replay import LoopLog
from ranker.evaluation.search import PERSONALIZER_DEFAULT, _score, graduation, search
from ranker.serving.service import Service, timestamp

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
K, SEGMENTS, EVENTS = 5, 4, 1500
CURRENT = "--cb_explore_adf --epsilon 0.2 --cb_type mtr -q ::"


def click_probability(segment: int, action: int) -> float:
    """In segment s, action (s + 1) mod K is clicked 80% of the time, every other one 10%: a0 is never best."""
    return 0.8 if action == (segment + 1) % K else 0.1


def rank_request(event_id: str, segment: int, noise: int) -> RankRequest:
    actions = [{"id": f"a{i}", "features": [{"item": {"kind": f"k{i}"}}]} for i in range(K)]
    context = [{"user": {"segment": f"s{segment}"}}, {"noise": {"z": f"z{noise}"}}]
    return RankRequest.model_validate({"contextFeatures": context, "actions": actions, "eventId": event_id})


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> LoopLog:
    """A loop's log served by an untrained model exploring half the time: Online is close to chance."""
    data_dir: Path = tmp_path_factory.mktemp("search")
    loops = {"default": {"rewardWaitTime": "PT1S", "explorationPercentage": 0.5}}
    settings = load_settings(environ={}, overrides={"data_dir": data_dir, "synchronous": "NORMAL", "loops": loops})
    service = Service(settings)
    loop = service.loops["default"]
    rng = random.Random(5)
    drawn = [(rng.randrange(SEGMENTS), rng.randrange(10)) for _ in range(EVENTS)]
    responses = [
        service.rank(loop, rank_request(f"e{n}", *drawn[n]), now=T0 + timedelta(milliseconds=10 * n))
        for n in range(EVENTS)
    ]
    ids = {row["event_id"]: row["id"] for row in service.store.read("SELECT id, event_id FROM decisions")}
    rewards = []
    for n, response in enumerate(responses):
        if rng.random() < click_probability(drawn[n][0], int(response["rewardActionId"][1:])):
            rewards.append((ids[f"e{n}"], 1.0, timestamp(T0 + timedelta(milliseconds=10 * n + 300))))
    service.store.write(
        lambda conn: conn.executemany("INSERT INTO rewards (decision_id, value, received_at) VALUES (?, ?, ?)", rewards)
    )
    return LoopLog(settings, "default", now=T0 + timedelta(hours=1))


def vw_accepts(arguments: str, log: LoopLog) -> bool:
    """VW builds a workspace from the arguments and learns the log's first records with it."""
    ws = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet")
    try:
        for n, event in enumerate(log.events()):
            examples = ws.parse(event.line)
            ws.learn(examples)
            ws.finish_example(examples)
            if n == 20:
                break
    finally:
        ws.finish()
    return True


def test_search_finds_a_policy_that_beats_online_within_the_budget(log):
    result = search(log, budget_seconds=6, current=CURRENT, seed=1)

    assert result.events == EVENTS
    assert result.tried > 3  # the budget left room for more than the first batch
    assert result.seconds < 6 + 3  # the last batch was sized to end within the budget (noisy machine: slack)
    tried = {row["arguments"] for row in result.rows}
    assert {CURRENT, PERSONALIZER_DEFAULT} <= tried
    # the best is distinguishably better than what was logged (close to chance, 0.24), and has the highest lower
    # bound of those that are
    better = [row for row in result.rows if row["versus"]["Online"]["verdict"] == "better"]
    assert result.improvement["versus_online"]["verdict"] == "better"
    assert result.best_row["interval"][0] == max(row["interval"][0] for row in better)
    assert result.best_row["interval"][0] > result.online["interval"][1]
    assert result.best_row["snips"] > 0.5 > 0.35 > result.online["snips"]
    assert result.improvement["lower_bound"] > 0
    assert set(result.best) == {"name", "arguments"} and result.best["arguments"] == result.best_row["arguments"]
    assert vw_accepts(result.best["arguments"], log)
    json.dumps(result.to_dict())


def test_search_prefers_a_distinguishably_better_candidate_to_a_merely_higher_lower_end():
    def row(name: str, lower: float, verdict: str) -> dict:
        versus = {"Online": {"verdict": verdict}}
        return {"policy": name, "interval": [lower, lower + 0.2], "snips": lower + 0.1, "versus": versus}

    rows = [row("wide", 0.40, "not distinguishable"), row("sure", 0.35, "better"), row("low", 0.1, "worse")]
    assert [r["policy"] for r in sorted(rows, key=_score, reverse=True)] == ["sure", "wide", "low"]


def test_a_zero_budget_replays_only_the_current_policy_and_the_defaults(log):
    result = search(log, budget_seconds=0, current=CURRENT, base="--cb_explore_adf -q ::")

    assert [row["arguments"] for row in sorted(result.rows, key=lambda r: r["policy"])] == [
        CURRENT,
        PERSONALIZER_DEFAULT,
        "--cb_explore_adf -q :: --epsilon 0.2",
    ]
    assert all(vw_accepts(row["arguments"], log) for row in result.rows)


def test_importance_ranks_the_informative_namespaces_first_and_noise_near_zero(log):
    rows = importance(log, CURRENT, features=True)
    by_part = {(row["namespace"], row["feature"]): row for row in rows}

    assert set(by_part) == {
        ("item", None),
        ("noise", None),
        ("user", None),
        ("item", "kind"),
        ("noise", "z"),
        ("user", "segment"),
    }
    # without the user's segment the model can only learn the best action overall (0.275, chance is 0.24)
    assert rows[0]["namespace"] == "user" and rows[0]["score"] > 60
    assert by_part[("user", "segment")]["score"] > 60
    # noise decides nothing; the action's kind tells nothing the action's id (a feature of every action, as in
    # Personalizer) does not tell already
    for part in [("noise", None), ("noise", "z"), ("item", None), ("item", "kind")]:
        assert by_part[part]["score"] < 15, part
    assert all(0 <= row["score"] <= 100 for row in rows)
    assert {row["dropped"] for row in rows if row["feature"] is None} == {"--ignore i", "--ignore n", "--ignore u"}


def test_graduation_needs_a_lower_bound_above_the_baseline_over_enough_events(log):
    evidence = graduation(log, CURRENT, min_events=1000)
    assert evidence["graduate"] is True
    assert evidence["events"] == EVENTS and evidence["lower_bound"] > evidence["baseline"]
    assert evidence["baseline"] < 0.2  # a0, the baseline, is never the best action: 0.1

    too_few = graduation(log, CURRENT, min_events=EVENTS + 1)
    assert too_few["graduate"] is False and "fewer than" in too_few["reason"]

    # a higher estimate is not enough: on the first 40 events the model's estimate is twice the baseline's,
    # but its lower bound is not above it
    head = LoopLog(log.settings, "default", end=T0 + timedelta(milliseconds=400), now=log.now)
    early = graduation(head, CURRENT, min_events=40)
    assert early["events"] == 40 and early["estimate"] > 1.5 * early["baseline"] > 0
    assert early["graduate"] is False and early["lower_bound"] <= early["baseline"]
