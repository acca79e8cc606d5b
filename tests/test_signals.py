"""Signals end to end: OTLP ingestion (with OpenTelemetry's own exporter), entities, features, Rank-time
enrichment logged in the record, rules on features and freshness, import, rebuild and prune."""

from __future__ import annotations

import io
import json
import re
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import requests
from conftest import ADMIN_KEY, RANK_KEY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from postgres import log_rows
from signals_config import ACTIONS, CONFIG, SIGNALS_KEY

from ranker.app import create_app
from ranker.cli import cli
from ranker.core.schemas import RankRequest
from ranker.core.settings import load_settings
from ranker.logdata.export import export
from ranker.signals.definitions import AGGREGATES

DAY_NS = 86_400 * 10**9
SIGNALS = {"Ocp-Apim-Subscription-Key": SIGNALS_KEY}
RANK = {"Ocp-Apim-Subscription-Key": RANK_KEY}


def make_app(tmp_path: Path, config: str = CONFIG, database_url: str | None = None):
    path = tmp_path / "ranker.toml"
    path.write_text(config)
    return create_app(load_settings(path, environ={}, overrides={"data_dir": tmp_path, "database_url": database_url}))


@pytest.fixture(params=["sqlite", "postgresql"])
def signals_app(request, tmp_path):
    """The app on each engine: SQLite, and PostgreSQL (a fresh database of the session's cluster)."""
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_cluster").database()
    return make_app(tmp_path, database_url=url)


@pytest.fixture
def client(signals_app):
    return signals_app.test_client()


def value(v):
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": v}


def record(name: str | None, at_ns: int, **attributes) -> dict:
    out = {"timeUnixNano": str(at_ns), "attributes": [{"key": k, "value": value(v)} for k, v in attributes.items()]}
    if name is not None:
        out["eventName"] = name
    return out


def logs(*records: dict, resource: dict | None = None) -> dict:
    attributes = [{"key": k, "value": value(v)} for k, v in (resource or {}).items()]
    return {"resourceLogs": [{"resource": {"attributes": attributes}, "scopeLogs": [{"logRecords": list(records)}]}]}


def send(client, body: dict, headers=SIGNALS):
    return client.post("/v1/logs", json=body, headers=headers)


def rank(client, context: dict, event_id: str | None = None, actions=ACTIONS):
    body = {"contextFeatures": [context], "actions": actions}
    if event_id:
        body["eventId"] = event_id
    response = client.post("/personalizer/v1.0/rank", json=body, headers=RANK)
    assert response.status_code == 201, response.json
    return response.json


def logged_context(app, event_id: str) -> dict:
    """The context a decision was logged with, read from the app's (or a server's SQLite) log."""
    if hasattr(app, "extensions"):
        settings = app.extensions["ranker"].settings
        url = settings.database_url and settings.database_url.get_secret_value()
        data_dir = settings.data_dir
    else:
        data_dir, url = app.data_dir, None
    (row,) = log_rows(data_dir, url, "SELECT record FROM decisions WHERE event_id = ?", (event_id,))
    return json.loads(row["record"])["c"]


