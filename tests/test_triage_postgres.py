"""Triage on PostgreSQL: a pass, its review decisions and suppressions on the shared database, and
``ranker migrate --copy-to`` taking the triage's tables along (counts verified, ids kept and continued)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from postgres import log_rows
from triage_config import FLAGGED, NOW, REVIEW_KEY, load_accounts, make_app

from ranker.cli import cli
from ranker.harness import wait_for
from ranker.learning.trainer import Trainer
from ranker.outbox.delivery import Sender
from ranker.store import patterns, timestamp
from ranker.triage import items
from ranker.triage.flagging import run_pass

REVIEW = {"Ocp-Apim-Subscription-Key": REVIEW_KEY}
TRIAGE_TABLES = (
    "triage_patterns",
    "triage_pattern_switches",
    "triage_items",
    "triage_transitions",
    "triage_suppressions",
    "review_sessions",
    "review_secret",
)


def by_account(service) -> dict[str, dict]:
    return {item["account"]: item for item in items.list_items(service.store, top=500)["items"]}


def test_a_triage_pass_and_its_decisions_on_postgresql(tmp_path, pg_cluster, runner):
    url = pg_cluster.database()
    app = make_app(tmp_path, database_url=url)
    service = app.extensions["ranker"]
    load_accounts(service)
    done = run_pass(service, NOW)
    assert (done["due"], done["matched"], done["flagged"], done["errors"]) == (5, 2, 2, [])
    found = by_account(service)
    assert set(found) == FLAGGED and found["a1"]["evidence"]["matched"] == {
        "account.industry": "fintech",
        "account.health": 20,
    }
    assert run_pass(service, NOW + timedelta(days=1))["already"] == 2  # never flagged twice

    client = app.test_client()
    a1, a5 = found["a1"], found["a5"]
    approved = client.post(f"/triage/items/{a1['id']}/approve", headers=REVIEW, json={"body": "Edited."})
    assert approved.status_code == 200 and approved.json["state"] == "approved", approved.json
    assert client.post(f"/triage/items/{a1['id']}/approve", headers=REVIEW).status_code == 409
    sent = log_rows(tmp_path, url, "SELECT recipient, body, state FROM outbox WHERE key = ?", (f"triage:{a1['id']}",))
    assert sent == [{"recipient": "cs@a1.example", "body": "Edited.", "state": "pending"}]
    learned = log_rows(
        tmp_path,
        url,
        "SELECT d.activated_at, r.value FROM decisions d JOIN rewards r ON r.decision_id = d.id WHERE d.event_id = ?",
        (a1["event_id"],),
    )
    assert len(learned) == 1 and learned[0]["activated_at"] is not None
    assert learned[0]["value"] == service.settings.triage.rewards.approve_edited

    dismissed = client.post(f"/triage/items/{a5['id']}/dismiss", headers=REVIEW, json={"reason": "internal-merger"})
    assert dismissed.status_code == 200, dismissed.json
    service.signals.patch("account", "a5", {"contract": {"renewalDate": "2027-03-21"}}, NOW)
    later = run_pass(service, NOW + timedelta(days=2))
    assert (later["suppressed"], later["flagged"]) == (1, 0)  # a5's new renewal: suppressed by the dismissal
    report = client.get("/triage/report", headers=REVIEW).json
    assert report["flagged"] == {"items": 2, "accounts": 2, "pending": 0, "approved": 1, "dismissed": 1}

    # the commands work on the database the settings name
    env = {"RANKER_DATA_DIR": str(tmp_path), "RANKER_DATABASE_URL": url}
    config = ["--config", str(tmp_path / "ranker.toml")]
    ran = runner.invoke(cli, ["triage", "run", "--json", "--at", "2027-01-04T00:00:00Z", *config], env=env)
    assert ran.exit_code == 0 and json.loads(ran.output)["already"] == 1, ran.output
    reported = runner.invoke(cli, ["triage", "report", "--json", *config], env=env)
    assert reported.exit_code == 0 and json.loads(reported.output)["flagged"]["items"] == 2, reported.output
    listed = runner.invoke(cli, ["patterns", "list", *config], env=env)
    assert listed.exit_code == 0 and "fintech-unhealthy" in listed.output, listed.output


def test_copy_to_takes_the_triage_along(tmp_path, pg_cluster, runner):
    app = make_app(tmp_path)  # SQLite
    service = app.extensions["ranker"]
    load_accounts(service)
    run_pass(service, NOW)
    found, triage = by_account(service), service.settings.triage
    items.approve(service.store, triage, found["a1"]["id"], "review:x", now=NOW)
    items.dismiss(service.store, triage, found["a5"]["id"], "review:x", "internal-merger", now=NOW)
    mined = '{"name": "mined-1", "conditions": [{"path": "account.health", "lte": 0}], "description": "none"}'
    patterns.replace_mined(service.store, "account", [("mined-1", mined)], timestamp(NOW))
    patterns.switch(service.store, "mined-1", False, timestamp(NOW))
    from test_review import sign_in

    assert sign_in(app.test_client(), REVIEW_KEY).status_code == 303  # a review session and the pages' secret

    url = pg_cluster.database()
    env = {"RANKER_DATA_DIR": str(tmp_path), "RANKER_COPY_TO": url}
    copied = runner.invoke(cli, ["migrate", "--config", str(tmp_path / "ranker.toml")], env=env)
    assert copied.exit_code == 0, copied.output
    expected = (
        "triage_patterns 1, triage_pattern_switches 1, triage_items 2, triage_transitions 4, triage_suppressions 1, "
        "review_sessions 1, review_secret 1"
    )
    assert expected in copied.output
    for table in TRIAGE_TABLES:
        sql = f"SELECT * FROM {table} ORDER BY 1"
        assert log_rows(tmp_path, url, sql) == log_rows(tmp_path, None, sql), table

    # on PostgreSQL the triage goes on: a new renewal is a new item, numbered after the copied ones
    (tmp_path / "pg").mkdir()
    node = make_app(tmp_path / "pg", database_url=url).extensions["ranker"]
    node.signals.patch("account", "a1", {"contract": {"renewalDate": "2027-03-20"}}, NOW)
    done = run_pass(node, NOW + timedelta(days=1))
    assert (done["flagged"], done["already"], done["items"]) == (1, 1, [3])  # a5: flagged before the copy


def test_only_the_leading_trainer_runs_triage_passes_and_sends_the_outbox(tmp_path, pg_cluster):
    """Two nodes' trainers on one database (triage.schedule PT1H): the leader passes at its start; the standby
    runs no pass and sends no message while it stands by; when it takes over, its first pass comes, and its
    sender (the only one here, as ``ranker train`` starts it) delivers what waits."""
    url = pg_cluster.database()
    received: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    sink = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    outbox = {"delivery": "webhook", "webhook_url": f"http://127.0.0.1:{sink.server_address[1]}/", "interval": 0.1}
    nodes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        nodes.append(make_app(tmp_path / name, database_url=url, outbox=outbox).extensions["ranker"])
    service, today = nodes[0], datetime.now(UTC).date()

    def renewing(account: str, days: int) -> dict:
        return {account: ("fintech", 10, (today + timedelta(days=days)).isoformat(), False)}

    load_accounts(service, renewing("t1", 30), datetime.now(UTC) - timedelta(days=1))
    trainers = [Trainer(node.settings) for node in nodes]
    stops = [threading.Event(), threading.Event()]
    threads = [
        threading.Thread(target=t.run_forever, args=(stop, 0.05)) for t, stop in zip(trainers, stops, strict=True)
    ]
    Sender(nodes[1].settings.outbox, trainers[1].database, stops[1], trainers[1].leading).start()
    try:
        threads[0].start()
        assert wait_for(lambda: set(by_account(service)) == {"t1"}), "the leader's first pass did not flag t1"
        threads[1].start()
        load_accounts(service, renewing("t2", 40), datetime.now(UTC))
        t1 = by_account(service)["t1"]
        items.approve(service.store, service.settings.triage, t1["id"], "review:x", now=datetime.now(UTC))
        time.sleep(1.5)  # the leader's next pass is an hour away: a pass by the standby would flag t2
        assert set(by_account(service)) == {"t1"} and received == []  # and its sender sent nothing
        stops[0].set()
        threads[0].join(30)
        assert wait_for(lambda: set(by_account(service)) == {"t1", "t2"}), "the new leader ran no pass"
        assert wait_for(lambda: len(received) == 1), "the new leader's sender sent nothing"
        assert json.loads(received[0])["key"] == f"triage:{t1['id']}"
    finally:
        for stop, thread in zip(stops, threads, strict=True):
            stop.set()
            if thread.is_alive():
                thread.join(30)
        for trainer in trainers:
            trainer.close()
        sink.shutdown()
        sink.server_close()


def test_the_review_pages_on_postgresql(tmp_path, pg_cluster):
    """Sign in, the queue (names and segments read in one query), approve an item from its page, the loop view
    (reward per day) and the outbox page, on PostgreSQL."""
    import re

    from test_review import csrf_of, sign_in

    url = pg_cluster.database()
    app = make_app(tmp_path, database_url=url)
    service = app.extensions["ranker"]
    load_accounts(service)
    service.signals.patch("account", "a5", {"segment": "smb"}, NOW)
    run_pass(service, NOW)
    client = app.test_client()
    assert sign_in(client, REVIEW_KEY).status_code == 303
    page = client.get("/review/").text
    assert re.search(r'id="waiting">2<', page) and ">Account A1<" in page
    assert ">Account A1<" not in client.get("/review/?segment=smb").text
    a1 = by_account(service)["a1"]
    form = client.get(f"/review/items/{a1['id']}").text
    decision = {"csrf": csrf_of(form), "action": "approve", "recipient": a1["recipient"]}
    decision |= {"subject": a1["draft_subject"], "body": a1["draft_body"]}
    assert client.post(f"/review/items/{a1['id']}/approve", data=decision).status_code == 303
    assert re.search(r'id="decided-today">1<', client.get("/review/").text)
    assert by_account(service)["a1"]["state"] == "approved"
    loop = client.get("/review/loops/cs-next-best-action").text
    assert re.search(r"<td>\d{4}-\d\d-\d\d</td><td>\d+</td><td>1</td>", loop)  # one decision rewarded
    assert f"triage:{a1['id']}" in client.get("/review/outbox").text


def test_the_demo_command_on_postgresql(tmp_path, pg_cluster, runner, monkeypatch):
    """``ranker demo renewal-triage`` with RANKER_DATABASE_URL: the company, its patterns and triage items go into
    the database (no SQLite file beside the settings); a database holding data already is refused."""
    url = pg_cluster.database()
    monkeypatch.setenv("RANKER_DATABASE_URL", url)
    folder = tmp_path / "demo"
    args = ["demo", "renewal-triage", "--accounts", "50", "--days", "180"]
    result = runner.invoke(cli, [*args, "--data-dir", str(folder)])
    assert result.exit_code == 0, result.output
    assert not (folder / "ranker.db").exists()
    assert f"RANKER_DATABASE_URL=<the same URL> ranker serve --config {folder / 'ranker.toml'}" in result.output
    flagged = int(result.output.split(" match an enabled pattern")[0].rsplit(" ", 1)[1])
    sent = int(result.output.split(" usage and ticket events sent")[0].rsplit(" ", 1)[1])
    assert log_rows(folder, url, "SELECT count(*) AS n FROM signal_versions WHERE type = 'account'") == [{"n": 50}]
    assert log_rows(folder, url, "SELECT count(*) AS n FROM signal_events") == [{"n": sent}]
    assert log_rows(folder, url, "SELECT count(*) AS n FROM triage_items") == [{"n": flagged}]
    decisions = log_rows(folder, url, "SELECT count(*) AS n FROM decisions WHERE deferred = 1")
    assert decisions == [{"n": flagged}]  # a flagged account's next best action awaits its review
    again = runner.invoke(cli, [*args, "--data-dir", str(tmp_path / "other")])
    assert again.exit_code == 1 and "needs an empty database" in again.output, again.output
    assert not (tmp_path / "other" / "ranker.toml").exists()
