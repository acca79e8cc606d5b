"""Bad requests: each gets its 4xx with Personalizer's error body, and the decision log keeps nothing of it."""

from __future__ import annotations

import io
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from conftest import KEYED_CONFIG, OTHER_KEY, RANK_KEY
from flask import Flask
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ranker.app import create_app
from ranker.core.settings import load_settings

RANK = "/personalizer/v1.0/rank"
RANK_PREVIEW = "/personalizer/v1.1-preview.3/rank"
RANK_2022 = "/personalizer/rank?api-version=2022-09-01-preview"
KNOWN = "known-event"  # ranked before every case, so reward and activate cases have a real event to aim at

ACTIONS = [{"id": "a", "features": [{"x": 1}]}, {"id": "b", "features": [{"x": 2}]}]
NO_BODY = object()
SMALL_BODY_LIMIT = 4096  # max_body_bytes of the "small" app (the smallest the settings allow is 1024)


def rank_body(**fields: Any) -> dict[str, Any]:
    """A valid Rank body with ``fields`` replaced."""
    return {"contextFeatures": [{"plan": "pro"}], "actions": ACTIONS, **fields}


def without(body: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != name}


def event_url(event_id: str, op: str, prefix: str = "/personalizer/v1.0") -> str:
    """The URL the SDKs build: the event id percent-encoded with nothing left safe."""
    return f"{prefix}/events/{quote(event_id, safe='')}/{op}"


def nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for level in reversed(range(depth)):
        value = {f"level{level}": value}
    return value


@dataclass(frozen=True)
class Case:
    id: str
    status: int
    code: str
    body: Any = NO_BODY  # bytes are sent as they are; anything else as JSON
    path: str = RANK
    method: str = "POST"
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    app: str = "open"  # open: no config; keyed: KEYED_CONFIG; small: maxActions 3, max_body_bytes 4096
    chunked: bool = False  # no Content-Length; the server terminates the stream (gunicorn with chunked bodies)


KEY = {"Ocp-Apim-Subscription-Key": RANK_KEY}
EVALUATIONS = "/personalizer/v1.0/evaluations"
IMPORTANCES = "/personalizer/v1.0/featureImportances"
JOB = {"name": "n", "startTime": "2024-01-01T00:00:00Z", "endTime": "2024-01-02T00:00:00Z"}
BAD = 400, "BadRequest"
RANK_400 = 400, "InvalidRankRequest"
REWARD_400 = 400, "InvalidRewardRequest"
REWARD = event_url(KNOWN, "reward")

