"""Rank, Reward and Activate through the HTTP API, and what they leave in the decision log."""

from __future__ import annotations

import json
import re

import pytest
import vowpalwabbit
from conftest import ADMIN_KEY, KEYED_CONFIG, OTHER_KEY, RANK_KEY

from ranker.app import create_app
from ranker.core import dsjson, schemas
from ranker.core.schemas import RankRequest, RewardRequest
from ranker.core.settings import load_settings
from ranker.serving.engine import Engine, vw_arguments

PREFIXES = ["/personalizer/v1.0", "/personalizer/v1.1-preview.3", "/personalizer"]

ACTIONS = [
    {"id": "renewal-review", "features": [{"kind": {"motion": "renewal", "effort": 3}}]},
    {"id": "api-training", "features": [{"kind": {"motion": "adoption"}}, {"module": {"topic": "reporting-api"}}]},
    {"id": "upsell-seats", "features": [{"kind": {"motion": "expansion"}, "price": 1200.5}]},
]
CONTEXT = [{"account": {"segment": "fintech", "plan": "enterprise", "seats": 40}}, {"user": {"role": "cs-manager"}}]


def rank_body(**extra):
    return {"contextFeatures": CONTEXT, "actions": ACTIONS, **extra}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_rank_reward_activate_on_every_url_shape(client, service, prefix):
    response = client.post(f"{prefix}/rank?api-version=2022-09-01-preview", json=rank_body(deferActivation=True))
    assert response.status_code == 201
    body = response.get_json()
    ranking = body["ranking"]
    assert sorted(r["id"] for r in ranking) == sorted(a["id"] for a in ACTIONS)
    assert ranking[0]["id"] == body["rewardActionId"]
    assert sum(r["probability"] for r in ranking) == pytest.approx(1.0)

    event_id = body["eventId"]
    assert client.post(f"{prefix}/events/{event_id}/reward", json={"value": 0.25}).status_code == 204
    assert client.post(f"{prefix}/events/{event_id}/reward", json={"value": -1}).status_code == 204
    assert client.post(f"{prefix}/events/{event_id}/activate").status_code == 204

    row = service.store.decision("default", event_id)
    assert row["deferred"] == 1 and row["activated_at"] is not None
    assert row["reward_action_id"] == body["rewardActionId"]
    assert [r["value"] for r in service.store.rewards("default", event_id)] == [0.25, -1.0]


def test_the_logged_record_is_dsjson_that_vw_reads(client, service):
    body = client.post("/personalizer/v1.0/rank", json=rank_body(eventId="evt-1")).get_json()
    row = service.store.decision("default", "evt-1")
    record = json.loads(row["record"])

    assert record["EventId"] == "evt-1" and record["Version"] == "1"
    multi = record["c"]["_multi"]
    assert [m["_id"] for m in multi] == [a["id"] for a in ACTIONS]
    # the features are the request's, merged per object list, as VW's JSON parser reads them
    assert {k: v for k, v in record["c"].items() if k != "_multi"} == {**CONTEXT[0], **CONTEXT[1]}
    assert multi[1]["module"] == {"topic": "reporting-api"} and multi[2]["price"] == 1200.5
    # a: 1-based, the chosen action first; p aligned with a and equal to what the client was told
    chosen = multi[record["a"][0] - 1]["_id"]
    assert chosen == body["rewardActionId"]
    probabilities = {r["id"]: r["probability"] for r in body["ranking"]}
    assert record["p"] == [probabilities[multi[i - 1]["_id"]] for i in record["a"]]
    assert row["probability"] == record["p"][0]

    vw = vowpalwabbit.Workspace("--cb_explore_adf --dsjson --quiet")
    examples = vw.parse(dsjson.labeled(row["record"], 1.0))
    assert len(examples) == len(ACTIONS) + 1  # shared + one per action
    vw.learn(examples)
    vw.finish_example(examples)


