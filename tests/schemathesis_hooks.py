"""Schemathesis hooks for tests/test_openapi_fuzz.py: requests the fuzzer generates as schema-valid are made to
satisfy also the rules a JSON Schema cannot state (relations between fields, what VW loads, time arithmetic), so
that "schema-valid request rejected" means the document is wrong. Only positive cases are changed; invalid ones
are sent as generated.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis

from ranker.core.settings import parse_duration

SINGLE_SLOT = "--cb_explore_adf --epsilon 0.2"
MAX_POLICIES = 2  # each policy is loaded by VW in a separate process: bounded so that the run stays short


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return case
    path, method = case.operation.path, case.operation.method.upper()
    body = case.body = copy.deepcopy(case.body)  # generated cases may share parts of their bodies
    if path.endswith("/rank"):
        _rank(body, multislot="/multislot/" in path)
    elif path.endswith("/multislot/events/{eventId}/reward"):
        body["reward"] = list({r["slotId"]: r for r in body["reward"]}.values())  # a slot rewarded once per call
    elif path.endswith("/configurations/service"):
        for name in ("rewardWaitTime", "modelExportFrequency"):  # 1 s to 3650 days: arithmetic, not a pattern
            if name in body and not timedelta(seconds=1) <= _duration(body[name]) <= timedelta(days=3650):
                body[name] = "PT10M"
    elif path.endswith("/configurations/policy") and method == "PUT":
        body["arguments"] = SINGLE_SLOT  # what VW loads is VW's to say
    elif "/evaluations" in path or "/featureImportances" in path:
        _job(body)
    return case


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError:
        return timedelta(days=10000)


def _distinct_names(objects: list[dict[str, Any]]) -> None:
    """A top-level feature name appears in one feature object of a list only."""
    seen: set[str] = set()
    for obj in objects:
        for name in [name for name in obj if name in seen]:
            del obj[name]
        seen.update(obj)


def _rank(body: dict[str, Any], multislot: bool) -> None:
    # action ids are distinct (and so are slot ids)
    body["actions"] = list({action["id"]: action for action in body["actions"]}.values())
    _distinct_names(body.get("contextFeatures", []))
    for action in body["actions"]:
        _distinct_names(action.get("features", []))
    if not multislot:
        return
    body["slots"] = list({slot["id"]: slot for slot in body["slots"]}.values())
    # each slot's baselineAction is one of the actions, a different one for every slot, not excluded there
    ids = [action["id"] for action in body["actions"]]
    for k in range(len(ids), len(body["slots"])):
        body["actions"].append({"id": f"baseline-{k}"})
        ids.append(f"baseline-{k}")
    for k, slot in enumerate(body["slots"]):
        _distinct_names(slot.get("features", []))
        slot["baselineAction"] = ids[k]
        slot["excludedActions"] = [a for a in slot.get("excludedActions", []) if a != ids[k]]


def _moment(text: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def _job(body: dict[str, Any]) -> None:
    start, end = _moment(body.get("startTime")), _moment(body.get("endTime"))
    if start is None or end is None:
        return
    # startTime before endTime, both within the years 1-9999 in UTC
    start = min(max(start, datetime(1, 1, 2, tzinfo=UTC)), datetime(9999, 12, 30, tzinfo=UTC))
    end = max(min(end, datetime(9999, 12, 31, tzinfo=UTC)), start + timedelta(seconds=1))
    body["startTime"], body["endTime"] = start.isoformat(), end.isoformat()
    if isinstance(body.get("policies"), list):
        # policy names are unique and not the reference policies'; their arguments are VW's to accept
        body["policies"] = [
            {"name": f"policy-{i}", "arguments": SINGLE_SLOT} for i, _ in enumerate(body["policies"][:MAX_POLICIES])
        ]
    if isinstance(body.get("rules"), dict):
        _rules(body["rules"])


TESTS = ("equals", "in", "not_in", "gte", "lte", "exists")
FOREVER = timedelta(days=10000)  # what _duration answers for text that is not a duration ranker takes


def _rules(rules: dict[str, Any]) -> None:
    """A what-if's rules are checked as a loop's are; what their schema cannot say: a rule's actions name ids or
    features, a condition holds exactly one test (fresh_within aside) and a valid duration, an availability
    window starts before it ends, a discovery window is at least a second."""
    for kind in ("entitlements", "availability", "priority", "discovery"):
        for rule in rules.get(kind, []):
            actions = rule["actions"]
            if actions.get("ids") is None and actions.get("features") is None:
                actions["ids"] = ["a1"]
            for condition in [*(actions.get("features") or []), *rule.get("requires", []), *rule.get("when", [])]:
                _condition(condition)
            if kind == "availability" and rule.get("start") and rule.get("end"):
                start, end = _moment(rule["start"]), _moment(rule["end"])
                if start is None or end is None or start >= end:
                    rule["end"] = None
            if kind == "discovery" and not timedelta(seconds=1) <= _duration(rule.get("window", "P7D")) < FOREVER:
                rule["window"] = "P7D"


def _condition(condition: dict[str, Any]) -> None:
    if condition.get("fresh_within") is not None and _duration(condition["fresh_within"]) >= FOREVER:
        condition["fresh_within"] = "PT1H"
    tests = [name for name in TESTS if condition.get(name) is not None]
    for name in tests[1:]:
        del condition[name]
    if not tests and condition.get("fresh_within") is None:
        condition["exists"] = True
