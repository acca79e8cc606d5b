"""Explanations: each action's feature contributions add up to VW's raw score and carry VW's audit names;
explored decisions say so; the decision lookup (HTTP, CLI, the SDK) tells the same story."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import requests
import vowpalwabbit
from azure.ai.personalizer import PersonalizerClient
from azure.core.credentials import AzureKeyCredential
from conftest import ADMIN_KEY, KEYED_CONFIG, OTHER_KEY, RANK_KEY, Server
from vowpalwabbit.pyvw import pylibvw

from ranker.app import create_app
from ranker.cli import cli
from ranker.core import dsjson
from ranker.core.settings import hash_key
from ranker.serving import rankterms
from ranker.store import models

SINGLE = "--cb_explore_adf --epsilon 0.2 --cb_type mtr -q ::"
MULTI = "--ccb_explore_adf --epsilon 0.2 --cb_type mtr -q ::"
V1 = "/personalizer/v1.0"

CONTEXT = {
    "account": {"plan": "enterprise", "seats": 120, "sso": True},
    "usage": {"logins": 3, "adoption": 0.62, "reportsUsed": 0},
    "region": "EMEA",
    "trend": [0.5, 2.0],
}
ACTIONS = [
    ("renewal-call", {"kind": {"motion": "renewal"}, "effort": 3}),
    ("training-invite", {"kind": {"motion": "adoption"}, "effort": 1}),
    ("feature-tour", {"kind": {"motion": "adoption"}, "effort": 1, "topic": "reports"}),
    ("discount-offer", {"kind": {"motion": "renewal"}, "effort": 2, "cost": 120.0}),
]
SLOTS = [
    {"_id": "hero", "position": 1.0, "placement": {"size": "large"}},
    {"_id": "side", "position": 2.0},
    {"_id": "footer", "placement": {"size": "small"}},
]


def rank_body(event_id: str) -> dict:
    return {
        "contextFeatures": [{k: v} for k, v in CONTEXT.items()],
        "actions": [{"id": i, "features": [f]} for i, f in ACTIONS],
        "eventId": event_id,
    }


def slots_body(event_id: str) -> dict:
    slots = [
        {"id": s["_id"], "features": [{k: v} for k, v in s.items() if k != "_id"], "baselineAction": a}
        for s, (a, _) in zip(SLOTS, ACTIONS, strict=False)
    ]
    return {**rank_body(event_id), "slots": slots}


def trained_model(arguments: str, multislot: bool, seed: int = 7) -> bytes:
    """A model VW trained on 400 records shaped as the service logs them, with rewards that favour some
    actions (and, multi-slot, some slots)."""
    rng = random.Random(seed)
    c_json = dsjson.context_json(CONTEXT, ACTIONS, True)
    ws = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet")
    for t in range(400):
        if multislot:
            chosen = rng.sample(range(len(ACTIONS)), len(SLOTS))
            slots = [{**s, "_inc": list(range(len(ACTIONS)))} for s in SLOTS]
            outcomes = [
                {"_id": s["_id"], "_label_cost": -rng.random() * (a + 1) / (k + 1), "_a": [a], "_p": [0.4]}
                for k, (s, a) in enumerate(zip(SLOTS, chosen, strict=True))
            ]
            ws.learn(dsjson.ccb_line({"EventId": str(t)}, dsjson.with_slots(c_json, slots), {"_outcomes": outcomes}))
        else:
            a = rng.randrange(len(ACTIONS))
            pmf = [0.25] * len(ACTIONS)
            line = dsjson.decision_line(str(t), "2030-01-01T00:00:00Z", c_json, [a], pmf)
            ws.learn(dsjson.labeled(line, rng.random() * (a + 1) / 4))
    with tempfile.TemporaryDirectory() as folder:
        ws.save(f"{folder}/m.vw")
        ws.finish()
        return Path(f"{folder}/m.vw").read_bytes()


def raw_costs(model_path: Path, line: str, multislot: bool, n_actions: int) -> list[float]:
    """VW's own raw score (cost) of each action, from a workspace of its own on the same model file."""
    ws = vowpalwabbit.Workspace(f"{'--json' if multislot else '--dsjson'} --quiet -t -i {model_path}")
    examples = ws._parse(line)
    pylibvw.vw.predict_multi(ws, examples)
    costs = [ex.get_partial_prediction() for ex in examples[1 : 1 + n_actions]]
    pylibvw.vw._finish_example_multi_ex(ws, examples)
    ws.finish()
    return costs


