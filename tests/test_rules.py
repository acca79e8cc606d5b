"""Business rules before the model: entitlements, availability, priority, per-call exclusions.

Unit tests go through ``rules.apply`` and through the real ``Service.rank`` (real VW, real SQLite); the
invariants are property-tested with hypothesis over random rules × contexts × actions, with a fresh
model and with a model that has learned a little.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import vowpalwabbit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ranker.app import create_app
from ranker.core import dsjson, rules
from ranker.core.schemas import RankRequest
from ranker.core.settings import Settings, SettingsError, load_settings
from ranker.serving.engine import Engine
from ranker.serving.service import Service

NOW = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)
RANK_URL = "/personalizer/v1.0/rank"


def make_service(data_dir: Path, rule_config: dict[str, Any] | None = None, **loop: Any) -> Service:
    config = Settings.model_validate(
        {"data_dir": data_dir, "synchronous": "NORMAL", "loops": {"default": {"rules": rule_config or {}, **loop}}}
    )
    return create_app(config).extensions["ranker"]


def rank(service: Service, body: dict[str, Any], now: datetime = NOW) -> dict[str, Any]:
    return service.rank(service.loops["default"], RankRequest.model_validate(body), now)


def logged(service: Service, event_id: str) -> dict[str, Any]:
    row = service.store.decision("default", event_id)
    assert row is not None
    return row


def probabilities(response: dict[str, Any]) -> dict[str, float]:
    return {item["id"]: item["probability"] for item in response["ranking"]}


def action(action_id: str, **features: Any) -> dict[str, Any]:
    return {"id": action_id, "features": [features] if features else []}


def verdict(
    rule_config: dict[str, Any],
    context: dict[str, Any],
    actions: list[tuple[str, dict[str, Any]]],
    excluded: set[str] = frozenset(),
    now: datetime = NOW,
) -> rules.Verdict:
    return rules.apply(rules.Rules.model_validate(rule_config), context, actions, set(excluded), now)


# -- conditions -----------------------------------------------------------------------------------

CONTEXT = {
    "account": {"plan": "enterprise", "seats": 25, "ratio": 0.5, "trial": False, "region": None},
    "flags": {"beta": True, "level": 1},
    "name": "acme",
}

CONDITIONS = [
    ({"path": "account.plan", "equals": "enterprise"}, True),
    ({"path": "account.plan", "equals": "free"}, False),
    ({"path": "account.seats", "equals": 25.0}, True),
    ({"path": "account.seats", "equals": "25"}, False),
    ({"path": "flags.level", "equals": True}, False),
    ({"path": "flags.beta", "equals": 1}, False),
    ({"path": "flags.beta", "equals": True}, True),
    ({"path": "account.trial", "equals": False}, True),
    ({"path": "account.trial", "equals": 0}, False),
    ({"path": "account.plan", "in": ["pro", "enterprise"]}, True),
    ({"path": "account.plan", "in": ["pro", "free"]}, False),
    ({"path": "flags.level", "in": [True]}, False),
    ({"path": "account.plan", "not_in": ["free"]}, True),
    ({"path": "account.plan", "not_in": ["enterprise"]}, False),
    ({"path": "flags.beta", "not_in": [1]}, True),
    ({"path": "account.seats", "gte": 25}, True),
    ({"path": "account.seats", "gte": 25.5}, False),
    ({"path": "account.seats", "lte": 25}, True),
    ({"path": "account.seats", "lte": 24}, False),
    ({"path": "account.ratio", "gte": 0.25}, True),
    ({"path": "account.plan", "gte": 0}, False),
    ({"path": "account.plan", "lte": 1e9}, False),
    ({"path": "flags.beta", "gte": 0}, False),
    ({"path": "account", "lte": 100}, False),
    ({"path": "account.region", "gte": 0}, False),
    ({"path": "account", "equals": "enterprise"}, False),
    ({"path": "account.plan", "exists": True}, True),
    ({"path": "account.region", "exists": True}, True),
    ({"path": "account.plan", "exists": False}, False),
    ({"path": "account.owner", "exists": True}, False),
    ({"path": "account.owner", "exists": False}, True),
    ({"path": "account.owner", "equals": "x"}, False),
    ({"path": "account.owner", "in": ["x"]}, False),
    ({"path": "account.owner", "not_in": ["x"]}, True),
    ({"path": "account.owner", "gte": 0}, False),
    ({"path": "account.owner", "lte": 0}, False),
    ({"path": "account.plan.tier", "exists": True}, False),
    ({"path": "account.plan.tier", "equals": "enterprise"}, False),
    ({"path": "name.first", "exists": False}, True),
    ({"path": "nothing.at.all", "not_in": []}, True),
]


@pytest.mark.parametrize(("condition", "holds"), CONDITIONS, ids=[json.dumps(c[0]) for c in CONDITIONS])
def test_condition_decides_entitlement(condition, holds):
    config = {"entitlements": [{"name": "gate", "actions": {"ids": ["gated"]}, "requires": [condition]}]}
    result = verdict(config, CONTEXT, [("gated", {}), ("open", {})])
    assert result.eligible == ([0, 1] if holds else [1])
    assert result.excluded == ({} if holds else {"gated": ["entitlement:gate"]})


def test_every_condition_of_an_entitlement_must_hold():
    config = {
        "entitlements": [
            {
                "name": "big-enterprise",
                "actions": {"ids": ["a"]},
                "requires": [{"path": "account.plan", "equals": "enterprise"}, {"path": "account.seats", "gte": 100}],
            }
        ]
    }
    assert verdict(config, CONTEXT, [("a", {})]).excluded == {"a": ["entitlement:big-enterprise"]}
    bigger = {**CONTEXT, "account": {**CONTEXT["account"], "seats": 100}}
    assert verdict(config, bigger, [("a", {})]).eligible == [0]


def test_action_match_by_ids_and_features_needs_both():
    config = {
        "entitlements": [
            {
                "name": "paid",
                "actions": {"ids": ["a", "b"], "features": [{"path": "tier", "equals": "enterprise"}]},
                "requires": [{"path": "account.plan", "equals": "free"}],
            }
        ]
    }
    actions = [("a", {"tier": "enterprise"}), ("b", {"tier": "basic"}), ("c", {"tier": "enterprise"})]
    result = verdict(config, CONTEXT, actions)
    assert result.excluded == {"a": ["entitlement:paid"]}
    assert result.eligible == [1, 2]


# -- entitlements through Rank --------------------------------------------------------------------

ENTERPRISE_ONLY = {
    "entitlements": [
        {
            "name": "enterprise-tier",
            "actions": {"features": [{"path": "tier", "equals": "enterprise"}]},
            "requires": [{"path": "account.plan", "in": ["enterprise"]}],
        },
        {
            "name": "beta-users",
            "actions": {"ids": ["beta-card"]},
            "requires": [{"path": "user.beta", "exists": True}],
        },
    ]
}
CARDS = [
    action("sso", tier="enterprise", price=10),
    action("audit-log", tier="enterprise"),
    action("invite", tier="basic"),
    action("beta-card", tier="basic"),
]


def test_entitlement_by_feature_and_by_id_through_rank(tmp_path):
    service = make_service(tmp_path, ENTERPRISE_ONLY)
    for i in range(20):
        body = {"eventId": f"free-{i}", "contextFeatures": [{"account": {"plan": "free"}}], "actions": CARDS}
        response = rank(service, body)
        p = probabilities(response)
        assert response["rewardActionId"] == "invite"
        assert p == {"invite": 1.0, "sso": 0.0, "audit-log": 0.0, "beta-card": 0.0}
        assert [item["id"] for item in response["ranking"]] == ["invite", "sso", "audit-log", "beta-card"]
    row = logged(service, "free-0")
    assert json.loads(row["explanation"]) == {
        "excluded": {
            "sso": ["entitlement:enterprise-tier"],
            "audit-log": ["entitlement:enterprise-tier"],
            "beta-card": ["entitlement:beta-users"],
        },
        "reweighted": {},
    }
    assert [a["_id"] for a in json.loads(row["record"])["c"]["_multi"]] == ["invite"]

    context = [{"account": {"plan": "enterprise"}}, {"user": {"beta": False}}]
    response = rank(service, {"eventId": "enterprise", "contextFeatures": context, "actions": CARDS})
    assert probabilities(response) == pytest.approx(dict.fromkeys(["sso", "audit-log", "invite", "beta-card"], 0.25))
    assert json.loads(logged(service, "enterprise")["explanation"]) == {"excluded": {}, "reweighted": {}}


# -- availability ---------------------------------------------------------------------------------


def test_disabled_action_is_withdrawn(tmp_path):
    config = {"availability": [{"name": "retired", "actions": {"ids": ["old"]}, "disabled": True}]}
    service = make_service(tmp_path, config)
    response = rank(service, {"eventId": "e", "actions": [action("old"), action("new")]})
    assert response["rewardActionId"] == "new"
    assert probabilities(response) == {"new": 1.0, "old": 0.0}
    assert json.loads(logged(service, "e")["explanation"])["excluded"] == {"old": ["availability:retired"]}


WINDOW_TOML = """
[[loops.default.rules.availability]]
name = "summer"
actions = { ids = ["aware"] }
start = 2024-06-01T00:00:00+02:00
end = 2024-09-01T00:00:00+02:00