CASES = [
    # -- bodies that are not JSON text ---------------------------------------------------------
    Case("malformed-json", *BAD, b'{"actions": [{"id": "a"}'),
    Case("empty-body", *BAD, b""),
    Case("non-utf8-bytes", *BAD, b'{"actions": [{"id": "\xff\xfe"}]}'),
    Case("latin1-encoded-body", *BAD, '{"actions": [{"id": "café"}]}'.encode("latin-1")),
    Case("lone-surrogate-in-feature-value", *BAD, b'{"contextFeatures": [{"k": "\\ud800"}], "actions": [{"id": "a"}]}'),
    Case("lone-surrogate-in-feature-name", *BAD, b'{"contextFeatures": [{"\\udc00": 1}], "actions": [{"id": "a"}]}'),
    Case("lone-surrogate-in-event-id", *BAD, b'{"eventId": "e\\udbff", "actions": [{"id": "a"}]}'),
    Case("nan-literal", *BAD, b'{"contextFeatures": [{"score": NaN}], "actions": [{"id": "a"}]}'),
    Case("infinity-literal", *BAD, b'{"contextFeatures": [{"score": Infinity}], "actions": [{"id": "a"}]}'),
    Case("minus-infinity-literal", *BAD, b'{"actions": [{"id": "a", "features": [{"s": -Infinity}]}]}'),
    Case("nesting-beyond-the-parser", *BAD, b"[" * 100_000 + b"]" * 100_000),
    Case(
        "integer-of-5000-digits", *BAD, b'{"contextFeatures": [{"n": 1' + b"0" * 5000 + b'}], "actions": [{"id": "a"}]}'
    ),
    Case("duplicate-event-id", 409, "EventIdAlreadyExists", rank_body(eventId=KNOWN), path=RANK_PREVIEW),
    # -- JSON of the wrong shape ---------------------------------------------------------------
    Case("body-is-an-array", *RANK_400, [rank_body()]),
    Case("body-is-a-string", *RANK_400, "rank"),
    Case("body-is-null", *RANK_400, None),
    Case("unknown-field-typo-action", *RANK_400, {"action": ACTIONS}),
    Case("unknown-field-in-an-action", *RANK_400, rank_body(actions=[{"id": "a", "feature": [{"x": 1}]}])),
    Case("missing-actions", *RANK_400, without(rank_body(), "actions"), path=RANK_2022),
    Case("empty-actions", *RANK_400, rank_body(actions=[])),
    Case("actions-not-a-list", *RANK_400, rank_body(actions={"id": "a"})),
    Case("action-not-an-object", *RANK_400, rank_body(actions=["a", "b"])),
    Case("action-id-a-number", *RANK_400, rank_body(actions=[{"id": 7}])),
    Case("action-id-missing", *RANK_400, rank_body(actions=[{"features": [{"x": 1}]}])),
    Case("action-id-empty", *RANK_400, rank_body(actions=[{"id": ""}])),
    Case("action-id-257-chars", *RANK_400, rank_body(actions=[{"id": "a" * 257}])),
    Case("action-id-with-tab", *RANK_400, rank_body(actions=[{"id": "a\tb"}])),
    Case("action-id-trailing-newline", *RANK_400, rank_body(actions=[{"id": "a\n"}])),
    Case("action-id-with-del", *RANK_400, rank_body(actions=[{"id": "a\x7f"}])),
    Case("duplicate-action-ids", *RANK_400, rank_body(actions=[{"id": "a"}, {"id": "b"}, {"id": "a"}])),
    Case("501-actions-default-max-500", *RANK_400, rank_body(actions=[{"id": f"a{i}"} for i in range(501)])),
    Case("4-actions-loop-max-3", *RANK_400, rank_body(actions=[{"id": f"a{i}"} for i in range(4)]), app="small"),
    Case("action-features-not-a-list", *RANK_400, rank_body(actions=[{"id": "a", "features": {"x": 1}}])),
    Case("action-feature-item-not-an-object", *RANK_400, rank_body(actions=[{"id": "a", "features": ["x"]}])),
    Case("context-features-not-a-list", *RANK_400, rank_body(contextFeatures={"plan": "pro"})),
    Case("context-feature-item-a-number", *RANK_400, rank_body(contextFeatures=[3])),
    Case("defer-activation-a-string", *RANK_400, rank_body(deferActivation="true")),
    Case("defer-activation-a-number", *RANK_400, rank_body(deferActivation=1)),
    Case("event-id-a-number", *RANK_400, rank_body(eventId=12345)),
    Case("event-id-257-chars", *RANK_400, rank_body(eventId="e" * 257)),
    Case("event-id-empty", *RANK_400, rank_body(eventId="")),
    Case("event-id-with-nul", *RANK_400, rank_body(eventId="e\x00")),
    Case("excluded-actions-not-a-list", *RANK_400, rank_body(excludedActions="a")),
    Case("excluded-action-id-257-chars", *RANK_400, rank_body(excludedActions=["a" * 257])),
    # -- features VW would misread -------------------------------------------------------------
    Case("number-above-1e15", *RANK_400, rank_body(contextFeatures=[{"seats": 1e16}])),
    Case("number-below-minus-1e15", *RANK_400, rank_body(contextFeatures=[{"seats": -(10**16)}])),
    Case("number-overflowing-to-infinity", *RANK_400, b'{"contextFeatures": [{"n": 1e400}], "actions": [{"id": "a"}]}'),
    Case(
        "integer-beyond-float-range",
        *RANK_400,
        b'{"contextFeatures": [{"n": 1' + b"0" * 400 + b'}], "actions": [{"id": "a"}]}',
    ),
    Case(
        "integer-beyond-float-range-in-array",
        *RANK_400,
        b'{"contextFeatures": [{"n": [1, 1' + b"0" * 400 + b']}], "actions": [{"id": "a"}]}',
    ),
    Case("numeric-array-item-above-1e15", *RANK_400, rank_body(contextFeatures=[{"usage": [1, 2e15]}])),
    Case("array-of-strings", *RANK_400, rank_body(contextFeatures=[{"tags": ["crm", "sso"]}])),
    Case("array-of-numbers-and-objects", *RANK_400, rank_body(contextFeatures=[{"mix": [1, {"a": 1}]}])),
    Case("array-of-arrays", *RANK_400, rank_body(actions=[{"id": "a", "features": [{"m": [[1, 2]]}]}])),
    Case("feature-name-underscore", *RANK_400, rank_body(contextFeatures=[{"_label_cost": 1}])),
    Case("nested-feature-name-underscore", *RANK_400, rank_body(contextFeatures=[{"account": {"_plan": "pro"}}])),
    Case("action-feature-multi-injection", *RANK_400, rank_body(actions=[{"id": "a", "features": [{"_multi": []}]}])),
    Case("feature-name-empty", *RANK_400, rank_body(contextFeatures=[{"": "x"}])),
    # VW indexes a namespace by its name's first byte; a non-ASCII one crashed the worker
    Case("non-ascii-namespace-name", *RANK_400, rank_body(contextFeatures=[{"état": {"x": 1}}])),
    Case("non-ascii-numeric-array-name", *RANK_400, rank_body(contextFeatures=[{"ümsatz": [1, 2]}])),
    Case("non-ascii-empty-namespace-name", *RANK_400, rank_body(contextFeatures=[{"日本": {}}])),
    Case(
        "non-ascii-namespace-in-an-array",
        *RANK_400,
        rank_body(actions=[{"id": "a", "features": [{"items": [{"🚀": {"x": 1}}]}]}]),
    ),
    Case("features-nest-10-deep", *RANK_400, rank_body(contextFeatures=[nested(10)])),
    Case("repeated-name-across-context-objects", *RANK_400, rank_body(contextFeatures=[{"plan": 1}, {"plan": 2}])),
    Case(
        "repeated-name-across-action-objects",
        *RANK_400,
        rank_body(actions=[{"id": "a", "features": [{"x": 1}, {"y": 2, "x": 3}]}]),
    ),
    # -- transport: size, media type, method ---------------------------------------------------
    Case("body-over-1mb", 413, "PayloadSizeExceeded", rank_body(contextFeatures=[{"pad": "x" * (1 << 20)}])),
    Case("body-over-max-body-bytes", 413, "PayloadSizeExceeded", rank_body(pad="x" * SMALL_BODY_LIMIT), app="small"),
    Case(
        "chunked-body-over-max-body-bytes",
        413,
        "PayloadSizeExceeded",
        rank_body(pad="x" * SMALL_BODY_LIMIT),
        app="small",
        chunked=True,
    ),
    Case("text-plain", 415, "UnsupportedMediaType", rank_body(), content_type="text/plain"),
    Case(
        "form-urlencoded", 415, "UnsupportedMediaType", b"actions=a", content_type="application/x-www-form-urlencoded"
    ),
    Case(
        "multipart-form",
        415,
        "UnsupportedMediaType",
        b'--XX\r\nContent-Disposition: form-data; name="actions"\r\n\r\na\r\n--XX--\r\n',
        content_type="multipart/form-data; boundary=XX",
    ),
    Case("no-content-type", 415, "UnsupportedMediaType", json.dumps(rank_body()).encode(), content_type=None),
    Case("get-rank", 405, "MethodNotAllowed", method="GET", content_type=None),
    Case("put-rank", 405, "MethodNotAllowed", rank_body(), method="PUT"),
    Case("get-reward", 405, "MethodNotAllowed", path=REWARD, method="GET", content_type=None),
    # -- keys ----------------------------------------------------------------------------------
    Case("unknown-key", 401, "Unauthorized", rank_body(), headers={"Ocp-Apim-Subscription-Key": "nope"}, app="keyed"),
    Case("missing-key", 401, "Unauthorized", rank_body(), app="keyed"),
    Case("empty-key", 401, "Unauthorized", rank_body(), headers={"Ocp-Apim-Subscription-Key": ""}, app="keyed"),
    Case("unknown-bearer", 401, "Unauthorized", rank_body(), headers={"Authorization": "Bearer nope"}, app="keyed"),
    Case(
        "key-as-basic-auth",
        401,
        "Unauthorized",
        rank_body(),
        headers={"Authorization": f"Basic {RANK_KEY}"},
        app="keyed",
    ),
    Case(
        "reward-unknown-key",
        401,
        "Unauthorized",
        {"value": 1},
        path=REWARD,
        headers={"Ocp-Apim-Subscription-Key": "nope"},
        app="keyed",
    ),
    Case("activate-missing-key", 401, "Unauthorized", path=event_url(KNOWN, "activate"), app="keyed"),
    Case(
        "reward-event-of-another-loop",
        404,
        "ResourceNotFound",
        {"value": 1},
        path=REWARD,
        headers={"Ocp-Apim-Subscription-Key": OTHER_KEY},
        app="keyed",
    ),
    Case(
        "activate-event-of-another-loop",
        404,
        "InvalidEventIdToActivate",
        path=event_url(KNOWN, "activate"),
        headers={"Ocp-Apim-Subscription-Key": OTHER_KEY},
        app="keyed",
    ),
    Case("bad-body-with-a-valid-key", *RANK_400, rank_body(actions=[]), headers=KEY, app="keyed"),
    # -- Reward and Activate -------------------------------------------------------------------
    Case("reward-minus-1.5", *REWARD_400, {"value": -1.5}, path=REWARD),
    Case("reward-2", *REWARD_400, {"value": 2}, path=REWARD),
    Case("reward-just-above-1", *REWARD_400, {"value": 1.000001}, path=REWARD),
    Case("reward-overflowing-to-infinity", *REWARD_400, b'{"value": 1e400}', path=REWARD),
    Case("reward-a-string", *REWARD_400, {"value": "0.5"}, path=REWARD),
    Case("reward-a-boolean", *REWARD_400, {"value": True}, path=REWARD),
    Case("reward-null", *REWARD_400, {"value": None}, path=REWARD),
    Case("reward-missing-value", *REWARD_400, {}, path=REWARD),
    Case("reward-extra-field", *REWARD_400, {"value": 1, "eventId": KNOWN}, path=REWARD),
    Case("reward-bare-number", *REWARD_400, 0.5, path=REWARD),
    Case("reward-nan-literal", *BAD, b'{"value": NaN}', path=REWARD),
    Case("reward-malformed-json", *BAD, b'{"value": ', path=REWARD),
    Case("reward-empty-body", *BAD, b"", path=REWARD),
    Case("reward-text-plain", 415, "UnsupportedMediaType", b"1", path=REWARD, content_type="text/plain"),
    Case("reward-unknown-event", 404, "ResourceNotFound", {"value": 1}, path=event_url("no-such-event", "reward")),
    Case(
        "reward-unknown-event-2022-url",
        404,
        "ResourceNotFound",
        {"value": 1},
        path=event_url("no-such-event", "reward", "/personalizer") + "?api-version=2022-09-01-preview",
    ),
    Case("activate-unknown-event", 404, "InvalidEventIdToActivate", path=event_url("no-such-event", "activate")),
    Case("reward-url-event-id-257-chars", *REWARD_400, {"value": 1}, path=event_url("e" * 257, "reward")),
    Case("activate-url-event-id-257-chars", 400, "InvalidEventIdToActivate", path=event_url("e" * 257, "activate")),
    Case("reward-url-event-id-with-nul", *REWARD_400, {"value": 1}, path=event_url("known\x00", "reward")),
    Case("reward-url-event-id-with-newline", *REWARD_400, {"value": 1}, path=event_url("known\n", "reward")),
    # -- ids: one rule for event, action, slot, evaluation and feature-importance ids -----------
    Case("event-id-with-c1-next-line", *RANK_400, rank_body(eventId="e\x85")),
    Case("event-id-with-c1-csi", *RANK_400, rank_body(eventId="e\x9b2J")),
    Case("event-id-dot-dot", *RANK_400, rank_body(eventId="..")),
    Case("event-id-with-a-dot-segment", *RANK_400, rank_body(eventId="a/./b")),
    Case("event-id-only-slashes", *RANK_400, rank_body(eventId="//")),
    Case("action-id-with-c1", *RANK_400, rank_body(actions=[{"id": "a\x9b"}])),
    Case("reward-url-event-id-with-c1", *REWARD_400, {"value": 1}, path=event_url("known\x85", "reward")),
    # werkzeug decodes %FF%FE to U+FFFD U+FFFD, which would name another event
    Case("reward-url-event-id-not-utf8", *REWARD_400, {"value": 1}, path="/personalizer/v1.0/events/%FF%FE/reward"),
    Case(
        "activate-url-event-id-dot-dot",
        400,
        "InvalidEventIdToActivate",
        path="/personalizer/v1.0/events/%2E%2E/activate",
        content_type=None,
    ),
    Case("evaluation-id-dot-dot-segments-in-body", *BAD, {**JOB, "id": "../../x"}, path=EVALUATIONS),
    Case("evaluation-id-with-del-in-body", *BAD, {**JOB, "id": "e\x7f"}, path=EVALUATIONS),
    Case("evaluation-id-dot-dot-segments-in-url", *BAD, JOB, path=EVALUATIONS + "/..%2F..%2Fx", method="PUT"),
    Case("evaluation-id-with-c1-in-url", *BAD, JOB, path=EVALUATIONS + "/e%C2%85", method="PUT"),
    Case("get-evaluation-url-id-not-utf8", *BAD, path=EVALUATIONS + "/%FF", method="GET", content_type=None),
    Case("delete-evaluation-url-id-dot", *BAD, path=EVALUATIONS + "/%2E", method="DELETE", content_type=None),
    Case("feature-importance-id-with-del-in-url", *BAD, JOB, path=IMPORTANCES + "/f%7F", method="PUT"),
    Case(
        "get-feature-importance-url-id-257-chars",
        *BAD,
        path=IMPORTANCES + "/" + "f" * 257,
        method="GET",
        content_type=None,
    ),
    Case(
        "apply-from-evaluation-id-with-c1",
        *BAD,
        {"evaluationId": "e\x85", "policyName": "p"},
        path="/personalizer/v1.0/configurations/applyFromEvaluation",
    ),
    # -- a key given twice in one object: which value counts would depend on the parser ---------
    Case("duplicate-key-event-id", *BAD, b'{"eventId": "a", "eventId": "b", "actions": [{"id": "a"}]}'),
    Case("duplicate-key-actions", *BAD, b'{"actions": [{"id": "a"}], "actions": [{"id": "b"}]}'),
    Case(
        "duplicate-key-in-a-feature-object",
        *BAD,
        b'{"contextFeatures": [{"plan": "pro", "plan": "free"}], "actions": [{"id": "a"}]}',
    ),
    Case("duplicate-key-in-an-action", *BAD, b'{"actions": [{"id": "a", "id": "b"}]}'),
    Case("duplicate-key-reward-value", *BAD, b'{"value": 1, "value": -1}', path=REWARD),
    Case("duplicate-key-evaluation-id", *BAD, b'{"id": "a", "id": "b", "name": "n"}', path=EVALUATIONS),
    Case(
        "empty-key-and-unknown-bearer",
        401,
        "Unauthorized",
        rank_body(),
        headers={"Ocp-Apim-Subscription-Key": "", "Authorization": "Bearer nope"},
        app="keyed",
    ),
]


