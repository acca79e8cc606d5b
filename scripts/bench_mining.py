"""Benchmark pattern mining over 10,000 accounts x 50 features (the issue's target: under a minute).

Builds, in a temporary data folder, ``--accounts`` accounts, each with one past renewal (spread over the last
200 days) whose history is written as dated entity changes (the attributes as of the first day, the outcome
on the renewal day), and 50 account features from 10 event names (per name: count over 30 days, its 30-day
change, the sum and the largest of a numeric field, days since the last one). Events are stored through the
signals store's own fold (what ``POST /v1/logs`` stores after decoding), only in the 90 days before each
renewal's cut-off, the days the mining reads: one event name on about half the days, two on 15 %, seven on
3 % (about 4.5 million bucket rows for 10,000 accounts). Churn is 15 %, 75 % for one industry whose accounts
stop sending the first event name 100+ days before renewal, so the search has something to find.

Then it times :func:`ranker.triage.mining.mine` as ``ranker patterns mine`` runs it: the renewals read from the
attribute history, every account's values as of its cut-off, the candidate conditions, the beam search and the
holdout. It prints the seconds of each stage and the total.

``--database-url postgresql://...`` (an empty database) builds and mines on PostgreSQL instead of SQLite; the
data folder then holds only the settings.

Example:
    python scripts/bench_mining.py --accounts 10000
    python scripts/bench_mining.py --accounts 10000 --database-url postgresql://ranker@localhost/bench
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ranker.core.settings import load_settings
from ranker.signals.features import Definitions, kinds_of
from ranker.signals.ingest import fold_stored
from ranker.signals.service import Signals
from ranker.store import open_database
from ranker.triage.mining import mine, table

TARGET_SECONDS = 60.0
NAMES = 10
DENSITY = [0.5, 0.15, 0.15] + [0.03] * 7
INDUSTRIES = ["fintech", "healthcare", "retail", "media", "logistics", "education"]


def config(data_dir: Path) -> str:
    lines = [f"data_dir = {json.dumps(str(data_dir))}", 'synchronous = "NORMAL"', "", "[triage]", "min_support = 30"]
    for n in range(NAMES):
        event = f"feature{n}.used"
        for name, aggregate, extra in (
            (f"f{n}_count_30d", "count", 'window = "P30D"'),
            (f"f{n}_trend", "change", 'window = "P30D"'),
            (f"f{n}_amount_30d", "sum", 'field = "amount"\nwindow = "P30D"'),
            (f"f{n}_largest_90d", "max", 'field = "amount"\nwindow = "P90D"'),
            (f"f{n}_days_since", "days_since_last", 'window = "P60D"'),
        ):
            lines += ["", "[[signals.features]]", f'name = "{name}"', 'entity = "account"', f'event = "{event}"']
            lines += [f'aggregate = "{aggregate}"', extra]
    return "\n".join(lines) + "\n"


def build(signals: Signals, accounts: int, seed: int, today: date) -> int:
    """Accounts, their renewals and their events; returns the number of events stored."""
    rng = random.Random(seed)
    first = datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=400)
    now = datetime.now(UTC)
    plans = []
    for i in range(accounts):
        industry = rng.choice(INDUSTRIES)
        renewal = today - timedelta(days=rng.randint(10, 200))
        stops = industry == "fintech" and rng.random() < 0.5
        churned = rng.random() < (0.75 if stops else 0.15)
        attributes = {
            "industry": industry,
            "segment": rng.choice(["smb", "mid-market", "enterprise"]),
            "region": rng.choice(["emea", "na", "apac"]),
            "seats": rng.randint(5, 500),
            "contract": {"renewalDate": renewal.isoformat(), "lockedPrice": rng.random() < 0.2},
        }
        plans.append((f"acct-{i:05d}", attributes, renewal, stops, "churned" if churned else "renewed"))

    def write(plan) -> None:
        account, attributes, renewal, _, outcome = plan
        signals.put("account", account, attributes, now, first)
        moment = datetime(renewal.year, renewal.month, renewal.day, 12, tzinfo=UTC)
        signals.patch("account", account, {"contract": {"outcome": outcome}}, now, moment)

    with ThreadPoolExecutor(16) as pool:  # many writers share the group commits
        list(pool.map(write, plans))
    fold = fold_stored(Definitions(signals.settings), kinds_of(signals.settings))
    stored = 0
    rows = []
    for account, _, renewal, stops, _ in plans:
        cutoff = renewal - timedelta(days=90)
        for back in range(1, 91):
            day = cutoff - timedelta(days=back)
            base = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**9
            for n in range(NAMES):
                if n == 0 and stops and back < 15:
                    continue
                if rng.random() < DENSITY[n]:
                    at = base + rng.randrange(86_400) * 10**9
                    attributes = json.dumps({"account.id": account, "amount": rng.randint(1, 1000)})
                    rows.append((os.urandom(16), at, f"feature{n}.used", account, None, attributes))
        if len(rows) >= 50_000:
            stored += signals.store.record_events(rows, fold)
            rows = []
    if rows:
        stored += signals.store.record_events(rows, fold)
    return stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: SQLite in a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        (data_dir / "ranker.toml").write_text(config(data_dir))
        overrides = {"database_url": args.database_url} if args.database_url else {}
        settings = load_settings(data_dir / "ranker.toml", environ={}, overrides=overrides)
        features = len(settings.signals.of("account"))
        database = open_database(settings)
        store = database.store(600.0)  # a bulk load: a chunk of 50,000 events may take PostgreSQL over 10 s
        signals = Signals(settings.signals, store)
        started = time.perf_counter()
        events = build(signals, args.accounts, args.seed, datetime.now(UTC).date())
        print(
            f"built {args.accounts} accounts, {features} features, {events} events in "
            f"{time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        started = time.perf_counter()
        mined = mine(signals.store, settings)
        seconds = time.perf_counter() - started
        print(table(mined).split("\n\n")[0], file=sys.stderr)
        top = mined.patterns[0].description if mined.patterns else "(none)"
        print(f"top pattern: {top}", file=sys.stderr)
        stages = ", ".join(f"{stage} {value:.1f} s" for stage, value in mined.seconds.items())
        verdict = "met" if seconds < TARGET_SECONDS else "NOT met"
        print(
            f"mining {mined.renewals} renewals x {features} features on {database.engine}: {seconds:.1f} s ({stages}); "
            f"target < {TARGET_SECONDS:.0f} s {verdict}"
        )


if __name__ == "__main__":
    main()