[[loops.default.rules.availability]]
name = "june"
actions = { ids = ["naive"] }
start = 2024-06-01T00:00:00
end = 2024-07-01T00:00:00

[[loops.default.rules.availability]]
name = "from-july"
actions = { ids = ["dated"] }
start = 2024-07-01
"""

SUMMER_START = datetime(2024, 5, 31, 22, 0, tzinfo=UTC)
SUMMER_END = datetime(2024, 8, 31, 22, 0, tzinfo=UTC)
JUNE_START = datetime(2024, 6, 1, tzinfo=UTC)
JULY = datetime(2024, 7, 1, tzinfo=UTC)
TICK = timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("now", "available"),
    [
        (SUMMER_START - TICK, {"always"}),
        (SUMMER_START, {"aware", "always"}),
        (JUNE_START - TICK, {"aware", "always"}),
        (JUNE_START, {"aware", "naive", "always"}),
        (JULY - TICK, {"aware", "naive", "always"}),
        (JULY, {"aware", "dated", "always"}),
        (JULY.astimezone(timezone(timedelta(hours=-5))), {"aware", "dated", "always"}),
        (SUMMER_END - TICK, {"aware", "dated", "always"}),
        (SUMMER_END, {"dated", "always"}),
    ],
)
def test_date_windows_start_inclusive_end_exclusive(tmp_path, now, available):
    path = tmp_path / "ranker.toml"
    path.write_text(WINDOW_TOML)
    config = load_settings(path, environ={}, overrides={"data_dir": tmp_path / "data"})
    service = create_app(config).extensions["ranker"]
    ids = ["aware", "naive", "dated", "always"]
    response = rank(service, {"eventId": "e", "actions": [action(i) for i in ids]}, now=now)
    p = probabilities(response)
    assert {i for i in ids if p[i] > 0} == available
    assert response["rewardActionId"] in available
    reasons = json.loads(logged(service, "e")["explanation"])["excluded"]
    names = {"aware": "summer", "naive": "june", "dated": "from-july"}
    assert reasons == {i: [f"availability:{names[i]}"] for i in ids if i not in available}


def test_naive_now_is_read_as_utc():
    config = {"availability": [{"name": "w", "actions": {"ids": ["a"]}, "start": "2024-06-01T00:00:00+00:00"}]}
    assert verdict(config, {}, [("a", {})], now=datetime(2024, 6, 1)).eligible == [0]
    assert verdict(config, {}, [("a", {})], now=datetime(2024, 5, 31, 23, 59)).eligible == []


# -- priority -------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [3.0, 0.25, 1e-6, 1e6])
def test_priority_factor_is_the_probability_ratio(tmp_path, factor):
    config = {
        "priority": [
            {"name": "campaign", "actions": {"features": [{"path": "promo", "exists": True}]}, "factor": factor}
        ]
    }
    service = make_service(tmp_path, config)
    actions = [action("a"), action("b", promo="spring"), action("c")]
    response = rank(service, {"eventId": "e", "actions": actions})
    p = probabilities(response)
    assert p["b"] / p["a"] == pytest.approx(factor, rel=1e-9)
    assert p["a"] == pytest.approx(p["c"], rel=1e-12)
    assert math.fsum(p.values()) == pytest.approx(1.0, abs=1e-9)
    assert json.loads(logged(service, "e")["explanation"]) == {
        "excluded": {},
        "reweighted": {"b": [{"rule": "campaign", "factor": factor}]},
    }


def test_priority_factors_multiply_and_apply_only_when_their_condition_holds(tmp_path):
    config = {
        "priority": [
            {"name": "push", "actions": {"ids": ["a"]}, "factor": 2.0},
            {"name": "eu-push", "actions": {"ids": ["a"]}, "factor": 3.0, "when": [{"path": "region", "equals": "eu"}]},
            {"name": "bury", "actions": {"ids": ["c"]}, "factor": 0.5, "when": [{"path": "region", "in": ["us"]}]},
        ]
    }
    service = make_service(tmp_path, config)
    actions = [action("a"), action("b"), action("c")]
    eu = probabilities(rank(service, {"eventId": "eu", "contextFeatures": [{"region": "eu"}], "actions": actions}))
    assert eu["a"] / eu["b"] == pytest.approx(6.0, rel=1e-9)
    assert eu["c"] == pytest.approx(eu["b"], rel=1e-12)
    assert json.loads(logged(service, "eu")["explanation"])["reweighted"] == {
        "a": [{"rule": "push", "factor": 2.0}, {"rule": "eu-push", "factor": 3.0}]
    }
    us = probabilities(rank(service, {"eventId": "us", "contextFeatures": [{"region": "us"}], "actions": actions}))
    assert us["a"] / us["b"] == pytest.approx(2.0, rel=1e-9)
    assert us["c"] / us["b"] == pytest.approx(0.5, rel=1e-9)
    assert json.loads(logged(service, "us")["explanation"])["reweighted"] == {
        "a": [{"rule": "push", "factor": 2.0}],
        "c": [{"rule": "bury", "factor": 0.5}],
    }


def test_priority_does_not_revive_an_excluded_action(tmp_path):
    config = {
        "availability": [{"name": "off", "actions": {"ids": ["a"]}, "disabled": True}],
        "priority": [{"name": "push", "actions": {"ids": ["a"]}, "factor": 1e6}],
    }
    service = make_service(tmp_path, config)
    response = rank(service, {"eventId": "e", "actions": [action("a"), action("b")]})
    assert probabilities(response) == {"a": 0.0, "b": 1.0}
    assert json.loads(logged(service, "e")["explanation"]) == {
        "excluded": {"a": ["availability:off"]},
        "reweighted": {},
    }


@pytest.mark.parametrize(("factor", "rules_count", "winner"), [(1e-200, 2, "y"), (1e6, 60, "x"), (1e-6, 60, "y")])
def test_extreme_combined_factors_still_give_a_distribution(tmp_path, factor, rules_count, winner):
    config = {"priority": [{"name": f"p{i}", "actions": {"ids": ["x"]}, "factor": factor} for i in range(rules_count)]}
    service = make_service(tmp_path, config)
    for actions in ([action("x"), action("y")], [action("x")]):
        response = rank(service, {"actions": actions})
        p = probabilities(response)
        assert math.fsum(p.values()) == pytest.approx(1.0, abs=1e-9)
        assert all(0.0 <= v <= 1.0 for v in p.values())
        expected = winner if len(actions) == 2 else "x"
        assert p[expected] == pytest.approx(1.0, abs=1e-9)
        assert response["rewardActionId"] == expected


# -- per-call exclusions and the empty case ----------------------------------------------------------


def test_excluded_actions_add_to_rules(tmp_path):
    service = make_service(tmp_path, ENTERPRISE_ONLY)
    body = {
        "eventId": "e",
        "contextFeatures": [{"account": {"plan": "free"}}],
        "actions": [*CARDS, action("export")],
        "excludedActions": ["invite", "sso", "not-offered"],
    }
    response = rank(service, body)
    assert response["rewardActionId"] == "export"
    assert probabilities(response) == {"export": 1.0, "sso": 0.0, "audit-log": 0.0, "invite": 0.0, "beta-card": 0.0}
    assert json.loads(logged(service, "e")["explanation"])["excluded"] == {
        "sso": ["excludedActions", "entitlement:enterprise-tier"],
        "audit-log": ["entitlement:enterprise-tier"],
        "invite": ["excludedActions"],
        "beta-card": ["entitlement:beta-users"],
    }


def test_no_eligible_action_answers_201_with_null_and_is_logged(tmp_path):
    app = create_app(Settings.model_validate({"data_dir": tmp_path, "loops": {"default": {"rules": ENTERPRISE_ONLY}}}))
    body = {
        "eventId": "nothing-left",
        "contextFeatures": [{"account": {"plan": "free"}}],
        "actions": CARDS,
        "excludedActions": ["invite"],
    }
    response = app.test_client().post(RANK_URL, json=body)
    assert response.status_code == 201
    assert response.get_json() == {
        "eventId": "nothing-left",
        "rewardActionId": None,
        "ranking": [{"id": a["id"], "probability": 0.0} for a in CARDS],
    }
    row = logged(app.extensions["ranker"], "nothing-left")
    assert row["record"] is None
    assert row["reward_action_id"] is None
    assert row["probability"] is None
    assert json.loads(row["action_ids"]) == [a["id"] for a in CARDS]
    assert json.loads(row["explanation"])["excluded"] == {
        "sso": ["entitlement:enterprise-tier"],
        "audit-log": ["entitlement:enterprise-tier"],
        "invite": ["excludedActions"],
        "beta-card": ["entitlement:beta-users"],
    }


# -- configuration --------------------------------------------------------------------------------

GOOD_RULES = """
[[loops.default.rules.entitlements]]
name = "enterprise-tier"
actions = { features = [{ path = "tier", equals = "enterprise" }] }
requires = [{ path = "account.plan", in = ["enterprise"] }]