@pytest.fixture
def make_app(app: Flask, tmp_path: Path):
    """The app a case runs against: conftest's ``app`` (no config, auth off) or one with a config."""

    def build(kind: str) -> Flask:
        if kind == "open":
            return app
        data_dir = tmp_path / kind
        if kind == "small":
            overrides = {"max_body_bytes": SMALL_BODY_LIMIT, "loops": {"default": {"maxActions": 3}}}
            return create_app(load_settings(environ={}, overrides={"data_dir": data_dir, **overrides}))
        config = tmp_path / "ranker.toml"
        config.write_text(KEYED_CONFIG)
        return create_app(load_settings(config, environ={}, overrides={"data_dir": data_dir}))

    return build


def log_contents(app: Flask) -> tuple[list[tuple], list[tuple]]:
    """Every row of the decision log, read from the database file itself."""
    conn = sqlite3.connect(app.extensions["ranker"].settings.database_path)
    try:
        decisions = conn.execute("SELECT * FROM decisions ORDER BY id").fetchall()
        rewards = conn.execute("SELECT * FROM rewards ORDER BY id").fetchall()
    finally:
        conn.close()
    return decisions, rewards


def send(client, case: Case):
    kwargs: dict[str, Any] = {"method": case.method, "headers": case.headers}
    if case.content_type is not None:
        kwargs["content_type"] = case.content_type
    if case.body is not NO_BODY:
        data = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
        if case.chunked:
            kwargs["input_stream"] = io.BytesIO(data)
            kwargs["environ_overrides"] = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
        else:
            kwargs["data"] = data
    return client.open(case.path, **kwargs)


