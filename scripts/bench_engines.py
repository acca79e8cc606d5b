"""``bench_rank.py --database-url``: Rank on SQLite against Rank on PostgreSQL, in one run (see bench_rank.py).

Each engine's server runs as production runs it (``ranker serve``: gunicorn's workers and the trainer), and only
one server runs at a time: each phase starts its own (on the engine's data, kept from phase to phase), warms it
up and stops it after, so neither the other server's workers and trainer (which poll their database) nor its
connections take from the one being measured. The closed-loop rounds alternate between the engines (the order
flips each round), then each engine gets an open loop at half its own best rate. Each phase's line says what
else used the CPU meanwhile: PostgreSQL's processes and all others (the figures only mean something when
"others" is small).
With ``--baseline DIR`` (a checkout of other code, e.g. ``git archive <commit> | tar -x -C DIR``) every phase
also runs with that tree's servers (``PYTHONPATH=DIR``), on the same engines, so old and new code are compared in
one run; a line per engine then gives baseline -> this tree.
The figures for a capacity plan come from PostgreSQL's own statistics: commits (``pg_stat_database``), the
CPU of its processes (/proc, from the checkpointer's parent, the postmaster, down) and the size of the
``decisions`` table with its indexes.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
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

from ranker.core.settings import mask_url
from ranker.harness import Server
from ranker.store.pgsql import migrate

BASELINE = "(baseline)"  # the phases' name suffix for the servers of ``--baseline``'s tree


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


def others_cpu(phase: Phase) -> float:
    """The share of a CPU that processes other than the ranker server, this client and PostgreSQL took."""
    busy = phase.machine_cpu - phase.server_cpu - phase.client_cpu - phase.pg_cpu
    return max(0.0, busy) / max(phase.elapsed, 1e-9)


def line(name: str, phase: Phase) -> str:
    """``describe``'s line, its "other processes" split into PostgreSQL's share and the rest's."""
    head, _, tail = describe(phase).partition(", other processes")
    errors = tail.partition("  NON-201")[2]
    return (
        f"{head}, PostgreSQL {100 * phase.pg_cpu / max(phase.elapsed, 1e-9):3.0f}%"
        + (f" = {1e3 * phase.pg_cpu / max(phase.done, 1):.2f} ms/req" if name.startswith("postgresql") else "")
        + f", others {100 * others_cpu(phase):3.0f}% of a CPU"
        + (f"  NON-201{errors}" if errors else "")
    )


async def load(server: Server, name: str, url: str, args, phase: Phase, ids: EventIds, rate: float = 0) -> Phase:
    """Warm the freshly started server up, then one closed loop (``rate`` 0) or open loop at ``rate``, measuring
    the ranker's, PostgreSQL's and everything else's CPU meanwhile."""
    parts, n, s = rank_body_parts(), args.requests, args.duration
    conns = [await connect(server.port) for _ in range(args.concurrency)]
    warm = Phase(f"warm-up {name}")
    await closed_loop(server.port, conns, RANK_PATH, parts, ids, warm, int(args.warmup * 500), args.warmup)
    before_pg, before = postgres_cpu(url), pg_stats(url)
    if rate:
        for conn in conns:
            conn.close()
        conns = [await connect(server.port) for _ in range(args.open_connections)]
        run = open_loop(server.port, conns, RANK_PATH, parts, ids, phase, rate, n, args.open_duration)
    else:
        run = closed_loop(server.port, conns, RANK_PATH, parts, ids, phase, n, s)
    await measure(server, phase, run)
    phase.pg_cpu = postgres_cpu(url) - before_pg
    after = pg_stats(url)
    phase.pg_commits = after["commits"] - before["commits"]
    phase.pg_wal = after["wal"] - before["wal"]
    phase.warm_ok = warm.statuses.get(201, 0)
    for conn in conns:
        conn.close()
    print(line(name, phase), flush=True)
    return phase


def run(start, url: str, args, names: tuple[str, ...] = ("sqlite", "postgresql")) -> dict[str, list[Phase]]:
    """Closed-loop rounds alternating between the engines, then each engine's open loop at half its best rate;
    every phase on a server of its own, started for it and stopped after it, so only one ranker server runs at a
    time (the other engine's would poll the database and take CPU from the one being measured)."""
    ids = EventIds(f"bench-{os.urandom(4).hex()}")
    phases: dict[str, list[Phase]] = {name: [] for name in names}
    order = list(phases)
    for r in range(1, args.rounds + 1):
        for name in order if r % 2 else order[::-1]:
            server = start(name)
            try:
                phases[name].append(asyncio.run(load(server, name, url, args, Phase(f"rank {name} #{r}"), ids)))
            finally:
                server.stop()
    for name in order if args.rounds % 2 == 0 else order[::-1]:
        rate = args.fraction * max(p.rate for p in phases[name])
        server = start(name)
        try:
            phase = Phase(f"rank {name}, open {rate:.0f}/s")
            phases[name].append(asyncio.run(load(server, name, url, args, phase, ids, rate)))
        finally:
            server.stop()
    return phases


