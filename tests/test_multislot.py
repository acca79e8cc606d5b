"""Multi-slot Rank, Reward and Activate: what a caller is told, what the log keeps, what VW reads and learns.

Real SQLite, real VW. The loops come from a TOML file as an operator writes it: ``slots`` (multi-slot, with
an entitlement and a priority rule that read a slot's placement), ``apprentice`` (the same in Apprentice
mode) and ``cards`` (single-slot), each selected by its key.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import vowpalwabbit
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_bad_input import (
    NO_BODY,
    Case,
    assert_error,
    awkward_text,
    event_url,
    log_contents,
    plain_text,
    rank_bodies,
    send,
)
from test_trainer import vw_model

from ranker.app import create_app
from ranker.core import dsjson
from ranker.core.schemas import MultiSlotRankRequest
from ranker.core.settings import hash_key, load_settings
from ranker.learning.trainer import Trainer
from ranker.logdata.join import RewardJoin, joined
from ranker.serving.engine import Engine, sample
from ranker.serving.service import Service, timestamp
from ranker.store import models

SLOTS_KEY = "slots-rank-key-0123456789"
APPRENTICE_KEY = "apprentice-rank-key-0123456789"
CARDS_KEY = "cards-rank-key-0123456789"
CARDS_ADMIN_KEY = "cards-admin-key-0123456789"
SLOTS = {"Ocp-Apim-Subscription-Key": SLOTS_KEY}
APPRENTICE = {"Ocp-Apim-Subscription-Key": APPRENTICE_KEY}
CARDS = {"Ocp-Apim-Subscription-Key": CARDS_KEY}


def rules(loop: str) -> str:
    """video-tour only in a large placement; webinar three times as likely there."""
    return f"""
[[loops.{loop}.rules.entitlements]]
name = "large-placements"
actions = {{ ids = ["video-tour"] }}
requires = [{{ path = "placement.size", equals = "large" }}]

[[loops.{loop}.rules.priority]]
name = "live-in-large-placements"
actions = {{ ids = ["webinar"] }}
factor = 3.0
when = [{{ path = "placement.size", equals = "large" }}]
"""


CONFIG = f"""
[loops.slots]
policy = "multislot"
keys = [{{ role = "rank", sha256 = "{hash_key(SLOTS_KEY)}" }}]
{rules("slots")}
[loops.apprentice]
policy = "multislot"
learningMode = "Apprentice"
keys = [{{ role = "rank", sha256 = "{hash_key(APPRENTICE_KEY)}" }}]
{rules("apprentice")}
[loops.cards]
keys = [
  {{ role = "rank", sha256 = "{hash_key(CARDS_KEY)}" }},
  {{ role = "admin", sha256 = "{hash_key(CARDS_ADMIN_KEY)}" }},
]
"""

PREFIXES = ["/personalizer/v1.0", "/personalizer/v1.1-preview.3", "/personalizer"]
V1 = "/personalizer/v1.0"
MULTI_RANK = f"{V1}/multislot/rank"
API_VERSION = {"api-version": "2022-09-01-preview"}

ACTIONS = [
    {"id": "product-tour", "features": [{"kind": {"format": "walkthrough", "minutes": 5}}]},
    {"id": "webinar", "features": [{"kind": {"format": "live", "minutes": 45}}]},
    {"id": "video-tour", "features": [{"kind": {"format": "video", "minutes": 3}}]},
    {"id": "case-study", "features": [{"kind": {"format": "pdf"}}, {"topic": {"industry": "fintech"}}]},
    {"id": "pricing-page", "features": [{"kind": {"format": "page"}}]},
    {"id": "api-docs", "features": [{"kind": {"format": "page"}, "technical": True}]},
]
ACTION_IDS = [a["id"] for a in ACTIONS]
HERO = {"id": "hero", "features": [{"placement": {"size": "large", "position": 1}}], "baselineAction": "product-tour"}
SIDEBAR = {"id": "sidebar", "features": [{"placement": {"size": "small", "position": 2}}], "baselineAction": "webinar"}
FOOTER = {"id": "footer", "baselineAction": "case-study"}  # no placement of its own: the context's applies
SLOT_LIST = [HERO, SIDEBAR, FOOTER]
CONTEXT = [{"account": {"plan": "enterprise", "seats": 120}}, {"placement": {"size": "small"}}]


# Three actions for three slots, and nothing left for the sidebar: video-tour is not allowed in its small
# placement and it excludes the other two.
GAP = {
    "actions": [a for a in ACTIONS if a["id"] in ("webinar", "video-tour", "case-study")],
    "slots": [
        {**HERO, "baselineAction": "webinar"},
        {**SIDEBAR, "baselineAction": "video-tour", "excludedActions": ["webinar", "case-study"]},
        {**FOOTER, "baselineAction": "case-study"},
    ],
}
LARGE_ONLY = {  # the entitlement of CONFIG's rules, for loops built from overrides
    "entitlements": [
        {
            "name": "large-placements",
            "actions": {"ids": ["video-tour"]},
            "requires": [{"path": "placement.size", "equals": "large"}],
        }
    ]
}


def rank_body(**fields: Any) -> dict[str, Any]:
    """A valid multi-slot Rank body with ``fields`` replaced."""
    return {"contextFeatures": CONTEXT, "actions": ACTIONS, "slots": SLOT_LIST, **fields}


def slot(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**base, **fields}


@pytest.fixture
def app(tmp_path: Path):
    """The app of this module's loops (overrides conftest's, so ``client`` and ``service`` use it)."""
    path = tmp_path / "ranker.toml"
    path.write_text(CONFIG)
    return create_app(
        load_settings(path, environ={}, overrides={"data_dir": tmp_path / "data", "synchronous": "NORMAL"})
    )


def rank(client, body: dict[str, Any], headers: dict[str, str] = SLOTS, url: str = MULTI_RANK) -> dict[str, Any]:
    response = client.post(url, json=body, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def logged(service, event_id: str, loop: str = "slots") -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The decision row and its record, parsed."""
    row = service.store.decision(loop, event_id)
    assert row is not None
    return row, None if row["record"] is None else json.loads(row["record"])