def audit(model_path: Path, line: str, multislot: bool) -> list[dict[str, float]]:
    """VW's --audit of a line (in a process of its own: VW prints it to stdout): per action example printed,
    each term's name -> -(value × weight), the sign turned as explanations turn it."""
    code = "import sys, vowpalwabbit; vowpalwabbit.Workspace(sys.argv[1]).predict(sys.argv[2])"
    options = f"{'--json' if multislot else '--dsjson'} -t -i {model_path} --audit --quiet"
    out = subprocess.run([sys.executable, "-c", code, options, line], capture_output=True, text=True, check=True)
    blocks = []
    for text in out.stdout.splitlines():
        if text.startswith("\t"):
            terms = {}
            for item in text.strip("\t").split("\t"):
                name, _, value, weight = item.rsplit(":", 3)
                terms[name] = -float(value) * float(weight)
            blocks.append(terms)
    return blocks


def serving_app(tmp_path: Path, arguments: str, model: bytes, **loop):
    models.publish(tmp_path, "l", model)
    policy = {"name": "p", "arguments": arguments}
    return create_app(
        {
            "data_dir": tmp_path,
            "explanation_features": 1000,
            "loops": {"l": {"policy": policy, "isInferenceExplainabilityEnabled": True, **loop}},
        }
    )


def all_terms(entry: dict) -> dict[str, float]:
    return {**{t["name"]: t["score"] for t in entry["features"]}, "Constant": entry["constant"]}


def matches_audit(entry: dict, blocks: list[dict[str, float]]) -> bool:
    mine = all_terms(entry)
    for block in blocks:
        if set(block) == {n for n, s in mine.items() if s != 0} | {n for n, s in block.items() if s == 0}:
            return all(abs(block[n] - mine.get(n, 0.0)) <= 1e-5 * max(1.0, abs(block[n])) for n in block)
    return False


@pytest.fixture(scope="module")
def single_model() -> bytes:
    return trained_model(SINGLE, multislot=False)


@pytest.fixture(scope="module")
def multi_model() -> bytes:
    return trained_model(MULTI, multislot=True)


def test_single_slot_contributions_add_up_to_vws_raw_score_with_its_audit_names(tmp_path, single_model):
    app = serving_app(tmp_path, SINGLE, single_model)
    answer = app.test_client().post(f"{V1}/rank", json=rank_body("e1")).json
    path = models.current(tmp_path, "l")[1]
    record = app.extensions["ranker"].store.decision("l", "e1")["record"]
    c_json = record[record.index(',"c":') + 5 : -1]  # what was served (the test client sorts JSON keys)
    line = dsjson.predict_line(c_json, len(ACTIONS))
    costs = dict(zip([i for i, _ in ACTIONS], raw_costs(path, line, False, len(ACTIONS)), strict=True))
    blocks = audit(path, line, False)
    explained = answer["inferenceExplanation"]
    assert [e["id"] for e in explained] == [r["id"] for r in answer["ranking"]]
    for entry in explained:
        assert abs(entry["score"] + costs[entry["id"]]) <= 1e-6  # the model's raw score, sign turned
        assert abs(entry["constant"] + sum(t["score"] for t in entry["features"]) - entry["score"]) <= 1e-6
        assert any(" " not in t["name"] and "*" in t["name"] for t in entry["features"])  # interactions named
        assert matches_audit(entry, blocks), entry["id"]
    assert answer["rules"] == {"excluded": {}, "reweighted": {}}
    assert isinstance(answer["explored"], bool)