def test_the_table_is_at_least_30_kinds_of_bad_request():
    assert len({case.id for case in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_request_gets_its_error_and_leaves_no_trace(make_app, case: Case):
    app = make_app(case.app)
    client = app.test_client()
    known = client.post(RANK, json=rank_body(eventId=KNOWN), headers=KEY)
    assert known.status_code == 201
    before = log_contents(app)
    assert len(before[0]) == 1

    assert_error(send(client, case), case)
    assert log_contents(app) == before


def assert_error(response, case: Case) -> None:
    """The case's status and Personalizer's error body, with its code in x-ms-error-code too."""
    assert response.status_code == case.status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    body = json.loads(response.get_data())
    assert set(body) == {"error"}
    assert body["error"]["code"] == case.code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"].strip()
    assert response.headers["x-ms-error-code"] == case.code


def test_a_refused_method_names_the_allowed_one(client):
    response = client.get(RANK)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_max_body_bytes_is_the_largest_body_accepted(make_app, chunked):
    app = make_app("small")
    client = app.test_client()
    padding = SMALL_BODY_LIMIT - len(json.dumps(rank_body(contextFeatures=[{"pad": ""}])))
    at_limit = Case("at-limit", 201, "", rank_body(contextFeatures=[{"pad": "x" * padding}]), chunked=chunked)
    over_limit = Case("over-limit", 413, "", rank_body(contextFeatures=[{"pad": "x" * (padding + 1)}]), chunked=chunked)
    assert len(json.dumps(at_limit.body)) == SMALL_BODY_LIMIT

    assert send(client, at_limit).status_code == 201
    response = send(client, over_limit)
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "PayloadSizeExceeded"
    assert app.extensions["ranker"].store.counts()["decisions"] == 1


def test_a_chunked_body_over_the_limit_gets_413_from_a_real_server(serve):
    # gunicorn hands chunked bodies over without a Content-Length; werkzeug alone would cut them at the limit
    server = serve(max_body_bytes=str(SMALL_BODY_LIMIT))
    body = json.dumps(rank_body(contextFeatures=[{"pad": "x" * SMALL_BODY_LIMIT}])).encode()
    chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))
    response = requests.post(server.url + RANK, data=chunks, headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PayloadSizeExceeded"
    conn = sqlite3.connect(server.data_dir / "ranker.db")
    try:
        assert conn.execute("SELECT count(*) FROM decisions").fetchone() == (0,)
    finally:
        conn.close()


def test_rank_error_points_at_the_offending_field(client):
    response = client.post(RANK, json=rank_body(actions=[{"id": "a"}, {"id": 7}]))
    error = response.get_json()["error"]
    assert error["target"] == "actions.1.id"
    assert error["details"] and all(d["code"] == "InvalidRankRequest" and d["message"] for d in error["details"])


# Characters that would break SQL built by string pasting, URL handling, or VW's text format.
AWKWARD = [
    "it's",
    'say "hi"',
    "'; DROP TABLE decisions; --",
    'Robert"); DELETE FROM rewards; --',
    "back\\slash\\",
    "100% off",
    "%41%2F",
    "naïve café 日本語 🚀",
    "a|b",
    "key:1.5",
    "two words",
    " padded ",
    "a/b/c",
    "?q=1&r=2#frag",
    "<b>&amp;</b>",
    "*",
]


def test_awkward_characters_are_accepted_and_round_trip(client, service):
    context = [
        {name: name for name in AWKWARD},
        {"ns |:": {"k ey:": "v|a l:1", "q'\"": 0.5, "日本": "語"}, "état": 1, "ümsatz": "hoch"},
    ]
    actions = [{"id": name, "features": [{"f " + name: name}]} for name in AWKWARD]
    for n, name in enumerate(AWKWARD):
        event_id = f"{name}/{n}"
        response = client.post(RANK, json={"contextFeatures": context, "actions": actions, "eventId": event_id})
        assert response.status_code == 201, response.get_data(as_text=True)
        body = response.get_json()
        assert body["eventId"] == event_id
        assert sorted(r["id"] for r in body["ranking"]) == sorted(AWKWARD)
        assert body["rewardActionId"] in AWKWARD

        conn = sqlite3.connect(service.settings.database_path)
        try:
            rows = conn.execute(
                "SELECT event_id, action_ids, record FROM decisions WHERE event_id = ?", (event_id,)
            ).fetchall()
        finally:
            conn.close()
        assert len(rows) == 1
        logged_id, action_ids, record = rows[0]
        assert logged_id == event_id
        assert json.loads(action_ids) == AWKWARD
        record = json.loads(record)
        assert record["EventId"] == event_id
        assert [m["_id"] for m in record["c"]["_multi"]] == AWKWARD
        assert [m["f " + m["_id"]] for m in record["c"]["_multi"]] == AWKWARD
        assert {k: v for k, v in record["c"].items() if k != "_multi"} == {**context[0], **context[1]}

        assert client.post(event_url(event_id, "reward"), json={"value": 0.5}).status_code == 204
        url = event_url(event_id, "reward", "/personalizer") + "?api-version=2022-09-01-preview"
        assert client.post(url, json={"value": -0.25}).status_code == 204
        assert client.post(event_url(event_id, "activate")).status_code == 204
        assert [r["value"] for r in service.store.rewards("default", event_id)] == [0.5, -0.25]
        assert service.store.decision("default", event_id)["activated_at"] is not None

    assert service.store.counts() == {"decisions": len(AWKWARD), "rewards": 2 * len(AWKWARD)}


# Text of valid Unicode, and text that leans on the characters that have caused trouble: lone surrogates
# (json.dumps escapes them, as any client could), control characters, VW's text-format separators.
plain_text = st.text(st.characters(codec="utf-8"), max_size=12)
awkward_text = st.text(
    st.characters(codec=None, exclude_categories=())
    | st.sampled_from(["\ud800", "\udfff", "\x00", "\n", "\x7f", "|", ":", " ", "_", "'", '"', "\\", "%", "🚀"]),
    max_size=12,
)


id_chars = st.characters(codec="utf-8", exclude_categories=("Cc",))


def json_values(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Any JSON value."""
    names = st.text("abc_ |:'\"\\%", max_size=6) | text
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | text,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(names, children, max_size=4),
        max_leaves=24,
    )


def rank_bodies(text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Rank bodies whose features are mostly what the schema accepts (so they reach VW and the log)."""
    names = st.text("abc_ |:'\"\\%", max_size=6) | text
    numbers = st.integers(-(10**15), 10**15) | st.floats(-1e15, 1e15)
    features = st.recursive(
        st.none() | st.booleans() | numbers | text | st.lists(numbers, max_size=3),
        lambda children: (
            st.dictionaries(names, children, max_size=3)
            | st.lists(st.dictionaries(names, children, max_size=2), max_size=2)
        ),
        max_leaves=12,
    )
    feature_lists = st.lists(st.dictionaries(names, features | json_values(text), max_size=4), max_size=3)
    # ids the schema accepts, so that the features are what decides (bad ids are in the table above)
    ids = st.text("abc", min_size=1, max_size=3) | st.uuids().map(str) | st.text(id_chars, min_size=1, max_size=12)
    actions = st.fixed_dictionaries({"id": ids}, optional={"features": feature_lists})
    return st.fixed_dictionaries(
        {"actions": st.lists(actions, min_size=1, max_size=5)},
        optional={
            "contextFeatures": feature_lists,
            "excludedActions": st.lists(ids, max_size=3),
            "eventId": ids,
            "deferActivation": st.booleans(),
        },
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values(awkward_text), rank_bodies(plain_text), rank_bodies(awkward_text)))
def test_any_json_body_gets_201_or_a_4xx_error(client, service, body):
    before = service.store.counts()
    response = client.post(RANK, data=json.dumps(body), content_type="application/json")
    after = service.store.counts()
    event(f"HTTP {response.status_code}")
    assert response.mimetype == "application/json"
    if response.status_code == 201:
        answer = response.get_json()
        assert sorted(r["id"] for r in answer["ranking"]) == sorted(a["id"] for a in body["actions"])
        assert after == {**before, "decisions": before["decisions"] + 1}
    else:
        assert 400 <= response.status_code < 500, response.get_data(as_text=True)[:500]
        error = response.get_json()["error"]
        assert error["code"] and error["message"]
        assert after == before