def slot_rewards(service, event_id: str, loop: str = "slots") -> list[tuple[str, float]]:
    rows = service.store.read(
        "SELECT r.slot_id, r.value FROM rewards r JOIN decisions d ON d.id = r.decision_id "
        "WHERE d.loop = ? AND d.event_id = ? ORDER BY r.id",
        (loop, event_id),
    )
    return [(row["slot_id"], row["value"]) for row in rows]


def check_answer(answer: dict[str, Any], body: dict[str, Any]) -> None:
    """Every slot once, in request order; each filled one with an action of the request no other slot got."""
    assert answer["eventId"] == body.get("eventId", answer["eventId"])
    assert [s["id"] for s in answer["slots"]] == [s["id"] for s in body["slots"]]
    chosen = [s["rewardActionId"] for s in answer["slots"] if s["rewardActionId"] is not None]
    assert len(set(chosen)) == len(chosen)
    assert set(chosen) <= {a["id"] for a in body["actions"]}


def check_record(row: dict[str, Any], record: dict[str, Any], answer: dict[str, Any]) -> None:
    """The record's slots are the filled ones in request order; each slot's ``_p`` is the PMF its action was
    drawn from (with the event id's number for the slot's position), the chosen action first."""
    multi = [m["_id"] for m in record["c"]["_multi"]]
    filled = [(k, s) for k, s in enumerate(answer["slots"]) if s["rewardActionId"] is not None]
    assert [s["_id"] for s in record["c"]["_slots"]] == [s["id"] for _, s in filled]
    assert [o["_id"] for o in record["_outcomes"]] == [s["id"] for _, s in filled]
    assert len(record["_ba"]) == len(filled)
    kept = {s["id"]: s for s in json.loads(row["slots"])}
    taken: set[int] = set()
    for (k, answered), entry, outcome in zip(filled, record["c"]["_slots"], record["_outcomes"], strict=True):
        inc, a, p = entry["_inc"], outcome["_a"], outcome["_p"]
        assert sorted(a) == sorted(inc) and not taken & set(inc)  # what earlier slots took is gone
        assert multi[a[0]] == answered["rewardActionId"]
        assert math.fsum(p) == pytest.approx(1.0, abs=1e-9)
        assert kept[answered["id"]] == {**answered, "probability": p[0]}
        pmf = [dict(zip(a, p, strict=True))[m] for m in inc]
        assert inc[sample(pmf, f"{record['EventId']}\n{k}")] == a[0]
        taken.add(a[0])


# -- Rank, Reward, Activate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_rank_activate_reward_on_every_url_shape(client, service, prefix):
    body = rank_body(eventId=f"{prefix.rsplit('/', 1)[1]} e/1?#%", deferActivation=True)
    answer = rank(client, body, url=f"{prefix}/multislot/rank?api-version=2022-09-01-preview")
    check_answer(answer, body)
    assert all(s["rewardActionId"] is not None for s in answer["slots"])
    row, record = logged(service, body["eventId"])
    check_record(row, record, answer)
    assert (row["deferred"], row["activated_at"], row["policy"]) == (1, None, "multislot")

    base = f"{prefix}/multislot"
    activated = client.post(event_url(body["eventId"], "activate", base), query_string=API_VERSION, headers=SLOTS)
    assert activated.status_code == 204 and activated.data == b""
    reward = {"reward": [{"slotId": "footer", "value": 1}, {"slotId": "hero", "value": -0.25}]}
    url = event_url(body["eventId"], "reward", base)
    rewarded = client.post(url, json=reward, query_string=API_VERSION, headers=SLOTS)
    assert rewarded.status_code == 204 and rewarded.data == b""
    assert client.post(url, json={"reward": [{"slotId": "hero", "value": 0.5}]}, headers=SLOTS).status_code == 204

    assert logged(service, body["eventId"])[0]["activated_at"] is not None
    assert slot_rewards(service, body["eventId"]) == [("footer", 1.0), ("hero", -0.25), ("hero", 0.5)]


def test_each_slot_gets_a_different_action_drawn_from_its_logged_distribution(client, service, tmp_path):
    seen: dict[str, set[str]] = {s["id"]: set() for s in SLOT_LIST}
    answers = {}
    for n in range(40):
        body = rank_body(eventId=f"e{n}")
        answers[n] = answer = rank(client, body)
        check_answer(answer, body)
        assert all(s["rewardActionId"] is not None for s in answer["slots"])
        check_record(*logged(service, f"e{n}"), answer)
        for s in answer["slots"]:
            seen[s["id"]].add(s["rewardActionId"])
    # exploration puts every action a slot may take there sometimes (video-tour only in the large hero)
    assert seen == {
        "hero": set(ACTION_IDS),
        "sidebar": set(ACTION_IDS) - {"video-tour"},
        "footer": set(ACTION_IDS) - {"video-tour"},
    }
    # the draws are the event id's: the same request gets the same answer from another server
    other = create_app(service.settings.model_copy(update={"data_dir": tmp_path / "other"}))
    assert [rank(other.test_client(), rank_body(eventId=f"e{n}")) for n in range(5)] == [answers[n] for n in range(5)]


