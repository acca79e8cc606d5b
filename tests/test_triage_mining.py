"""Churn patterns mined from past renewals: the planted pattern of the demo company is found first, nothing from
after a renewal's cut-off leaks in, point-in-time values are exact, and patterns can be listed, written by hand,
disabled and enabled (library and CLI)."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from signals_config import FEATURES

from ranker.app import create_app
from ranker.cli import cli
from ranker.core.rules import Condition
from ranker.core.settings import load_settings
from ranker.signals.service import Signals
from ranker.store import Store, open_database
from ranker.triage import demo
from ranker.triage.mining import mine, renewals, with_overrides
from ranker.triage.patterns import enabled_patterns, set_enabled
from ranker.triage.values import values_at

TODAY = datetime.now(UTC).date()  # events go through ingestion, which keeps only the retention's days
FAST = {"synchronous": "NORMAL"}
MIN_SUPPORT = 10


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A small demo company (240 accounts, 200 days), generated once for the module."""
    folder = tmp_path_factory.mktemp("company")
    demo.run(folder, accounts=240, seed=3, echo=lambda _: None, today=TODAY, days=200, overrides=FAST)
    return folder


@pytest.fixture
def company(generated: Path, tmp_path: Path) -> Path:
    """A copy of the company of one's own (tests change it), with its settings file pointing at it."""
    config = (generated / "ranker.toml").read_text().replace(json.dumps(str(generated)), json.dumps(str(tmp_path)))
    (tmp_path / "ranker.toml").write_text(config)
    source, copy = sqlite3.connect(generated / "ranker.db"), sqlite3.connect(tmp_path / "ranker.db")
    source.backup(copy)
    source.close()
    copy.close()
    return tmp_path


def open_company(folder: Path):
    settings = load_settings(folder / "ranker.toml", environ={}, overrides=FAST)
    settings = with_overrides(settings, min_support=MIN_SUPPORT)
    app = create_app(settings)
    return settings, app


def planted(pattern) -> bool:
    paths = {c.path: c for c in pattern.conditions}
    industry = paths.get("account.industry")
    reporting = [c for p, c in paths.items() if p.startswith("account.reporting_api_")]
    return industry is not None and industry.equals == "fintech" and any(c.lte is not None for c in reporting)


def test_mining_finds_the_planted_pattern_first_with_its_rate_in_its_interval(company):
    settings, app = open_company(company)
    mined = mine(app.extensions["ranker"].signals.store, settings)
    top = mined.patterns[0]
    assert planted(top), top.description
    assert len(top.conditions) == 2  # no noise condition rides along
    assert top.low <= demo.PLANTED_CHURN <= top.high
    assert top.low > mined.base_rate  # significantly above the base rate
    # the holdout: about the configured share of renewals, each pattern's rate on it reported
    assert 0.2 < mined.held_out / mined.renewals < 0.4
    assert top.holdout_support > 0 and top.holdout_rate is not None
    assert top.holdout_rate > mined.holdout_base_rate
    assert all(p.holdout_support is not None for p in mined.patterns)
    ranked = [p.low for p in mined.patterns]
    assert ranked == sorted(ranked, reverse=True)


def test_signals_after_the_cut_off_change_nothing(company):
    """Reporting API usage planted after each churned fintech account's cut-off (from one hour after it up to
    the renewal) would hide the pattern if mining read past the cut-off; it reads the same."""
    settings, app = open_company(company)
    store = app.extensions["ranker"].signals.store
    before = mine(store, settings)
    accounts = {a.id: a for a in demo.generate(240, 3, TODAY, 200).accounts}
    rows = []
    for renewal in renewals(store, settings):
        account = accounts[renewal.entity_id]
        if renewal.churned and account.industry == "fintech":
            moment = renewal.cutoff + timedelta(hours=1)
            while moment.date() < renewal.renewal:
                rows.append((account.id, int(moment.timestamp()) * 10**9, "api.call", {"api.name": "reporting"}))
                moment += timedelta(hours=12)
    assert len(rows) > 500
    _ingest(app.extensions["ranker"].signals, rows, datetime.now(UTC))
    after = mine(store, settings)
    assert [p.to_dict() for p in after.patterns] == [p.to_dict() for p in before.patterns]
    assert planted(after.patterns[0])
    # the planted events are there: read as of the renewal day, the same account's usage is back
    churned = next(r for r in renewals(store, settings) if r.churned and accounts[r.entity_id].industry == "fintech")
    at_renewal = datetime(churned.renewal.year, churned.renewal.month, churned.renewal.day, tzinfo=UTC)
    then = values_at(store, settings, [churned.entity_id], churned.cutoff)[churned.entity_id]["account"]
    later = values_at(store, settings, [churned.entity_id], at_renewal)[churned.entity_id]["account"]
    assert later["reporting_api_calls_30d"] > then["reporting_api_calls_30d"]