def test_the_real_exporter_delivers_events_that_reach_entities_and_the_next_rank(serve):
    server = serve(CONFIG)
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "dashboard", "account.id": "acme"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("dashboard")
    for api in ("reporting", "reporting", "reporting", "billing"):
        logger.emit(event_name="api.call", attributes={"api.name": api, "user.id": "u1"})
    logger.emit(body="a plain log line, not an event")
    records = memory.get_finished_logs()
    exporter = OTLPLogExporter(
        endpoint=server.url + "/v1/logs", headers=SIGNALS, compression=Compression.Gzip, timeout=10
    )
    assert exporter.export(records) == LogRecordExportResult.SUCCESS
    # the exporter retries a batch it got no answer for: a redelivery must not count twice
    assert exporter.export(records) == LogRecordExportResult.SUCCESS
    wrong = OTLPLogExporter(endpoint=server.url + "/v1/logs", headers=RANK, compression=Compression.Gzip, timeout=5)
    assert wrong.export(records) == LogRecordExportResult.FAILURE
    exporter.shutdown()
    wrong.shutdown()
    provider.shutdown()

    account = requests.get(server.url + "/entities/account/acme", headers=SIGNALS, timeout=5).json()
    assert account["features"]["reporting_api_calls_30d"]["value"] == 3
    assert account["features"]["apis_used_30d"]["value"] == 2
    user = requests.get(server.url + "/entities/user/u1", headers=SIGNALS, timeout=5).json()
    assert user["features"]["last_api"]["value"] == "billing"

    renewal = (date.today() + timedelta(days=30)).isoformat()
    put = requests.put(
        server.url + "/entities/account/acme",
        json={"attributes": {"plan": "enterprise", "contract": {"renewalDate": renewal}}},
        headers=SIGNALS,
        timeout=5,
    )
    assert put.status_code == 200 and put.json()["features"]["days_to_renewal"]["value"] == 30
    body = {"contextFeatures": [{"account": {"id": "acme"}, "user": {"id": "u1"}}], "actions": ACTIONS, "eventId": "e1"}
    ranked = requests.post(server.url + "/personalizer/v1.0/rank", json=body, headers=RANK, timeout=5).json()
    assert {r["id"]: r["probability"] > 0 for r in ranked["ranking"]} == {
        "upsell": True,
        "reporting-review": True,
        "guide": True,
    }
    c = logged_context(server, "e1")
    assert c["account"]["reporting_api_calls_30d"] == 3
    assert c["account"]["days_to_renewal"] == 30 and c["account"]["plan"] == "enterprise"
    assert c["user"] == {"id": "u1", "last_api": "billing"}
    # a signals key may not rank
    refused = requests.post(server.url + "/personalizer/v1.0/rank", json=body, headers=SIGNALS, timeout=5)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "OperationNotAllowed"


def test_features_count_late_and_out_of_order_events_once(client):
    now = time.time_ns()
    batch = logs(
        record("api.call", now - 40 * DAY_NS, **{"api.name": "reporting"}),  # the window before: the trend's base
        record("api.call", now - 2 * DAY_NS, **{"api.name": "reporting"}),
        record("api.call", now, **{"api.name": "reporting"}),
        record("api.call", now - 10 * DAY_NS, **{"api.name": "reporting"}),  # late, out of order
        record("api.call", now, **{"api.name": "search"}),
        record("report.export", now - DAY_NS, rows=120),
        record("report.export", now - 9 * DAY_NS, rows=7),
        resource={"account.id": "acme"},
    )
    assert send(client, batch).json == {}
    assert send(client, batch).json == {}  # redelivered: nothing counts twice
    features = {
        k: v["value"] for k, v in client.get("/entities/account/acme", headers=SIGNALS).json["features"].items()
    }
    assert features["reporting_api_calls_30d"] == 3
    assert features["reporting_api_trend"] == 2.0  # (3 - 1) / 1
    assert features["apis_used_30d"] == 2
    assert features["rows_exported_7d"] == 120.0  # the 7-rows export is 9 days old
    assert features["smallest_export"] == 7 and features["largest_export"] == 120
    assert features["days_to_renewal"] is None  # no renewal date known


def test_point_in_time_reads_see_only_what_was_known_then(client):
    now = datetime.now(UTC)
    ns = int(now.timestamp() * 1e9)
    send(client, logs(record("api.call", ns - 5 * DAY_NS, **{"api.name": "reporting", "account.id": "acme"})))
    send(client, logs(record("api.call", ns - DAY_NS, **{"api.name": "reporting", "account.id": "acme"})))
    client.put("/entities/account/acme", json={"attributes": {"plan": "team"}}, headers=SIGNALS)
    before = client.get("/entities/account/acme", headers=SIGNALS).json["asOf"]
    client.patch("/entities/account/acme", json={"attributes": {"plan": "enterprise"}}, headers=SIGNALS)
    three_days_ago = (now - timedelta(days=3)).isoformat()
    past = client.get("/entities/account/acme", query_string={"at": three_days_ago}, headers=SIGNALS).json
    assert past["features"]["reporting_api_calls_30d"]["value"] == 1
    assert past["attributes"] == {}  # the attributes came later
    then = client.get("/entities/account/acme", query_string={"at": before}, headers=SIGNALS).json
    assert then["attributes"] == {"plan": "team"} and then["features"]["reporting_api_calls_30d"]["value"] == 2
    assert client.get("/entities/account/acme", headers=SIGNALS).json["attributes"] == {"plan": "enterprise"}