def test_excluded_actions_keep_an_action_out_of_that_slot_only(client, service):
    sidebar = slot(SIDEBAR, excludedActions=["product-tour", "api-docs", "not-an-action"])
    placed: dict[str, set[str]] = {"hero": set(), "sidebar": set(), "footer": set()}
    for n in range(30):
        body = rank_body(eventId=f"e{n}", slots=[HERO, sidebar, FOOTER])
        answer = rank(client, body)
        check_answer(answer, body)
        row, record = logged(service, f"e{n}")
        check_record(row, record, answer)
        multi = [m["_id"] for m in record["c"]["_multi"]]
        assert not {"product-tour", "api-docs"} & {multi[m] for m in record["c"]["_slots"][1]["_inc"]}
        for s in answer["slots"]:
            placed[s["id"]].add(s["rewardActionId"])
    assert not {"product-tour", "api-docs"} & placed["sidebar"]
    assert {"product-tour", "api-docs"} <= placed["hero"] | placed["footer"]
    explanation = json.loads(logged(service, "e0")[0]["explanation"])["slots"]
    assert explanation["sidebar"]["excluded"] == {
        "product-tour": ["excludedActions"],
        "video-tour": ["entitlement:large-placements"],
        "api-docs": ["excludedActions"],
    }
    assert "product-tour" not in explanation["hero"]["excluded"]


@pytest.mark.parametrize(("size", "large_slots"), [("small", {"hero"}), ("large", {"hero", "footer"})])
def test_rules_apply_per_slot_with_the_slots_features(client, service, size, large_slots):
    """A slot's features join the context for the rules, a slot's own feature winning over the context's:
    the footer has no placement and takes the context's, the sidebar's own small one beats a large context."""
    context = [CONTEXT[0], {"placement": {"size": size}}]
    for n, order in enumerate(([HERO, SIDEBAR, FOOTER], [SIDEBAR, FOOTER, HERO], [FOOTER, HERO, SIDEBAR])):
        event_id = f"{size}-{n}"
        answer = rank(client, rank_body(eventId=event_id, contextFeatures=context, slots=order))
        row, record = logged(service, event_id)
        check_record(row, record, answer)
        explanation = json.loads(row["explanation"])["slots"]
        multi = [m["_id"] for m in record["c"]["_multi"]]
        for entry, outcome in zip(record["c"]["_slots"], record["_outcomes"], strict=True):
            large = entry["_id"] in large_slots
            assert explanation[entry["_id"]] == {
                "excluded": {} if large else {"video-tour": ["entitlement:large-placements"]},
                "reweighted": {"webinar": [{"rule": "live-in-large-placements", "factor": 3.0}]} if large else {},
            }
            assert large or "video-tour" not in {multi[m] for m in entry["_inc"]}
            # a fresh model's PMF is uniform: the priority rule alone sets webinar's share against the others'
            p = {multi[m]: q for m, q in zip(outcome["_a"], outcome["_p"], strict=True)}
            if "webinar" in p:
                ratios = [p["webinar"] / q for action_id, q in p.items() if action_id != "webinar"]
                assert ratios == pytest.approx([3.0 if large else 1.0] * len(ratios), rel=1e-6)
        for s in answer["slots"]:
            assert s["id"] in large_slots or s["rewardActionId"] != "video-tour"


def test_apprentice_serves_every_slot_its_baseline(client, service):
    answer = rank(client, rank_body(eventId="baselines"), headers=APPRENTICE)
    assert answer["slots"] == [{"id": s["id"], "rewardActionId": s["baselineAction"]} for s in SLOT_LIST]
    row, record = logged(service, "baselines", "apprentice")
    check_record(row, record, answer)
    multi = [m["_id"] for m in record["c"]["_multi"]]
    assert [multi[b] for b in record["_ba"]] == ["product-tour", "webinar", "case-study"]
    assert all(o["_p"] == [1.0] + [0.0] * (len(o["_p"]) - 1) for o in record["_outcomes"])
    assert row["learning_mode"] == "Apprentice"

    # Where the rules forbid a slot's baseline there, or an earlier slot took it, the slot gets the first
    # action left for it, in request order.
    slots = [
        slot(SIDEBAR, baselineAction="video-tour"),  # video-tour only in a large placement: product-tour
        slot(HERO, baselineAction="product-tour"),  # taken by the sidebar: webinar
        slot(FOOTER, baselineAction="webinar", excludedActions=["case-study"]),  # taken; case-study excluded
    ]
    answer = rank(client, rank_body(eventId="fallbacks", slots=slots), headers=APPRENTICE)
    assert [s["rewardActionId"] for s in answer["slots"]] == ["product-tour", "webinar", "pricing-page"]
    row, record = logged(service, "fallbacks", "apprentice")
    check_record(row, record, answer)
    # The logged baseline (offline evaluation's Baseline) is the slot's baselineAction wherever the rules allow
    # it there, taken or not; the first action left only where the rules forbid it.
    multi = [m["_id"] for m in record["c"]["_multi"]]
    assert [multi[b] for b in record["_ba"]] == ["product-tour", "product-tour", "webinar"]


