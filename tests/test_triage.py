"""The triage pass, risk items and review decisions: flagging exactly the accounts at risk, once per renewal,
the loop's rules, drafts (templates and a real drafter endpoint), atomic decisions, outcomes and the report."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import ADMIN_KEY, RANK_KEY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from triage_config import (
    ACCOUNTS,
    BEFORE,
    CONFIG,
    FLAGGED,
    NOW,
    OTHER_REVIEW_KEY,
    REVIEW_KEY,
    SIGNALS_KEY,
    load_accounts,
    make_app,
)

from ranker.harness import wait_for
from ranker.store import timestamp
from ranker.triage import items
from ranker.triage.definitions import Drafter
from ranker.triage.drafting import draft
from ranker.triage.flagging import run_pass
from ranker.triage.report import report, table


@pytest.fixture
def app(tmp_path):
    app = make_app(tmp_path)
    load_accounts(app.extensions["ranker"])
    return app


@pytest.fixture
def service(app):
    return app.extensions["ranker"]


def review(key: str = REVIEW_KEY) -> dict[str, str]:
    return {"Ocp-Apim-Subscription-Key": key}


def by_account(service) -> dict[str, dict]:
    return {item["account"]: item for item in items.list_items(service.store, top=500)["items"]}


def db(service) -> sqlite3.Connection:
    conn = sqlite3.connect(service.settings.database_path)
    conn.row_factory = sqlite3.Row
    return conn


# -- flagging -------------------------------------------------------------------------------------------


def test_the_pass_flags_exactly_the_matching_accounts_renewing_within_the_horizon(service):
    done = run_pass(service, NOW)
    assert (done["due"], done["matched"], done["flagged"], done["errors"]) == (5, 2, 2, [])
    found = by_account(service)
    assert set(found) == FLAGGED
    a1 = found["a1"]
    assert a1["state"] == "pending" and a1["renewal_date"] == "2027-02-15" and a1["pattern_name"] == "fintech-unhealthy"
    assert a1["evidence"]["matched"] == {"account.industry": "fintech", "account.health": 20}
    history = a1["evidence"]["history"]["account.health"]
    assert len(history) == 7 and history[-1] == {"at": timestamp(NOW), "value": 20}
    assert history[0]["value"] is None  # before the CRM import: the history is point-in-time
    assert a1["recipient"] == "cs@a1.example" and a1["value"] == 20_000
    assert {r["id"] for r in a1["ranking"]} == {"technical-review", "training", "discount-offer"}
    assert a1["action_id"] == a1["ranking"][0]["id"]
    assert a1["explanation"]["inferenceExplanation"]  # explained although the loop does not turn it on
    decision = db(service).execute("SELECT deferred, activated_at FROM decisions WHERE event_id = ?", (a1["event_id"],))
    assert tuple(decision.fetchone()) == (1, None)
    assert a1["drafted_by"] == "template" and a1["draft_note"] is None
    assert (
        a1["draft_subject"]
        == {
            "technical-review": "Technical review for Account A1",
            "training": "Training for Account A1",
            "discount-offer": "An offer for Account A1",
        }[a1["action_id"]]
    )


def test_an_account_is_never_flagged_twice_for_one_renewal(service):
    assert run_pass(service, NOW)["flagged"] == 2
    again = run_pass(service, NOW + timedelta(days=1))
    assert (again["flagged"], again["already"]) == (0, 2)
    # a new renewal date is a new renewal
    service.signals.patch("account", "a1", {"contract": {"renewalDate": "2027-03-20"}}, NOW)
    third = run_pass(service, NOW + timedelta(days=2))
    assert third["flagged"] == 1
    assert {i["renewal_date"] for i in items.list_items(service.store, top=500)["items"] if i["account"] == "a1"} == {
        "2027-02-15",
        "2027-03-20",
    }


def test_the_entitlement_excludes_the_discount_for_a_locked_price_account(service):
    run_pass(service, NOW)
    a5 = by_account(service)["a5"]
    assert a5["action_id"] != "discount-offer"
    assert {r["id"]: r["probability"] for r in a5["ranking"]}["discount-offer"] == 0
    assert a5["explanation"]["rules"]["excluded"] == {"discount-offer": ["entitlement:no-discount-on-locked-price"]}
    assert "discount-offer" not in by_account(service)["a1"]["explanation"]["rules"]["excluded"]


def test_a_suppressing_dismissal_keeps_the_account_from_being_flagged(service):
    run_pass(service, NOW)
    found = by_account(service)
    triage = service.settings.triage
    items.dismiss(service.store, triage, found["a1"]["id"], "review:x", "internal-merger", "merging", now=NOW)
    items.dismiss(service.store, triage, found["a5"]["id"], "review:x", "wrong-action", now=NOW)
    for account, renewal in (("a1", "2027-04-02"), ("a5", "2027-03-21")):  # new renewals of both
        service.signals.patch("account", account, {"contract": {"renewalDate": renewal}}, NOW)
    later = NOW + timedelta(days=1)
    done = run_pass(service, later)
    assert (done["suppressed"], done["flagged"]) == (1, 1)  # a1 suppressed; a5's reason does not suppress
    assert done["items"] and by_account(service)["a5"]["id"] == done["items"][0]
    # the suppression lasts the reason's P90D from the dismissal
    assert run_pass(service, NOW + timedelta(days=89))["suppressed"] == 1
    assert run_pass(service, NOW + timedelta(days=91))["suppressed"] == 0


# -- decisions ------------------------------------------------------------------------------------------


def test_approving_writes_the_item_transition_outbox_activation_and_reward(app, service):
    run_pass(service, NOW)
    item = by_account(service)["a1"]
    client = app.test_client()
    answer = client.post(f"/triage/items/{item['id']}/approve", headers=review())
    assert answer.status_code == 200, answer.json
    body = answer.json
    assert body["state"] == "approved" and body["reward"] == 1.0
    assert body["decided_by"].startswith("review:") and len(body["decided_by"]) == len("review:") + 12
    assert body["final_subject"] == item["draft_subject"] and body["final_body"] == item["draft_body"]
    assert [(t["from_state"], t["to_state"]) for t in body["transitions"]] == [
        (None, "pending"),
        ("pending", "approved"),
    ]
    conn = db(service)
    outbox = conn.execute("SELECT * FROM outbox WHERE key = ?", (f"triage:{item['id']}",)).fetchone()
    assert (outbox["recipient"], outbox["subject"], outbox["body"], outbox["state"]) == (
        "cs@a1.example",
        item["draft_subject"],
        item["draft_body"],
        "pending",
    )
    decision = conn.execute("SELECT id, activated_at FROM decisions WHERE event_id = ?", (item["event_id"],)).fetchone()
    assert decision["activated_at"] is not None
    rewards = conn.execute("SELECT value FROM rewards WHERE decision_id = ?", (decision["id"],)).fetchall()
    assert [r[0] for r in rewards] == [1.0]
    # decided once
    for path, payload in (("approve", None), ("dismiss", {"reason": "other"})):
        again = client.post(f"/triage/items/{item['id']}/{path}", headers=review(), json=payload)
        assert again.status_code == 409 and again.json["error"]["code"] == "ItemDecided"
    assert conn.execute("SELECT count(*) FROM rewards").fetchone()[0] == 1


def test_an_edited_approval_gives_the_edit_reward_and_sends_the_edited_text(app, service):
    run_pass(service, NOW)
    item = by_account(service)["a5"]
    edit = {"subject": "Let us talk", "body": "Dear team, ...", "recipient": "ceo@a5.example"}
    body = app.test_client().post(f"/triage/items/{item['id']}/approve", headers=review(ADMIN_KEY), json=edit).json
    assert (body["reward"], body["final_subject"], body["recipient"]) == (0.5, "Let us talk", "ceo@a5.example")
    assert body["decided_by"].startswith("admin:")
    assert body["transitions"][-1]["detail"]["edited"] is True
    row = db(service).execute("SELECT subject, body FROM outbox WHERE key = ?", (f"triage:{item['id']}",)).fetchone()
    assert tuple(row) == ("Let us talk", "Dear team, ...")


def test_a_failing_approval_writes_nothing(app, service):
    run_pass(service, NOW)
    item = by_account(service)["a1"]
    conn = db(service)
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON rewards BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    conn.commit()
    answer = app.test_client().post(f"/triage/items/{item['id']}/approve", headers=review())
    assert answer.status_code == 503 and answer.json["error"]["code"] == "StoreUnavailable"
    after = items.get_item(service.store, item["id"])
    assert after["state"] == "pending" and after["decided_at"] is None and len(after["transitions"]) == 1
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    activated = conn.execute("SELECT activated_at FROM decisions WHERE event_id = ?", (item["event_id"],)).fetchone()
    assert activated[0] is None
    assert conn.execute("SELECT count(*) FROM rewards").fetchone()[0] == 0
    conn.execute("DROP TRIGGER refuse")
    conn.commit()
    assert app.test_client().post(f"/triage/items/{item['id']}/approve", headers=review()).status_code == 200


def test_dismissing_rewards_the_decision_and_records_the_reason(app, service):
    run_pass(service, NOW)
    item = by_account(service)["a1"]
    payload = {"reason": "already-in-contact", "text": "spoke to them on Monday"}
    body = app.test_client().post(f"/triage/items/{item['id']}/dismiss", headers=review(), json=payload).json
    assert (body["state"], body["dismiss_reason"], body["dismiss_text"], body["reward"]) == (
        "dismissed",
        "already-in-contact",
        "spoke to them on Monday",
        0.0,
    )
    assert body["transitions"][-1]["detail"]["suppressed_until"] is not None
    conn = db(service)
    decision = conn.execute("SELECT id, activated_at FROM decisions WHERE event_id = ?", (item["event_id"],)).fetchone()
    assert decision["activated_at"] is not None
    assert [r[0] for r in conn.execute("SELECT value FROM rewards WHERE decision_id = ?", (decision["id"],))] == [0.0]
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


# -- drafts ---------------------------------------------------------------------------------------------


class DrafterServer:
    """A real HTTP drafter on 127.0.0.1: answers with ``answer`` (status, body) after ``delay`` seconds, its body
    a byte every ``drip`` seconds when given."""

    def __init__(self, status: int = 200, answer: object = None, delay: float = 0.0, drip: float = 0.0):
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                outer.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                time.sleep(delay)
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if not drip:
                        self.wfile.write(data)
                    for byte in data if drip else ():  # one byte at a time: no single read waits long
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(drip)
                except OSError:  # the client gave up (its timeout)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/draft"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_drafter_endpoint_writes_the_draft(tmp_path):
    drafter = DrafterServer(answer={"subject": "Hello from the model", "body": "A drafted body."})
    try:
        app = make_app(
            tmp_path, CONFIG.replace('schedule = "PT1H"', f'schedule = "PT1H"\ndrafter = {{ url = "{drafter.url}" }}')
        )
        service = app.extensions["ranker"]
        load_accounts(service)
        run_pass(service, NOW)
    finally:
        drafter.close()
    a1 = by_account(service)["a1"]
    assert (a1["draft_subject"], a1["draft_body"], a1["drafted_by"], a1["draft_note"]) == (
        "Hello from the model",
        "A drafted body.",
        "drafter",
        None,
    )
    sent = next(r for r in drafter.received if r["account"]["id"] == "a1")
    assert sent["account"]["name"] == "Account A1" and sent["action"]["id"] == a1["action_id"]
    assert sent["pattern"]["name"] == "fintech-unhealthy" and sent["pattern"]["matched"]["account.health"] == 20
    assert sent["talking_points"] == {"reporting": ["Reporting API p95 latency down 40 % since October"]}


@pytest.mark.parametrize(
    "status, answer, delay, drip, note",
    [
        (200, {"subject": "s", "body": "b"}, 1.0, 0.0, "no answer within 0.2 s"),
        (200, {"subject": "s", "body": "b" * 40}, 0.0, 0.05, "no answer within 0.2 s"),  # 2.5 s, a byte at a time
        (500, {"error": "overloaded"}, 0.0, 0.0, "HTTP 500"),
        (200, {"subject": "only a subject"}, 0.0, 0.0, 'no "subject" and "body"'),
        (200, ["not", "an", "object"], 0.0, 0.0, "not a JSON object"),
    ],
)
def test_a_failing_drafter_falls_back_to_the_template_and_says_so(tmp_path, status, answer, delay, drip, note):
    drafter = DrafterServer(status, answer, delay, drip)
    try:
        app = make_app(tmp_path)
        settings = app.extensions["ranker"].settings.triage
        settings = settings.model_copy(update={"drafter": Drafter(url=drafter.url, timeout=0.2)})
        action = next(a for a in settings.playbook if a.id == "technical-review")
        context = {
            "account": {"name": "Acme"},
            "pattern": {"description": "fintech, unhealthy", "matched": {"account.health": 9}},
            "action": {"id": action.id},
            "talking_points": settings.talking_points,
        }
        started = time.monotonic()
        written = draft(action, context, settings)
        waited = time.monotonic() - started
    finally:
        drafter.close()
    assert waited < 1.0  # the timeout holds for the whole answer, however it arrives
    assert written.drafted_by == "template" and note in written.note and "the template's draft is used" in written.note
    assert written.subject == "Technical review for Acme"
    assert written.body.startswith("Schedule a technical review for Acme. Focus on the Reporting API.\n- Reporting API")
    assert written.body.endswith("(health 9)")


def test_templates_render_in_a_sandbox(tmp_path):
    app = make_app(tmp_path)
    settings = app.extensions["ranker"].settings.triage
    action = settings.playbook[0].model_copy(update={"template": "{{ account.__class__.__mro__ }}"})
    written = draft(action, {"account": {"name": "x"}, "pattern": {}, "talking_points": {}}, settings)
    assert "the template cannot be rendered" in written.note and "unsafe" in written.note


# -- keys and bad input ---------------------------------------------------------------------------------


def test_a_review_key_reads_and_decides_items_and_nothing_else(app):
    client = app.test_client()
    assert client.get("/triage/items", headers=review()).status_code == 200
    for method, path, payload in (
        ("post", "/personalizer/v1.0/rank", {"actions": [{"id": "a"}]}),
        ("post", "/personalizer/v1.0/events/e/reward", {"value": 1}),
        ("get", "/personalizer/v1.0/configurations/service", None),
        ("get", "/entities/account/a1", None),
        ("get", "/metrics", None),
    ):
        answer = getattr(client, method)(path, headers=review(), json=payload)
        assert answer.status_code == 403, path
        assert answer.json["error"]["code"] == "OperationNotAllowed"
    for key in (RANK_KEY, SIGNALS_KEY, OTHER_REVIEW_KEY):
        answer = client.get("/triage/items", headers=review(key))
        assert answer.status_code == 403 and answer.json["error"]["code"] == "OperationNotAllowed", key
    assert client.get("/triage/report").status_code == 401
    assert client.post("/triage/patterns/fintech-unhealthy/disable", headers=review(RANK_KEY)).status_code == 403


def test_list_filters_sorts_and_pages(app, service):
    run_pass(service, NOW)
    client = app.test_client()

    def accounts(query: str) -> list[str]:
        answer = client.get(f"/triage/items?{query}", headers=review())
        assert answer.status_code == 200, answer.json
        return [i["account"] for i in answer.json["items"]]

    assert accounts("sort=renewal") == ["a1", "a5"]
    assert accounts("sort=value") == ["a1", "a5"]  # contract value 20,000 against 10,000
    assert accounts("renewal_from=2027-02-16&renewal_to=2027-03-01") == ["a5"]
    assert accounts("sort=renewal&top=1&skip=1") == ["a5"]
    assert accounts("state=approved") == [] and accounts("loop=other") == []
    assert client.get("/triage/items?top=1", headers=review()).json["count"] == 2


@pytest.mark.parametrize(
    "method, path, payload, status, code",
    [
        ("get", "/triage/items?top=0", None, 400, "InvalidArgument"),
        ("get", "/triage/items?top=abc", None, 400, "InvalidArgument"),
        ("get", "/triage/items?sort=price", None, 400, "InvalidArgument"),
        ("get", "/triage/items?state=open", None, 400, "InvalidArgument"),
        ("get", "/triage/items?renewal_from=soon", None, 400, "InvalidArgument"),
        ("get", "/triage/items?renewal_to=0", None, 400, "InvalidArgument"),  # not seconds since 1970
        ("get", "/triage/items?state=pending&state=approved", None, 400, "InvalidArgument"),
        ("get", "/triage/items?colour=red", None, 400, "InvalidArgument"),
        ("get", "/triage/items/abc", None, 404, "ResourceNotFound"),
        ("get", "/triage/items/99999", None, 404, "ResourceNotFound"),
        ("get", "/triage/items/99999999999999999999999", None, 404, "ResourceNotFound"),
        ("post", "/triage/items/1/approve", {"subject": 5}, 400, "InvalidArgument"),
        ("post", "/triage/items/1/approve", {"subject": ""}, 400, "InvalidArgument"),
        ("post", "/triage/items/1/approve", {"colour": "red"}, 400, "InvalidArgument"),
        ("post", "/triage/items/1/approve", [1], 400, "InvalidArgument"),
        ("post", "/triage/items/99999/approve", None, 404, "ResourceNotFound"),
        ("post", "/triage/items/1/dismiss", {"reason": "bored"}, 400, "InvalidArgument"),
        ("post", "/triage/items/1/dismiss", {}, 400, "InvalidArgument"),
        ("post", "/triage/items/1/dismiss", None, 415, "UnsupportedMediaType"),
        ("post", "/triage/items/1/dismiss", {"reason": "other", "text": 7}, 400, "InvalidArgument"),
        ("post", "/triage/patterns/nothing/enable", None, 404, "ResourceNotFound"),
        ("get", "/triage/items/1/approve", None, 405, "MethodNotAllowed"),
    ],
)
def test_bad_input_gets_a_clear_4xx(app, service, method, path, payload, status, code):
    run_pass(service, NOW)
    answer = getattr(app.test_client(), method)(path, headers=review(), json=payload)
    assert answer.status_code == status, answer.json
    assert answer.json["error"]["code"] == code


def test_a_body_that_is_not_json_is_refused(app, service):
    run_pass(service, NOW)
    client = app.test_client()
    for data, content_type, status in ((b"{", "application/json", 400), (b"x", "text/plain", 415)):
        answer = client.post("/triage/items/1/approve", headers=review(), data=data, content_type=content_type)
        assert answer.status_code == status and "error" in answer.json
    assert items.get_item(app.extensions["ranker"].store, 1)["state"] == "pending"


def test_patterns_are_listed_and_switched(app, service):
    client = app.test_client()
    names = [p["name"] for p in client.get("/triage/patterns", headers=review()).json["patterns"]]
    assert names == ["fintech-unhealthy"]
    answer = client.post("/triage/patterns/fintech-unhealthy/disable", headers=review())
    assert answer.status_code == 200 and answer.json["enabled"] is False
    assert run_pass(service, NOW)["flagged"] == 0
    assert client.post("/triage/patterns/fintech-unhealthy/enable", headers=review()).json["enabled"] is True
    assert run_pass(service, NOW)["flagged"] == 2


# -- outcomes and the report ----------------------------------------------------------------------------


def test_outcomes_and_the_report_on_a_known_scenario(app, service, runner, tmp_path):
    run_pass(service, NOW)
    found = by_account(service)
    triage = service.settings.triage
    items.approve(service.store, triage, found["a1"]["id"], "review:x", now=NOW + timedelta(hours=24))
    items.dismiss(service.store, triage, found["a5"]["id"], "review:x", "wrong-action", now=NOW + timedelta(hours=48))
    # outcomes: a1 renewed, a5 churned (both flagged), a8 churned unflagged; a3 renewed
    for account, outcome, day in (
        ("a1", "renewed", 46),
        ("a5", "churned", 60),
        ("a8", "churned", 41),
        ("a3", "renewed", 31),
    ):
        service.signals.patch("account", account, {"contract": {"outcome": outcome}}, NOW + timedelta(days=day))
    # an outcome left from an earlier renewal is not this renewal's
    service.signals.patch("account", "a4", {"contract": {"outcome": "churned"}}, BEFORE)
    assert run_pass(service, NOW + timedelta(days=30))["outcomes"] == 0  # no renewal passed with an outcome yet
    later = NOW + timedelta(days=73)  # 2027-03-15
    assert run_pass(service, later)["outcomes"] == 2
    a1 = items.get_item(service.store, found["a1"]["id"])
    assert (a1["outcome"], a1["outcome_at"]) == ("renewed", timestamp(NOW + timedelta(days=46)))
    assert a1["transitions"][-1]["detail"]["outcome"] == "renewed"

    data = report(service.store, triage, later)
    assert data["flagged"] == {"items": 2, "accounts": 2, "pending": 0, "approved": 1, "dismissed": 1}
    assert data["decisions"]["approval_rate"] == 0.5 and data["decisions"]["median_hours_to_decision"] == 36.0
    assert data["decisions"]["dismissed_by_reason"] == {"wrong-action": 1}
    assert data["outcomes"]["acted"] == {"with_outcome": 1, "renewed": 1, "renewal_rate": 1.0}
    assert data["outcomes"]["dismissed"] == {"with_outcome": 1, "renewed": 0, "renewal_rate": 0.0}
    assert data["months"] == [
        {"month": "2027-02", "churned": 1, "flagged": 0, "surprise": 1},  # a8 (a4's outcome is an earlier one's)
        {"month": "2027-03", "churned": 1, "flagged": 1, "surprise": 0},
    ]
    text = table(data)
    assert "50.0 % of 2 decided" in text and "2027-02" in text
    answer = app.test_client().get("/triage/report", headers=review())
    assert answer.status_code == 200 and answer.json["flagged"]["items"] == 2

    from ranker.cli import cli

    config = tmp_path / "ranker.toml"
    result = runner.invoke(cli, ["triage", "report", "--config", str(config)], env={"RANKER_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "approval rate      50.0 %" in result.output and "surprise churn" in result.output


def test_ranker_triage_run(tmp_path, runner, service):
    from ranker.cli import cli

    config = str(tmp_path / "ranker.toml")
    env = {"RANKER_DATA_DIR": str(tmp_path)}
    result = runner.invoke(cli, ["triage", "run", "--config", config, "--at", "2027-01-01T12:00:00Z"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("2 accounts flagged (5 renewing within the horizon, 2 matching a pattern")
    again = runner.invoke(cli, ["triage", "run", "--json", "--config", config, "--at", "2027-01-02"], env=env)
    assert json.loads(again.output)["already"] == 2
    bad = runner.invoke(cli, ["triage", "run", "--config", config, "--at", "tomorrow"], env=env)
    assert bad.exit_code != 0 and "--at" in bad.output


def test_every_scenario_account_is_accounted_for():
    """The scenario's expectations hold by construction: flagged means fintech, health <= 50, renewing within
    90 days of NOW."""
    expected = {
        account
        for account, (industry, health, renewal, _) in ACCOUNTS.items()
        if industry == "fintech" and health <= 50 and "2027-01-01" <= renewal <= "2027-04-01"
    }
    assert expected == FLAGGED


def test_the_trainer_process_runs_the_pass_on_its_schedule(tmp_path):
    """A real `ranker train` process flags at its start and again every triage.schedule (here 1 s)."""
    config = CONFIG.replace('schedule = "PT1H"', 'schedule = "PT1S"')
    app = make_app(tmp_path, config)
    service = app.extensions["ranker"]
    today = datetime.now(UTC).date()
    soon = {"t1": ("fintech", 10, (today + timedelta(days=30)).isoformat(), False)}
    load_accounts(service, soon, datetime.now(UTC) - timedelta(days=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    argv = [sys.executable, "-m", "ranker", "train", "--config", str(tmp_path / "ranker.toml")]
    trainer = subprocess.Popen([*argv, "--data-dir", str(tmp_path)], env=env, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: set(by_account(service)) == {"t1"}), "the first pass did not flag t1"
        # an account that comes into the horizon later is flagged by a later pass
        later = {"t2": ("fintech", 10, (today + timedelta(days=60)).isoformat(), False)}
        load_accounts(service, later, datetime.now(UTC))
        assert wait_for(lambda: set(by_account(service)) == {"t1", "t2"}), "no later pass flagged t2"
    finally:
        trainer.terminate()
        _, err = trainer.communicate(timeout=30)
    assert trainer.returncode == 0, err.decode()
    assert b"triage pass" in err


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
bodies = json_values | st.fixed_dictionaries(
    {},
    optional={
        "subject": json_values,
        "body": json_values,
        "recipient": json_values,
        "reason": st.sampled_from(["other", "internal-merger", ""]) | json_values,
        "text": json_values,
    },
)
queries = st.dictionaries(
    st.sampled_from(["state", "loop", "renewal_from", "renewal_to", "sort", "top", "skip", "x"]),
    st.sampled_from(["", "0", "1", "-1", "500", "501", "risk", "pending", "2027-02-01", "2027-13-01", "%00", "é"])
    | st.text(max_size=6),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    operation=st.sampled_from(["approve", "dismiss", "get", "list"]),
    item=st.sampled_from(["1", "2", "0", "-1", "x", "1.0", "%C3%A9", "9" * 30]),
    body=bodies,
    query=queries,
)
def test_no_input_gets_a_500(app, service, operation, item, body, query):
    if not by_account(service):
        run_pass(service, NOW)
    client = app.test_client()
    if operation == "list":
        answer = client.get("/triage/items", query_string=query, headers=review())
    elif operation == "get":
        answer = client.get(f"/triage/items/{item}", headers=review())
    else:
        answer = client.post(f"/triage/items/{item}/{operation}", headers=review(), json=body)
    assert answer.status_code in (200, 400, 404, 405, 409, 415), (answer.status_code, answer.data)
    if answer.status_code != 200:
        assert set(answer.json["error"]) >= {"code", "message"}


def test_the_drafter_must_be_an_http_url(tmp_path):
    from ranker.core.settings import SettingsError

    config = CONFIG.replace('schedule = "PT1H"', 'schedule = "PT1H"\ndrafter = { url = "file:///etc/passwd" }')
    with pytest.raises(SettingsError, match="must be an http:// or https:// URL"):
        make_app(tmp_path, config)


def test_without_a_playbook_accounts_are_flagged_with_their_evidence_and_no_rank(tmp_path):
    config = CONFIG[: CONFIG.index("[[triage.playbook]]")]
    service = make_app(tmp_path, config).extensions["ranker"]
    load_accounts(service)
    assert run_pass(service, NOW)["flagged"] == 2
    a1 = by_account(service)["a1"]
    assert (a1["event_id"], a1["ranking"], a1["drafted_by"], a1["draft_note"]) == (
        None,
        [],
        "none",
        "no playbook: no draft",
    )
    assert a1["evidence"]["matched"]["account.health"] == 20
