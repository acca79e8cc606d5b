"""``ranker demo renewal-triage``: a SaaS company generated into a fresh data folder, with a planted churn
pattern, sent through the service's own endpoints, then mined and triaged.

The company: accounts in segments (industry, size, region, plan, seats, a locked price for some), a year of
product usage as OpenTelemetry log records (a daily digest per account of app sessions, and of each API it
calls: ``api.call`` with ``api.name`` reporting or ingest), support tickets with a sentiment score, and
contracts whose history (start, renewal date, outcome) is written through the entities API as dated changes.

The planted pattern: fintech accounts whose Reporting API usage stops 105-135 days before their renewal
(so it has stopped by the time risk is judged, 90 days before) churn at :data:`PLANTED_CHURN`; every other
account churns at :data:`BASE_CHURN` (unhappy accounts, with more and sadder tickets, a little more). Some
non-fintech accounts stop using the Reporting API too and churn at the base rate, so the pattern needs both.
Everything comes from one seed: the same seed makes the same company.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

PLANTED_CHURN = 0.8
BASE_CHURN = 0.1
UNHAPPY_CHURN = 0.2
INDUSTRIES = {"fintech": 0.3, "healthcare": 0.15, "retail": 0.15, "media": 0.14, "logistics": 0.13, "education": 0.13}
SEGMENTS = {"smb": 0.5, "mid-market": 0.35, "enterprise": 0.15}
REGIONS = ("emea", "na", "apac")
PLANS = {"smb": "team", "mid-market": "business", "enterprise": "enterprise"}
RECORDS_PER_REQUEST = 4000
_SYLLABLES = ("ac", "me", "no", "va", "lu", "mi", "ra", "te", "zo", "ki", "pe", "sol", "tri", "dex", "or", "bit")
_SUFFIXES = ("Labs", "Bank", "Pay", "Health", "Retail", "Media", "Freight", "Learning", "Systems", "Group")


@dataclass
class Account:
    id: str
    name: str
    industry: str
    segment: str
    region: str
    seats: int
    arr: int
    locked_price: bool
    start: date
    renewal: date  # the renewal in the window: past (with an outcome) or upcoming
    past: bool
    churned: bool | None
    reporting: bool  # uses the Reporting API
    stop: date | None  # the day its Reporting API usage stops, if it does
    unhappy: bool
    planted: bool  # fits the planted pattern at its cut-off

    def attributes(self) -> dict[str, Any]:
        slug = self.name.lower().replace(" ", "")
        return {
            "name": self.name,
            "industry": self.industry,
            "segment": self.segment,
            "region": self.region,
            "plan": PLANS[self.segment],
            "seats": self.seats,
            "csm": f"csm{int(self.id[-3:]) % 7 + 1}@example.com",
            "contact": {"name": f"Head of Operations, {self.name}", "email": f"ops@{slug}.example"},
            "contract": {
                "startDate": self.start.isoformat(),
                "renewalDate": self.renewal.isoformat(),
                "lockedPrice": self.locked_price,
                "value": self.arr,
            },
        }


@dataclass
class Company:
    today: date
    first_day: date
    accounts: list[Account] = field(default_factory=list)


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def generate(accounts: int = 500, seed: int = 7, today: date | None = None, days: int = 365) -> Company:
    """The company's accounts, each with its renewal and its fate (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    today = today or datetime.now(UTC).date()
    first = today - timedelta(days=days)
    company = Company(today, first)
    # past renewals late enough that a cut-off 90 days before has two months of events behind it
    earliest_past = min(first + timedelta(days=150), today - timedelta(days=20))
    for n in range(accounts):
        industry = _pick(rng, INDUSTRIES)
        segment = _pick(rng, SEGMENTS)
        seats = int(rng.integers(5, 40) * {"smb": 1, "mid-market": 4, "enterprise": 15}[segment])
        past = rng.random() < 0.75
        if past:
            renewal = earliest_past + timedelta(days=int(rng.integers(0, (today - earliest_past).days - 4)))
        else:
            renewal = today + timedelta(days=int(rng.integers(5, 121)))
        reporting = rng.random() < 0.85
        stops = reporting and rng.random() < (0.6 if industry == "fintech" else 0.15)
        stop = renewal - timedelta(days=int(rng.integers(105, 136))) if stops else None
        unhappy = rng.random() < 0.15
        planted = industry == "fintech" and stop is not None
        chance = PLANTED_CHURN if planted else UNHAPPY_CHURN if unhappy else BASE_CHURN
        word = "".join(rng.choice(_SYLLABLES, size=2)).capitalize()
        company.accounts.append(
            Account(
                id=f"acct-{n + 1:04d}",
                name=f"{word} {rng.choice(_SUFFIXES)} {n + 1}",
                industry=industry,
                segment=segment,
                region=str(rng.choice(REGIONS)),
                seats=seats,
                arr=seats * int(rng.integers(300, 900)),
                locked_price=bool(rng.random() < 0.2),
                start=renewal - timedelta(days=365 * int(rng.integers(1, 4))),
                renewal=renewal,
                past=past,
                churned=bool(rng.random() < chance) if past else None,
                reporting=reporting,
                stop=stop,
                unhappy=unhappy,
                planted=planted,
            )
        )
    return company