# -- point-in-time values -----------------------------------------------------------------------------

ACCOUNT_FEATURES = """
[[signals.features]]
name = "last_api"
entity = "account"
event = "api.call"
aggregate = "last"
field = "api.name"
window = "P20D"

[[signals.features]]
name = "days_since_export"
entity = "account"
event = "report.export"
aggregate = "days_since_last"
window = "P45D"
"""
CONFIG = FEATURES + ACCOUNT_FEATURES + '\n[loops.cs]\nentities = { account = "account.id" }\n\n[triage]\nloop = "cs"\n'
NOW = datetime(2026, 6, 30, 12, tzinfo=UTC)
KINDS = [
    ("api.call", {"api.name": "reporting"}),
    ("api.call", {"api.name": "ingest"}),
    ("report.export", {"rows": 10}),
    ("report.export", {"rows": 2500}),
]


def _signals(tmp_path: Path, database_url: str | None = None):
    (tmp_path / "ranker.toml").write_text(CONFIG)
    overrides = {"data_dir": tmp_path, "database_url": database_url, **FAST}
    settings = load_settings(tmp_path / "ranker.toml", environ={}, overrides=overrides)
    if database_url is not None:
        return settings, Signals(settings.signals, open_database(settings).store())
    return settings, Signals(settings.signals, Store(settings.database_path, "NORMAL"))


def _ingest(signals: Signals, events: list[tuple[str, int, str, dict]], now: datetime = NOW) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    for body in demo.requests_of(events):
        result = signals.ingest(ExportLogsServiceRequest.FromString(body), now)
        assert result.rejected == 0, result.message


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_values_at_see_neither_attributes_changed_nor_events_after_the_moment(tmp_path, engine, request):
    url = None if engine == "sqlite" else request.getfixturevalue("pg_cluster").database()
    settings, signals = _signals(tmp_path, url)
    at = NOW - timedelta(days=10)
    signals.put("account", "acme", {"industry": "fintech"}, NOW, at - timedelta(days=30))
    signals.patch("account", "acme", {"industry": "retail"}, NOW, at + timedelta(minutes=1))
    ns = int(at.timestamp()) * 10**9
    hour = 3600 * 10**9
    reporting = {"api.name": "reporting"}
    _ingest(
        signals,
        [
            ("acme", ns - 26 * hour, "api.call", reporting),  # the day before
            ("acme", ns - hour, "api.call", reporting),  # the same day, before
            ("acme", ns, "api.call", reporting),  # at the moment: counted
            ("acme", ns + 1000, "api.call", reporting),  # the same day, just after
            ("acme", ns + 2 * hour, "api.call", reporting),
            ("acme", ns + 30 * hour, "api.call", reporting),  # the next day
        ],
    )
    then = values_at(signals.store, settings, None, at)["acme"]["account"]
    assert then["industry"] == "fintech" and then["id"] == "acme"
    assert then["reporting_api_calls_30d"] == 3
    now = values_at(signals.store, settings, ["acme"], NOW)["acme"]["account"]
    assert now["industry"] == "retail" and now["reporting_api_calls_30d"] == 6
    assert values_at(signals.store, settings, ["acme", "nobody"], at - timedelta(days=60)) == {}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), hours=st.lists(st.integers(0, 24 * 70), min_size=1, max_size=4))