@pytest.mark.parametrize(
    "arguments",
    [
        "--cb_explore_adf --epsilon 0.2 -q ka -q :u --ignore_linear a",  # a pair against namespace order; no linear
        "--cb_explore_adf --epsilon 0.2 --cb_type mtr -q :: --noconstant",
    ],
)
def test_every_term_matches_vws_audit_for_other_interactions(tmp_path, arguments):
    """Each action's terms (the context's, its own and the pairs across) are VW's, whatever the interactions."""
    app = serving_app(tmp_path, arguments, trained_model(arguments, multislot=False))
    answer = app.test_client().post(f"{V1}/rank", json=rank_body("o1")).json
    path = models.current(tmp_path, "l")[1]
    record = app.extensions["ranker"].store.decision("l", "o1")["record"]
    line = dsjson.predict_line(record[record.index(',"c":') + 5 : -1], len(ACTIONS))
    costs = dict(zip([i for i, _ in ACTIONS], raw_costs(path, line, False, len(ACTIONS)), strict=True))
    blocks = audit(path, line, False)
    for entry in answer["inferenceExplanation"]:
        assert abs(entry["score"] + costs[entry["id"]]) <= 1e-6
        assert abs(entry["constant"] + sum(t["score"] for t in entry["features"]) - entry["score"]) <= 1e-6
        if "--noconstant" in arguments:  # no constant feature: the constant holds VW's single-precision rounding
            assert abs(entry["constant"]) < 1e-6
            entry = {**entry, "constant": 0.0}
        assert matches_audit(entry, blocks), entry["id"]
        sizes = [abs(t["score"]) for t in entry["features"]]
        assert sizes == sorted(sizes, reverse=True)


def test_actions_with_more_features_than_the_kept_terms_hold_are_explained_alike(tmp_path, single_model, monkeypatch):
    """Past the features a kept term's key can place, Rank explains its actions with the grid: the same terms."""
    app = serving_app(tmp_path, SINGLE, single_model)
    client = app.test_client()
    kept = client.post(f"{V1}/rank", json=rank_body("k1")).json["inferenceExplanation"]
    monkeypatch.setattr(rankterms, "MAX_FEATURES", 4)
    grid = client.post(f"{V1}/rank", json=rank_body("k1-grid")).json["inferenceExplanation"]
    by_id = {e["id"]: e for e in grid}
    for entry in kept:
        other = by_id[entry["id"]]
        assert [t["name"] for t in entry["features"]] == [t["name"] for t in other["features"]]
        assert [t["score"] for t in entry["features"]] == [t["score"] for t in other["features"]]
        assert entry["score"] == other["score"] and abs(entry["constant"] - other["constant"]) <= 1e-12


def test_top_contributions_are_the_largest_by_absolute_value(tmp_path, single_model):
    app = serving_app(tmp_path, SINGLE, single_model)
    app.extensions["ranker"].settings.explanation_features = 3
    entry = app.test_client().post(f"{V1}/rank", json=rank_body("e2")).json["inferenceExplanation"][0]
    assert len(entry["features"]) == 3
    scores = [abs(t["score"]) for t in entry["features"]]
    assert scores == sorted(scores, reverse=True)


def test_multi_slot_contributions_add_up_per_slot_for_the_chosen_action(tmp_path, multi_model):
    app = serving_app(tmp_path, MULTI, multi_model)
    answer = app.test_client().post(f"{V1}/multislot/rank", json=slots_body("m1")).json
    path = models.current(tmp_path, "l")[1]
    record = json.loads(app.extensions["ranker"].store.decision("l", "m1")["record"])
    c = {k: v for k, v in record["c"].items() if k != "_slots"}
    c_json = dsjson._dumps(c)
    chosen = dsjson.logged_actions(app.extensions["ranker"].store.decision("l", "m1")["record"])
    slots = record["c"]["_slots"]
    assert [e["slotId"] for e in answer["inferenceExplanation"]] == [s["_id"] for s in SLOTS]
    for k, entry in enumerate(answer["inferenceExplanation"]):
        pinned = [{**s, "_inc": [chosen[j]]} for j, s in enumerate(slots[:k])] + [slots[k]]
        line = dsjson.with_slots(c_json, pinned)
        cost = raw_costs(path, line, True, len(ACTIONS))[chosen[k]]
        assert entry["id"] == c["_multi"][chosen[k]]["_id"] == answer["slots"][k]["rewardActionId"]
        assert abs(entry["score"] + cost) <= 1e-6
        assert abs(entry["constant"] + sum(t["score"] for t in entry["features"]) - entry["score"]) <= 1e-6
        names = {t["name"] for t in entry["features"]}
        assert f"_ccb_slot_index^index{k}" in names  # VW's slot index feature, named as its audit names it
        assert matches_audit(entry, audit(path, line, True)[-len(slots[k]["_inc"]) :])


