"""``bench_rank.py --database-url``: Rank on SQLite against Rank on PostgreSQL, in one run (see bench_rank.py).

Both servers run side by side on this machine, each as production runs it; the closed-loop rounds alternate
between them (the order flips each round), then each server gets an open loop at half its own best rate.
The figures for a capacity plan come from PostgreSQL's own statistics: commits (``pg_stat_database``), the
CPU of its processes (/proc, from the checkpointer's parent, the postmaster, down) and the size of the
``decisions`` table with its indexes.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from pathlib import Path

import psycopg
from bench_rank import (
    RANK_PATH,
    EventIds,
    Phase,
    closed_loop,
    connect,
    describe,
    measure,
    open_loop,
    percentile,
    rank_body_parts,
    start_server,
)

from ranker.harness import Server
from ranker.settings import mask_url


def postgres_cpu(url: str) -> float:
    """CPU seconds so far of the PostgreSQL server's processes (the postmaster and its children)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'").fetchone()
    stat = Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()
    postmaster = int(stat[1])
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def pg_stats(url: str) -> dict[str, float]:
    with psycopg.connect(url) as conn:
        # a durable commit is a WAL flush (read-only transactions, e.g. the workers' polls, flush nothing)
        syncs, wal = conn.execute("SELECT wal_sync, wal_bytes FROM pg_stat_wal").fetchone()
        rows = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
        size = conn.execute("SELECT pg_total_relation_size('decisions')").fetchone()[0]
        return {"commits": syncs, "wal": int(wal), "rows": rows, "bytes": size}


async def run(servers: dict[str, Server], url: str, args) -> dict[str, list[Phase]]:
    parts = rank_body_parts()
    ids = EventIds(f"bench-{os.urandom(4).hex()}")
    n, s = args.requests, args.duration
    conns = {name: [await connect(server.port) for _ in range(args.concurrency)] for name, server in servers.items()}
    phases: dict[str, list[Phase]] = {name: [] for name in servers}  # warm-up, closed rounds, open loop
    for name, server in servers.items():
        warm = Phase(f"warm-up {name}")
        await closed_loop(server.port, conns[name], RANK_PATH, parts, ids, warm, int(args.warmup * 500), args.warmup)
        phases[name].append(warm)
    for r in range(1, args.rounds + 1):
        for name in list(servers) if r % 2 else list(reversed(servers)):
            server, phase = servers[name], Phase(f"rank {name} #{r}")
            before_pg, before = postgres_cpu(url), pg_stats(url)
            await measure(server, phase, closed_loop(server.port, conns[name], RANK_PATH, parts, ids, phase, n, s))
            phase.pg_cpu = postgres_cpu(url) - before_pg
            after = pg_stats(url)
            phase.pg_commits = after["commits"] - before["commits"]
            phase.pg_wal = after["wal"] - before["wal"]
            phases[name].append(phase)
            print(
                describe(phase)
                + (f"  PostgreSQL CPU {1e3 * phase.pg_cpu / phase.done:.2f} ms/req" if name == "postgresql" else ""),
                flush=True,
            )
    for name, server in servers.items():
        for conn in conns[name]:
            conn.close()
        rate = args.fraction * max(p.rate for p in phases[name][1:])
        phase = Phase(f"rank {name}, open {rate:.0f}/s")
        paced = [await connect(server.port) for _ in range(args.open_connections)]
        await measure(
            server, phase, open_loop(server.port, paced, RANK_PATH, parts, ids, phase, rate, n, args.open_duration)
        )
        print(describe(phase), flush=True)
        phases[name].append(phase)
    return phases


def engines_main(args) -> int:
    url = args.database_url
    with tempfile.TemporaryDirectory(prefix="ranker-bench-") as tmp:
        servers = {}
        try:
            for name, more in (("sqlite", {}), ("postgresql", {"database_url": url})):
                folder = Path(tmp) / name
                folder.mkdir()
                servers[name] = start_server(folder, args.workers, args.threads, **more)
            print(
                f"Rank on SQLite ({servers['sqlite'].url}) and on PostgreSQL {mask_url(url)} "
                f"({servers['postgresql'].url}); {os.cpu_count()} CPUs shared with this client",
                flush=True,
            )
            before = pg_stats(url)
            phases = asyncio.run(run(servers, url, args))
        finally:
            for server in servers.values():
                server.stop()
        after = pg_stats(url)
        lite = sqlite3.connect(Path(tmp) / "sqlite" / "ranker.db")
        lite_rows = lite.execute("SELECT count(*) FROM decisions").fetchone()[0]
        lite.close()
        lite_bytes = (Path(tmp) / "sqlite" / "ranker.db").stat().st_size  # the file: almost only decisions

    best = {name: max(runs[1:-1], key=lambda p: p.rate) for name, runs in phases.items()}
    acked = {name: sum(p.statuses.get(201, 0) for p in runs) for name, runs in phases.items()}
    ratio = best["postgresql"].rate / best["sqlite"].rate
    print()
    for name in ("sqlite", "postgresql"):
        closed, paced = best[name], phases[name][-1]
        lat = sorted(paced.latencies)
        print(
            f"{name:<10} max {closed.rate:7.0f} req/s, ranker CPU {1e3 * closed.server_cpu / closed.done:.2f} ms/Rank; "
            f"open loop {paced.rate:.0f} req/s p50 {1e3 * percentile(lat, 0.5):.2f} ms p99 "
            f"{1e3 * percentile(lat, 0.99):.2f} ms  (target < 20 ms)"
        )
    closed_pg = phases["postgresql"][1:-1]
    done = sum(p.done for p in closed_pg)
    seconds = sum(p.elapsed for p in closed_pg)
    commits = sum(p.pg_commits for p in closed_pg)
    pg_cpu = sum(p.pg_cpu for p in closed_pg) / done
    wal = sum(p.pg_wal for p in closed_pg) / done
    print(f"PostgreSQL / SQLite     {100 * ratio:6.1f} % of SQLite's Rank throughput   (target >= 80 %)")
    print(
        f"PostgreSQL at max rate  {commits / seconds:.0f} commits/s, "
        f"{done / max(commits, 1):.1f} decisions per commit (WAL flushes), its own CPU {1e3 * pg_cpu:.2f} ms and "
        f"{wal:.0f} WAL bytes per Rank"
    )
    rows = after["rows"] - before["rows"]
    print(
        f"bytes per decision row  PostgreSQL {after['bytes'] / max(after['rows'], 1):.0f} (table + indexes), "
        f"SQLite {lite_bytes / max(lite_rows, 1):.0f}"
    )
    consistent = rows == acked["postgresql"] and lite_rows == acked["sqlite"]
    print(
        f"rows committed          PostgreSQL {rows} (201s {acked['postgresql']}), SQLite {lite_rows} "
        f"(201s {acked['sqlite']}): {'OK' if consistent else 'MISMATCH'}"
    )
    p99 = 1e3 * percentile(sorted(phases["postgresql"][-1].latencies), 0.99)
    met = ratio >= 0.8 and p99 < 20
    print(f"targets {'met' if met else 'missed'}")
    if not consistent:
        return 2
    return 1 if args.check and not met else 0