[[loops.default.rules.availability]]
name = "retired"
actions = { ids = ["old"] }
disabled = true

[[loops.default.rules.priority]]
name = "spring"
actions = { ids = ["promo"] }
factor = 2.5
when = [{ path = "account.seats", gte = 10 }]
"""

BAD_RULES = {
    "no-operator": """
[[loops.default.rules.entitlements]]
name = "e"
actions = { ids = ["a"] }
requires = [{ path = "account.plan" }]
""",
    "two-operators": """
[[loops.default.rules.entitlements]]
name = "e"
actions = { ids = ["a"] }
requires = [{ path = "account.plan", equals = "x", exists = true }]
""",
    "two-operators-in-match": """
[[loops.default.rules.availability]]
name = "a"
actions = { features = [{ path = "tier", in = ["x"], not_in = ["y"] }] }
disabled = true
""",
    "no-requires": """
[[loops.default.rules.entitlements]]
name = "e"
actions = { ids = ["a"] }
requires = []
""",
    "factor-zero": """
[[loops.default.rules.priority]]
name = "p"
actions = { ids = ["a"] }
factor = 0
""",
    "factor-negative": """
[[loops.default.rules.priority]]
name = "p"
actions = { ids = ["a"] }
factor = -2.0
""",
    "factor-nan": """