def test_dated_changes_import_history_in_time_order(client):
    """?at= on PUT/PATCH stores a change as of when it happened (a CRM's history); out of order is a 409."""
    url = "/entities/account/acme"
    put = client.put(
        url, query_string={"at": "2025-01-01T00:00:00Z"}, json={"attributes": {"plan": "team"}}, headers=SIGNALS
    )
    assert put.status_code == 200 and put.json["attributeTimes"] == {"plan": "2025-01-01T00:00:00.000000Z"}
    patch = {"attributes": {"contract": {"outcome": "renewed"}}}
    assert client.patch(url, query_string={"at": "2025-06-01"}, json=patch, headers=SIGNALS).status_code == 200
    late = client.patch(url, query_string={"at": "2025-03-01"}, json={"attributes": {"plan": "x"}}, headers=SIGNALS)
    assert late.status_code == 409 and late.json["error"]["code"] == "Conflict"
    ahead = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    assert client.patch(url, query_string={"at": ahead}, json=patch, headers=SIGNALS).status_code == 400
    then = client.get(url, query_string={"at": "2025-04-01T00:00:00Z"}, headers=SIGNALS).json
    assert then["attributes"] == {"plan": "team"}
    assert client.get(url, headers=SIGNALS).json["attributes"] == {"plan": "team", "contract": {"outcome": "renewed"}}


def test_entities_api_replaces_patches_reads_and_deletes(client):
    put = client.put(
        "/entities/account/acme",
        json={"attributes": {"plan": "team", "csm": "ana", "contract": {"renewalDate": "2030-01-01", "seats": 10}}},
        headers=SIGNALS,
    )
    assert put.status_code == 200
    times = put.json["attributeTimes"]
    assert set(times) == {"plan", "csm", "contract.renewalDate", "contract.seats"}
    time.sleep(0.01)
    patched = client.patch(
        "/entities/account/acme", json={"attributes": {"csm": None, "contract": {"seats": 25}}}, headers=SIGNALS
    ).json
    assert patched["attributes"] == {"plan": "team", "contract": {"renewalDate": "2030-01-01", "seats": 25}}
    assert patched["attributeTimes"]["plan"] == times["plan"]  # not sent: its time stays
    assert patched["attributeTimes"]["contract.seats"] > times["contract.seats"]
    assert client.get("/entities/account/acme", headers={"Ocp-Apim-Subscription-Key": ADMIN_KEY}).status_code == 200
    assert client.get("/entities/account/acme", headers=RANK).status_code == 403
    assert client.delete("/entities/account/acme", headers=SIGNALS).status_code == 204
    assert client.get("/entities/account/acme", headers=SIGNALS).status_code == 404
    assert client.delete("/entities/account/acme", headers=SIGNALS).status_code == 404


def test_rules_read_features_and_hold_back_actions_on_stale_signals(signals_app, client, tmp_path):
    renewal = (date.today() + timedelta(days=45)).isoformat()
    client.put("/entities/account/acme", json={"attributes": {"contract": {"renewalDate": renewal}}}, headers=SIGNALS)
    context = {"account": {"id": "acme"}}
    ranked = rank(client, context, "fresh")
    excluded = {r["id"] for r in ranked["ranking"] if r["probability"] == 0}
    assert excluded == {"reporting-review"}  # fewer than 2 reporting calls
    service = signals_app.extensions["ranker"]
    loop = service.loops["cards"]
    later = datetime.now(UTC) + timedelta(days=3)  # the CRM has not confirmed the renewal date for 3 days
    request = RankRequest.model_validate({"contextFeatures": [context], "actions": ACTIONS, "eventId": "stale"})
    service.rank(loop, request, now=later)
    explanation = json.loads(service.store.decision("cards", "stale")["explanation"])
    assert explanation["excluded"]["upsell"] == ["entitlement:upsell-needs-fresh-crm-data"]
    # what the caller sends wins over stored values: 500 days to renewal, so no upsell
    ranked = rank(client, {"account": {"id": "acme", "days_to_renewal": 500}}, "caller-wins")
    assert next(r for r in ranked["ranking"] if r["id"] == "upsell")["probability"] == 0
    assert logged_context(signals_app, "caller-wins")["account"]["days_to_renewal"] == 500
    # an unknown id adds nothing and is no error
    rank(client, {"account": {"id": "nobody"}, "user": {"id": 7}}, "unknown")
    assert logged_context(signals_app, "unknown")["account"] == {"id": "nobody"}


