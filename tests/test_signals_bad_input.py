"""Bad input to ingestion and the entities API: a clear 4xx (OTLP's shapes on /v1/logs), a healthy server,
and nothing stored from a refused record."""

from __future__ import annotations

import base64
import gzip
import json
import time
import zlib
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import RANK_KEY
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from signals_config import SIGNALS_KEY
from test_signals import DAY_NS, logs, make_app, record

PROTOBUF, JSON = "application/x-protobuf", "application/json"
NOW = time.time_ns()
GOOD = record("api.call", NOW, **{"api.name": "reporting", "account.id": "good"})


def to_protobuf(body: dict) -> bytes:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    return json_format.ParseDict(body, ExportLogsServiceRequest()).SerializeToString()


@dataclass
class Case:
    id: str
    body: bytes
    status: int
    said: str  # part of the message
    content_type: str = JSON
    headers: dict[str, str] | None = None
    rejected: int = 0  # records refused inside a 200


def whole(id: str, body: bytes, status: int, said: str, **kw: Any) -> Case:
    return Case(id, body, status, said, **kw)


def gzip_bomb(megabytes: int) -> bytes:
    """Zeros that inflate to ``megabytes`` MiB from about a thousandth of that, built without holding them."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    return b"".join([*(deflate.compress(chunk) for _ in range(megabytes)), deflate.flush()])


def one_bad_record(id: str, bad: dict, said: str, resource: dict | None = None) -> Case:
    """A batch of a good record and a bad one: 200, the bad one counted in rejectedLogRecords."""
    return Case(id, json.dumps(logs(GOOD, bad, resource=resource)).encode(), 200, said, rejected=1)


good_json = json.dumps(logs(GOOD)).encode()
with_base64_ids = logs({**GOOD, "traceId": base64.b64encode(bytes(range(16))).decode(), "spanId": "AAECAwQFBgc="})
many = record("api.call", NOW, **{"account.id": "bad"}, **{f"a{i}": i for i in range(10_000)})

CASES = [
    whole("malformed protobuf", b"\x0a\xff\xff\xff\xff\x0f", 400, "protobuf", content_type=PROTOBUF),
    whole("protobuf sent as JSON", to_protobuf(logs(GOOD)), 400, "not JSON"),
    whole("JSON sent as protobuf", good_json, 400, "protobuf", content_type=PROTOBUF),
    whole("JSON with base64 ids", json.dumps(with_base64_ids).encode(), 400, "hex"),
    whole("JSON that is not an object", b"[1, 2]", 400, "JSON object"),
    whole("JSON nested too deeply", b"[" * 100_000 + b"]" * 100_000, 400, "JSON"),
    whole("JSON of the wrong shape", b'{"resourceLogs": {"a": 1}}', 400, "ExportLogsServiceRequest"),
    whole(
        "gzip bomb",
        gzip_bomb(100),  # 100 KiB that would inflate to 100 MiB
        413,
        "decompressed",
        headers={"Content-Encoding": "gzip"},
    ),
    whole("truncated gzip", gzip.compress(good_json)[:-12], 400, "cut short", headers={"Content-Encoding": "gzip"}),
    whole("not gzip at all", good_json, 400, "gzip", headers={"Content-Encoding": "gzip"}),
    whole("unknown encoding", good_json, 415, "Content-Encoding", headers={"Content-Encoding": "br"}),
    whole("unknown content type", good_json, 415, "application/x-protobuf", content_type="text/plain"),
    whole("over the size limit", b" " * 2_000_000, 413, "larger"),
    whole("no key", good_json, 401, "key", headers={"Ocp-Apim-Subscription-Key": ""}),
    whole("a rank key", good_json, 403, "signals", headers={"Ocp-Apim-Subscription-Key": RANK_KEY}),
    Case("10,000 attributes", json.dumps(logs(GOOD, many)).encode(), 200, "more than 128 attributes", rejected=1),
    one_bad_record("non-string entity id", record("api.call", NOW, **{"account.id": 42}), "must be a string"),
    one_bad_record("entity id over 256 characters", record("api.call", NOW, **{"account.id": "x" * 257}), "1-256"),
    one_bad_record("no entity id", record("api.call", NOW, plan="x"), "without an entity id"),
    one_bad_record("no event name", record(None, NOW, **{"account.id": "bad"}), "without an event name"),
    one_bad_record("a time over a day ahead", record("api.call", NOW + 2 * DAY_NS, **{"account.id": "bad"}), "ahead"),
    one_bad_record(
        "a time before the retention", record("api.call", NOW - 500 * DAY_NS, **{"account.id": "bad"}), "retention"
    ),
    one_bad_record(
        "a good id and a bad one", record("api.call", NOW, **{"account.id": "bad", "user.id": True}), "user.id"
    ),
]


def decoded_status(case: Case, data: bytes) -> tuple[int, str]:
    if case.content_type == JSON:
        body = json.loads(data)
        return body["code"], body["message"]
    status = status_pb2.Status.FromString(data)
    return status.code, status.message


@pytest.fixture
def client(tmp_path):
    from signals_config import CONFIG

    return make_app(tmp_path, CONFIG).test_client()


def stored(client) -> dict[str, int]:
    return client.application.extensions["ranker"].signals.store.counts()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_otlp_input_gets_a_clear_answer_and_stores_nothing_of_it(client, case: Case):
    headers = {"Content-Type": case.content_type, "Ocp-Apim-Subscription-Key": SIGNALS_KEY, **(case.headers or {})}
    if not headers["Ocp-Apim-Subscription-Key"]:
        del headers["Ocp-Apim-Subscription-Key"]
    response = client.post("/v1/logs", data=case.body, headers=headers)
    assert response.status_code == case.status, response.data[:300]
    answer_type = JSON if case.content_type == JSON else PROTOBUF
    assert response.mimetype == answer_type
    if case.status == 200:
        partial = json.loads(response.data)["partialSuccess"]
        assert partial["rejectedLogRecords"] == str(case.rejected)
        assert case.said in partial["errorMessage"]
        assert stored(client) == {"entities": 1, "events": 1}  # the good record only
        assert (
            client.get("/entities/account/bad", headers={"Ocp-Apim-Subscription-Key": SIGNALS_KEY}).status_code == 404
        )
    else:
        code, message = decoded_status(case, response.data)
        assert code != 0 and case.said in message
        assert stored(client) == {"entities": 0, "events": 0}
    # still healthy: a good batch goes in
    ok = client.post(
        "/v1/logs", data=good_json, headers={"Content-Type": JSON, "Ocp-Apim-Subscription-Key": SIGNALS_KEY}
    )
    assert ok.status_code == 200 and ok.json == {}


def test_a_protobuf_answer_is_an_export_logs_service_response(client):
    many_records = to_protobuf(logs(GOOD, record("api.call", NOW, plan="x")))
    response = client.post(
        "/v1/logs",
        data=gzip.compress(many_records),
        headers={"Content-Type": PROTOBUF, "Content-Encoding": "gzip", "Ocp-Apim-Subscription-Key": SIGNALS_KEY},
    )
    assert response.status_code == 200 and response.mimetype == PROTOBUF
    answer = ExportLogsServiceResponse.FromString(response.data)
    assert answer.partial_success.rejected_log_records == 1
    assert "without an entity id" in answer.partial_success.error_message


ENTITY_CASES = [
    ("PUT", "/entities/company/acme", {"attributes": {}}, 404, "ResourceNotFound", "entity type"),
    ("GET", "/entities/company/acme", None, 404, "ResourceNotFound", "entity type"),
    ("PUT", "/entities/account/acme", {"attributes": [1]}, 400, "InvalidEntity", "JSON object"),
    ("PUT", "/entities/account/acme", {"plan": "x"}, 400, "InvalidEntity", "attributes"),
    ("PUT", "/entities/account/acme", {"attributes": {"_plan": "x"}}, 400, "InvalidEntity", "'_'"),
    ("PUT", "/entities/account/acme", {"attributes": {"tags": ["a", "b"]}}, 400, "InvalidEntity", "array"),
    ("PUT", "/entities/account/acme", {"attributes": {"a.b": 1}}, 400, "InvalidEntity", "'.'"),
    ("PUT", "/entities/account/acme", {"attributes": {"plan": None}}, 400, "InvalidEntity", "null"),
    ("PUT", "/entities/account/acme", {"attributes": {"n": 1e300}}, 400, "InvalidEntity", "1e15"),
    ("PUT", "/entities/account/" + "x" * 257, {"attributes": {}}, 400, "InvalidEntity", "1-256"),
    ("PATCH", "/entities/account/acme", {"attributes": "x"}, 400, "InvalidEntity", "JSON object"),
    ("GET", "/entities/account/acme?at=yesterday", None, 400, "InvalidEntity", "ISO 8601"),
    ("GET", "/entities/account/nobody", None, 404, "ResourceNotFound", "nobody"),
]


@pytest.mark.parametrize(("method", "url", "body", "status", "code", "said"), ENTITY_CASES)
def test_bad_entity_requests_get_the_api_error_and_change_nothing(client, method, url, body, status, code, said):
    headers = {"Ocp-Apim-Subscription-Key": SIGNALS_KEY}
    response = client.open(url, method=method, json=body, headers=headers)
    assert response.status_code == status
    error = response.json["error"]
    assert error["code"] == code and said in error["message"]
    assert stored(client) == {"entities": 0, "events": 0}
