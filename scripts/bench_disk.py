"""What the disk under a data folder gives a commit, with nothing else running: the floor of a Rank's commit.

Prints the latency of ``fsync`` after an 8 KiB append, and of a SQLite commit of 4 rows of about 1.5 KB (WAL,
``synchronous = FULL``, as the decision log commits), ``--count`` of each, as p50 / p99 / p99.9 / max. Compare
with the commit times a server shows under load (``scripts/profile_tail.py``): what is above these figures is
waiting for a CPU or the GIL, not for the disk.

Example:
    python scripts/bench_disk.py --dir /var/lib/ranker --count 3000
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time


def percentiles(times: list[float]) -> str:
    ordered = sorted(times)

    def at(q: float) -> float:
        return 1e3 * ordered[int(q * (len(ordered) - 1))]

    return f"p50 {at(0.5):.2f}  p99 {at(0.99):.2f}  p99.9 {at(0.999):.2f}  max {1e3 * ordered[-1]:.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="a folder on the disk to measure (default: the temporary folder)")
    parser.add_argument("--count", type=int, default=3000, help="fsyncs and commits to time (default 3000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ranker-disk-") as folder:
        fd = os.open(os.path.join(folder, "appended"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        times = []
        for _ in range(args.count):
            os.write(fd, b"x" * 8192)
            started = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - started)
        os.close(fd)
        print(f"fsync after an 8 KiB append:   {percentiles(times)}")

        conn = sqlite3.connect(os.path.join(folder, "log.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, event_id TEXT UNIQUE, record TEXT)")
        times = []
        for i in range(args.count):
            rows = [(f"{i}-{k}", "r" * 1500) for k in range(4)]
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t (event_id, record) VALUES (?, ?)", rows)
            conn.execute("COMMIT")
            times.append(time.perf_counter() - started)
            if i % 300 == 299:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        conn.close()
        print(f"SQLite commit of 4 rows (FULL): {percentiles(times)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