def test_slots_beyond_the_eligible_actions_answer_null_and_stay_out_of_the_record(client, service):
    actions = GAP["actions"]  # webinar, video-tour, case-study
    for n in range(5):
        body = rank_body(eventId=f"gap-{n}", **GAP)
        answer = rank(client, body)
        check_answer(answer, body)
        assert answer["slots"][1] == {"id": "sidebar", "rewardActionId": None}
        assert None not in (answer["slots"][0]["rewardActionId"], answer["slots"][2]["rewardActionId"])
        row, record = logged(service, f"gap-{n}")
        check_record(row, record, answer)
        assert json.loads(row["slots"])[1] == {"id": "sidebar", "rewardActionId": None, "probability": None}

    # two small slots and one action allowed in them: the second slot gets null
    body = rank_body(eventId="short", actions=actions[:2], slots=[SIDEBAR, slot(FOOTER, baselineAction="video-tour")])
    answer = rank(client, body)
    assert answer["slots"] == [{"id": "sidebar", "rewardActionId": "webinar"}, {"id": "footer", "rewardActionId": None}]
    row, record = logged(service, "short")
    check_record(row, record, answer)
    assert record["_outcomes"] == [{"_id": "sidebar", "_a": [0], "_p": [1.0]}]

    # nothing allowed anywhere: every slot null, no record (nothing for VW to read), the decision still logged
    body = rank_body(eventId="none", actions=actions[1:2], slots=[slot(FOOTER, baselineAction="video-tour")])
    assert rank(client, body) == {"eventId": "none", "slots": [{"id": "footer", "rewardActionId": None}]}
    row, record = logged(service, "none")
    assert record is None
    assert json.loads(row["slots"]) == [{"id": "footer", "rewardActionId": None, "probability": None}]


def test_fifty_slots_are_the_most_a_request_fills(client, service):
    actions = [{"id": f"card-{i}", "features": [{"kind": {"n": i % 7}}]} for i in range(60)]
    slots = [{"id": f"s{k}", "features": [{"at": {"row": k}}], "baselineAction": f"card-{k}"} for k in range(50)]
    body = {"contextFeatures": CONTEXT, "actions": actions, "slots": slots, "eventId": "fifty"}
    answer = rank(client, body)
    check_answer(answer, body)
    assert None not in [s["rewardActionId"] for s in answer["slots"]]
    check_record(*logged(service, "fifty"), answer)


def test_a_repeated_event_id_is_a_conflict_and_the_first_decision_stays(client, service):
    first = rank(client, rank_body(eventId="once"))
    before = logged(service, "once")[0]
    response = client.post(
        MULTI_RANK, json=rank_body(eventId="once", slots=[HERO], deferActivation=True), headers=SLOTS
    )
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "EventIdAlreadyExists"
    assert response.get_json()["error"]["target"] == "eventId"
    assert logged(service, "once")[0] == before
    assert [s["rewardActionId"] for s in first["slots"]] == [s["rewardActionId"] for s in json.loads(before["slots"])]
    # another loop's event ids are its own
    assert rank(client, rank_body(eventId="once"), headers=APPRENTICE)["eventId"] == "once"


def test_deferred_decisions_wait_for_activate_and_the_first_activation_counts(client, service):
    rank(client, rank_body(eventId="now"))
    rank(client, rank_body(eventId="later", deferActivation=True))
    assert (logged(service, "now")[0]["deferred"], logged(service, "later")[0]["deferred"]) == (0, 1)
    assert logged(service, "later")[0]["activated_at"] is None

    url = event_url("later", "activate", f"{V1}/multislot")
    assert client.post(url, headers=SLOTS).status_code == 204
    activated_at = logged(service, "later")[0]["activated_at"]
    assert activated_at is not None
    assert client.post(url, headers=SLOTS).status_code == 204
    assert logged(service, "later")[0]["activated_at"] == activated_at


def test_the_record_is_ccb_dsjson_that_vw_reads(client, service):
    answer = rank(client, rank_body(eventId="vw"))
    row, record = logged(service, "vw")
    check_record(row, record, answer)
    assert record["EventId"] == "vw" and record["Version"] == "1" and record["Timestamp"] == row["created_at"]
    multi = record["c"]["_multi"]
    assert [m["_id"] for m in multi] == ACTION_IDS  # every action some slot could take, in request order
    assert {k: v for k, v in record["c"].items() if k not in ("_multi", "_slots")} == {**CONTEXT[0], **CONTEXT[1]}
    assert record["c"]["_slots"][0]["placement"] == HERO["features"][0]["placement"]
    assert multi[3]["topic"] == {"industry": "fintech"}

    vw = vowpalwabbit.Workspace("--ccb_explore_adf --dsjson --quiet")
    rewards = [1.0, -0.5, 0.25]
    for line, costs in ((row["record"], None), (dsjson.labeled_slots(row["record"], rewards), [-r for r in rewards])):
        examples = vw.parse(line)
        labels = [ex.get_label(vowpalwabbit.LabelType.CONDITIONAL_CONTEXTUAL_BANDIT) for ex in examples]
        kinds = vowpalwabbit.CCBLabelType
        assert [label.type for label in labels] == [kinds.SHARED] + [kinds.ACTION] * len(multi) + [kinds.SLOT] * 3
        slot_labels = labels[1 + len(multi) :]
        for k, (label, entry, outcome) in enumerate(
            zip(slot_labels, record["c"]["_slots"], record["_outcomes"], strict=True)
        ):
            assert list(label.explicit_included_actions) == entry["_inc"]
            read = [(score.action, score.score) for score in label.outcome.action_probs]
            assert [a for a, _ in read] == outcome["_a"]
            assert [p for _, p in read] == pytest.approx(outcome["_p"], rel=1e-6)
            if costs is not None:
                assert label.outcome.cost == pytest.approx(costs[k])
        vw.learn(examples)
        vw.finish_example(examples)
    vw.finish()


# -- learning ---------------------------------------------------------------------------------------------

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)  # every decision made at T0 is due by then


