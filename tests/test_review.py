"""The review pages through Flask's test client: sign-in and sessions, CSRF, the loop view, the outbox page,
escaping. The browser tests (tests/test_review_browser.py) drive the same pages in Chromium."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ranker.app import create_app
from ranker.core.settings import hash_key
from ranker.store import outbox, timestamp
from ranker.web.base import SESSION_COOKIE

REVIEW_KEY = "review-key-0123456789"
ADMIN_KEY = "admin-key-0123456789"
RANK_KEY = "rank-key-0123456789"
SIGNALS_KEY = "signals-key-0123456789"
DOCS = (Path(__file__).parent.parent / "docs" / "review.md").read_text()


def keyed(tmp_path: Path, **more):
    keys = [
        {"role": "review", "sha256": hash_key(REVIEW_KEY)},
        {"role": "admin", "sha256": hash_key(ADMIN_KEY)},
        {"role": "rank", "sha256": hash_key(RANK_KEY)},
        {"role": "signals", "sha256": hash_key(SIGNALS_KEY)},
    ]
    loop = {"keys": keys, "isInferenceExplainabilityEnabled": True}
    return create_app({"data_dir": tmp_path, "loops": {"cards": loop}, **more})


@pytest.fixture
def app(tmp_path):
    return keyed(tmp_path)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def sign_in(client, key: str, **kwargs):
    form = client.get("/review/sign-in", **kwargs)
    return client.post("/review/sign-in", data={"csrf": csrf_of(form.text), "key": key}, **kwargs)


def session_cookie(client):
    cookie = client.get_cookie(SESSION_COOKIE, path="/review")
    return cookie.value if cookie else None


@pytest.mark.parametrize("key", [REVIEW_KEY, ADMIN_KEY])
def test_a_review_or_admin_key_signs_in_with_a_strict_httponly_expiring_cookie(client, key):
    assert client.get("/review/loops").headers["Location"].startswith("/review/sign-in")
    answer = sign_in(client, key)
    assert answer.status_code == 303
    cookie = next(c for c in answer.headers.getlist("Set-Cookie") if c.startswith(SESSION_COOKIE + "="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/review" in cookie
    assert "Max-Age=28800" in cookie and "Secure" not in cookie  # plain HTTP: not Secure
    page = client.get("/review/loops")
    assert page.status_code == 200 and "cards" in page.text
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


@pytest.mark.parametrize("key, status", [(RANK_KEY, 403), (SIGNALS_KEY, 403), ("no-such-key", 401), ("", 401)])
def test_other_keys_cannot_sign_in(client, key, status):
    answer = sign_in(client, key)
    assert answer.status_code == status
    assert session_cookie(client) is None
    assert client.get("/review/loops").status_code == 303  # still sent to sign-in


def test_signing_in_makes_a_new_session_id_and_ends_the_previous_one(client):
    client.set_cookie(SESSION_COOKIE, "planted-by-someone-else", path="/review")
    sign_in(client, REVIEW_KEY)
    first = session_cookie(client)
    assert first not in (None, "planted-by-someone-else")
    sign_in(client, REVIEW_KEY)  # signing in again, while signed in, as a second visit to sign-in would
    second = session_cookie(client)
    assert second != first
    client.set_cookie(SESSION_COOKIE, first, path="/review")
    assert client.get("/review/loops").status_code == 303  # the old id was ended


def test_sign_out_ends_the_session_on_the_server(client):
    sign_in(client, REVIEW_KEY)
    copied = session_cookie(client)
    page = client.get("/review/loops")
    assert client.post("/review/sign-out", data={"csrf": csrf_of(page.text)}).status_code == 303
    assert client.get("/review/loops").status_code == 303
    client.set_cookie(SESSION_COOKIE, copied, path="/review")  # a copy of the cookie is worth nothing now
    assert client.get("/review/loops").status_code == 303
    assert client.post("/review/outbox/resolve", data={"key": "x", "answer": "sent"}).status_code == 401


def test_forms_without_the_csrf_token_are_refused(client):
    form = client.get("/review/sign-in")
    assert client.post("/review/sign-in", data={"key": REVIEW_KEY}).status_code == 403
    assert client.post("/review/sign-in", data={"key": REVIEW_KEY, "csrf": "0" * 64}).status_code == 403
    assert session_cookie(client) is None
    client.post("/review/sign-in", data={"csrf": csrf_of(form.text), "key": REVIEW_KEY})
    assert client.post("/review/sign-out").status_code == 403
    assert client.post("/review/sign-out", data={"csrf": csrf_of(form.text)}).status_code == 403  # sign-in's token
    assert client.get("/review/loops").status_code == 200  # still signed in


def test_the_session_expires(app, client, tmp_path):
    sign_in(client, REVIEW_KEY)
    assert client.get("/review/loops").status_code == 200
    with sqlite3.connect(tmp_path / "ranker.db") as conn:
        conn.execute("UPDATE review_sessions SET expires_at = '2000-01-01T00:00:00.000000Z'")
    assert client.get("/review/loops").status_code == 303


def test_the_session_ends_when_its_key_is_removed_and_the_secret_survives_a_restart(tmp_path):
    first = keyed(tmp_path).test_client()
    sign_in(first, REVIEW_KEY)
    session_id = session_cookie(first)
    token = csrf_of(first.get("/review/loops").text)
    again = keyed(tmp_path).test_client()  # another worker, or the server restarted: same secret, same session
    again.set_cookie(SESSION_COOKIE, session_id, path="/review")
    assert csrf_of(again.get("/review/loops").text) == token
    keys = [{"role": "admin", "sha256": hash_key(ADMIN_KEY)}]
    removed = create_app({"data_dir": tmp_path, "loops": {"cards": {"keys": keys}}}).test_client()
    removed.set_cookie(SESSION_COOKIE, session_id, path="/review")
    assert removed.get("/review/loops").status_code == 303


def test_the_cookie_is_secure_over_https_and_behind_a_trusted_proxy(tmp_path):
    direct = keyed(tmp_path).test_client()
    answer = sign_in(direct, REVIEW_KEY, base_url="https://localhost")
    assert "Secure" in next(c for c in answer.headers.getlist("Set-Cookie") if c.startswith(SESSION_COOKIE))
    https = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.0.0.1"}
    untrusted = keyed(tmp_path).test_client()
    answer = sign_in(untrusted, REVIEW_KEY, headers=https)
    assert "Secure" not in next(c for c in answer.headers.getlist("Set-Cookie") if c.startswith(SESSION_COOKIE))
    proxied = keyed(tmp_path, review={"proxy_hops": 1}).test_client()
    answer = sign_in(proxied, REVIEW_KEY, headers=https)
    assert "Secure" in next(c for c in answer.headers.getlist("Set-Cookie") if c.startswith(SESSION_COOKIE))


def test_a_reviewer_cannot_reach_admin_operations(client):
    sign_in(client, REVIEW_KEY)
    for method, path in [
        ("get", "/personalizer/v1.0/configurations/service"),
        ("delete", "/personalizer/v1.0/logs"),
        ("get", "/personalizer/v1.0/model"),
        ("post", "/personalizer/v1.0/rank"),
    ]:
        # the session cookie is no key; and the review key itself is refused there
        assert getattr(client, method)(path, json={}).status_code == 401
        answer = getattr(client, method)(path, json={}, headers={"Ocp-Apim-Subscription-Key": REVIEW_KEY})
        assert answer.status_code == 403, path


def test_sign_in_goes_back_only_to_a_review_page(client):
    form = client.get("/review/sign-in?next=https://evil.example/")
    answer = client.post(
        "/review/sign-in", data={"csrf": csrf_of(form.text), "key": REVIEW_KEY, "next": "//evil.example/"}
    )
    assert answer.headers["Location"] == "/review/"


def rank(client, event_id: str, context: dict, key: str = RANK_KEY):
    body = {
        "eventId": event_id,
        "contextFeatures": [context],
        "actions": [{"id": "sso", "features": [{"a": 1}]}, {"id": "reports", "features": [{"a": 2}]}],
    }
    answer = client.post("/personalizer/v1.0/rank", json=body, headers={"Ocp-Apim-Subscription-Key": key})
    assert answer.status_code == 201
    return answer.get_json()


def test_the_loop_view_shows_recent_decisions_reward_over_time_and_the_latest_evaluation(app, client, tmp_path):
    rank(client, "e-1", {"u": {"plan": "pro"}})
    rank(client, "e-2", {"u": {"plan": "<script>alert(1)</script>"}})
    headers = {"Ocp-Apim-Subscription-Key": RANK_KEY}
    assert client.post("/personalizer/v1.0/events/e-1/reward", json={"value": 1}, headers=headers).status_code == 204
    with sqlite3.connect(tmp_path / "ranker.db") as conn:
        request = '{"name": "weekly", "startTime": "2026-01-01T00:00:00Z", "endTime": "2026-02-01T00:00:00Z"}'
        result = (
            '{"events": 120, "skipped": 0, "optimalPolicy": "challenger", "content": {"value": [{"name": '
            '"challenger", "policySource": "Custom", "slotId": "", "summary": {"expectedReward": 0.61, '
            '"confidenceInterval": [0.52, 0.7], "events": 120}}]}}'
        )
        conn.execute(
            "INSERT INTO jobs (loop, kind, id, request, status, result, created_at, updated_at) "
            "VALUES ('cards', 'evaluation', 'ev1', ?, 'Succeeded', ?, ?, ?)",
            (request, result, "2026-02-02T00:00:00Z", "2026-02-02T00:00:00Z"),
        )
    sign_in(client, REVIEW_KEY)
    page = client.get("/review/loops/cards").text
    assert page.index("e-2") < page.index("e-1")  # newest first
    assert "<svg" in page and "Mean reward per day" in page
    # one day, two decisions, one rewarded with 1, the other counted at the default reward 0: mean 0.5
    assert re.search(r"<td>\d{4}-\d\d-\d\d</td><td>2</td><td>1</td><td>0.500</td>", page)
    assert "challenger" in page and "0.520 – 0.700" in page and "120 events" in page
    assert client.get("/review/loops/cards?by=hour").status_code == 200
    assert client.get("/review/loops/cards?by=week").status_code == 400
    assert client.get("/review/loops/nope").status_code == 404

    event = client.get("/review/loops/cards/events/e-2").text
    assert "<script>alert(1)</script>" not in event and "&lt;script&gt;alert(1)&lt;/script&gt;" in event
    assert "Largest feature contributions" in event or "Feature contributions:" in event
    assert client.get("/review/loops/cards/events/nope").status_code == 404


def test_the_outbox_page_shows_waiting_messages_for_copying_and_settles_checks(tmp_path):
    app = keyed(tmp_path, triage={"loop": "cards"})  # the outbox page is for keys of the triage loop
    client = app.test_client()
    store = app.extensions["ranker"].store
    at = timestamp(datetime.now(UTC))
    body = "<script>x()</script>"
    store.write(lambda conn: outbox.enqueue(conn, "k1", "test", "a@example.com", "Hello <b>", body, at))
    store.write(lambda conn: outbox.enqueue(conn, "k2", "test", "b@example.com", "Stuck", "text", at))
    store.write(lambda conn: conn.execute("UPDATE outbox SET state = 'sending', attempts = 1 WHERE key = 'k2'"))
    sign_in(client, REVIEW_KEY)
    page = client.get("/review/outbox").text
    assert "No delivery is set" in page
    assert "&lt;script&gt;x()&lt;/script&gt;</textarea>" in page and "Hello &lt;b&gt;" in page
    assert "check the receiver" in page and page.count('name="answer" value="sent"') == 1
    token = csrf_of(page)
    assert client.post("/review/outbox/resolve", data={"key": "k2", "answer": "sent"}).status_code == 403
    answer = client.post("/review/outbox/resolve", data={"csrf": token, "key": "k2", "answer": "sent"})
    assert answer.status_code == 303 and outbox.get(store, "k2")["state"] == "sent"
    again = client.post("/review/outbox/resolve", data={"csrf": token, "key": "k2", "answer": "sent"})
    assert again.status_code == 409
    assert client.get("/review/outbox?state=bogus").status_code == 400


def test_every_review_page_is_documented(app):
    rules = [r for r in app.url_map.iter_rules() if r.endpoint.startswith("review_") and "static" not in r.endpoint]
    assert rules
    for rule in rules:
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "{" + m[1] + "}", rule.rule)
        assert f"`{path}`" in DOCS, path


# -- the triage queue and items ------------------------------------------------------------------------


@pytest.fixture
def triage(tmp_path):
    """The triage tests' scenario, flagged: a1 and a5 pending; a1's name and draft carry HTML."""
    from triage_config import BEFORE, NOW, load_accounts, make_app

    from ranker.triage.flagging import run_pass

    app = make_app(tmp_path)
    service = app.extensions["ranker"]
    load_accounts(service)
    service.signals.patch("account", "a1", {"name": "<script>alert('a1')</script>", "segment": "enterprise"}, BEFORE)
    service.signals.patch("account", "a5", {"segment": "smb"}, BEFORE)
    run_pass(service, NOW)
    return app


def review_client(app, key=None):
    from triage_config import REVIEW_KEY

    client = app.test_client()
    assert sign_in(client, key or REVIEW_KEY).status_code == 303
    return client


def items_by_account(app) -> dict[str, dict]:
    from ranker.triage import items

    return {i["account"]: i for i in items.list_items(app.extensions["ranker"].store, top=500)["items"]}


def test_the_queue_lists_pending_items_sorted_and_filtered(triage):
    client = review_client(triage)
    page = client.get("/review/").text
    assert re.search(r'id="waiting">2<', page) and re.search(r'id="decided-today">0<', page)
    assert "&lt;script&gt;alert(&#39;a1&#39;)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "Fintech accounts with a health score of 50 or less" in page
    by_value = client.get("/review/?sort=value").text
    assert by_value.index("/review/items/") < by_value.index(">Account A5<")  # a1 (value 20,000) first
    assert by_value.index("20,000") < by_value.index("10,000")
    assert ">Account A5<" not in client.get("/review/?segment=enterprise").text
    smb = client.get("/review/?segment=smb").text
    assert ">Account A5<" in smb and "alert" not in smb
    assert ">Account A5<" in client.get("/review/?renewal_from=2027-02-20&renewal_to=2027-03-01").text
    assert "Nothing is waiting" in client.get("/review/?renewal_to=2027-01-31").text
    assert "Nothing is waiting" in client.get("/review/?loop=other").text
    assert client.get("/review/?renewal_from=tomorrow").status_code == 400
    assert client.get("/review/?sort=color").status_code == 400


def test_an_item_shows_its_evidence_ranking_and_draft_escaped(triage):
    client = review_client(triage)
    a1 = items_by_account(triage)["a1"]
    page = client.get(f"/review/items/{a1['id']}").text
    assert "&lt;script&gt;alert(&#39;a1&#39;)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "<code>account.health</code> = 20" in page and "account.health before flagging" in page
    for ranked in a1["ranking"]:
        assert f"<td>{ranked['id']}" in page
    assert f'value="{a1["draft_subject"].replace("<", "&lt;").replace(">", "&gt;")}"' in page.replace("&#39;", "'")
    assert 'name="csrf"' in page and "Internal merger" in page
    assert client.get("/review/items/999").status_code == 404


def test_approving_as_drafted_sends_the_draft_and_opens_the_next_item(triage):
    client = review_client(triage)
    found = items_by_account(triage)
    a1, a5 = found["a1"], found["a5"]
    page = client.get(f"/review/items/{a1['id']}?sort=risk").text
    form = {
        "csrf": csrf_of(page),
        "back": "sort=risk",
        "action": "approve",
        "recipient": a1["recipient"],
        "subject": a1["draft_subject"],
        "body": a1["draft_body"].replace("\n", "\r\n"),  # as a browser sends a textarea
    }
    answer = client.post(f"/review/items/{a1['id']}/approve", data=form)
    assert answer.status_code == 303
    assert answer.headers["Location"].startswith(f"/review/items/{a5['id']}?sort=risk&done=approved")
    decided = items_by_account(triage)["a1"]
    assert decided["state"] == "approved" and decided["reward"] == 1.0  # not an edit: CRLF is no change
    assert decided["decided_by"].startswith("review:")
    message = outbox.get(triage.extensions["ranker"].store, f"triage:{a1['id']}")
    assert (message["subject"], message["body"], message["state"]) == (a1["draft_subject"], a1["draft_body"], "pending")
    assert re.search(r'id="decided-today">1<', client.get("/review/").text)
    again = client.post(f"/review/items/{a1['id']}/approve", data=form)
    assert again.status_code == 409 and "decided already" in again.text


def test_approve_refuses_a_changed_text_and_approve_with_edits_sends_it(triage):
    client = review_client(triage)
    a5 = items_by_account(triage)["a5"]
    token = csrf_of(client.get(f"/review/items/{a5['id']}").text)
    form = {
        "csrf": token,
        "back": "",
        "recipient": "",
        "subject": "Let us talk",
        "body": "Hello <b>A5</b>,\r\nsee you.",
    }
    refused = client.post(f"/review/items/{a5['id']}/approve", data={**form, "action": "approve"})
    assert refused.status_code == 400 and "Approve with my edits" in refused.text
    assert "Hello &lt;b&gt;A5&lt;/b&gt;" in refused.text  # the edits are kept, as text
    assert items_by_account(triage)["a5"]["state"] == "pending"
    answer = client.post(f"/review/items/{a5['id']}/approve", data={**form, "action": "edited"})
    assert answer.status_code == 303
    decided = items_by_account(triage)["a5"]
    assert decided["state"] == "approved" and decided["reward"] == 0.5
    assert decided["final_body"] == "Hello <b>A5</b>,\nsee you." and decided["final_subject"] == "Let us talk"


def test_dismissing_with_a_suppressing_reason_and_the_last_item_returns_to_the_queue(triage):
    client = review_client(triage)
    found = items_by_account(triage)
    token = csrf_of(client.get("/review/").text)
    assert client.post(f"/review/items/{found['a1']['id']}/dismiss", data={"csrf": token}).status_code == 400
    first = client.post(
        f"/review/items/{found['a1']['id']}/dismiss",
        data={"csrf": token, "reason": "internal-merger", "text": "merging with Globex"},
    )
    assert first.headers["Location"].startswith(f"/review/items/{found['a5']['id']}?done=dismissed")
    last = client.post(f"/review/items/{found['a5']['id']}/dismiss", data={"csrf": token, "reason": "other"})
    assert last.headers["Location"].startswith("/review/?done=dismissed")
    assert "Nothing is waiting" in client.get(last.headers["Location"]).text
    decided = items_by_account(triage)["a1"]
    assert decided["state"] == "dismissed" and decided["dismiss_reason"] == "internal-merger"
    with sqlite3.connect(triage.extensions["ranker"].settings.database_path) as conn:
        assert conn.execute("SELECT account FROM triage_suppressions").fetchall() == [("a1",)]


def test_triage_pages_need_a_key_of_the_triage_loop(triage):
    from triage_config import OTHER_REVIEW_KEY

    client = review_client(triage, OTHER_REVIEW_KEY)
    assert client.get("/review/").status_code == 403
    a1 = items_by_account(triage)["a1"]
    assert client.get(f"/review/items/{a1['id']}").status_code == 403
    assert client.get("/review/outbox").status_code == 403  # the approved emails are the triage loop's too
    assert client.get("/review/loops/other").status_code == 200  # its own loop's view
    assert client.get("/review/loops/cs-next-best-action").status_code == 404


def test_the_pages_need_no_script_and_load_nothing_from_elsewhere(triage):
    client = review_client(triage)
    a1 = items_by_account(triage)["a1"]
    for path in ("/review/", f"/review/items/{a1['id']}", "/review/loops", "/review/loops/cs-next-best-action",
                 "/review/outbox", "/review/sign-in"):  # fmt: skip
        page = client.get(path).text
        assert "<script" not in page, path  # (the account name's script is escaped)
        for link in re.findall(r'(?:src|href)="([^"]+)"', page):
            assert link.startswith(("/review/", "?", "#")), (path, link)
        for control in re.findall(r"<(?:input|select|textarea)\b[^>]*>", page):
            if 'type="hidden"' not in control:
                name = re.search(r'id="([^"]+)"', control).group(1)
                assert f'<label for="{name}"' in page, (path, control)  # every control has its label


def test_the_loop_view_says_what_the_rules_did(tmp_path):
    rules = {
        "entitlements": [
            {"name": "pro-only", "actions": {"ids": ["sso"]}, "requires": [{"path": "u.plan", "equals": "pro"}]}
        ],
        "priority": [{"name": "push-reports", "actions": {"ids": ["reports"]}, "factor": 2.0}],
    }
    keys = [{"role": "review", "sha256": hash_key(REVIEW_KEY)}, {"role": "rank", "sha256": hash_key(RANK_KEY)}]
    app = create_app({"data_dir": tmp_path, "loops": {"cards": {"keys": keys, "rules": rules}}})
    client = app.test_client()
    rank(client, "e-1", {"u": {"plan": "free"}})
    sign_in(client, REVIEW_KEY)
    page = client.get("/review/loops/cards").text
    assert "Excluded <code>sso</code>: entitlement:pro-only" in page
    assert "Priority on <code>reports</code>: push-reports ×2.0" in page


def test_an_items_signal_history_is_drawn_per_week_from_its_events(tmp_path):
    from triage_config import CONFIG, SIGNALS_KEY, make_app

    from ranker.web.evidence import weekly_charts

    config = CONFIG + (
        '\n[[signals.features]]\nname = "reporting_calls"\nentity = "account"\nevent = "api.call"\n'
        'where = [{ path = "api.name", equals = "reporting" }]\naggregate = "count"\nwindow = "P30D"\n'
        '\n[[signals.features]]\nname = "reporting_trend"\nentity = "account"\nevent = "api.call"\n'
        'where = [{ path = "api.name", equals = "reporting" }]\naggregate = "change"\nwindow = "P30D"\n'
        '\n[[signals.features]]\nname = "worst_sentiment"\nentity = "account"\nevent = "ticket.created"\n'
        'aggregate = "min"\nfield = "sentiment"\nwindow = "P90D"\n'
    )
    app = make_app(tmp_path, config)
    end = datetime(2027, 1, 1, tzinfo=UTC)
    week = 7 * 86400 * 10**9
    day = 86400 * 10**9
    start = int(end.timestamp()) * 10**9 - 26 * week + day + 3600 * 10**9  # an hour into the first week

    def event(name, at, **attributes):
        attrs = [{"key": k, "value": {"stringValue": v} if isinstance(v, str) else {"doubleValue": v}}
                 for k, v in attributes.items()]  # fmt: skip
        return {"timeUnixNano": str(at), "eventName": name, "attributes": attrs}

    records = [
        event("api.call", start + k * week + n, **{"api.name": "reporting"}) for k in range(10) for n in range(3)
    ]
    records += [event("ticket.created", start + 12 * week, sentiment=-0.8)]
    resource = {"attributes": [{"key": "account.id", "value": {"stringValue": "a1"}}]}
    body = {"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": records}]}]}
    sent = app.test_client().post("/v1/logs", json=body, headers={"Ocp-Apim-Subscription-Key": SIGNALS_KEY})
    assert sent.status_code == 200, sent.text
    charts = weekly_charts(app.extensions["ranker"], "account", "a1", end, ["account.reporting_trend"])
    assert len(charts) == 2
    calls, sentiment = (re.search(r"<desc>(.*?)</desc>", str(c)).group(1) for c in charts)
    assert "reporting_calls: api.call events where api.name is &#34;reporting&#34;" in str(charts[0])
    assert [v.split(": ")[1] for v in calls.split("; ")] == ["3"] * 10 + ["0"] * 16
    assert "worst_sentiment: lowest sentiment" in str(charts[1])
    values = [v.split(": ")[1] for v in sentiment.split("; ")]
    assert values[12] == "-0.8" and values.count("none") == 25