def test_values_at_equal_each_accounts_own_point_in_time_read(tmp_path_factory, seed, hours):
    """Many accounts at once, from buckets added up in SQL, equal the read of one account from its raw events
    (GET /entities/account/{id}?at=), for every aggregate."""
    settings, signals = _signals(tmp_path_factory.mktemp("values"))
    rng = random.Random(seed)
    start = int((NOW - timedelta(days=80)).timestamp()) * 10**9
    events = []
    for account in ("a1", "a2", "a3"):
        for _ in range(rng.randint(0, 60)):
            name, attributes = rng.choice(KINDS)
            events.append((account, start + rng.randint(0, 80 * 86400) * 10**9, name, attributes))
    events.sort()
    _ingest(signals, events)
    signals.put(
        "account",
        "a1",
        {"contract": {"renewalDate": "2026-09-01", "startDate": "2024-01-10"}},
        NOW,
        NOW - timedelta(days=90),
    )
    for hour in hours:
        at = NOW - timedelta(days=70) + timedelta(hours=hour)
        found = values_at(signals.store, settings, ["a1", "a2", "a3"], at)
        for account in ("a1", "a2", "a3"):
            view = signals.view("account", account, NOW, at)
            if view is None:  # never heard of
                assert account not in found
                continue
            expected = {k: v["value"] for k, v in view["features"].items() if v["value"] is not None}
            if account not in found:  # unknown then: nothing in any window
                assert not any(expected.values()), (account, at, expected)
                continue
            got = {k: v for k, v in found[account]["account"].items() if k in view["features"]}
            assert got == pytest.approx(expected), (account, at)


# -- renewals -----------------------------------------------------------------------------------------


def test_renewals_are_each_outcome_written_with_the_renewal_date_it_belonged_to(tmp_path):
    settings, signals = _signals(tmp_path)
    day = lambda text: datetime.fromisoformat(text).replace(tzinfo=UTC)  # noqa: E731
    put = lambda at, attributes: signals.patch("account", "acme", attributes, NOW, day(at))  # noqa: E731
    put("2024-01-01", {"industry": "media", "contract": {"renewalDate": "2024-06-01"}})
    put("2024-06-01", {"contract": {"outcome": "renewed"}})
    put("2024-06-02", {"contract": {"renewalDate": "2025-06-01"}})  # rolled forward: not a new outcome
    put("2025-06-03", {"contract": {"outcome": "churned"}})
    put("2025-06-04", {"contract": {"outcome": "churned"}, "note": "x"})  # written again, same renewal
    signals.patch(
        "account", "early", {"contract": {"renewalDate": "2025-06-01", "outcome": "churned"}}, NOW, day("2025-01-01")
    )
    found = renewals(signals.store, settings)
    assert [(r.entity_id, r.renewal.isoformat(), r.outcome, r.churned) for r in found] == [
        ("acme", "2024-06-01", "renewed", False),
        ("acme", "2025-06-01", "churned", True),
    ]
    assert found[1].cutoff == day("2025-06-01") - timedelta(days=90)


# -- hand-written patterns, switches, the CLI ---------------------------------------------------------


def test_hand_written_patterns_are_enabled_and_match_in_the_rules_language(company):
    settings, app = open_company(company)
    store = app.extensions["ranker"].store
    hand = [p for p in enabled_patterns(store, settings) if p.source == "settings"]
    assert [p.name for p in hand] == ["unhappy-enterprise"]
    values = {"account": {"segment": "enterprise", "negative_tickets_90d": 3}}
    assert hand[0].matched(values) == {"account.segment": "enterprise", "account.negative_tickets_90d": 3}
    assert hand[0].matched({"account": {"segment": "smb", "negative_tickets_90d": 3}}) is None
    assert hand[0].conditions[1] == Condition(path="account.negative_tickets_90d", gte=2)
    set_enabled(store, settings, "unhappy-enterprise", False)
    assert "unhappy-enterprise" not in [p.name for p in enabled_patterns(store, settings)]