# -- what the company sends --------------------------------------------------------------------------


def _ns(day: date, seconds: int) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + seconds) * 10**9


def events(company: Company, seed: int = 7) -> list[tuple[str, int, str, dict[str, Any]]]:
    """Every event ``(account id, time ns, event name, attributes)`` of the company's year, by account."""
    rng = np.random.default_rng(seed + 1)
    out = []
    days = (company.today - company.first_day).days
    for account in company.accounts:
        end = days
        if account.churned:
            end = min(days, (account.renewal - company.first_day).days + int(rng.integers(0, 4)))
        stop = days if account.stop is None else (account.stop - company.first_day).days
        resume = days
        if account.stop is not None and account.past and not account.churned and rng.random() < 0.5:
            resume = (account.renewal - company.first_day).days + int(rng.integers(0, 30))
        base = 0.55 if not account.unhappy else 0.45
        ingest = rng.random() < 0.5
        for d in range(end):
            day = company.first_day + timedelta(days=d)
            draw = rng.random(5)
            if draw[0] < base:
                out.append(
                    (
                        account.id,
                        _ns(day, 64800 + int(draw[4] * 3600)),
                        "app.session",
                        {"sessions": 1 + int(draw[1] * account.seats)},
                    )
                )
            if account.reporting and not stop <= d < resume and draw[1] < 0.45:
                out.append(
                    (
                        account.id,
                        _ns(day, 66000 + int(draw[4] * 3600)),
                        "api.call",
                        {"api.name": "reporting", "calls": 5 + int(draw[2] * 200)},
                    )
                )
            if ingest and draw[2] < 0.3:
                out.append(
                    (
                        account.id,
                        _ns(day, 67000 + int(draw[4] * 3600)),
                        "api.call",
                        {"api.name": "ingest", "calls": 10 + int(draw[3] * 500)},
                    )
                )
            if draw[3] < (0.1 if account.unhappy else 0.035):
                mood = rng.normal(-0.45, 0.3) if account.unhappy else rng.normal(0.15, 0.35)
                attributes = {
                    "sentiment": round(float(np.clip(mood, -1, 1)), 2),
                    "priority": "high" if mood < -0.5 else "normal",
                }
                out.append((account.id, _ns(day, 40000 + int(draw[4] * 20000)), "ticket.created", attributes))
    return out