@pytest.fixture
def make(tmp_path: Path):
    """``make(**loop) -> (service, trainer)``: a multi-slot loop ``default`` with a 1 s reward window."""
    trainers: list[Trainer] = []

    def build(**loop: Any) -> tuple[Service, Trainer]:
        loop = {"policy": "multislot", "rewardWaitTime": "PT1S", **loop}
        overrides = {"data_dir": tmp_path, "synchronous": "NORMAL", "loops": {"default": loop}}
        settings = load_settings(environ={}, overrides=overrides)
        trainers.append(Trainer(settings))
        return Service(settings), trainers[-1]

    yield build
    for trainer in trainers:
        trainer.close()


def rank_at(service: Service, event_id: str, at: datetime = T0, **fields: Any) -> dict[str, Any]:
    request = MultiSlotRankRequest.model_validate(rank_body(eventId=event_id, **fields))
    return service.rank_multislot(service.loops["default"], request, now=at)


# Rewards of event "full" (hero, sidebar, footer) as (slot, seconds after the decision, value), in the order
# they are posted: the sidebar gets none, the hero's last one arrives after the 1 s window.
REWARDS = [("hero", 0.4, 0.5), ("footer", 0.1, 0.2), ("hero", 0.2, 0.3), ("hero", 1.5, 0.9), ("footer", 0.9, 0.6)]
PER_SLOT = {  # how: (hero, sidebar, footer), the sidebar at defaultReward
    "earliest": (0.3, -0.5, 0.2),
    "sum": (0.8, -0.5, 0.8),
    "max": (0.5, -0.5, 0.6),
}


@pytest.mark.parametrize("how", sorted(PER_SLOT))
def test_each_slot_is_joined_with_its_own_rewards_and_learned_so(make, how):
    service, trainer = make(rewardAggregation=how, defaultReward=-0.5, rules=LARGE_ONLY)
    rank_at(service, "full")
    assert rank_at(service, "gap", **GAP)["slots"][1]["rewardActionId"] is None
    rank_at(service, "never-shown", deferActivation=True)  # deferred and never activated: not learned
    for slot_id, seconds, value in REWARDS:
        service.store.add_slot_rewards(
            "default", "full", [(slot_id, value)], timestamp(T0 + timedelta(seconds=seconds))
        )
    service.store.add_slot_rewards("default", "gap", [("footer", 1.0)], timestamp(T0 + timedelta(seconds=0.5)))
    service.store.add_slot_rewards("default", "never-shown", [("hero", 1.0)], timestamp(T0 + timedelta(seconds=0.5)))

    conn = sqlite3.connect(service.settings.database_path)
    try:
        outcomes = [j.outcome for j in joined(conn, "default", RewardJoin.of(service.settings.loops["default"]))]
    finally:
        conn.close()
    assert [o.slots for o in outcomes[:2]] == [pytest.approx(PER_SLOT[how]), pytest.approx((-0.5, 1.0))]
    assert [o.reward for o in outcomes[:2]] == [pytest.approx(sum(PER_SLOT[how]) / 3), pytest.approx(0.25)]
    assert [(o.shown, o.learn) for o in outcomes] == [(True, True), (True, True), (False, False)]

    report = trainer.run_once(now=LATER)
    assert (report["learned"], report["skipped"]) == (2, 1)
    full, gap_record = logged(service, "full", "default")[0]["record"], logged(service, "gap", "default")[0]["record"]
    expected = [dsjson.labeled_slots(full, list(PER_SLOT[how])), dsjson.labeled_slots(gap_record, [-0.5, 1.0])]
    assert trainer.model("default") == vw_model(service, expected)
    # the comparison tells labels apart: every slot at the decision's mean reward gives another model
    mean = sum(PER_SLOT[how]) / 3
    assert trainer.model("default") != vw_model(
        service, [dsjson.labeled_slots(full, [mean] * 3), dsjson.labeled_slots(gap_record, [0.25, 0.25])]
    )


def test_the_trainer_learns_what_each_slot_is_rewarded_for(make):
    """The hero is rewarded for the webinar, the sidebar for the pricing page; served from the published
    model, each slot's favourite gets 1 - epsilon + epsilon / (actions left), the rest epsilon / (actions left)."""
    service, trainer = make()
    favourite = {"hero": "webinar", "sidebar": "pricing-page"}
    for n in range(60):
        answer = rank_at(service, f"e{n}", slots=[HERO, SIDEBAR])
        rewards = [(s["id"], float(s["rewardActionId"] == favourite[s["id"]])) for s in answer["slots"]]
        service.store.add_slot_rewards("default", f"e{n}", rewards, timestamp(T0 + timedelta(seconds=0.5)))
    assert trainer.run_once(now=LATER)["learned"] == 60

    version, path = models.current(service.settings.data_dir, "default")
    loop = service.loops["default"]
    loop.engine = Engine(loop.arguments, str(path), version)
    hits = {"hero": 0, "sidebar": 0}
    for n in range(40):
        answer = rank_at(service, f"after-{n}", at=LATER, slots=[HERO, SIDEBAR])
        row, record = logged(service, f"after-{n}", "default")
        check_record(row, record, answer)
        assert row["model_version"] == version
        multi = [m["_id"] for m in record["c"]["_multi"]]
        for outcome in record["_outcomes"]:
            n_left = len(outcome["_p"])
            p = {multi[m]: q for m, q in zip(outcome["_a"], outcome["_p"], strict=True)}
            best = max(p, key=p.get)
            if favourite[outcome["_id"]] in p:
                assert best == favourite[outcome["_id"]]
                assert p[best] == pytest.approx(0.8 + 0.2 / n_left, abs=1e-6)
                assert sorted(p.values())[:-1] == pytest.approx([0.2 / n_left] * (n_left - 1), abs=1e-6)
            hits[outcome["_id"]] += multi[outcome["_a"][0]] == favourite[outcome["_id"]]
    assert hits["hero"] >= 30 and hits["sidebar"] >= 25