def test_a_model_learned_from_the_log_serves_what_it_learned(client, service, tmp_path):
    """The record served is the record learned from: no second feature mapping between them."""
    arguments = vw_arguments("--cb_explore_adf --cb_type mtr -q ::", 0.2)
    vw = vowpalwabbit.Workspace(arguments + " --dsjson --quiet")
    for i in range(60):
        body = client.post("/personalizer/v1.0/rank", json=rank_body(eventId=f"e{i}")).get_json()
        reward = 1.0 if body["rewardActionId"] == "api-training" else 0.0
        examples = vw.parse(dsjson.labeled(service.store.decision("default", f"e{i}")["record"], reward))
        vw.learn(examples)
        vw.finish_example(examples)
    vw.save(str(tmp_path / "learned.vw"))
    vw.finish()

    engine = Engine(arguments, str(tmp_path / "learned.vw"), version="learned")
    service.loops["default"].engine = engine
    body = client.post("/personalizer/v1.0/rank", json=rank_body(eventId="after")).get_json()
    best = max(body["ranking"], key=lambda r: r["probability"])
    assert best["id"] == "api-training"
    assert best["probability"] == pytest.approx(1 - 0.2 + 0.2 / 3, abs=1e-6)
    assert service.store.decision("default", "after")["model_version"] == "learned"


def test_sampling_is_reproducible_from_the_event_id(tmp_path):
    answers = []
    for n in range(2):
        app = create_app({"data_dir": tmp_path / str(n)})
        answers.append(app.test_client().post("/personalizer/v1.0/rank", json=rank_body(eventId="same")).get_json())
    assert answers[0] == answers[1]


def test_generated_event_ids_are_unique_and_logged(client, service):
    ids = {client.post("/personalizer/v1.0/rank", json=rank_body()).get_json()["eventId"] for _ in range(20)}
    assert len(ids) == 20
    assert service.store.counts()["decisions"] == 20


def test_apprentice_mode_serves_the_baseline(tmp_path):
    app = create_app({"data_dir": tmp_path, "loops": {"default": {"learningMode": "Apprentice"}}})
    client = app.test_client()
    for _ in range(5):
        body = client.post("/personalizer/v1.0/rank", json=rank_body(excludedActions=["renewal-review"])).get_json()
        assert body["rewardActionId"] == "api-training"  # first eligible action
        assert body["ranking"][0] == {"id": "api-training", "probability": 1.0}
    row = app.extensions["ranker"].store.read("SELECT learning_mode, probability FROM decisions LIMIT 1")[0]
    assert row == {"learning_mode": "Apprentice", "probability": 1.0}


def test_exploration_percentage_sets_epsilon():
    assert vw_arguments("--cb_explore_adf --epsilon 0.2 --cb_type mtr -q ::", 0.05) == (
        "--cb_explore_adf --cb_type mtr -q :: --epsilon 0.05"
    )
    assert vw_arguments("--cb_explore_adf --squarecb -q ::", 0.3) == "--cb_explore_adf --squarecb -q ::"


@pytest.fixture
def keyed(tmp_path):
    path = tmp_path / "ranker.toml"
    path.write_text(KEYED_CONFIG)
    app = create_app(load_settings(path, environ={}, overrides={"data_dir": tmp_path}))
    return app.test_client(), app.extensions["ranker"]