def _any_value(target, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    else:
        target.string_value = str(value)


def requests_of(rows: list[tuple[str, int, str, dict[str, Any]]]) -> list[bytes]:
    """The events as OTLP ``ExportLogsServiceRequest`` bodies (protobuf), one resource per account."""
    bodies = []
    request = ExportLogsServiceRequest()
    count = 0
    current = None
    scope = None
    for account_id, time_ns, name, attributes in rows:
        if account_id != current or scope is None:
            resource_logs = request.resource_logs.add()
            for key, value in (("service.name", "product"), ("account.id", account_id)):
                kv = resource_logs.resource.attributes.add()
                kv.key = key
                kv.value.string_value = value
            scope = resource_logs.scope_logs.add()
            scope.scope.name = "usage-digest"
            current = account_id
        record = scope.log_records.add()
        record.event_name = name
        record.time_unix_nano = time_ns
        for key, value in attributes.items():
            kv = record.attributes.add()
            kv.key = key
            _any_value(kv.value, value)
        count += 1
        if count == RECORDS_PER_REQUEST:
            bodies.append(request.SerializeToString())
            request, count, current, scope = ExportLogsServiceRequest(), 0, None, None
    if count:
        bodies.append(request.SerializeToString())
    return bodies


def entity_changes(company: Company) -> list[tuple[str, str, str, dict[str, Any]]]:
    """The contracts' history as dated entity changes ``(method, account id, ISO time, attributes)``, each
    account's in time order: its attributes as of the first day, its outcome on the renewal day, and for a
    renewed account the next renewal date the day after."""
    out = []
    for account in company.accounts:
        first = datetime(company.first_day.year, company.first_day.month, company.first_day.day, tzinfo=UTC)
        out.append(("PUT", account.id, first.isoformat(), account.attributes()))
        if not account.past:
            continue
        renewal = datetime(account.renewal.year, account.renewal.month, account.renewal.day, 15, tzinfo=UTC)
        outcome = "churned" if account.churned else "renewed"
        contract = {"outcome": outcome, "outcomeDate": account.renewal.isoformat()}
        out.append(("PATCH", account.id, renewal.isoformat(), {"contract": contract}))
        if not account.churned:
            following = (
                account.renewal.replace(year=account.renewal.year + 1)
                if not (account.renewal.month == 2 and account.renewal.day == 29)
                else account.renewal + timedelta(days=365)
            )
            day_after = (renewal + timedelta(days=1)).isoformat()
            out.append(("PATCH", account.id, day_after, {"contract": {"renewalDate": following.isoformat()}}))
    return out


def load(
    client, company: Company, key: str, seed: int = 7, progress: Callable[[str], None] = lambda _: None
) -> dict[str, int]:
    """Send the company through the service's endpoints (a Flask test client, or anything with its
    ``post``/``put``/``patch``): entities API first (dated changes), then OTLP logs. Returns the counts."""
    headers = {"Ocp-Apim-Subscription-Key": key}
    changes = entity_changes(company)
    for method, account_id, at, attributes in changes:
        send = client.put if method == "PUT" else client.patch
        answer = send(
            f"/entities/account/{account_id}", query_string={"at": at}, json={"attributes": attributes}, headers=headers
        )
        if answer.status_code != 200:
            raise RuntimeError(
                f"{method} /entities/account/{account_id}: {answer.status_code} {answer.get_data(as_text=True)}"
            )
    progress(f"{len(company.accounts)} accounts and their contracts written ({len(changes)} dated changes)")
    rows = events(company, seed)
    bodies = requests_of(rows)
    protobuf = {**headers, "Content-Type": "application/x-protobuf"}
    for body in bodies:
        answer = client.post("/v1/logs", data=body, headers=protobuf)
        if answer.status_code != 200:
            raise RuntimeError(f"POST /v1/logs: {answer.status_code}")
    progress(f"{len(rows)} usage and ticket events sent through POST /v1/logs ({len(bodies)} OTLP requests)")
    return {"accounts": len(company.accounts), "changes": len(changes), "events": len(rows)}


# -- the one command ---------------------------------------------------------------------------------


class DemoError(Exception):
    pass


def run(
    data_dir: Path,
    accounts: int = 500,
    seed: int = 7,
    echo: Callable[[str], None] = print,
    today: date | None = None,
    port: int = 8080,
    days: int = 365,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate the company into a fresh ``data_dir``, send it through the service, mine the patterns, run the
    triage pass (when the workflow is there), and say where to look. Returns what it did and the keys."""
    from ..app import create_app
    from ..core.settings import hash_key, load_settings
    from .demo_settings import settings_text
    from .mining import mine, table
    from .patterns import save_mined

    data_dir = Path(data_dir).resolve()
    if (data_dir / "ranker.db").exists() or (data_dir / "ranker.toml").exists():
        raise DemoError(f"{data_dir} holds a ranker.db or ranker.toml already: the demo needs a fresh data folder")
    data_dir.mkdir(parents=True, exist_ok=True)
    admin, review = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    config = data_dir / "ranker.toml"
    config.write_text(settings_text(data_dir, hash_key(admin), hash_key(review)))
    settings = load_settings(config, environ={}, overrides=overrides)
    app = create_app(settings)
    service = app.extensions["ranker"]
    where = str(data_dir)
    if settings.database_url is not None:  # the database, not the folder, must be fresh
        where = f"{settings.database_name} (settings in {data_dir})"
        if any(service.store.counts().values()) or any(service.signals.store.counts().values()):
            config.unlink()
            raise DemoError(f"{settings.database_name} holds data already: the demo needs an empty database")
    company = generate(accounts, seed, today, days)
    planted = sum(a.planted and a.past for a in company.accounts)
    echo(f"A SaaS company of {accounts} accounts and {days} days of history (seed {seed}), into {where}:")
    counts = load(app.test_client(), company, admin, seed, lambda line: echo("  " + line))
    echo(
        f"  planted: fintech accounts whose Reporting API usage stops 105-135 days before renewal churn at "
        f"{PLANTED_CHURN:.0%} ({planted} past renewals fit it), the others at {BASE_CHURN:.0%}"
    )
    mined = mine(service.signals.store, settings)
    save_mined(service.store, settings.triage.entity, mined.patterns)
    echo("\nPatterns mined (`ranker patterns mine`), stored:\n")
    echo(table(mined))
    result: dict[str, Any] = {**counts, "patterns": len(mined.patterns), "keys": {"admin": admin, "review": review}}
    triage = _triage_pass()
    if triage is not None:
        summary = triage(service)
        result["triage"] = summary
        echo(
            f"\nTriage pass: {summary.get('due')} accounts renew within {settings.triage.horizon}; "
            f"{summary.get('flagged')} match an enabled pattern and are flagged, each with a ranked next best "
            f"action and a draft email ({len(summary.get('errors') or [])} errors)"
        )
    base = f"http://127.0.0.1:{port}"
    serve = "" if settings.database_url is None else "RANKER_DATABASE_URL=<the same URL> "
    echo(
        f"""
Keys (shown once; ranker.toml keeps only their hashes):
  admin:  {admin}
  review: {review}

Serve it:      {serve}ranker serve --config {config}
Review items:  {base}/review  (sign in with the review key)
JSON API:      curl -H 'Ocp-Apim-Subscription-Key: {review}' {base}/triage/items
Patterns:      ranker patterns list --config {config}"""
    )
    return result


def _triage_pass() -> Callable[[Any], Any] | None:
    """The triage workflow's pass, when this build has it."""
    try:
        from .flagging import run_pass  # type: ignore[import-not-found]
    except ImportError:
        return None
    return run_pass
