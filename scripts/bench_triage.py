"""Benchmark a triage pass over 10,000 accounts (the issue's target: under 10 s).

Builds, in a temporary data folder, ``--accounts`` accounts with CRM attributes (industry, health, contract
with a renewal date spread over the next year, a locked price for some, a contact address) and 60 days of
product-usage events through the signals library (``Signals.ingest``, the code ``POST /v1/logs`` runs), with
three account features (reporting API calls over 30 days, their 30-day trend, days to renewal). Fintech
accounts are 30 %; half of them stop calling the Reporting API 30 days ago. Two hand-written patterns, a
playbook of four actions with Jinja2 templates, and an entitlement (no discount on a locked price).

Then it times :func:`ranker.triage.flagging.run_pass` as ``ranker triage run`` runs it, with the production
store settings (``synchronous = FULL``): outcomes, the renewals read, values as of now for every account
renewing within the horizon, pattern matching, the evidence's history, a deferred Rank with explanation in
the loop for each match, the template drafts, and the items inserted. A second pass, which finds every due
account flagged already, is timed too.

``--database-url postgresql://...`` (an empty database) runs it on PostgreSQL instead of SQLite.

Example:
    python scripts/bench_triage.py --accounts 10000
    python scripts/bench_triage.py --accounts 10000 --database-url postgresql://ranker@localhost/bench
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from ranker.core.settings import load_settings
from ranker.serving.service import Service
from ranker.triage.flagging import run_pass

TARGET_SECONDS = 10.0

CONFIG = """
[loops.cs-next-best-action]
entities = { account = "account.id" }
rewardWaitTime = "P14D"

[[loops.cs-next-best-action.rules.entitlements]]
name = "no-discount-on-locked-price"
actions = { ids = ["discount-offer"] }
requires = [{ path = "account.contract.lockedPrice", not_in = [true] }]

[[signals.features]]
name = "reporting_api_calls_30d"
entity = "account"
event = "api.call"
where = [{ path = "api.name", equals = "reporting" }]
aggregate = "count"
window = "P30D"

[[signals.features]]
name = "reporting_api_trend"
entity = "account"
event = "api.call"
where = [{ path = "api.name", equals = "reporting" }]
aggregate = "change"
window = "P30D"

[[signals.features]]
name = "days_to_renewal"
entity = "account"
aggregate = "days_until"
field = "contract.renewalDate"

[triage]
loop = "cs-next-best-action"
horizon = "P90D"

[triage.talking_points]
reporting = ["Reporting API p95 latency down 40 % since October"]

[[triage.patterns]]
name = "fintech-reporting-drop"
when = [{ path = "account.industry", equals = "fintech" }, { path = "account.reporting_api_calls_30d", lte = 0 }]

[[triage.patterns]]
name = "unhealthy"
when = [{ path = "account.health", lte = 15 }]

[[triage.playbook]]
id = "technical-review"
features = { kind = "meeting" }
subject = "Technical review for {{ account.name }}"
template = \"\"\"Schedule a technical review for {{ account.name }}. Focus on the Reporting API.
{% for point in talking_points.reporting %}- {{ point }}
{% endfor %}\"\"\"

[[triage.playbook]]
id = "training"
features = { kind = "training" }
subject = "Training for {{ account.name }}"
template = "Offer training to {{ account.name }} ({{ pattern.description }})."

[[triage.playbook]]
id = "exec-sponsor-call"
features = { kind = "meeting", level = "exec" }
subject = "A call with {{ account.name }}'s sponsor"
template = "Set up a call with the executive sponsor of {{ account.name }}."

[[triage.playbook]]
id = "discount-offer"
features = { kind = "discount" }
subject = "An offer for {{ account.name }}"
template = "Offer {{ account.name }} a discount on the renewal."
"""


def build(service: Service, accounts: int, now: datetime, seed: int = 1) -> None:
    rng = random.Random(seed)
    fintech = [rng.random() < 0.3 for _ in range(accounts)]
    dropped = [f and rng.random() < 0.5 for f in fintech]

    def put(i: int) -> None:
        renewal = (now + timedelta(days=rng.randrange(1, 366))).date().isoformat()
        attributes = {
            "name": f"Account {i}",
            "industry": "fintech" if fintech[i] else rng.choice(["retail", "health", "media"]),
            "health": rng.randrange(0, 101),
            "contact": {"email": f"cs@acct-{i}.example"},
            "contract": {"renewalDate": renewal, "lockedPrice": rng.random() < 0.2, "value": rng.randrange(1, 500)},
        }
        service.signals.put("account", f"acct-{i}", attributes, now - timedelta(days=61))

    with ThreadPoolExecutor(32) as pool:  # the puts share group commits
        list(pool.map(put, range(accounts)))
    now_ns = int(now.timestamp()) * 10**9
    day = 86_400 * 10**9
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    serial = 0
    for i in range(accounts):
        for _ in range(rng.randrange(4, 12)):  # reporting API calls over 60 days; none in the last 30 if dropped
            serial += 1
            age = rng.randrange(31 * day, 60 * day) if dropped[i] else rng.randrange(0, 60 * day)
            record = records.add()
            record.time_unix_nano = now_ns - age - serial
            record.event_name = "api.call"
            for key, value in (("account.id", f"acct-{i}"), ("api.name", "reporting")):
                kv = record.attributes.add()
                kv.key, kv.value.string_value = key, value
        if len(records) >= 5000 or i == accounts - 1:
            service.signals.ingest(request, now)
            request = ExportLogsServiceRequest()
            records = request.resource_logs.add().scope_logs.add().log_records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: SQLite in a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "ranker.toml"
        config.write_text(CONFIG)
        overrides = {"data_dir": folder, "database_url": args.database_url} if args.database_url else {}
        settings = load_settings(config, environ={}, overrides={"data_dir": folder, **overrides})
        service = Service(settings)
        now = datetime.now(UTC)
        started = time.monotonic()
        build(service, args.accounts, now)
        print(f"built {args.accounts} accounts with events in {time.monotonic() - started:.1f} s", flush=True)
        first = run_pass(service, now)
        second = run_pass(service, now + timedelta(minutes=1))
    print(
        f"triage pass over {args.accounts} accounts on {service.database.engine}: {first['seconds']:.2f} s "
        f"({first['due']} renewing within the horizon, {first['matched']} matching, {first['flagged']} flagged "
        f"and ranked, {len(first['errors'])} errors); target < {TARGET_SECONDS:.0f} s"
    )
    print(f"second pass (all flagged already): {second['seconds']:.2f} s ({second['already']} flagged before)")
    return 0 if first["seconds"] < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