def test_patterns_cli_mines_lists_disables_and_enables(company, runner):
    config = ["--config", str(company / "ranker.toml")]
    output = company / "patterns.json"
    mined = runner.invoke(
        cli,
        [
            "patterns",
            "mine",
            "--entity",
            "account",
            "--outcome",
            "contract.outcome",
            "--horizon",
            "P90D",
            "--min-support",
            str(MIN_SUPPORT),
            "--output",
            str(output),
            *config,
        ],
    )
    assert mined.exit_code == 0, mined.output
    written = json.loads(output.read_text())
    top = written["patterns"][0]
    assert top["name"] in mined.output and written["horizon"] == "P90D" and written["heldOut"] > 0
    assert {"support", "churned", "churn_rate", "low", "high", "lift", "holdout_support", "holdout_rate"} <= set(top)
    # a hand-written pattern is checked on the same renewals
    (written,) = written["handWritten"]
    assert written["name"] == "unhappy-enterprise" and written["support"] >= 0 and "Hand-written" in mined.output
    listed = runner.invoke(cli, ["patterns", "list", "--json", *config])
    names = {p["name"]: p for p in json.loads(listed.output)}
    assert names[top["name"]]["enabled"] and names["unhappy-enterprise"]["source"] == "settings"
    assert runner.invoke(cli, ["patterns", "disable", top["name"], *config]).exit_code == 0
    settings, app = open_company(company)
    store = app.extensions["ranker"].store
    assert top["name"] not in [p.name for p in enabled_patterns(store, settings)]
    # mined again, a disabled pattern stays disabled
    again = runner.invoke(cli, ["patterns", "mine", "--min-support", str(MIN_SUPPORT), *config])
    assert again.exit_code == 0
    assert top["name"] not in [p.name for p in enabled_patterns(store, settings)]
    assert "disabled" in runner.invoke(cli, ["patterns", "list", *config]).output
    assert runner.invoke(cli, ["patterns", "enable", top["name"], *config]).exit_code == 0
    assert top["name"] in [p.name for p in enabled_patterns(store, settings)]
    unknown = runner.invoke(cli, ["patterns", "disable", "no-such-pattern", *config])
    assert unknown.exit_code == 1 and "no pattern 'no-such-pattern'" in unknown.output


def test_the_demo_command_writes_a_fresh_folder_and_refuses_a_used_one(tmp_path, runner):
    folder = tmp_path / "demo"
    result = runner.invoke(
        cli, ["demo", "renewal-triage", "--data-dir", str(folder), "--accounts", "50", "--days", "180"]
    )
    assert result.exit_code == 0, result.output
    review = result.output.split("review: ")[1].split()[0]
    assert "/review" in result.output and f"ranker serve --config {folder / 'ranker.toml'}" in result.output
    settings = load_settings(folder / "ranker.toml", environ={})
    assert settings.data_dir == folder and len(settings.triage.playbook) == 4
    app = create_app(settings)
    assert app.extensions["ranker"].authenticate(review, review=True) is not None
    again = runner.invoke(cli, ["demo", "renewal-triage", "--data-dir", str(folder)])
    assert again.exit_code == 1 and "fresh data folder" in again.output
    shutil.rmtree(folder)


def test_mining_nothing_and_bad_options_say_so(tmp_path, runner, monkeypatch):
    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path))
    empty = runner.invoke(cli, ["patterns", "mine"])
    assert empty.exit_code == 0 and "0 past renewals" in empty.output and "no pattern" in empty.output
    bad = runner.invoke(cli, ["patterns", "mine", "--horizon", "P1X"])
    assert bad.exit_code == 1 and "--horizon: " in bad.output and "'P1X'" in bad.output
    assert runner.invoke(cli, ["patterns", "mine", "--entity", "org"]).exit_code == 1


def test_each_patterns_figures_are_a_recount_of_the_renewals_it_matches(company):
    """The search counts with numpy masks; the triage pass matches with the rules' conditions: both agree."""
    from ranker.triage.values import values_at_many

    settings, app = open_company(company)
    store = app.extensions["ranker"].signals.store
    mined = mine(store, settings)
    found = renewals(store, settings)
    values = values_at_many(store, settings, [(r.entity_id, r.cutoff) for r in found])
    for pattern in mined.patterns + mined.written:
        matched = [(r, pattern.matched(v) is not None) for r, v in zip(found, values, strict=True) if v is not None]
        mining = [r.churned for r, hit in matched if hit and not r.holdout]
        held = [r.churned for r, hit in matched if hit and r.holdout]
        assert (pattern.support, pattern.churned) == (len(mining), sum(mining)), pattern.description
        assert (pattern.holdout_support, pattern.extra["holdout_churned"]) == (len(held), sum(held))