def test_actions_features_kept_between_requests_follow_a_change_and_hold_under_threads(tmp_path, single_model):
    """An action's features are kept from Rank to Rank: an action whose features changed is explained with
    the new ones, and threads explaining at once get what one request at a time gets."""
    app = serving_app(tmp_path, SINGLE, single_model)
    client = app.test_client()
    changed = rank_body("c1")
    changed["actions"][0]["features"] = [{"kind": {"motion": "adoption"}, "effort": 2}]
    for event_id, body, motion in (("c0", rank_body("c0"), "renewal"), ("c1", changed, "adoption")):
        answer = client.post(f"{V1}/rank", json={**body, "eventId": event_id}).json
        entry = next(e for e in answer["inferenceExplanation"] if e["id"] == "renewal-call")
        names = " ".join(t["name"] for t in entry["features"])
        assert (
            f"kind^motion{motion}" in names
            and f"kind^motion{'renewal' if motion != 'renewal' else 'adoption'}" not in names
        )
        assert abs(entry["constant"] + sum(t["score"] for t in entry["features"]) - entry["score"]) <= 1e-6

    def by_action(answer: dict) -> dict:
        return {e["id"]: e for e in answer["inferenceExplanation"]}

    bodies = [changed if t % 2 else rank_body("") for t in range(24)]
    alone = [by_action(client.post(f"{V1}/rank", json={**b, "eventId": f"a{t}"}).json) for t, b in enumerate(bodies)]
    together: dict[int, dict] = {}

    def send(t: int) -> None:
        together[t] = by_action(app.test_client().post(f"{V1}/rank", json={**bodies[t], "eventId": f"t{t}"}).json)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [together[t] for t in range(len(bodies))] == alone


def test_explored_decisions_say_their_explanation_is_not_the_reason(tmp_path, single_model):
    app = serving_app(tmp_path, SINGLE, single_model)
    client = app.test_client()
    seen = {}
    for t in range(60):
        answer = client.post(f"{V1}/rank", json=rank_body(f"x{t}")).json
        seen.setdefault(answer["explored"], answer)
        if len(seen) == 2:
            break
    explored, greedy = seen[True], seen[False]
    assert "not the reason" in explored["explorationNote"] and "explorationNote" not in greedy
    scores = {e["id"]: e["score"] for e in greedy["inferenceExplanation"]}
    assert greedy["rewardActionId"] == max(scores, key=scores.get)  # the model's first: its highest score
    assert explored["rewardActionId"] != max(scores, key=scores.get)
    rows = {
        e: app.extensions["ranker"].store.decision("l", e)["explored"] for e in (explored["eventId"], greedy["eventId"])
    }
    assert rows == {explored["eventId"]: 1, greedy["eventId"]: 0}


def test_with_explanations_off_rank_answers_personalizers_fields_only(client):
    answer = client.post(f"{V1}/rank", json=rank_body("plain")).json
    assert set(answer) == {"eventId", "rewardActionId", "ranking"}


def test_explainability_is_a_service_configuration_field_that_keeps_the_model(client):
    before = client.get(f"{V1}/configurations/service").json
    assert before["isInferenceExplainabilityEnabled"] is False
    after = client.put(f"{V1}/configurations/service", json={"isInferenceExplainabilityEnabled": True}).json
    assert after["isInferenceExplainabilityEnabled"] is True
    assert "inferenceExplanation" in client.post(f"{V1}/rank", json=rank_body("on")).json
    bad = client.put(f"{V1}/configurations/service", json={"isInferenceExplainabilityEnabled": "yes"})
    assert bad.status_code == 400 and bad.json["error"]["code"] == "InvalidServiceConfiguration"


# -- the decision lookup -------------------------------------------------------------------------------


