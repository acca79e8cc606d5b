"""Time the write of a redelivered OTLP batch: what an exporter's retry of a batch already stored costs.

An exporter that got no answer sends the batch again; ranker stores each record once, by its identity. A batch
whose records were all new goes in with one statement per table; this script times the other case, in this
process (no server): after ``--stored`` batches of 512 records, ``--batches`` batches stored before (all seen)
and as many half seen, each through ``SignalStore.record_events`` and its own commit, on SQLite and, with
``--database-url``, on PostgreSQL. It prints the median milliseconds per batch of each.

Example:
    python scripts/bench_redelivery.py
    python scripts/bench_redelivery.py --database-url postgresql://postgres@/bench?host=/tmp/pg
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from ranker.core.settings import Settings
from ranker.store import open_database
from ranker.store.signals import SignalStore

DAY = 20_000
BATCH = 512


def event(i: int) -> tuple:
    at = DAY * 86_400 * 10**9 + i
    return (i.to_bytes(16, "big"), at, "api.call", f"a{i % 700}", f"u{i % 5000}", '{"api.name":"reporting"}')


def fold(rows: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    newest = DAY * 86_400 * 10**9
    per_account = Counter(row[3] for row in rows)
    return [("account", a, "calls", DAY, n, 0.0, None, None, newest, None) for a, n in per_account.items()], []


def timed(signals: SignalStore, batch: list[tuple], new: int) -> float:
    started = time.perf_counter()
    assert signals.record_events(batch, fold) == new
    return time.perf_counter() - started


def measure(url: str | None, stored: int, batches: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="ranker-redelivery-") as folder:
        database = open_database(Settings(data_dir=Path(folder), database_url=url))
        database.migrate()
        signals = SignalStore(database.store())
        for b in range(stored):
            signals.record_events([event(b * BATCH + i) for i in range(BATCH)], fold)
        n = stored * BATCH
        seen = [timed(signals, [event(b * BATCH + i) for i in range(BATCH)], 0) for b in range(batches)]
        half = []
        for b in range(batches):
            batch = [event(b * BATCH + i) for i in range(BATCH // 2)] + [event(n + i) for i in range(BATCH // 2)]
            half.append(timed(signals, batch, BATCH // 2))
            n += BATCH // 2
        return statistics.median(seen), statistics.median(half)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="also on this (empty) PostgreSQL database")
    parser.add_argument("--stored", type=int, default=40, help="batches stored first (default 40)")
    parser.add_argument("--batches", type=int, default=11, help="batches timed of each kind (default 11)")
    args = parser.parse_args(argv)
    for engine, url in (("sqlite", None), ("postgresql", args.database_url)):
        if engine == "sqlite" or url:
            seen, half = measure(url, args.stored, args.batches)
            print(f"{engine:<11} a batch of {BATCH} seen before {1e3 * seen:6.1f} ms, half seen {1e3 * half:6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