[[loops.default.rules.priority]]
name = "p"
actions = { ids = ["a"] }
factor = nan
""",
    "match-neither": """
[[loops.default.rules.priority]]
name = "p"
actions = {}
factor = 2.0
""",
    "gte-string": """
[[loops.default.rules.entitlements]]
name = "e"
actions = { ids = ["a"] }
requires = [{ path = "account.seats", gte = "10" }]
""",
    "lte-bool": """
[[loops.default.rules.entitlements]]
name = "e"
actions = { ids = ["a"] }
requires = [{ path = "account.seats", lte = true }]
""",
    "empty-path": """
[[loops.default.rules.entitlements]]
name = "e"
actions = { ids = ["a"] }
requires = [{ path = "", exists = true }]
""",
    "window-reversed": """
[[loops.default.rules.availability]]
name = "w"
actions = { ids = ["a"] }
start = 2024-07-01T00:00:00Z
end = 2024-06-01T00:00:00Z
""",
    "unknown-operator": """
[[loops.default.rules.entitlements]]
name = "e"
actions = { ids = ["a"] }
requires = [{ path = "account.plan", matches = "ent.*" }]
""",
    "unknown-rule-kind": """
[[loops.default.rules.capacity]]
name = "c"
""",
}


def test_good_rules_load_from_toml(tmp_path):
    path = tmp_path / "ranker.toml"
    path.write_text(GOOD_RULES)
    loaded = load_settings(path, environ={}).loops["default"].rules
    assert loaded.entitlements[0].requires[0].in_ == ["enterprise"]
    assert loaded.availability[0].disabled is True
    assert loaded.priority[0].factor == 2.5
    assert loaded.priority[0].when[0].gte == 10


@pytest.mark.parametrize("text", BAD_RULES.values(), ids=BAD_RULES.keys())
def test_bad_rules_are_settings_errors(tmp_path, text):
    path = tmp_path / "ranker.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match="invalid settings"):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    "rule_config",
    [
        {"entitlements": [{"name": "e", "actions": {"ids": ["a"]}, "requires": [{"path": "p"}]}]},
        {"entitlements": [{"name": "e", "actions": {"ids": ["a"]}, "requires": [{"path": "p", "gte": 1, "lte": 2}]}]},
        {"priority": [{"name": "p", "actions": {"ids": ["a"]}, "factor": 0.0}]},
        {"priority": [{"name": "p", "actions": {"ids": ["a"]}, "factor": -1.0}]},
        {"priority": [{"name": "p", "actions": {}, "factor": 2.0}]},
        {"availability": [{"name": "a", "actions": {"ids": None, "features": None}, "disabled": True}]},
    ],
)
def test_bad_rules_are_validation_errors(tmp_path, rule_config):
    with pytest.raises(ValidationError):
        Settings.model_validate({"data_dir": tmp_path, "loops": {"default": {"rules": rule_config}}})


# -- the invariant, property-tested --------------------------------------------------------------

POLICY = "--cb_explore_adf --epsilon 0.2 --cb_type mtr -q ::"
ACTION_IDS = ["a", "b", "c", "d", "e", "f", "g"]
WORDS = ["free", "pro", "enterprise", "eu", "us", "basic"]
CONTEXT_PATHS = ["account.plan", "account.seats", "region", "flags.beta", "account", "account.plan.x", "gone"]
ACTION_PATHS = ["tier", "price", "promo", "tags.new", "missing"]
_events = itertools.count()

# Small pools, so that rules and features often meet; booleans next to 0 and 1 probe JSON equality.
json_scalars = st.one_of(st.sampled_from(WORDS), st.sampled_from([0, 1, 1.0, 2, 25, 0.5]), st.booleans())
numbers = st.one_of(st.integers(-1, 3), st.sampled_from([0.5, 1.0, 24.999, 25, 25.0]))


def conditions(paths: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    path = st.sampled_from(paths)
    return st.one_of(
        st.builds(lambda p, v: {"path": p, "equals": v}, path, json_scalars),
        st.builds(lambda p, v: {"path": p, "in": v}, path, st.lists(json_scalars, max_size=3)),
        st.builds(lambda p, v: {"path": p, "not_in": v}, path, st.lists(json_scalars, max_size=3)),
        st.builds(lambda p, v: {"path": p, "gte": v}, path, numbers),
        st.builds(lambda p, v: {"path": p, "lte": v}, path, numbers),
        st.builds(lambda p, v: {"path": p, "exists": v}, path, st.booleans()),
    )


action_matches = st.one_of(
    st.builds(lambda ids: {"ids": ids}, st.lists(st.sampled_from(ACTION_IDS), max_size=4, unique=True)),
    st.builds(lambda fs: {"features": fs}, st.lists(conditions(ACTION_PATHS), min_size=1, max_size=2)),
    st.builds(
        lambda ids, fs: {"ids": ids, "features": fs},
        st.lists(st.sampled_from(ACTION_IDS), min_size=1, max_size=4, unique=True),
        st.lists(conditions(ACTION_PATHS), min_size=1, max_size=2),
    ),
)

ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7)), None]


@st.composite
def windows(draw) -> dict[str, Any]:
    """An optional [start, end) around NOW, aware in some zone or naive (read as UTC); may touch NOW exactly."""
    offsets = sorted(draw(st.lists(st.sampled_from([-48, -1, 0, 1, 48]), min_size=2, max_size=2, unique=True)))
    out = {}
    for key, hours in zip(("start", "end"), offsets, strict=True):
        if draw(st.booleans()):
            moment = NOW + timedelta(hours=hours)
            zone = draw(st.sampled_from(ZONES))
            out[key] = moment.replace(tzinfo=None) if zone is None else moment.astimezone(zone)
    return out


@st.composite
def rule_sets(draw) -> dict[str, Any]:
    names = iter(range(100))
    entitlements = draw(
        st.lists(
            st.builds(
                lambda m, r: {"name": f"e{next(names)}", "actions": m, "requires": r},
                action_matches,
                st.lists(conditions(CONTEXT_PATHS), min_size=1, max_size=2),
            ),
            max_size=3,
        )
    )
    availability = draw(
        st.lists(
            st.builds(
                lambda m, d, w: {"name": f"a{next(names)}", "actions": m, "disabled": d, **w},
                action_matches,
                st.booleans(),
                windows(),
            ),
            max_size=2,
        )
    )
    factors = st.one_of(st.floats(0.01, 100), st.sampled_from([0.5, 2.0, 1e-150, 1e-300, 1e6]), st.floats(1e-6, 1e6))
    priority = draw(
        st.lists(
            st.builds(
                lambda m, f, w: {"name": f"p{next(names)}", "actions": m, "factor": f, "when": w},
                action_matches,
                factors,
                st.lists(conditions(CONTEXT_PATHS), max_size=1),
            ),
            max_size=4,
        )
    )
    return {"entitlements": entitlements, "availability": availability, "priority": priority}


def feature_objects(values: dict[str, st.SearchStrategy]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=values)


contexts = feature_objects(
    {
        "account": feature_objects(
            {
                "plan": st.one_of(st.sampled_from(WORDS), st.integers(0, 1), st.booleans()),
                "seats": st.one_of(numbers, st.sampled_from(WORDS), st.booleans()),
            }
        ),
        "region": st.sampled_from(WORDS),
        "flags": feature_objects({"beta": st.booleans()}),
    }
)
action_features = feature_objects(
    {
        "tier": st.one_of(st.sampled_from(WORDS), st.integers(0, 1), st.booleans()),
        "price": st.one_of(numbers, st.sampled_from(WORDS)),
        "promo": st.one_of(st.booleans(), st.sampled_from(WORDS)),
        "tags": feature_objects({"new": st.booleans()}),
    }
)
rank_bodies = st.fixed_dictionaries(
    {
        "contextFeatures": st.builds(lambda c: [c] if c else [], contexts),
        "actions": st.lists(
            st.builds(
                lambda i, f: {"id": i, "features": [f] if f else []}, st.sampled_from(ACTION_IDS), action_features
            ),
            min_size=1,
            max_size=6,
            unique_by=lambda a: a["id"],
        ),
        "excludedActions": st.lists(st.sampled_from([*ACTION_IDS, "unknown"]), max_size=3, unique=True),
    }
)


# An independent statement of the rule semantics, to check what Rank did.
_ABSENT = object()


def _value(obj: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        obj = obj.get(part, _ABSENT) if isinstance(obj, dict) else _ABSENT
    return obj


def _tagged(value: Any) -> tuple[str, Any]:
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    return (type(value).__name__, value if isinstance(value, str) else json.dumps(value, sort_keys=True))


def expect_holds(condition: dict[str, Any], obj: dict[str, Any]) -> bool:
    (operator, argument) = next((k, v) for k, v in condition.items() if k != "path")
    value = _value(obj, condition["path"])
    if operator == "exists":
        return (value is not _ABSENT) is argument
    if value is _ABSENT:
        return operator == "not_in"
    if operator in ("gte", "lte"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return value >= argument if operator == "gte" else value <= argument
    if operator == "equals":
        return _tagged(value) == _tagged(argument)
    member = _tagged(value) in [_tagged(x) for x in argument]
    return member if operator == "in" else not member


def expect_matches(match: dict[str, Any], action_id: str, features: dict[str, Any]) -> bool:
    if "ids" in match and action_id not in match["ids"]:
        return False
    return all(expect_holds(c, features) for c in match.get("features", []))


def expect_withdrawn(rule: dict[str, Any], now: datetime) -> bool:
    def utc(moment: datetime) -> datetime:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment

    start, end = rule.get("start"), rule.get("end")
    return rule["disabled"] or (start is not None and now < utc(start)) or (end is not None and now >= utc(end))


def expectations(config: dict[str, Any], body: dict[str, Any]) -> tuple[dict[str, set[str]], dict[str, float]]:
    """(action id -> exclusion reasons, eligible action id -> log of its combined priority factor)."""
    context = body["contextFeatures"][0] if body["contextFeatures"] else {}
    reasons: dict[str, set[str]] = {}
    log_factors: dict[str, float] = {}
    for item in body["actions"]:
        action_id = item["id"]
        features = item["features"][0] if item["features"] else {}
        why = {"excludedActions"} if action_id in body["excludedActions"] else set()
        for rule in config["entitlements"]:
            if expect_matches(rule["actions"], action_id, features) and not all(
                expect_holds(c, context) for c in rule["requires"]
            ):
                why.add(f"entitlement:{rule['name']}")
        for rule in config["availability"]:
            if expect_matches(rule["actions"], action_id, features) and expect_withdrawn(rule, NOW):
                why.add(f"availability:{rule['name']}")
        if why:
            reasons[action_id] = why
            continue
        log_factors[action_id] = math.fsum(
            math.log(rule["factor"])
            for rule in config["priority"]
            if expect_matches(rule["actions"], action_id, features)
            and all(expect_holds(c, context) for c in rule["when"])
        )
    return reasons, log_factors


def check_decision(service: Service, body: dict[str, Any], response: dict[str, Any], reasons: dict[str, set[str]]):
    ids = [a["id"] for a in body["actions"]]
    p = probabilities(response)
    chosen = response["rewardActionId"]
    row = logged(service, body["eventId"])
    assert response["eventId"] == body["eventId"]
    assert sorted(item["id"] for item in response["ranking"]) == sorted(ids)
    assert len(response["ranking"]) == len(ids)
    explanation = json.loads(row["explanation"])
    assert {k: set(v) for k, v in explanation["excluded"].items()} == reasons
    for action_id in reasons:
        assert p[action_id] == 0.0
        assert chosen != action_id
    if len(reasons) == len(ids):
        assert chosen is None
        assert row["record"] is None and row["probability"] is None and row["reward_action_id"] is None
        return
    assert chosen is not None and chosen not in reasons
    assert response["ranking"][0]["id"] == chosen
    assert all(0.0 <= v <= 1.0 for v in p.values())
    assert math.fsum(p.values()) == pytest.approx(1.0, abs=1e-9)
    assert p[chosen] > 0.0
    assert row["probability"] == p[chosen]
    assert row["reward_action_id"] == chosen
    record = json.loads(row["record"])
    multi = [a["_id"] for a in record["c"]["_multi"]]
    assert multi == [i for i in ids if i not in reasons]
    assert multi[record["a"][0] - 1] == chosen
    assert record["p"][0] == p[chosen]
    assert sorted(record["p"]) == sorted(p[i] for i in multi)


def expected_pmf(model: dict[str, float], log_factors: dict[str, float]) -> dict[str, float]:
    """The model's PMF times the priority factors, renormalised (computed in log space)."""
    logs = {i: math.log(model[i]) + log_factors[i] for i in log_factors if model[i] > 0}
    top = max(logs.values())
    total = math.fsum(math.exp(v - top) for v in logs.values())
    return {i: math.exp(logs[i] - top) / total if i in logs else 0.0 for i in log_factors}