def test_multislot_rank_is_enriched_too(tmp_path):
    config = CONFIG.replace("[loops.cards]", '[loops.cards]\npolicy = "multislot"')
    app = make_app(tmp_path, config)
    client = app.test_client()
    client.put("/entities/account/acme", json={"attributes": {"plan": "enterprise"}}, headers=SIGNALS)
    body = {
        "contextFeatures": [{"account": {"id": "acme"}}],
        "actions": ACTIONS,
        "slots": [{"id": "top", "baselineAction": "guide"}],
        "eventId": "ms",
    }
    assert client.post("/personalizer/v1.0/multislot/rank", json=body, headers=RANK).status_code == 201
    assert logged_context(app, "ms")["account"]["plan"] == "enterprise"


def test_the_export_holds_the_enriched_context_as_served(signals_app, client):
    client.put("/entities/account/acme", json={"attributes": {"plan": "enterprise"}}, headers=SIGNALS)
    rank(client, {"account": {"id": "acme"}}, "exported")
    client.put("/entities/account/acme", json={"attributes": {"plan": "team"}}, headers=SIGNALS)
    out = io.StringIO()
    later = datetime.now(UTC) + timedelta(hours=1)  # past the reward wait: what `ranker export` then writes
    assert export(signals_app.extensions["ranker"].settings, "cards", out, now=later) == 1
    line = json.loads(out.getvalue().splitlines()[0])
    assert line["c"]["account"]["plan"] == "enterprise"  # as served, not as the entity is now


def test_csv_import_reports_bad_rows_and_a_rerun_changes_nothing(signals_app, client, tmp_path, runner):
    crm = tmp_path / "crm.csv"
    crm.write_text(
        "id,plan,contract.renewalDate,seats\n"
        "acme,enterprise,2027-03-01,240\n"
        ",team,2027-01-01,5\n"
        "globex,team,2026-12-31,12\n"
        "initech,team,2027-01-01\n"
    )
    argv = ["signals", "import", "--type", "account", str(crm), "--config", str(tmp_path / "ranker.toml")]
    env = {"RANKER_DATA_DIR": str(tmp_path)}
    url = signals_app.extensions["ranker"].settings.database_url
    if url is not None:  # the command works on the app's database
        env["RANKER_DATABASE_URL"] = url.get_secret_value()
    first = runner.invoke(cli, argv, env=env)
    assert first.exit_code == 1, first.output
    report = json.loads(first.output)
    assert report["imported"] == 2 and [e["line"] for e in report["errors"]] == [3, 5]
    acme = client.get("/entities/account/acme", headers=SIGNALS).json
    assert acme["attributes"] == {"plan": "enterprise", "contract": {"renewalDate": "2027-03-01"}, "seats": 240}
    again = json.loads(runner.invoke(cli, argv, env=env).output)
    assert again["imported"] == 0 and again["unchanged"] == 2
    assert client.get("/entities/account/acme", headers=SIGNALS).json["attributeTimes"] == acme["attributeTimes"]
    missing = tmp_path / "bad.csv"
    missing.write_text("account,plan\nacme,team\n")
    bad = runner.invoke(cli, [*argv[:4], str(missing), *argv[5:]], env=env)
    assert bad.exit_code != 0 and "'id' column" in bad.output


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_rebuild_recomputes_features_after_a_definition_changes(tmp_path, runner, database_url):
    client = make_app(tmp_path, database_url=database_url).test_client()
    now = time.time_ns()
    send(
        client,
        logs(
            *(record("api.call", now - d * DAY_NS, **{"api.name": "reporting"}) for d in (1, 10, 20)),
            resource={"account.id": "acme"},
        ),
    )
    changed = CONFIG.replace(
        'equals = "reporting" }]\naggregate = "count"\nwindow = "P30D"',
        'equals = "reporting" }]\naggregate = "count"\nwindow = "P7D"',
    )
    assert changed != CONFIG
    config = tmp_path / "changed.toml"
    config.write_text(changed)
    env = {"RANKER_DATA_DIR": str(tmp_path), **({"RANKER_DATABASE_URL": database_url} if database_url else {})}
    result = runner.invoke(cli, ["signals", "rebuild", "--config", str(config)], env=env)
    assert result.exit_code == 0, result.output
    overrides = {"data_dir": tmp_path, "database_url": database_url}
    client = create_app(load_settings(config, environ={}, overrides=overrides)).test_client()
    assert (
        client.get("/entities/account/acme", headers=SIGNALS).json["features"]["reporting_api_calls_30d"]["value"] == 1
    )


