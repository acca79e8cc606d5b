"""Discovery budget: a floor for rarely shown actions while under their share, logged as drawn, unbiased."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranker.app import create_app
from ranker.discovery import floor
from ranker.evaluation.estimators import IPS, LoggedData

V1 = "/personalizer/v1.0"
ACTIONS = ["dashboard", "alerts", "exports", "sso", "api-keys"]


def app_with(tmp_path, discovery: list[dict], refresh: float = 0.001, **rules):
    loop = {"rules": {"discovery": discovery, **rules}, "isInferenceExplainabilityEnabled": True}
    settings = {"data_dir": tmp_path, "discovery_refresh_seconds": refresh, "synchronous": "NORMAL"}
    return create_app({**settings, "loops": {"default": loop}})


def body(event_id: str, reports_used: int = 0) -> dict:
    return {
        "contextFeatures": [{"usage": {"reportsUsed": reports_used}}],
        "actions": [{"id": a, "features": [{"area": a}]} for a in ACTIONS],
        "eventId": event_id,
    }


RULE = {
    "name": "try-exports",
    "actions": {"ids": ["exports"]},
    "min_probability": 0.5,
    "max_share": 0.3,
    "window": "P7D",
    "when": [{"path": "usage.reportsUsed", "equals": 0}],
}


@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8).filter(lambda p: sum(p) > 0),
    st.dictionaries(st.integers(0, 7), st.floats(0.001, 1.0), max_size=4),
)
@settings(max_examples=200, deadline=None)
def test_floor_keeps_a_distribution_and_meets_every_floor_it_can(raw, floors):
    pmf = [p / sum(raw) for p in raw]
    floors = {i: f for i, f in floors.items() if i < len(pmf)}
    out, raised = floor(pmf, floors)
    assert math.isclose(sum(out), 1.0, abs_tol=1e-9) and all(p >= 0 for p in out)
    if sum(floors.values()) < 1:
        assert all(out[i] >= f - 1e-12 for i, f in floors.items())
        assert all(out[i] == pytest.approx(f) for i, f in floors.items() if i in raised)


def test_a_discovery_action_gets_its_floor_while_under_its_share_then_the_models_probability(tmp_path):
    client = app_with(tmp_path, [RULE]).test_client()
    first = client.post(f"{V1}/rank", json=body("d0")).json
    probabilities = {r["id"]: r["probability"] for r in first["ranking"]}
    assert probabilities["exports"] == pytest.approx(0.5)  # a fresh model: 0.2 each, the floor lifts it
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert first["rules"]["discovery"]["exports"]["rule"] == "try-exports"
    if first["rewardActionId"] == "exports":
        assert first["inferenceExplanation"][0]["discovery"] == {"rule": "try-exports", "floor": 0.5}
    # shown in about half the decisions, exports passes its 30 % share: the floor stops
    for t in range(1, 40):
        client.post(f"{V1}/rank", json=body(f"d{t}"))
    later = client.post(f"{V1}/rank", json=body("after")).json
    assert {r["id"]: r["probability"] for r in later["ranking"]}["exports"] == pytest.approx(0.2)
    assert "discovery" not in later["rules"]
    # the floor never applies where `when` does not hold
    other = client.post(f"{V1}/rank", json=body("uses-reports", reports_used=4)).json
    assert {r["id"]: r["probability"] for r in other["ranking"]}["exports"] == pytest.approx(0.2)


def test_the_logged_probability_is_the_one_the_action_was_drawn_with(tmp_path):
    app = app_with(tmp_path, [RULE])
    answer = app.test_client().post(f"{V1}/rank", json=body("logged")).json
    row = app.extensions["ranker"].store.decision("default", "logged")
    assert row["probability"] == answer["ranking"][0]["probability"]
    assert row["reward_action_id"] == answer["rewardActionId"]


def test_rules_that_exclude_an_action_beat_discovery(tmp_path):
    entitlement = {"name": "paid-only", "actions": {"ids": ["exports"]}, "requires": [{"path": "plan", "equals": "x"}]}
    client = app_with(tmp_path, [RULE], entitlements=[entitlement]).test_client()
    for t in range(10):
        answer = client.post(f"{V1}/rank", json=body(f"e{t}")).json
        probabilities = {r["id"]: r["probability"] for r in answer["ranking"]}
        assert probabilities["exports"] == 0 and answer["rewardActionId"] != "exports"
        assert answer["rules"]["excluded"] == {"exports": ["entitlement:paid-only"]}


def test_offline_evaluation_over_a_log_with_discovery_recovers_a_known_policy_value(tmp_path):
    """Simulated truth: reward probability per (segment, action). The service logs with its floors; IPS with
    the logged probabilities estimates the value of "always dashboard" and of uniform, known exactly."""
    rng = random.Random(5)
    truth = {(s, a): 0.1 + 0.8 * ((i * 7 + len(s)) % 5) / 4 for s in ("a", "b") for i, a in enumerate(ACTIONS)}
    client = app_with(tmp_path, [{**RULE, "max_share": 1.0}], refresh=60).test_client()
    rewards, logged, dashboard, uniform = [], [], [], []
    for t in range(800):
        segment, used = rng.choice("ab"), rng.choice((0, 3))  # the floor applies where reportsUsed is 0
        context = [{"segment": segment, "usage": {"reportsUsed": used}}]
        answer = client.post(f"{V1}/rank", json={**body(f"s{t}"), "contextFeatures": context}).json
        chosen = answer["rewardActionId"]
        rewards.append(float(rng.random() < truth[(segment, chosen)]))
        logged.append(answer["ranking"][0]["probability"])
        dashboard.append(float(chosen == "dashboard"))
        uniform.append(1 / len(ACTIONS))
    assert sorted(set(np.round(logged, 6))) == [0.125, 0.2, 0.5]  # floored, model's, lowered by the floor
    for target, value in (
        (dashboard, np.mean([truth[(s, "dashboard")] for s in "ab"])),
        (uniform, np.mean(list(truth.values()))),
    ):
        data = LoggedData(np.array(rewards), np.array(logged), np.array(target))
        lower, upper = IPS().gaussian_interval(data)
        assert lower <= value <= upper
        assert abs(IPS().estimate(data) - value) < 0.1