def learned_model(path: Path, tmp: Path) -> str:
    """A model trained in-process on labeled records logged by Rank: enterprise tiers pay off for enterprise plans."""
    service = make_service(tmp)
    ws = vowpalwabbit.Workspace(f"{service.loops['default'].engine.arguments} --dsjson --quiet")
    try:
        for i in range(60):
            plan = ["enterprise", "free", "pro"][i % 3]
            body = {
                "eventId": f"train-{i}",
                "contextFeatures": [{"account": {"plan": plan, "seats": i % 30}}],
                "actions": [
                    {"id": a, "features": [{"tier": WORDS[j % len(WORDS)], "price": j * 7}]}
                    for j, a in enumerate(ACTION_IDS[: 3 + i % 4])
                ],
            }
            response = rank(service, body)
            chosen_tier = next(a for a in body["actions"] if a["id"] == response["rewardActionId"])["features"][0]
            reward = 1.0 if (chosen_tier["tier"] == "enterprise") == (plan == "enterprise") else 0.0
            line = dsjson.labeled(logged(service, body["eventId"])["record"], reward)
            examples = ws.parse(line)
            ws.learn(examples)
            ws.finish_example(examples)
        ws.save(str(path))
    finally:
        ws.finish()
    return str(path)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("learned")
    return learned_model(tmp / "model.vw", tmp / "training")