def test_lookup_shows_the_decision_as_served_and_explains_it_with_the_serving_model(tmp_path, single_model):
    app = serving_app(tmp_path, SINGLE, single_model)
    app.extensions["ranker"].settings.loops["l"].is_inference_explainability_enabled = False
    client = app.test_client()
    body = {**rank_body("look"), "excludedActions": ["discount-offer"], "deferActivation": True}
    answer = client.post(f"{V1}/rank", json=body).json
    client.post(f"{V1}/events/look/reward", json={"value": 0.5})
    found = client.get(f"{V1}/events/look").json
    assert found["rewardActionId"] == answer["rewardActionId"]
    assert found["probability"] == answer["ranking"][0]["probability"]
    assert found["context"] == CONTEXT
    assert found["excluded"] == {"discount-offer": ["excludedActions"]}
    assert [a["id"] for a in found["eligible"]] == [r["id"] for r in answer["ranking"][:3]]
    assert found["modelVersion"] == models.current(tmp_path, "l")[0]
    assert [r["value"] for r in found["rewards"]] == [0.5]
    assert found["activated"] is False and found["deferActivation"] is True
    assert "inferenceExplanation" not in found
    client.post(f"{V1}/events/look/activate")
    explained = client.get(f"{V1}/events/look?explain=true").json
    assert explained["activated"] is True
    app.extensions["ranker"].settings.loops["l"].is_inference_explainability_enabled = True
    # the same request ranked with explanations on gets the same contributions
    again = client.post(f"{V1}/rank", json={**body, "eventId": "look-again"}).json
    by_id = {e["id"]: e for e in again["inferenceExplanation"]}
    for entry in explained["inferenceExplanation"]:
        assert entry == by_id[entry["id"]]
    assert client.get(f"{V1}/events/look?explain=maybe").status_code == 400
    assert client.get(f"{V1}/events/nope").status_code == 404
    assert client.get(f"{V1}/events/look/reward").status_code == 405


TOURS_FIRST = {
    "discovery": [{"name": "try-tours", "actions": {"ids": ["feature-tour"]}, "min_probability": 1.0, "max_share": 0.5}]
}


@pytest.mark.parametrize("multislot", [False, True], ids=["single-slot", "multi-slot"])
def test_lookup_explanation_names_the_discovery_rule_that_raised_the_action(
    tmp_path, single_model, multi_model, multislot
):
    """The lookup explains a decision as Rank did: the entry of an action a discovery floor raised names the rule."""
    arguments, model = (MULTI, multi_model) if multislot else (SINGLE, single_model)
    client = serving_app(tmp_path, arguments, model, rules=TOURS_FIRST).test_client()
    path, body = (f"{V1}/multislot/rank", slots_body("d1")) if multislot else (f"{V1}/rank", rank_body("d1"))
    served = client.post(path, json=body).json["inferenceExplanation"]
    found = client.get(f"{V1}/events/d1?explain=true").json["inferenceExplanation"]
    assert found == [{k: v for k, v in entry.items() if k != "explored"} for entry in served]
    raised = [entry for entry in found if "discovery" in entry]
    assert [entry["id"] for entry in raised] == ["feature-tour"]  # at its floor of 1: chosen (in the first slot)
    assert raised[0]["discovery"] == {"rule": "try-tours", "floor": 1.0}


def test_lookup_of_a_multi_slot_decision(tmp_path, multi_model):
    app = serving_app(tmp_path, MULTI, multi_model)
    client = app.test_client()
    answer = client.post(f"{V1}/multislot/rank", json=slots_body("ms")).json
    client.post(f"{V1}/multislot/events/ms/reward", json={"reward": [{"slotId": "side", "value": 1}]})
    found = client.get(f"{V1}/events/ms?explain=true").json
    assert [s["rewardActionId"] for s in found["slots"]] == [s["rewardActionId"] for s in answer["slots"]]
    assert found["rewards"][0]["slotId"] == "side"
    assert (
        found["inferenceExplanation"] == answer["inferenceExplanation"]
        or [{k: v for k, v in e.items() if k != "explored"} for e in answer["inferenceExplanation"]]
        == found["inferenceExplanation"]
    )