def test_keys_select_the_loop_and_loops_are_isolated(keyed):
    client, service = keyed
    rank = {"Ocp-Apim-Subscription-Key": RANK_KEY}
    body = client.post("/personalizer/v1.0/rank", json=rank_body(eventId="shared-id"), headers=rank).get_json()
    assert service.store.decision("cards", "shared-id")["reward_action_id"] == body["rewardActionId"]

    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    response = client.post("/personalizer/v1.0/events/shared-id/reward", json={"value": 1}, headers=other)
    assert response.status_code == 404
    # the same event id is free in another loop
    assert client.post("/personalizer/v1.0/rank", json=rank_body(eventId="shared-id"), headers=other).status_code == 201
    assert service.store.decision("other", "shared-id") is not None

    admin = {"Ocp-Apim-Subscription-Key": ADMIN_KEY}
    assert (
        client.post("/personalizer/v1.0/events/shared-id/reward", json={"value": 1}, headers=admin).status_code == 204
    )
    assert [r["value"] for r in service.store.rewards("cards", "shared-id")] == [1.0]
    assert service.store.rewards("other", "shared-id") == []


@pytest.mark.parametrize("empty", ["", " "], ids=["empty", "blank"])
def test_an_empty_subscription_key_header_leaves_the_bearer_key_in_charge(keyed, empty):
    # a client or proxy may send the header unset beside the bearer token that carries the key
    client, service = keyed
    headers = {"Ocp-Apim-Subscription-Key": empty, "Authorization": f"Bearer {RANK_KEY}"}
    response = client.post("/personalizer/v1.0/rank", json=rank_body(eventId="bearer"), headers=headers)
    assert response.status_code == 201
    assert service.store.decision("cards", "bearer") is not None
    assert client.get("/personalizer/v1.0/configurations/policy", headers=headers).status_code == 403  # a rank key
    alone = client.post("/personalizer/v1.0/rank", json=rank_body(), headers={"Ocp-Apim-Subscription-Key": empty})
    assert alone.status_code == 401


def test_healthz(client):
    assert client.get("/healthz").get_json() == {"status": "ok", "loops": ["default"], "auth": False}


def _camel(name: str) -> str:
    """A route variable as the OpenAPI path names it: event_id -> eventId."""
    return re.sub(r"_(\w)", lambda c: c[1].upper(), name)


def test_openapi_matches_the_routes_and_the_models(app, client):
    spec = client.get("/openapi.json").get_json()
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "meta.openapi_json") or rule.endpoint.startswith("review_"):
            continue  # the review pages are HTML for browsers, documented in docs/review.md
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "{" + _camel(m[1]) + "}", rule.rule)
        served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served
    assert spec["components"]["schemas"]["RankRequest"]["required"] == ["actions"]
    assert set(spec["components"]["schemas"]["RankRequest"]["properties"]) == set(RankRequest.model_fields)
    assert set(spec["components"]["schemas"]["RewardRequest"]["properties"]) == set(RewardRequest.model_fields)
    names = ["RankRequest", "RankResponse", "RewardRequest"]
    for name in names + ["MultiSlot" + name for name in names]:
        model = getattr(schemas, name)
        own = model.model_json_schema(ref_template="#/components/schemas/{model}")
        own.pop("$defs", None)
        assert spec["components"]["schemas"][name] == own


def test_a_request_answered_503_was_not_written_and_can_be_retried(tmp_path):
    """A commit that does not come in time is a 503, and then the write never happens: a retry is safe."""
    import fcntl

    app = create_app({"data_dir": tmp_path, "commit_timeout": 0.5})
    client, service = app.test_client(), app.extensions["ranker"]
    assert client.post("/personalizer/v1.0/rank", json=rank_body(eventId="e0")).status_code == 201
    with open(tmp_path / "ranker.lock", "a") as lock:  # another process holds the writers' turn
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert client.post("/personalizer/v1.0/events/e0/reward", json={"value": 1}).status_code == 503
        assert client.post("/personalizer/v1.0/rank", json=rank_body(eventId="e1")).status_code == 503
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert client.post("/personalizer/v1.0/events/e0/reward", json={"value": 1}).status_code == 204
    assert client.post("/personalizer/v1.0/rank", json=rank_body(eventId="e1")).status_code == 201
    assert [r["value"] for r in service.store.rewards("default", "e0")] == [1.0]
    assert service.store.counts() == {"decisions": 2, "rewards": 1}