def test_prune_forgets_events_older_than_the_retention(signals_app, client):
    now = datetime.now(UTC)
    ns = int(now.timestamp() * 1e9)
    send(client, logs(record("api.call", ns - 20 * DAY_NS, **{"api.name": "x", "account.id": "acme"})))
    send(client, logs(record("api.call", ns, **{"api.name": "x", "account.id": "acme"})))
    signals = signals_app.extensions["ranker"].signals
    assert signals.prune(now + timedelta(days=signals.settings.retention_days - 10))["events"] == 1
    assert signals.store.counts()["events"] == 1


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (('aggregate = "count"', 'aggregate = "median"'), "unknown aggregate 'median'"),
        (('window = "P30D"', 'window = "PT5M"'), "window 'PT5M' must be whole days"),
        (('window = "P30D"', 'window = "P500D"'), "more days than retention_days"),
        (('aggregate = "count"', 'aggregate = "sum"'), "needs field"),
    ],
)
def test_the_settings_check_names_a_bad_feature_definition(tmp_path, runner, change, said):
    config = tmp_path / "ranker.toml"
    config.write_text(CONFIG.replace(*change, 1))
    result = runner.invoke(cli, ["settings", "--config", str(config)])
    assert result.exit_code != 0
    assert "reporting_api_calls_30d" in result.output and said in result.output


def test_forgetting_a_user_keeps_what_its_events_told_about_the_account(client):
    now = time.time_ns()
    send(client, logs(record("api.call", now, **{"api.name": "reporting", "account.id": "acme", "user.id": "u1"})))
    assert client.delete("/entities/user/u1", headers=SIGNALS).status_code == 204
    assert client.get("/entities/user/u1", headers=SIGNALS).status_code == 404
    account = client.get("/entities/account/acme", headers=SIGNALS).json
    assert account["features"]["reporting_api_calls_30d"]["value"] == 1
    past = client.get("/entities/account/acme", query_string={"at": datetime.now(UTC).isoformat()}, headers=SIGNALS)
    assert past.json["features"]["reporting_api_calls_30d"]["value"] == 1


def test_the_documented_feature_examples_are_valid_settings(tmp_path):
    readme = (Path(__file__).parent.parent / "docs" / "signals.md").read_text()
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", readme, re.S) if "[[signals.features]]" in b]
    assert blocks
    config = tmp_path / "ranker.toml"
    config.write_text(blocks[0])
    features = load_settings(config, environ={}).signals.features
    assert {f.aggregate for f in features} == set(AGGREGATES)  # an example of each aggregate


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(
        st.tuples(st.integers(0, 70), st.sampled_from(["reporting", "billing", "search"])), min_size=1, max_size=25
    ),
    order=st.randoms(use_true_random=False),
)
def test_features_equal_a_recount_whatever_the_order_and_redeliveries(client, events, order):
    """Out-of-order and repeated deliveries: the buckets (a Rank's values) and the raw events (a point-in-time
    read) both give what a recount of the distinct records in the window gives."""
    account = f"acme-{uuid.uuid4().hex}"  # the app outlives the examples: each has an account of its own
    now = time.time_ns()
    records = [
        record("api.call", now - days * DAY_NS - i, **{"api.name": api, "account.id": account})
        for i, (days, api) in enumerate(events)
    ]
    deliveries = records + order.sample(records, k=len(records) // 2)  # the exporter retries some
    order.shuffle(deliveries)
    for start in range(0, len(deliveries), 7):
        assert send(client, logs(*deliveries[start : start + 7])).json == {}
    today = now // DAY_NS
    day = [(now - days * DAY_NS - i) // DAY_NS for i, (days, _) in enumerate(events)]
    in_window = [i for i in range(len(events)) if day[i] > today - 30]
    before = [i for i in range(len(events)) if today - 60 < day[i] <= today - 30]
    calls = sum(events[i][1] == "reporting" for i in in_window)
    calls_before = sum(events[i][1] == "reporting" for i in before)
    expected = {
        "reporting_api_calls_30d": calls,
        "reporting_api_trend": (calls - calls_before) / max(calls_before, 1),
        "apis_used_30d": len({events[i][1] for i in in_window}),
    }
    at = datetime.fromtimestamp(now / 1e9 + 1, UTC).isoformat()
    for query in ({}, {"at": at}):
        features = client.get(f"/entities/account/{account}", query_string=query, headers=SIGNALS).json["features"]
        assert {name: features[name]["value"] for name in expected} == pytest.approx(expected)