def test_apprentice_learns_to_imitate_every_slots_baseline(make):
    """In Apprentice mode every slot serves its baseline, and the model learns them, slot by slot: here they
    depend on the account's plan, and the model then puts each slot's baseline first when it serves Online."""
    service, trainer = make(learningMode="Apprentice")
    baselines = {"enterprise": ("webinar", "case-study"), "team": ("product-tour", "pricing-page")}

    def body(plan: str) -> dict[str, Any]:
        hero, side = baselines[plan]
        return {
            "contextFeatures": [{"account": {"plan": plan}}],
            "slots": [slot(HERO, baselineAction=hero), slot(SIDEBAR, baselineAction=side)],
        }

    for n in range(120):
        plan = ("enterprise", "team")[n % 2]
        answer = rank_at(service, f"a{n}", **body(plan))
        assert tuple(s["rewardActionId"] for s in answer["slots"]) == baselines[plan]
    assert trainer.run_once(now=LATER)["learned"] == 120

    online, _ = make(learningMode="Online")  # the same log and published model
    for plan, expected in baselines.items():
        for n in range(5):
            rank_at(online, f"{plan}-{n}", at=LATER, **body(plan))
            _, record = logged(online, f"{plan}-{n}", "default")
            multi = [m["_id"] for m in record["c"]["_multi"]]
            favourites = []
            for outcome in record["_outcomes"]:
                p = {multi[m]: q for m, q in zip(outcome["_a"], outcome["_p"], strict=True)}
                favourites.append(max(p, key=p.get))
            assert tuple(favourites) == expected


def test_a_trainer_restarted_midway_learns_the_same_multislot_model(tmp_path):
    """Exactly once for multi-slot records, Apprentice's imitation included: a trainer that stops after the
    first half and a new one that goes on from its checkpoint end with the model of one uninterrupted run."""
    actions = [{"id": f"a{i}", "features": [{"k": {"f": f"v{i % 4}", "g": i}}]} for i in range(8)]

    def run(folder: Path, mode: str, restart: bool) -> bytes:
        loop = {"policy": "multislot", "rewardWaitTime": "PT1S", "learningMode": mode}
        settings = load_settings(environ={}, overrides={"data_dir": folder, "loops": {"default": loop}})
        service = Service(settings)
        for n in range(120):
            plan = n % 3
            slots = [
                {"id": f"s{k}", "features": [{"pos": {"i": k}}], "baselineAction": f"a{(plan + 3 * k) % 8}"}
                for k in range(3)
            ]
            body = {"contextFeatures": [{"u": {"p": plan}}], "actions": actions, "eventId": f"e{n}", "slots": slots}
            answer = service.rank_multislot(
                service.loops["default"], MultiSlotRankRequest.model_validate(body), now=T0 + timedelta(seconds=n)
            )
            rewards = [(s["id"], float(s["rewardActionId"] == "a1")) for s in answer["slots"]]
            service.store.add_slot_rewards("default", f"e{n}", rewards, timestamp(T0 + timedelta(seconds=n)))
        if restart:
            with Trainer(settings) as first:
                assert first.run_once(now=T0 + timedelta(seconds=61.5))["learned"] == 60
        with Trainer(settings) as trainer:
            trainer.run_once(now=T0 + timedelta(seconds=1000))
            return trainer.model("default")

    for mode in ("Online", "Apprentice"):
        assert run(tmp_path / f"{mode}-once", mode, False) == run(tmp_path / f"{mode}-twice", mode, True)


# -- bad input: a 4xx in the error shape, and nothing written ---------------------------------------------

KNOWN = "known-event"  # a multi-slot decision of the slots loop, ranked before every case
KNOWN_SINGLE = "known-single"  # a single-slot decision of the cards loop
MULTI = f"{V1}/multislot"
RANK_400 = 400, "InvalidRankRequest"
REWARD_400 = 400, "InvalidRewardRequest"
WRONG_KIND = 400, "InvalidMultiSlotApiAccess"
REWARD = event_url(KNOWN, "reward", MULTI)
MANY = [{"id": f"card-{i}"} for i in range(51)]


def ms_case(case_id: str, status: int, code: str, body: Any = NO_BODY, path: str = MULTI_RANK, **kwargs: Any) -> Case:
    return Case(case_id, status, code, body, path=path, headers=kwargs.pop("headers", SLOTS), **kwargs)