def engines_main(args) -> int:
    url = args.database_url
    baseline = getattr(args, "baseline", None)
    with tempfile.TemporaryDirectory(prefix="ranker-bench-") as tmp:
        settings = {"sqlite": {}, "postgresql": {"database_url": url}}
        if baseline:  # the same phases with the servers of another source tree, on the same engines
            settings.update({f"{name} {BASELINE}": more for name, more in list(settings.items())})
        for name in settings:
            (Path(tmp) / name).mkdir()
        code = os.environ.get("PYTHONPATH", "")

        def start(name: str) -> Server:
            os.environ["PYTHONPATH"] = str(Path(baseline).resolve()) if name.endswith(BASELINE) else code
            try:
                return start_server(Path(tmp) / name, args.workers, args.threads, **settings[name])
            finally:
                os.environ["PYTHONPATH"] = code

        print(
            f"Rank on SQLite and on PostgreSQL {mask_url(url)}, one server at a time, each started for its phase; "
            f"{os.cpu_count()} CPUs shared with this client",
            flush=True,
        )
        migrate(url)  # an empty database gets the schema, as the server would make it
        before = pg_stats(url)
        phases = run(start, url, args, tuple(settings))
        after = pg_stats(url)
        counted = {}
        for name in settings:
            if name.startswith("sqlite"):
                lite = sqlite3.connect(Path(tmp) / name / "ranker.db")
                counted[name] = lite.execute("SELECT count(*) FROM decisions").fetchone()[0]
                lite.close()
        lite_rows, lite_all = counted["sqlite"], sum(counted.values())
        lite_bytes = (Path(tmp) / "sqlite" / "ranker.db").stat().st_size  # the file: almost only decisions

    best = {name: max(runs[:-1], key=lambda p: p.rate) for name, runs in phases.items()}
    acked = {name: sum(p.statuses.get(201, 0) + p.warm_ok for p in runs) for name, runs in phases.items()}
    if baseline:
        print()
        print(f"this tree against {baseline} (each row: baseline -> this tree)")
        for name in ("sqlite", "postgresql"):
            old, new = phases[f"{name} {BASELINE}"], phases[name]
            cpu = [sum(p.server_cpu for p in runs[:-1]) / sum(p.done for p in runs[:-1]) for runs in (old, new)]
            p99 = [1e3 * percentile(sorted(runs[-1].latencies), 0.99) for runs in (old, new)]
            print(
                f"{name:<10} max {best[f'{name} {BASELINE}'].rate:.0f} -> {best[name].rate:.0f} req/s, ranker CPU "
                f"{1e3 * cpu[0]:.2f} -> {1e3 * cpu[1]:.2f} ms/Rank, p99 at half rate {p99[0]:.1f} -> {p99[1]:.1f} ms"
            )
        acked["postgresql"] += acked.pop(f"postgresql {BASELINE}")  # one database: its rows are both trees'
        acked["sqlite"] += acked.pop(f"sqlite {BASELINE}")
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
    closed_pg = phases["postgresql"][:-1]
    done = sum(p.done for p in closed_pg)
    seconds = sum(p.elapsed for p in closed_pg)
    commits = sum(p.pg_commits for p in closed_pg)
    pg_cpu = sum(p.pg_cpu for p in closed_pg) / done
    wal = sum(p.pg_wal for p in closed_pg) / done
    print(f"PostgreSQL / SQLite     {100 * ratio:6.1f} % of SQLite's Rank throughput   (target >= 80 %)")
    # a round's two phases ran back to back: their ratio depends less on what else the machine did meanwhile
    pairs = sorted(p.rate / s.rate for p, s in zip(phases["postgresql"][:-1], phases["sqlite"][:-1], strict=True))
    print(
        f"  round by round        {', '.join(f'{100 * r:.1f} %' for r in pairs)} "
        f"(median {100 * statistics.median(pairs):.1f} %)"
    )
    cpu = {
        name: sum(p.server_cpu + (p.pg_cpu if name == "postgresql" else 0) for p in runs[:-1])
        / sum(p.done for p in runs[:-1])
        for name, runs in phases.items()
    }
    print(
        f"  by CPU per Rank       {100 * cpu['sqlite'] / cpu['postgresql']:6.1f} % (ranker + PostgreSQL CPU per Rank "
        f"{1e3 * cpu['postgresql']:.2f} ms against SQLite's {1e3 * cpu['sqlite']:.2f} ms: the rate ratio of a machine "
        "whose CPU is the limit)"
    )
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
    consistent = rows == acked["postgresql"] and lite_all == acked["sqlite"]
    print(
        f"rows committed          PostgreSQL {rows} (201s {acked['postgresql']}), SQLite {lite_all} "
        f"(201s {acked['sqlite']}): {'OK' if consistent else 'MISMATCH'}"
    )
    p99 = 1e3 * percentile(sorted(phases["postgresql"][-1].latencies), 0.99)
    met = ratio >= 0.8 and p99 < 20
    print(f"targets {'met' if met else 'missed'}")
    if not consistent:
        return 2
    return 1 if args.check and not met else 0
