"""Rank, multi-slot Rank and Reward validate their body in one pass (``ranker.core.schemas.validate_json``): whatever
the
body, the outcome is the checked path's (``parse_json`` then ``validate``): the same request, or the same 400."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranker.core.errors import ApiError
from ranker.core.schemas import (
    MultiSlotRankRequest,
    MultiSlotRewardRequest,
    RankRequest,
    RewardRequest,
    parse_json,
    validate,
    validate_json,
)

MODELS = [RankRequest, MultiSlotRankRequest, RewardRequest, MultiSlotRewardRequest]
SEEDS = [
    json.dumps(
        {
            "contextFeatures": [{"account": {"plan": "pro", "seats": 12}, "usage": {"nps": 41.5, "tags": [1, 2]}}],
            "actions": [{"id": "a", "features": [{"kind": "guide", "cost": 1e-7}]}, {"id": "b"}],
            "slots": [{"id": "s1", "baselineAction": "a", "features": [{"position": 1}]}],
            "excludedActions": ["b"],
            "eventId": "e-1",
        }
    ).encode(),
    b'{"value": 0.5}',
    b'{"reward": [{"slotId": "s1", "value": 1}]}',
    b'{"actions":[{"id":"a\\"b","features":[{"x\\\\":1,"n":[{"q":1}]}]}],"eventId":"e\\\\"}',
    # colons in strings (the keys are then counted as '":'), a repeated key beside them, whitespace before a colon
    b'{"actions":[{"id":"a:b","features":[{"at":"12:30","u":"https://x","x":1,"x":2}]}],"eventId":"e:1"}',
    b'{"actions":[{"id":"a","features":[{"at":"12:30","n":{"q":[{"r":1}]}}]}],"eventId" :"e"}',
]
# What tends to tell parsers apart: repeated keys, escapes, literals json refuses, whitespace before a colon.
PIECES = [b'"x":1,', b'"value":2,', b'"id":"a",', b"\\", b'"', b'\\"', b"NaN", b"Infinity", b"\xff", b"\\u00e9"]
PIECES += [b"\\ud800", b" :", b"\n", b"1e400", b"-0", b"{", b"}", b"[", b"]", b",", b":", b"null", b"true"]


def outcome(run):
    try:
        return ("accepted", run().model_dump())
    except ApiError as exc:
        return ("refused", exc.status, exc.code, exc.message, exc.target, exc.details)


@st.composite
def bodies(draw) -> bytes:
    body = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(body)))
        if draw(st.booleans()) and body:
            del body[min(at, len(body) - 1)]
        else:
            body[at:at] = draw(st.sampled_from(PIECES))
    return bytes(body)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies(), model=st.sampled_from(MODELS))
def test_one_pass_validation_answers_what_the_checked_path_answers(body, model):
    checked = outcome(lambda: validate(model, parse_json(body), "Invalid"))
    assert outcome(lambda: validate_json(model, body, "Invalid")) == checked


def test_a_repeated_key_is_refused_as_before():
    body = b'{"actions":[{"id":"a","features":[{"x":1,"x":2}]}]}'
    error = outcome(lambda: validate_json(RankRequest, body, "InvalidRankRequest"))
    assert error[:3] == ("refused", 400, "BadRequest") and "'x' appears twice" in error[3]


def test_colons_in_strings_and_a_repeated_key_beside_them():
    body = b'{"actions":[{"id":"a:b","features":[{"at":"12:30","x":1}]}],"eventId":"e:1"}'
    request = validate_json(RankRequest, body, "InvalidRankRequest")
    assert request.model_dump() == validate(RankRequest, parse_json(body), "Invalid").model_dump()
    assert request.actions[0].features == [{"at": "12:30", "x": 1}]
    # one key fewer kept than the text holds, one colon more in the strings: refused, as the checked path does
    repeated = b'{"actions":[{"id":"a","features":[{"at":"1:2","x":1,"x":2}]}]}'
    error = outcome(lambda: validate_json(RankRequest, repeated, "InvalidRankRequest"))
    assert error[:3] == ("refused", 400, "BadRequest") and "'x' appears twice" in error[3]
