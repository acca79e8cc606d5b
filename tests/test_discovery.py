"""Discovery budget: a floor for rarely shown actions while under their share, logged as drawn, unbiased."""

from __future__ import annotations

import json
import math
import random
import threading
import time

import numpy as np
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from ranker.app import create_app
from ranker.evaluation.estimators import IPS, LoggedData
from ranker.serving.discovery import floor

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


# -- multi-slot: the floor is mixed into each slot's distribution over the actions left to it ------------------

SLOTS = [{"id": "hero", "baselineAction": "dashboard"}, {"id": "side", "baselineAction": "alerts"}]


def slots_app(tmp_path, discovery: list[dict], **rules):
    loop = {"policy": "multislot", "rules": {"discovery": discovery, **rules}, "isInferenceExplainabilityEnabled": True}
    settings = {"data_dir": tmp_path, "discovery_refresh_seconds": 0.001, "synchronous": "NORMAL"}
    return create_app({**settings, "loops": {"default": loop}})


def slots_rank(app, event_id: str, slots: list[dict] = SLOTS) -> tuple[dict, list[dict[str, float]]]:
    """The answer, and per filled slot the probabilities logged with its outcome (action id -> p)."""
    answer = app.test_client().post(f"{V1}/multislot/rank", json={**body(event_id), "slots": slots}).json
    record = json.loads(app.extensions["ranker"].store.decision("default", event_id)["record"])
    logged = [{ACTIONS[a]: p for a, p in zip(o["_a"], o["_p"], strict=True)} for o in record["_outcomes"]]
    return answer, logged


def test_multi_slot_discovery_floors_each_slot_while_under_its_share_then_stops(tmp_path):
    app = slots_app(tmp_path, [RULE])
    answer, logged = slots_rank(app, "m0")
    for slot, probabilities in zip(SLOTS, logged, strict=True):
        assert sum(probabilities.values()) == pytest.approx(1.0)
        if "exports" in probabilities:  # still left to this slot: at its floor (a fresh model is uniform)
            assert probabilities["exports"] == pytest.approx(0.5)
            assert answer["rules"][slot["id"]]["discovery"]["exports"]["rule"] == "try-exports"
    chosen = {s["id"]: s["rewardActionId"] for s in answer["slots"]}
    assert "exports" in chosen.values()  # at 0.5 in the hero slot, else at 0.5 in the side slot: drawn here
    for entry in answer["inferenceExplanation"]:  # the explanation names discovery where it raised the action
        raised = answer["rules"][entry["slotId"]].get("discovery", {})
        expected = {"rule": "try-exports", "floor": 0.5} if entry["id"] in raised else None
        assert entry.get("discovery") == expected and entry["id"] == chosen[entry["slotId"]]
    # exports took a slot in the one decision so far: its share (100 %) is over 30 %, the floor stops
    later, logged = slots_rank(app, "m1")
    assert all("discovery" not in rules for rules in later["rules"].values())
    assert logged[0] == {a: pytest.approx(0.2) for a in ACTIONS}


def test_multi_slot_rules_that_exclude_an_action_beat_discovery_in_their_slot(tmp_path):
    hero_only = {"name": "hero-only", "actions": {"ids": ["exports"]}, "requires": [{"path": "size", "equals": "l"}]}
    app = slots_app(tmp_path, [{**RULE, "max_share": 1.0}], entitlements=[hero_only])
    slots = [{**SLOTS[0], "features": [{"size": "s"}]}, {**SLOTS[1], "features": [{"size": "l"}]}]
    floored = 0
    for t in range(6):
        answer, logged = slots_rank(app, f"x{t}", slots)
        assert "exports" not in logged[0] and answer["slots"][0]["rewardActionId"] != "exports"
        assert answer["rules"]["hero"]["excluded"] == {"exports": ["entitlement:hero-only"]}
        assert "discovery" not in answer["rules"]["hero"]
        assert sum(logged[1].values()) == pytest.approx(1.0)
        if "discovery" in answer["rules"]["side"]:  # while exports's share is under 100 %: at its floor
            assert logged[1]["exports"] == pytest.approx(0.5)
            floored += 1
    assert floored >= 1


DISCOVERY_TOML = """
[[loops.default.rules.discovery]]
name = "try-exports"
actions = { ids = ["exports"] }
min_probability = 0.5
max_share = 0.3
window = "P7D"
"""


def test_served_ranks_refresh_the_shares_on_postgresql_without_holding_one_another(serve, pg_cluster) -> None:
    """In a served worker the shares' read is parked like a decision's write (ranker.server.inline_worker), and
    while one request refreshes them the others use the shares in hand: concurrent Ranks with a refresh due on
    almost every one are all answered promptly, and the floor holds where the shares say so."""
    server = serve(DISCOVERY_TOML, database_url=pg_cluster.database(), workers="1", discovery_refresh_seconds="0.005")
    answers: list[tuple[int, float, float | None]] = []

    def client(n: int) -> None:
        with requests.Session() as session:
            for t in range(25):
                started = time.monotonic()
                response = session.post(f"{server.url}{V1}/rank", json=body(f"c{n}-{t}"), timeout=30)
                ranking = response.json().get("ranking", []) if response.status_code == 201 else []
                exports = next((r["probability"] for r in ranking if r["id"] == "exports"), None)
                answers.append((response.status_code, time.monotonic() - started, exports))

    clients = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    assert len(answers) == 200 and {status for status, _, _ in answers} == {201}
    assert max(elapsed for _, elapsed, _ in answers) < 5.0
    floored = sum(1 for _, _, p in answers if p == pytest.approx(0.5))
    assert 0 < floored < 200, floored  # the floor applied while exports was under its share, not throughout