class Twins:
    """Two services on separate stores with the same model; a third answers what the model alone says."""

    def __init__(self, root: Path, model_path: str | None):
        self.services = [make_service(root / name) for name in ("one", "two", "model")]
        if model_path is not None:
            for service in self.services:
                loop = service.loops["default"]
                loop.engine = Engine(loop.engine.arguments, model_path, version="learned")

    def rank(self, service: Service, config: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        loop_settings = Settings.model_validate({"loops": {"default": {"rules": config}}}).loops["default"]
        loop = dataclasses.replace(service.loops["default"], settings=loop_settings)
        return service.rank(loop, RankRequest.model_validate(body), NOW)


@pytest.fixture(params=["fresh", "learned"])
def twins(request, tmp_path) -> Twins:
    model_path = request.getfixturevalue("model_file") if request.param == "learned" else None
    twins = Twins(tmp_path, model_path)
    if model_path is not None:  # the learned model must not be uniform, or this case would say nothing new
        probe = {"contextFeatures": [{"account": {"plan": "enterprise"}}], "actions": [{"id": a} for a in ACTION_IDS]}
        pmf = probabilities(twins.rank(twins.services[2], {}, probe))
        assert max(pmf.values()) - min(pmf.values()) > 0.1
    return twins


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=rule_sets(), body=rank_bodies, salt=st.text(alphabet="abcxyz019-_ /é", max_size=8))
def test_rules_invariant_through_rank(twins, config, body, salt):
    body = {**body, "eventId": f"{salt}#{next(_events)}"}
    one, two, model_only = twins.services
    reasons, log_factors = expectations(config, body)

    response = twins.rank(one, config, body)
    check_decision(one, body, response, reasons)
    assert twins.rank(two, config, body) == response  # same event id and request: same decision

    if log_factors:
        eligible = [a for a in body["actions"] if a["id"] in log_factors]
        alone = {"eventId": f"model-{body['eventId']}", "contextFeatures": body["contextFeatures"], "actions": eligible}
        model = probabilities(twins.rank(model_only, {}, alone))
        p = probabilities(response)
        for action_id, value in expected_pmf(model, log_factors).items():
            assert p[action_id] == pytest.approx(value, rel=1e-9, abs=1e-12)