CASES = [
    # -- multi-slot Rank ----------------------------------------------------------------------------------
    ms_case("duplicate-slot-ids", *RANK_400, rank_body(slots=[HERO, slot(SIDEBAR, id="hero")])),
    ms_case("unknown-baseline-action", *RANK_400, rank_body(slots=[HERO, slot(FOOTER, baselineAction="nope")])),
    ms_case(
        "baseline-in-its-excluded-actions", *RANK_400, rank_body(slots=[slot(SIDEBAR, excludedActions=["webinar"])])
    ),
    ms_case(
        "same-baseline-for-two-slots", *RANK_400, rank_body(slots=[HERO, slot(FOOTER, baselineAction="product-tour")])
    ),
    ms_case("missing-baseline-action", *RANK_400, rank_body(slots=[{"id": "hero"}])),
    ms_case("null-baseline-action", *RANK_400, rank_body(slots=[slot(HERO, baselineAction=None)])),
    ms_case(
        "51-slots",
        *RANK_400,
        rank_body(actions=MANY, slots=[{"id": f"s{k}", "baselineAction": f"card-{k}"} for k in range(51)]),
    ),
    ms_case("no-slots", *RANK_400, rank_body(slots=[])),
    ms_case("slots-missing", *RANK_400, {"contextFeatures": CONTEXT, "actions": ACTIONS}),
    ms_case("slot-id-missing", *RANK_400, rank_body(slots=[{"baselineAction": "webinar"}])),
    ms_case("slot-id-empty", *RANK_400, rank_body(slots=[slot(HERO, id="")])),
    ms_case("slot-unknown-field", *RANK_400, rank_body(slots=[slot(HERO, position=1)])),
    ms_case("slot-feature-name-reserved", *RANK_400, rank_body(slots=[slot(HERO, features=[{"_inc": [0]}])])),
    ms_case("slot-features-repeat-a-name", *RANK_400, rank_body(slots=[slot(HERO, features=[{"p": 1}, {"p": 2}])])),
    ms_case("request-level-excluded-actions", *RANK_400, rank_body(excludedActions=["webinar"])),
    ms_case("duplicate-action-ids", *RANK_400, rank_body(actions=[*ACTIONS, {"id": "webinar"}])),
    ms_case("duplicate-event-id", 409, "EventIdAlreadyExists", rank_body(eventId=KNOWN)),
    ms_case(
        "duplicate-slot-ids-2022-url",
        *RANK_400,
        rank_body(slots=[HERO, slot(SIDEBAR, id="hero")]),
        path="/personalizer/multislot/rank?api-version=2022-09-01-preview",
    ),
    # -- multi-slot Reward and Activate -------------------------------------------------------------------
    ms_case(
        "reward-unknown-slot-next-to-a-valid-one",
        *REWARD_400,
        {"reward": [{"slotId": "hero", "value": 1}, {"slotId": "banner", "value": 1}]},
        path=REWARD,
    ),
    ms_case(
        "reward-same-slot-twice",
        *REWARD_400,
        {"reward": [{"slotId": "hero", "value": 1}, {"slotId": "footer", "value": 0}, {"slotId": "hero", "value": 0}]},
        path=REWARD,
    ),
    ms_case("reward-above-1", *REWARD_400, {"reward": [{"slotId": "hero", "value": 1.5}]}, path=REWARD),
    ms_case("reward-below-minus-1", *REWARD_400, {"reward": [{"slotId": "hero", "value": -1.01}]}, path=REWARD),
    ms_case("reward-value-a-string", *REWARD_400, {"reward": [{"slotId": "hero", "value": "1"}]}, path=REWARD),
    ms_case("reward-slot-id-missing", *REWARD_400, {"reward": [{"value": 1}]}, path=REWARD),
    ms_case("reward-empty-list", *REWARD_400, {"reward": []}, path=REWARD),
    ms_case("reward-single-slot-body", *REWARD_400, {"value": 1}, path=REWARD),
    ms_case(
        "reward-unknown-event",
        404,
        "ResourceNotFound",
        {"reward": [{"slotId": "hero", "value": 1}]},
        path=event_url("no-such-event", "reward", MULTI),
    ),
    ms_case(
        "reward-event-of-another-loop",
        404,
        "ResourceNotFound",
        {"reward": [{"slotId": "hero", "value": 1}]},
        path=REWARD,
        headers=APPRENTICE,
    ),
    ms_case(
        "activate-unknown-event", 404, "InvalidEventIdToActivate", path=event_url("no-such-event", "activate", MULTI)
    ),
    # -- a call of the other kind -------------------------------------------------------------------------
    ms_case("single-slot-rank-on-multi-slot-loop", *WRONG_KIND, {"actions": ACTIONS}, path=f"{V1}/rank"),
    ms_case(
        "single-slot-rank-on-multi-slot-loop-2022-url",
        *WRONG_KIND,
        {"actions": ACTIONS},
        path="/personalizer/rank?api-version=2022-09-01-preview",
    ),
    ms_case("single-slot-reward-on-multi-slot-loop", *WRONG_KIND, {"value": 1}, path=event_url(KNOWN, "reward")),
    ms_case("single-slot-activate-on-multi-slot-loop", *WRONG_KIND, path=event_url(KNOWN, "activate")),
    ms_case("multi-slot-rank-on-single-slot-loop", *WRONG_KIND, rank_body(), headers=CARDS),
    ms_case(
        "multi-slot-reward-on-single-slot-loop",
        *WRONG_KIND,
        {"reward": [{"slotId": "hero", "value": 1}]},
        path=event_url(KNOWN_SINGLE, "reward", MULTI),
        headers=CARDS,
    ),
    ms_case(
        "multi-slot-activate-on-single-slot-loop",
        *WRONG_KIND,
        path=event_url(KNOWN_SINGLE, "activate", MULTI),
        headers=CARDS,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_request_gets_its_error_and_leaves_no_trace(app, client, case: Case):
    rank(client, rank_body(eventId=KNOWN))
    single = client.post(f"{V1}/rank", json={"actions": ACTIONS, "eventId": KNOWN_SINGLE}, headers=CARDS)
    assert single.status_code == 201
    before = log_contents(app)
    assert len(before[0]) == 2

    assert_error(send(client, case), case)
    assert log_contents(app) == before


# -- policy switches and event ids -------------------------------------------------------------------------


def test_reward_and_activate_follow_a_policy_switch_made_through_another_worker(app, client):
    other = create_app(app.extensions["ranker"].settings).test_client()  # a second worker on the same log
    assert other.post(f"{V1}/rank", json={"actions": ACTIONS}, headers=CARDS).status_code == 201
    policy = {"name": "multislot", "arguments": "--ccb_explore_adf --epsilon 0.2 --cb_type mtr -q ::"}
    admin = {"Ocp-Apim-Subscription-Key": CARDS_ADMIN_KEY}
    assert (
        client.put("/personalizer/v1.1-preview.3/configurations/policy", json=policy, headers=admin).status_code == 200
    )
    time.sleep(0.2)  # past the workers' refresh interval
    rank(client, rank_body(eventId="after-switch"), headers=CARDS)

    reward = {"reward": [{"slotId": "hero", "value": 1}]}
    rewarded = other.post(event_url("after-switch", "reward", MULTI), json=reward, headers=CARDS)
    assert rewarded.status_code == 204, rewarded.get_data(as_text=True)
    assert other.post(event_url("after-switch", "activate", MULTI), headers=CARDS).status_code == 204

    # and back: a multi-slot decision keeps its kind; a single-slot reward for it is refused, not lost
    assert client.delete("/personalizer/v1.1-preview.3/configurations/policy", headers=admin).status_code == 200
    time.sleep(0.2)
    before = log_contents(app)
    single = other.post(event_url("after-switch", "reward"), json={"value": 1}, headers=CARDS)
    assert single.status_code == 400 and single.get_json()["error"]["code"] == "InvalidRewardRequest"
    assert log_contents(app) == before


def test_an_event_id_starting_with_a_slash_is_rewarded_and_activated(client, service):
    rank(client, rank_body(eventId="/lead"))
    rank(client, rank_body(eventId="lead"))

    reward = {"reward": [{"slotId": "hero", "value": 1}]}
    rewarded = client.post(event_url("/lead", "reward", MULTI), json=reward, headers=SLOTS)
    assert rewarded.status_code == 204, rewarded.get_data(as_text=True)[:300]
    assert client.post(event_url("/lead", "activate", MULTI), headers=SLOTS).status_code == 204
    assert (slot_rewards(service, "/lead"), slot_rewards(service, "lead")) == ([("hero", 1.0)], [])


# -- any body ---------------------------------------------------------------------------------------------


def multislot_bodies(text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Multi-slot Rank bodies: single-slot ones (mostly valid features) with slots whose baselines are mostly
    among the actions, so that most reach the rules, VW and the log."""
    slot_features = st.lists(
        st.dictionaries(
            st.text("abc_", max_size=4) | text,
            text | st.integers(-5, 5) | st.dictionaries(st.text("ab", max_size=3), st.integers(0, 3), max_size=2),
            max_size=3,
        ),
        max_size=2,
    )

    def with_slots(body: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        ids = list(dict.fromkeys(action["id"] for action in body["actions"]))

        def slots(baselines: list[str]) -> st.SearchStrategy[list[dict[str, Any]]]:
            # mostly valid: distinct slot ids and baselines; now and then an unknown or repeated one
            return st.lists(
                st.text("xyz", min_size=1, max_size=2), min_size=len(baselines), max_size=len(baselines), unique=True
            ).flatmap(
                lambda slot_ids: st.tuples(
                    *(
                        st.fixed_dictionaries(
                            {"id": st.just(slot_id), "baselineAction": st.just(baseline) | st.just(ids[0]) | text},
                            optional={
                                "features": slot_features,
                                "excludedActions": st.lists(st.sampled_from(ids), max_size=2),
                            },
                        )
                        for slot_id, baseline in zip(slot_ids, baselines, strict=True)
                    )
                ).map(list)
            )

        chosen = st.permutations(ids).flatmap(lambda order: st.integers(1, len(order)).map(lambda n: order[:n]))
        return chosen.flatmap(slots).map(
            lambda filled: {**{k: v for k, v in body.items() if k != "excludedActions"}, "slots": filled}
        )

    return rank_bodies(text).flatmap(with_slots)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=multislot_bodies(plain_text) | multislot_bodies(awkward_text), data=st.data())
def test_any_multislot_body_gets_201_or_a_4xx_error_and_so_does_its_reward(client, service, body, data):
    before = service.store.counts()
    body = {**body, "eventId": uuid.uuid4().hex}  # the same example run again is not a duplicate
    response = client.post(MULTI_RANK, data=json.dumps(body), content_type="application/json", headers=SLOTS)
    event(f"rank HTTP {response.status_code}")
    assert response.mimetype == "application/json"
    if response.status_code != 201:
        assert 400 <= response.status_code < 500, response.get_data(as_text=True)[:500]
        assert response.get_json()["error"]["code"] and service.store.counts() == before
        return
    answer = response.get_json()
    assert [s["id"] for s in answer["slots"]] == [s["id"] for s in body["slots"]]
    chosen = [s["rewardActionId"] for s in answer["slots"] if s["rewardActionId"] is not None]
    assert len(set(chosen)) == len(chosen) and set(chosen) <= {a["id"] for a in body["actions"]}
    assert service.store.counts()["decisions"] == before["decisions"] + 1

    slot_ids = st.sampled_from([s["id"] for s in body["slots"]]) | st.text("xyz", max_size=2)
    values = st.floats(-1, 1) | st.floats(-2, 2)
    rewards = data.draw(st.lists(st.fixed_dictionaries({"slotId": slot_ids, "value": values}), max_size=4))
    url = event_url(answer["eventId"], "reward", MULTI)
    rewarded = client.post(url, json={"reward": rewards}, headers=SLOTS)
    event(f"reward HTTP {rewarded.status_code}")
    known = {s["id"] for s in body["slots"]}
    slot_ids = [r["slotId"] for r in rewards]
    valid = (
        rewards
        and set(slot_ids) <= known
        and len(set(slot_ids)) == len(slot_ids)
        and all(-1 <= r["value"] <= 1 for r in rewards)
    )
    assert rewarded.status_code == (204 if valid else 400), rewarded.get_data(as_text=True)[:500]
    added = service.store.counts()["rewards"] - before["rewards"]
    assert added == (len(rewards) if valid else 0)
