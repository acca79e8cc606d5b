"""Both Personalizer SDKs from PyPI, unchanged, against a real ``ranker serve`` with keyed loops.

azure-ai-personalizer has the multi-slot calls too (``rank_multi_slot``, ``reward_multi_slot``,
``activate_multi_slot``), run against the multi-slot loop ``slots``; azure-cognitiveservices-personalizer 0.1.1
has none (its client has ``rank`` and ``events.reward``/``events.activate`` only), so it meets a multi-slot loop
only by mistake, and is told so.

Every test runs on both engines: a server on SQLite, and one on PostgreSQL (a throwaway cluster, tests/postgres.py).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
from azure.ai.personalizer import PersonalizerClient
from azure.cognitiveservices.personalizer import PersonalizerClient as LegacyClient
from azure.cognitiveservices.personalizer.models import ErrorResponseException, RankableAction, RankRequest
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from conftest import KEYED_CONFIG, OTHER_KEY, RANK_KEY
from msrest.authentication import CognitiveServicesCredentials
from msrest.exceptions import HttpOperationError
from postgres import log_rows

from ranker.core.settings import hash_key
from ranker.harness import Server

CONTEXT = [{"account": {"plan": "enterprise", "seats": 120}}, {"usage": {"logins_7d": 3}}]
ACTIONS = [
    {"id": "renewal-call", "features": [{"kind": "call", "effort": 3}]},
    {"id": "training-invite", "features": [{"kind": "email", "effort": 1}]},
    {"id": "feature-tour", "features": [{"kind": "in-app", "effort": 1}]},
    {"id": "discount-offer", "features": [{"kind": "email", "effort": 2}]},
]
ACTION_IDS = [a["id"] for a in ACTIONS]
SLOTS_KEY = "slots-rank-key-0123456789"
SLOTS_LOOP = f"""
[loops.slots]
policy = "multislot"
keys = [{{ role = "rank", sha256 = "{hash_key(SLOTS_KEY)}" }}]
"""
SLOTS = [
    {"id": "banner", "features": [{"placement": {"size": "large"}}], "baselineAction": "renewal-call"},
    {"id": "inbox", "features": [{"placement": {"size": "small"}}], "baselineAction": "training-invite"},
    {"id": "footer", "baselineAction": "feature-tour"},
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_cluster").database()
    engine = {"database_url": url} if url else {}
    running = Server(tmp_path_factory.mktemp("sdk"), KEYED_CONFIG + SLOTS_LOOP, **engine)
    running.database_url = url
    yield running
    running.stop()


def client(server: Server, key: str = RANK_KEY) -> PersonalizerClient:
    return PersonalizerClient(server.url, AzureKeyCredential(key), retry_total=0)


def legacy_client(server: Server, key: str = RANK_KEY) -> LegacyClient:
    legacy = LegacyClient(server.url, CognitiveServicesCredentials(key))
    legacy.config.retry_policy.retries = 0
    return legacy


def legacy_actions() -> list[RankableAction]:
    return [RankableAction(id=a["id"], features=a["features"]) for a in ACTIONS]


def rows(server: Server, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    return log_rows(server.data_dir, server.database_url, sql, params)


def decision(server: Server, event_id: str, loop: str = "cards") -> dict[str, Any]:
    found = rows(server, "SELECT * FROM decisions WHERE loop = ? AND event_id = ?", (loop, event_id))
    assert len(found) == 1, f"expected one decision for {loop}/{event_id}, found {len(found)}"
    return found[0]


def slot_rewards(server: Server, event_id: str) -> list[tuple[str, float]]:
    found = rows(
        server,
        "SELECT r.slot_id, r.value FROM rewards r JOIN decisions d ON d.id = r.decision_id "
        "WHERE d.loop = 'slots' AND d.event_id = ? ORDER BY r.id",
        (event_id,),
    )
    return [(row["slot_id"], row["value"]) for row in found]


def rewards(server: Server, event_id: str, loop: str = "cards") -> list[float]:
    found = rows(
        server,
        "SELECT r.value FROM rewards r JOIN decisions d ON d.id = r.decision_id "
        "WHERE d.loop = ? AND d.event_id = ? ORDER BY r.id",
        (loop, event_id),
    )
    return [row["value"] for row in found]


def new_event_id() -> str:
    return f"evt-{uuid.uuid4().hex}"


def check_ranking(ranking: list[tuple[str, float]], reward_action_id: str, excluded: set[str]) -> None:
    """What a caller relies on: every action ranked once, chosen one eligible, excluded ones at 0, PMF sums to 1."""
    assert sorted(i for i, _ in ranking) == sorted(ACTION_IDS)
    assert reward_action_id in ACTION_IDS
    assert reward_action_id not in excluded
    assert ranking[0][0] == reward_action_id
    probabilities = dict(ranking)
    assert all(probabilities[i] == 0 for i in excluded)
    assert all(0 < probabilities[i] <= 1 for i in ACTION_IDS if i not in excluded)
    assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-6)


# -- azure-ai-personalizer 1.0.0b1 (/personalizer/...?api-version=2022-09-01-preview) ----------


def test_ai_sdk_rank_activate_reward_are_logged(server: Server) -> None:
    sdk = client(server)
    event_id = new_event_id()
    excluded = {"discount-offer", "renewal-call"}
    body = {
        "contextFeatures": CONTEXT,
        "actions": ACTIONS,
        "excludedActions": sorted(excluded),
        "eventId": event_id,
        "deferActivation": True,
    }
    response = sdk.rank(body)

    assert response["eventId"] == event_id
    ranking = [(a["id"], a["probability"]) for a in response["ranking"]]
    check_ranking(ranking, response["rewardActionId"], excluded)
    logged = decision(server, event_id)
    assert logged["reward_action_id"] == response["rewardActionId"]
    assert logged["probability"] == pytest.approx(dict(ranking)[response["rewardActionId"]])
    assert logged["deferred"] == 1
    assert logged["activated_at"] is None
    assert rewards(server, event_id) == []

    assert sdk.activate(event_id) is None
    assert sdk.reward(event_id, {"value": 0.75}) is None
    assert decision(server, event_id)["activated_at"] is not None
    assert rewards(server, event_id) == [0.75]


def test_ai_sdk_generates_event_id_and_keeps_every_reward(server: Server) -> None:
    sdk = client(server)
    response = sdk.rank({"contextFeatures": CONTEXT, "actions": ACTIONS})

    event_id = response["eventId"]
    assert isinstance(event_id, str) and event_id
    check_ranking([(a["id"], a["probability"]) for a in response["ranking"]], response["rewardActionId"], set())
    assert decision(server, event_id)["deferred"] == 0
    sdk.reward(event_id, {"value": 1.0})
    sdk.reward(event_id, {"value": -0.5})
    assert rewards(server, event_id) == [1.0, -0.5]


def test_ai_sdk_duplicate_event_id_is_a_conflict(server: Server) -> None:
    sdk = client(server)
    event_id = new_event_id()
    first = sdk.rank({"contextFeatures": CONTEXT, "actions": ACTIONS, "eventId": event_id})

    with pytest.raises(ResourceExistsError) as raised:
        sdk.rank({"contextFeatures": [{"other": 1}], "actions": ACTIONS[:2], "eventId": event_id})
    assert raised.value.status_code == 409
    assert raised.value.error is not None and raised.value.error.code == "EventIdAlreadyExists"
    assert raised.value.error.target == "eventId"
    assert decision(server, event_id)["reward_action_id"] == first["rewardActionId"]


def test_ai_sdk_unknown_event_is_not_found(server: Server) -> None:
    sdk = client(server)
    event_id = new_event_id()
    with pytest.raises(ResourceNotFoundError) as raised:
        sdk.reward(event_id, {"value": 1.0})
    assert raised.value.status_code == 404
    assert raised.value.error is not None and raised.value.error.code == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError):
        sdk.activate(event_id)
    assert rows(server, "SELECT * FROM decisions WHERE event_id = ?", (event_id,)) == []


def test_ai_sdk_wrong_key_is_unauthenticated(server: Server) -> None:
    sdk = client(server, key="not-a-key-of-any-loop")
    event_id = new_event_id()
    with pytest.raises(ClientAuthenticationError) as raised:
        sdk.rank({"contextFeatures": CONTEXT, "actions": ACTIONS, "eventId": event_id})
    assert raised.value.status_code == 401
    assert raised.value.error is not None and raised.value.error.code == "Unauthorized"
    assert raised.value.error.message
    assert rows(server, "SELECT * FROM decisions WHERE event_id = ?", (event_id,)) == []


def test_loops_are_isolated(server: Server) -> None:
    cards, other = client(server), client(server, key=OTHER_KEY)
    event_id = new_event_id()
    cards.rank({"contextFeatures": CONTEXT, "actions": ACTIONS, "eventId": event_id})

    with pytest.raises(ResourceNotFoundError) as raised:
        other.reward(event_id, {"value": 1.0})
    assert raised.value.status_code == 404
    with pytest.raises(ResourceNotFoundError):
        other.activate(event_id)
    assert rewards(server, event_id) == []
    assert decision(server, event_id)["activated_at"] is None

    # The same event id is a different event in another loop, and its reward stays there.
    other.rank({"contextFeatures": CONTEXT, "actions": ACTIONS, "eventId": event_id})
    other.reward(event_id, {"value": 0.25})
    assert rewards(server, event_id, loop="other") == [0.25]
    assert rewards(server, event_id, loop="cards") == []


# -- azure-ai-personalizer multi-slot calls (/personalizer/multislot/...?api-version=2022-09-01-preview) --


def test_ai_sdk_multi_slot_rank_activate_reward_are_logged(server: Server) -> None:
    sdk = client(server, key=SLOTS_KEY)
    event_id = new_event_id()
    slots = [SLOTS[0], {**SLOTS[1], "excludedActions": ["renewal-call", "discount-offer"]}, SLOTS[2]]
    body = {
        "contextFeatures": CONTEXT,
        "actions": ACTIONS,
        "slots": slots,
        "eventId": event_id,
        "deferActivation": True,
    }
    response = sdk.rank_multi_slot(body)

    assert response["eventId"] == event_id
    assert [s["id"] for s in response["slots"]] == ["banner", "inbox", "footer"]
    chosen = [s["rewardActionId"] for s in response["slots"]]
    assert len(set(chosen)) == 3 and set(chosen) <= set(ACTION_IDS)
    assert chosen[1] not in {"renewal-call", "discount-offer"}
    logged = decision(server, event_id, loop="slots")
    kept = json.loads(logged["slots"])
    assert [(s["id"], s["rewardActionId"]) for s in kept] == [(s["id"], s["rewardActionId"]) for s in response["slots"]]
    assert all(0 < s["probability"] <= 1 for s in kept)
    record = json.loads(logged["record"])
    multi = [m["_id"] for m in record["c"]["_multi"]]
    assert [multi[o["_a"][0]] for o in record["_outcomes"]] == chosen
    assert [o["_p"][0] for o in record["_outcomes"]] == [s["probability"] for s in kept]
    assert (logged["deferred"], logged["activated_at"]) == (1, None)

    assert sdk.activate_multi_slot(event_id) is None
    assert sdk.reward_multi_slot(event_id, {"reward": [{"slotId": "banner", "value": 1.0}]}) is None
    two = {"reward": [{"slotId": "footer", "value": -0.5}, {"slotId": "inbox", "value": 0.25}]}
    assert sdk.reward_multi_slot(event_id, two) is None
    assert decision(server, event_id, loop="slots")["activated_at"] is not None
    assert slot_rewards(server, event_id) == [("banner", 1.0), ("footer", -0.5), ("inbox", 0.25)]


def test_ai_sdk_multi_slot_generates_event_id(server: Server) -> None:
    response = client(server, key=SLOTS_KEY).rank_multi_slot({"actions": ACTIONS, "slots": SLOTS[:2]})

    event_id = response["eventId"]
    assert isinstance(event_id, str) and event_id
    assert [s["id"] for s in response["slots"]] == ["banner", "inbox"]
    assert decision(server, event_id, loop="slots")["deferred"] == 0


def test_ai_sdk_multi_slot_errors(server: Server) -> None:
    sdk = client(server, key=SLOTS_KEY)
    event_id = new_event_id()
    sdk.rank_multi_slot({"actions": ACTIONS, "slots": SLOTS, "eventId": event_id})
    logged = decision(server, event_id, loop="slots")

    with pytest.raises(ResourceExistsError) as conflict:
        sdk.rank_multi_slot({"actions": ACTIONS, "slots": SLOTS[:1], "eventId": event_id})
    assert conflict.value.status_code == 409 and conflict.value.error.code == "EventIdAlreadyExists"

    unknown = new_event_id()
    with pytest.raises(ResourceNotFoundError) as missing:
        sdk.reward_multi_slot(unknown, {"reward": [{"slotId": "banner", "value": 1.0}]})
    assert missing.value.status_code == 404 and missing.value.error.code == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError):
        sdk.activate_multi_slot(unknown)

    # a slot the event does not have: none of the call's rewards is kept
    with pytest.raises(HttpResponseError) as bad:
        sdk.reward_multi_slot(
            event_id, {"reward": [{"slotId": "banner", "value": 1.0}, {"slotId": "popup", "value": 1.0}]}
        )
    assert bad.value.status_code == 400 and bad.value.error.code == "InvalidRewardRequest"
    with pytest.raises(HttpResponseError) as bad:
        sdk.rank_multi_slot({"actions": ACTIONS, "slots": [SLOTS[0], {**SLOTS[1], "baselineAction": "renewal-call"}]})
    assert bad.value.status_code == 400 and bad.value.error.code == "InvalidRankRequest"

    # single-slot calls to the multi-slot loop, and multi-slot calls to a single-slot one
    stray = new_event_id()
    with pytest.raises(HttpResponseError) as wrong:
        sdk.rank({"contextFeatures": CONTEXT, "actions": ACTIONS, "eventId": stray})
    assert wrong.value.status_code == 400 and wrong.value.error.code == "InvalidMultiSlotApiAccess"
    with pytest.raises(HttpResponseError) as wrong:
        sdk.reward(event_id, {"value": 1.0})
    assert wrong.value.error.code == "InvalidMultiSlotApiAccess"
    with pytest.raises(HttpResponseError) as wrong:
        sdk.activate(event_id)
    assert wrong.value.error.code == "InvalidMultiSlotApiAccess"
    single = new_event_id()
    with pytest.raises(HttpResponseError) as wrong:
        client(server).rank_multi_slot({"actions": ACTIONS, "slots": SLOTS, "eventId": single})
    assert wrong.value.status_code == 400 and wrong.value.error.code == "InvalidMultiSlotApiAccess"

    assert slot_rewards(server, event_id) == []
    assert decision(server, event_id, loop="slots") == logged
    assert rows(server, "SELECT * FROM decisions WHERE event_id IN (?, ?)", (stray, single)) == []


# -- azure-cognitiveservices-personalizer 0.1.1 (/personalizer/v1.0/...) -------------------------


def test_legacy_sdk_rank_activate_reward_are_logged(server: Server) -> None:
    sdk = legacy_client(server)
    event_id = new_event_id()
    excluded = {"training-invite"}
    response = sdk.rank(
        RankRequest(
            context_features=CONTEXT,
            actions=legacy_actions(),
            excluded_actions=sorted(excluded),
            event_id=event_id,
            defer_activation=True,
        )
    )

    assert response.event_id == event_id
    ranking = [(a.id, a.probability) for a in response.ranking]
    check_ranking(ranking, response.reward_action_id, excluded)
    logged = decision(server, event_id)
    assert logged["reward_action_id"] == response.reward_action_id
    assert logged["deferred"] == 1
    assert logged["activated_at"] is None

    assert sdk.events.activate(event_id) is None
    assert sdk.events.reward(event_id, -0.25) is None
    assert decision(server, event_id)["activated_at"] is not None
    assert rewards(server, event_id) == [-0.25]


def test_legacy_sdk_generates_event_id(server: Server) -> None:
    sdk = legacy_client(server)
    response = sdk.rank(RankRequest(context_features=CONTEXT, actions=legacy_actions()))

    assert isinstance(response.event_id, str) and response.event_id
    check_ranking([(a.id, a.probability) for a in response.ranking], response.reward_action_id, set())
    assert decision(server, response.event_id)["deferred"] == 0


def test_legacy_sdk_errors(server: Server) -> None:
    sdk = legacy_client(server)
    event_id = new_event_id()
    sdk.rank(RankRequest(context_features=CONTEXT, actions=legacy_actions(), event_id=event_id))

    with pytest.raises(ErrorResponseException) as conflict:
        sdk.rank(RankRequest(context_features=CONTEXT, actions=legacy_actions(), event_id=event_id))
    assert conflict.value.response.status_code == 409
    assert conflict.value.error.error.code == "EventIdAlreadyExists"
    assert conflict.value.error.error.target == "eventId"

    unknown = new_event_id()
    with pytest.raises(HttpOperationError) as missing:
        sdk.events.reward(unknown, 1.0)
    assert missing.value.response.status_code == 404
    assert missing.value.response.json()["error"]["code"] == "ResourceNotFound"
    with pytest.raises(HttpOperationError) as missing:
        sdk.events.activate(unknown)
    assert missing.value.response.status_code == 404

    stranger = legacy_client(server, key="not-a-key-of-any-loop")
    with pytest.raises(ErrorResponseException) as denied:
        stranger.rank(RankRequest(context_features=CONTEXT, actions=legacy_actions(), event_id=new_event_id()))
    assert denied.value.response.status_code == 401
    assert denied.value.error.error.code == "Unauthorized"

    other = legacy_client(server, key=OTHER_KEY)
    with pytest.raises(HttpOperationError) as isolated:
        other.events.reward(event_id, 1.0)
    assert isolated.value.response.status_code == 404
    assert rewards(server, event_id) == []


def test_legacy_sdk_on_a_multi_slot_loop_is_told_to_use_the_multi_slot_api(server: Server) -> None:
    event_id = new_event_id()
    client(server, key=SLOTS_KEY).rank_multi_slot({"actions": ACTIONS, "slots": SLOTS, "eventId": event_id})
    sdk = legacy_client(server, key=SLOTS_KEY)

    with pytest.raises(ErrorResponseException) as wrong:
        sdk.rank(RankRequest(context_features=CONTEXT, actions=legacy_actions(), event_id=new_event_id()))
    assert wrong.value.response.status_code == 400
    assert wrong.value.error.error.code == "InvalidMultiSlotApiAccess"
    for call in (lambda: sdk.events.reward(event_id, 1.0), lambda: sdk.events.activate(event_id)):
        with pytest.raises(HttpOperationError) as wrong:
            call()
        assert wrong.value.response.status_code == 400
        assert wrong.value.response.json()["error"]["code"] == "InvalidMultiSlotApiAccess"
    assert slot_rewards(server, event_id) == []
    assert decision(server, event_id, loop="slots")["activated_at"] is None


# -- every URL shape, with the Bearer header ------------------------------------------------------

URL_SHAPES = {
    "v1.0": ("/personalizer/v1.0/{op}", {}),
    "v1.1-preview.3": ("/personalizer/v1.1-preview.3/{op}", {}),
    "2022-09-01-preview": ("/personalizer/{op}", {"api-version": "2022-09-01-preview"}),
}


@pytest.mark.parametrize("shape", URL_SHAPES)
def test_url_shapes_with_bearer_key(server: Server, shape: str) -> None:
    template, params = URL_SHAPES[shape]
    bearer = {"Authorization": f"Bearer {RANK_KEY}"}

    def post(op: str, **kwargs: Any) -> requests.Response:
        return requests.post(server.url + template.format(op=op), params=params, timeout=10, **kwargs)

    event_id = f"{shape} e/1?#%"  # reserved URL characters travel percent-encoded in the path
    quoted = quote(event_id, safe="")
    body = {"contextFeatures": CONTEXT, "actions": ACTIONS, "excludedActions": ["feature-tour"], "eventId": event_id}
    ranked = post("rank", json=body, headers=bearer)
    assert ranked.status_code == 201, ranked.text
    assert ranked.headers["Content-Type"].startswith("application/json")
    answer = ranked.json()
    assert answer["eventId"] == event_id
    check_ranking([(a["id"], a["probability"]) for a in answer["ranking"]], answer["rewardActionId"], {"feature-tour"})

    activated = post(f"events/{quoted}/activate", headers=bearer)
    assert activated.status_code == 204 and activated.content == b""
    rewarded = post(f"events/{quoted}/reward", json={"value": 0.5}, headers=bearer)
    assert rewarded.status_code == 204 and rewarded.content == b""
    assert decision(server, event_id)["activated_at"] is not None
    assert rewards(server, event_id) == [0.5]

    denied = post("rank", json={**body, "eventId": new_event_id()}, headers={"Authorization": "Bearer wrong-key"})
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "Unauthorized"
