"""One id rule for event, evaluation and feature-importance ids: every id it accepts can be served back by a
real server, through the URL the SDKs build, and every id it refuses is a 400 where it would be created."""

from __future__ import annotations

import sqlite3
from urllib.parse import quote

import pytest
import requests
from conftest import ADMIN_KEY, KEYED_CONFIG, Server

from ranker.core.schemas import is_id

API = "/personalizer/v1.0"
ADMIN = {"Ocp-Apim-Subscription-Key": ADMIN_KEY}
JOB = {"name": "n", "startTime": "2024-01-01T00:00:00Z", "endTime": "2024-01-02T00:00:00Z"}

ACCEPTED = [
    "plain",
    "/lead",
    "//lead",
    "a//b",
    "trailing/",
    "...",
    "a/.../b",
    "..a",
    "a..",
    ".hidden",
    "%FF",
    "\ufffd",
    "日本/語 🚀",
    "?q=1&r=2#frag",
    " padded ",
    "line\u2028separator",
    "x" * 256,
]
REFUSED = [
    ".",
    "..",
    "../../x",
    "a/../b",
    "a/./b",
    "a/..",
    "/",
    "//",
    "e\x00",
    "e\n",
    "e\x7f",
    "e\x85",
    "e\x9b",
    "x" * 257,
]


def url_id(value: str) -> str:
    """The id as a path segment: percent-encoded with nothing left safe (as the SDKs do), dots too, so that
    no client removes a '.' or '..' segment before the server sees it."""
    return quote(value, safe="").replace(".", "%2E")


def test_the_rule_accepts_and_refuses_as_listed():
    assert [value for value in ACCEPTED if not is_id(value)] == []
    assert [value for value in REFUSED if is_id(value)] == []


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server for the module's tests (each checks only the ids it uses)."""
    started = Server(tmp_path_factory.mktemp("ids"), KEYED_CONFIG)
    yield started
    started.stop()


def rewards_by_event(server: Server) -> dict[str, int]:
    conn = sqlite3.connect(server.data_dir / "ranker.db")
    try:
        rows = conn.execute(
            "SELECT d.event_id, count(r.id) FROM decisions d LEFT JOIN rewards r ON r.decision_id = d.id "
            "GROUP BY d.event_id"
        ).fetchall()
    finally:
        conn.close()
    return dict(rows)


def test_every_accepted_id_is_served_back(server):
    with requests.Session() as http:
        http.headers.update(ADMIN)
        for value in ACCEPTED:
            rank = {"actions": [{"id": "a"}, {"id": "b"}], "eventId": value, "deferActivation": True}
            response = http.post(server.url + f"{API}/rank", json=rank, timeout=10)
            assert response.status_code == 201, (value, response.text)
            assert response.json()["eventId"] == value
            event = server.url + f"{API}/events/{url_id(value)}"
            assert http.post(event + "/reward", json={"value": 0.5}, timeout=10).status_code == 204, value
            assert http.post(event + "/activate", timeout=10).status_code == 204, value

            for kind in ("evaluations", "featureImportances"):
                job = server.url + f"{API}/{kind}/{url_id(value)}"
                created = http.put(job, json=JOB, timeout=10)
                assert created.status_code == 200, (kind, value, created.text)
                assert http.get(job, timeout=10).json()["id"] == value
                assert http.delete(job, timeout=10).status_code == 204
                assert http.get(job, timeout=10).status_code == 404
            # POST evaluations takes the id from the body and answers where to find it
            created = http.post(server.url + f"{API}/evaluations", json={**JOB, "id": value}, timeout=10)
            assert created.status_code == 201, (value, created.text)
            assert http.get(server.url + created.headers["Location"], timeout=10).json()["id"] == value
            assert http.delete(server.url + created.headers["Location"], timeout=10).status_code == 204

    rewarded = rewards_by_event(server)
    assert {value: rewarded.get(value) for value in ACCEPTED} == dict.fromkeys(ACCEPTED, 1)


def test_every_refused_id_is_a_400_where_it_would_be_created_or_named(server):
    with requests.Session() as http:
        http.headers.update(ADMIN)
        for value in REFUSED:
            rank = {"actions": [{"id": "a"}], "eventId": value}
            response = http.post(server.url + f"{API}/rank", json=rank, timeout=10)
            assert (response.status_code, response.json()["error"]["code"]) == (400, "InvalidRankRequest"), value
            created = http.post(server.url + f"{API}/evaluations", json={**JOB, "id": value}, timeout=10)
            assert (created.status_code, created.json()["error"].get("target")) == (400, "id"), value
            if value.strip("/") == "":
                continue  # nothing between the slashes: no route names it (a 404, like any unknown path)
            answers = [
                http.post(server.url + f"{API}/events/{url_id(value)}/reward", json={"value": 1}, timeout=10),
                http.post(server.url + f"{API}/events/{url_id(value)}/activate", timeout=10),
                http.put(server.url + f"{API}/evaluations/{url_id(value)}", json=JOB, timeout=10),
                http.get(server.url + f"{API}/evaluations/{url_id(value)}", timeout=10),
                http.delete(server.url + f"{API}/featureImportances/{url_id(value)}", timeout=10),
            ]
            assert [a.status_code for a in answers] == [400] * len(answers), (value, [a.text for a in answers])


def test_bytes_that_are_not_utf8_do_not_name_the_replacement_character(server):
    # werkzeug decodes %FF%FE to U+FFFD U+FFFD; the event of that id must not get the reward
    with requests.Session() as http:
        http.headers.update(ADMIN)
        rank = {"actions": [{"id": "a"}], "eventId": "\ufffd\ufffd"}
        assert http.post(server.url + f"{API}/rank", json=rank, timeout=10).status_code == 201
        refused = http.post(server.url + f"{API}/events/%FF%FE/reward", json={"value": 1}, timeout=10)
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, "InvalidRewardRequest")
        assert http.get(server.url + f"{API}/evaluations/%FF%FE", timeout=10).status_code == 400
        encoded = quote("\ufffd\ufffd", safe="")
        assert (
            http.post(server.url + f"{API}/events/{encoded}/reward", json={"value": 1}, timeout=10).status_code == 204
        )

    assert rewards_by_event(server)["\ufffd\ufffd"] == 1