def test_lookup_needs_a_key_of_the_decisions_loop(tmp_path):
    path = tmp_path / "ranker.toml"
    path.write_text(KEYED_CONFIG)
    from ranker.core.settings import load_settings

    client = create_app(load_settings(path, environ={}, overrides={"data_dir": tmp_path})).test_client()
    client.post(f"{V1}/rank", json=rank_body("k1"), headers={"Ocp-Apim-Subscription-Key": RANK_KEY})
    for key, status in ((RANK_KEY, 200), (ADMIN_KEY, 200), (OTHER_KEY, 404), ("nope", 401)):
        response = client.get(f"{V1}/events/k1", headers={"Ocp-Apim-Subscription-Key": key})
        assert response.status_code == status, key
    for prefix in ("/personalizer/v1.1-preview.3", "/personalizer"):
        got = client.get(
            f"{prefix}/events/k1?api-version=2022-09-01-preview", headers={"Ocp-Apim-Subscription-Key": RANK_KEY}
        )
        assert got.status_code == 200


def test_cli_explain_prints_the_decision_most_important_first(tmp_path, runner, single_model):
    app = serving_app(tmp_path, SINGLE, single_model)
    app.test_client().post(f"{V1}/rank", json=rank_body("cli"))
    config = tmp_path / "ranker.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\nexplanation_features = 5\n'
        f'[loops.l]\npolicy = {{ name = "p", arguments = "{SINGLE}" }}\n'
    )
    result = runner.invoke(cli, ["explain", "--loop", "l", "--config", str(config), "cli"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].startswith("chosen: ")
    contributions = [float(line.split()[0]) for line in lines if line.startswith("    ")]
    assert len(contributions) == 5 and [abs(c) for c in contributions] == sorted(map(abs, contributions), reverse=True)
    missing = runner.invoke(cli, ["explain", "--loop", "l", "--config", str(config), "nope"])
    assert missing.exit_code != 0 and "no decision" in missing.output


def test_cli_explain_without_a_log_says_so_and_creates_none(tmp_path, runner):
    config = tmp_path / "ranker.toml"
    config.write_text(f'data_dir = "{tmp_path / "empty"}"\n')
    result = runner.invoke(cli, ["explain", "--config", str(config), "some-event"])
    assert result.exit_code != 0 and "no decision log" in result.output
    assert not (tmp_path / "empty" / "ranker.db").exists()


SLOTS_KEY = "slots-explain-rank-key-0123456789"
SLOTS_LOOP = f"""
[loops.slots]
policy = "multislot"
isInferenceExplainabilityEnabled = true
keys = [{{ role = "rank", sha256 = "{hash_key(SLOTS_KEY)}" }}]

[[loops.slots.rules.discovery]]
name = "try-tours"
actions = {{ ids = ["feature-tour"] }}
min_probability = 0.6
max_share = 0.5
"""


def test_the_personalizer_sdk_returns_the_explanation_as_json(tmp_path_factory):
    server = Server(
        tmp_path_factory.mktemp("sdk-explain"),
        KEYED_CONFIG.replace('policy = "default"', 'policy = "default"\nisInferenceExplainabilityEnabled = true')
        + SLOTS_LOOP,
    )
    try:
        sdk = PersonalizerClient(server.url, AzureKeyCredential(RANK_KEY), retry_total=0)
        answer = sdk.rank(rank_body("sdk-1"))
        assert [e["id"] for e in answer["inferenceExplanation"]] == [r["id"] for r in answer["ranking"]]
        assert isinstance(answer["explored"], bool) and "rules" in answer
        # multi-slot: the rules per slot, discovery's floors among them, and each slot's chosen action explained
        slots = PersonalizerClient(server.url, AzureKeyCredential(SLOTS_KEY), retry_total=0)
        multi = slots.rank_multi_slot(slots_body("sdk-m1"))
        chosen = {s["id"]: s["rewardActionId"] for s in multi["slots"]}
        assert multi["rules"]["hero"]["discovery"]["feature-tour"]["floor"] == 0.6  # a first decision: share 0
        assert [(e["slotId"], e["id"]) for e in multi["inferenceExplanation"]] == list(chosen.items())
        found = requests.get(
            f"{server.url}/personalizer/events/sdk-1?explain=true&api-version=2022-09-01-preview",
            headers={"Ocp-Apim-Subscription-Key": RANK_KEY},
            timeout=10,
        )
        assert found.status_code == 200 and found.json()["rewardActionId"] == answer["rewardActionId"]
    finally:
        server.stop()
