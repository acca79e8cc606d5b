"""Benchmark OTLP/HTTP log ingestion (``POST /v1/logs``) on a real ``ranker serve``.

The server runs as production does (``python -m ranker serve``: gunicorn, 2 workers, ``synchronous =
FULL``, so every 200 is sent after the events are committed) with 10 feature definitions and a signals key.
This process is the exporter: it builds protobuf ``ExportLogsServiceRequest`` batches of ``--batch``
records (512, as the OpenTelemetry SDK's batch processor sends them), gzip-compressed, before measuring, and
sends them over ``--concurrency`` keep-alive connections, each sending its next batch when the last one is
answered, for ``--duration`` seconds.

Every record is an event of one of ``--accounts`` accounts and ``--users`` users, with a unique time spread
over the last ``--spread-days`` (1 by default; 30 sends late events into old buckets all the time, the
costlier case). It reports records/s, the server's CPU per record and the other processes' share of the
CPUs, and checks at the end that the log holds exactly one event row per record acknowledged.

With ``--breakdown`` it starts no server: one thread of this process ingests the same batches step by step
(gunzip, protobuf parse, record extraction, feature matching, bucket fold) into a log on the writer's own
connection settings, with ``--per-commit`` batches in each commit, after ``--stored`` batches already in the
log, and prints the CPU per record of each step and each SQL statement: where a record's cost goes, free of
the request threads and the other worker.

Example:
    python scripts/bench_ingest.py --duration 15
    python scripts/bench_ingest.py --breakdown --per-commit 4
    python scripts/bench_ingest.py --database-url postgresql://postgres@/bench?host=/tmp/pg --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import random
import sqlite3
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from pathlib import Path

from bench_rank import Phase, connect, machine_busy_seconds, percentile, start_server
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from ranker.core.settings import hash_key

KEY = "bench-signals-key-0123456789"
EVENTS = ["api.call", "report.export", "user.login", "dashboard.view"]
APIS = ["reporting", "billing", "search", "admin", "export"]

FEATURES = """
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
name = "api_calls_7d"
entity = "account"
event = "api.call"
aggregate = "count"
window = "P7D"

[[signals.features]]
name = "rows_exported_30d"
entity = "account"
event = "report.export"
aggregate = "sum"
field = "rows"
window = "P30D"

[[signals.features]]
name = "largest_export"
entity = "account"
event = "report.export"
aggregate = "max"
field = "rows"

[[signals.features]]
name = "apis_used_30d"
entity = "account"
event = "api.call"
aggregate = "distinct"
field = "api.name"
window = "P30D"

[[signals.features]]
name = "days_to_renewal"
entity = "account"
aggregate = "days_until"
field = "contract.renewalDate"

[[signals.features]]
name = "last_api"
entity = "user"
event = "api.call"
aggregate = "last"
field = "api.name"

[[signals.features]]
name = "days_since_login"
entity = "user"
event = "user.login"
aggregate = "days_since_last"

[[signals.features]]
name = "views_7d"
entity = "user"
event = "dashboard.view"
aggregate = "count"
window = "P7D"
"""

CONFIG = f"""
[loops.default]
keys = [{{ role = "signals", sha256 = "{hash_key(KEY)}" }}]

[signals]
{FEATURES}
"""


def batches(count: int, size: int, accounts: int, users: int, spread_days: float = 1, seed: int = 1) -> list[bytes]:
    """``count`` gzip-compressed protobuf requests of ``size`` records each, every record unique, with times
    spread over the last ``spread_days``."""
    rng = random.Random(seed)
    now = time.time_ns()
    span = max(1, int(spread_days * 86_400 * 10**9))
    out = []
    serial = 0
    for _ in range(count):
        request = ExportLogsServiceRequest()
        resource_logs = request.resource_logs.add()
        attribute = resource_logs.resource.attributes.add()
        attribute.key, attribute.value.string_value = "service.name", "dashboard"
        records = resource_logs.scope_logs.add().log_records
        for _ in range(size):
            serial += 1
            record = records.add()
            record.time_unix_nano = now - rng.randrange(span) - serial  # unique
            record.observed_time_unix_nano = now
            name = rng.choice(EVENTS)
            record.event_name = name
            values = {"account.id": f"acct-{rng.randrange(accounts)}", "user.id": f"user-{rng.randrange(users)}"}
            values["api.name"] = rng.choice(APIS)
            for key, value in values.items():
                kv = record.attributes.add()
                kv.key, kv.value.string_value = key, value
            kv = record.attributes.add()
            kv.key, kv.value.int_value = "rows", rng.randrange(1, 10_000)
        out.append(gzip.compress(request.SerializeToString(), 6))
    return out


def request_bytes(port: int, body: bytes) -> bytes:
    return (
        f"POST /v1/logs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-protobuf\r\n"
        f"Content-Encoding: gzip\r\nOcp-Apim-Subscription-Key: {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def send_all(port: int, payloads: list[bytes], phase: Phase, concurrency: int, seconds: float) -> int:
    """Closed loop: each connection sends the next batch once the last is answered. Returns batches answered 200."""
    loop = asyncio.get_running_loop()
    conns = [await connect(port) for _ in range(concurrency)]
    queue = list(reversed(payloads))
    start = loop.time()
    deadline = start + seconds
    ok = 0

    async def user(i: int) -> None:
        nonlocal ok
        while queue and loop.time() < deadline:
            data = queue.pop()
            phase.sent += 1
            sent = loop.time()
            status = await conns[i].request(data)
            phase.latencies.append(loop.time() - sent)
            phase.count(status)
            ok += status == 200

    await asyncio.gather(*(user(i) for i in range(concurrency)))
    phase.elapsed = loop.time() - start
    for conn in conns:
        conn.close()
    return ok


def stored_events(data_dir: Path, url: str | None = None) -> int:
    """The event rows in the server's log: its SQLite file, or the PostgreSQL database ``url`` names."""
    if url:
        import psycopg

        with psycopg.connect(url) as pg:
            return pg.execute("SELECT count(*) FROM signal_events").fetchone()[0]
    conn = sqlite3.connect(f"file:{data_dir / 'ranker.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM signal_events").fetchone()[0]
    finally:
        conn.close()


def ingest_phase(server, requests: list[bytes], args, name: str, url: str | None = None) -> tuple[Phase, int, int]:
    """Warm the server up with the first batches, then send the rest for ``--duration`` seconds, measuring the
    server's, this client's, the machine's and (``url``) PostgreSQL's CPU. Returns the phase and the batches
    answered 200 in the warm-up and in the phase."""
    from bench_engines import postgres_cpu

    warm = int(args.warmup * args.rate_guess / args.batch)
    warm_ok = asyncio.run(send_all(server.port, requests[:warm], Phase("warm-up"), args.concurrency, args.warmup))
    phase = Phase(name)
    cpu_client, cpu_server, cpu_machine = time.process_time(), server.cpu_seconds(), machine_busy_seconds()
    cpu_pg = postgres_cpu(url) if url else 0.0
    ok = asyncio.run(send_all(server.port, requests[warm:], phase, args.concurrency, args.duration))
    phase.client_cpu = time.process_time() - cpu_client
    phase.server_cpu = server.cpu_seconds() - cpu_server
    phase.machine_cpu = machine_busy_seconds() - cpu_machine
    phase.pg_cpu = postgres_cpu(url) - cpu_pg if url else 0.0
    return phase, warm_ok, ok


def phase_line(phase: Phase, ok: int, batch: int) -> str:
    records = max(ok * batch, 1)
    lat = sorted(phase.latencies)
    others = max(0.0, phase.machine_cpu - phase.server_cpu - phase.client_cpu - phase.pg_cpu) / phase.elapsed
    pg = (
        f", PostgreSQL {1e6 * phase.pg_cpu / records:5.1f} µs ({phase.pg_cpu / phase.elapsed:.2f} CPUs)"
        if phase.pg_cpu
        else ""
    )
    bad = phase.done - ok
    return (
        f"{phase.name:<16} {ok * batch / phase.elapsed:7.0f} records/s, "
        f"ranker {1e6 * phase.server_cpu / records:5.1f} µs/record ({phase.server_cpu / phase.elapsed:.2f} CPUs){pg}, "
        f"p50/p99 {1e3 * percentile(lat, 0.5):.0f}/"
        f"{1e3 * percentile(lat, 0.99):.0f} ms, client {100 * phase.client_cpu / phase.elapsed:.0f} %, "
        f"others {100 * others:.0f} % of a CPU" + (f"  {bad} batches not 200: {phase.statuses}" if bad else "")
    )


def compare(args) -> int:
    """SQLite against PostgreSQL, alternated round by round (see the module's docstring)."""
    from bench_engines import migrate

    url = args.database_url
    per_phase = int(args.rate_guess * (args.duration + args.warmup) / args.batch) + 4
    started = time.process_time()
    payloads = batches(per_phase * args.rounds, args.batch, args.accounts, args.users, args.spread_days)
    print(
        f"prepared {len(payloads)} batches of {args.batch} records in {time.process_time() - started:.1f} s of CPU; "
        f"{args.rounds} rounds of SQLite and PostgreSQL, the same batches to each",
        flush=True,
    )
    migrate(url)
    phases: dict[str, list[tuple[Phase, int, int]]] = {"sqlite": [], "postgresql": []}
    with tempfile.TemporaryDirectory(prefix="ranker-bench-ingest-") as tmp:
        dirs = {name: Path(tmp) / name for name in phases}
        for folder in dirs.values():
            folder.mkdir()
        for r in range(args.rounds):
            mine = payloads[r * per_phase : (r + 1) * per_phase]
            for name in list(phases) if r % 2 == 0 else list(phases)[::-1]:
                more = {"database_url": url} if name == "postgresql" else {}
                server = start_server(dirs[name], args.workers, args.threads, CONFIG, **more)
                try:
                    requests = [request_bytes(server.port, p) for p in mine]
                    result = ingest_phase(
                        server, requests, args, f"{name} #{r + 1}", url if name == "postgresql" else None
                    )
                finally:
                    server.stop()
                phases[name].append(result)
                print(phase_line(result[0], result[2], args.batch), flush=True)
        stored = {"sqlite": stored_events(dirs["sqlite"]), "postgresql": stored_events(dirs["postgresql"], url)}
    print()
    consistent = True
    rates = {}
    for name, runs in phases.items():
        ok = sum(run[2] for run in runs)
        records = ok * args.batch
        seconds = sum(run[0].elapsed for run in runs)
        ranker = sum(run[0].server_cpu for run in runs)
        pg = sum(run[0].pg_cpu for run in runs)
        rates[name] = records / seconds
        acknowledged = sum(run[1] + run[2] for run in runs) * args.batch
        consistent = consistent and stored[name] == acknowledged
        print(
            f"{name:<10} {rates[name]:7.0f} records/s over {len(runs)} phases (target >= 20,000), ranker "
            f"{1e6 * ranker / records:.1f} µs/record"
            + (f" + PostgreSQL {1e6 * pg / records:.1f} µs = {1e6 * (ranker + pg) / records:.1f} µs" if pg else "")
            + f"; events stored {stored[name]}, records acknowledged {acknowledged}: "
            + ("OK" if stored[name] == acknowledged else "MISMATCH")
        )
    pairs = [(p[2] / p[0].elapsed) / max(s[2] / s[0].elapsed, 1e-9) for s, p in zip(*phases.values(), strict=True)]
    print(f"PostgreSQL / SQLite, round by round: {', '.join(f'{100 * x:.0f} %' for x in pairs)}")
    if not consistent:
        return 2
    return 1 if args.check and rates["postgresql"] < 20_000 and rates["sqlite"] < 20_000 else 0


class _Timed:
    """The writer's connection, adding up the CPU (and the wall time) each statement takes, by its first words."""

    def __init__(self, conn, spent: dict[str, float], waited: dict[str, float]):
        self.conn, self.spent, self.waited = conn, spent, waited
        if hasattr(conn, "insert_literals"):  # PostgreSQL's: see ranker.store.signals.insert_rows
            self.insert_literals = self._insert_literals

    def _timed(self, call, sql: str, *rest):
        started, wall = time.thread_time(), time.perf_counter()
        try:
            return call(sql, *rest)
        finally:
            name = sql.split("(")[0].strip()[:40]
            self.spent[name] += time.thread_time() - started
            self.waited[name] += time.perf_counter() - wall

    def execute(self, sql: str, *params):
        return self._timed(self.conn.execute, sql, *params)

    def _insert_literals(self, head: str, *rest):
        return self._timed(self.conn.insert_literals, head, *rest)

    def __getattr__(self, name: str):
        return getattr(self.conn, name)


class _OneWriter:
    """What SignalStore needs of a store, on one connection in this thread: ``per_commit`` writes per
    transaction, then the commit and (SQLite) the checkpoint the writer runs after its write turn, each timed.
    ``conn``: an ``sqlite3.Connection`` or a :class:`ranker.store.pgsql.Connection`."""

    def __init__(self, conn, per_commit: int, engine: str = "sqlite"):
        self.conn, self.per_commit, self.writes, self.engine = conn, per_commit, 0, engine
        self.spent: dict[str, float] = defaultdict(float)
        self.waited: dict[str, float] = defaultdict(float)

    def write(self, fn, concurrent: bool = False):
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
        result = fn(_Timed(self.conn, self.spent, self.waited))
        self.writes += 1
        if self.writes % self.per_commit == 0:
            self.finish()
        return result

    def finish(self) -> None:
        from ranker.store.sqlite import checkpoint

        if self.conn.in_transaction:
            _Timed(self.conn, self.spent, self.waited).execute("COMMIT")
            if self.engine == "sqlite":
                started = time.thread_time()
                checkpoint(self.conn)
                self.spent["checkpoint (after the write turn)"] += time.thread_time() - started

    def clear(self) -> None:
        self.spent.clear()
        self.waited.clear()


def _process_cpu(pid: int) -> float:
    """CPU seconds so far of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def breakdown(args) -> int:
    """CPU per record of each step of ingestion, in this thread (see the module's docstring)."""
    from ranker.signals import otlp
    from ranker.signals.definitions import SignalSettings
    from ranker.signals.features import Definitions, kinds_of
    from ranker.signals.ingest import extract
    from ranker.store.signals import SignalStore
    from ranker.store.sqlite import migrate, writer_connection

    settings = SignalSettings(**tomllib.loads(CONFIG)["signals"])
    definitions, none, kinds = Definitions(settings), Definitions(SignalSettings()), kinds_of(settings)
    payloads = batches(args.stored + args.batches, args.batch, args.accounts, args.users, args.spread_days)
    clock = time.thread_time
    with tempfile.TemporaryDirectory(prefix="ranker-bench-ingest-") as tmp:
        if args.database_url:
            import psycopg

            from ranker.store import pgsql

            pgsql.migrate(args.database_url)
            conn = pgsql.Connection(psycopg.connect(args.database_url, autocommit=True))
            writer = _OneWriter(conn, args.per_commit, "postgresql")
        else:
            path = Path(tmp) / "ranker.db"
            migrate(path)
            writer = _OneWriter(writer_connection(path), args.per_commit)
        store = SignalStore(writer)
        now = time.time_ns()
        for payload in payloads[: args.stored]:
            batch = extract(
                otlp.parse(otlp.decompress(payload, "gzip", 1 << 26), otlp.PROTOBUF), settings, definitions, now
            )
            store.record_events(batch.rows, batch.fold(kinds))
        writer.finish()
        writer.clear()
        if args.database_url:
            from bench_engines import postgres_cpu

            pg_before, backend_before = postgres_cpu(args.database_url), _process_cpu(conn.raw.info.backend_pid)
        steps: dict[str, float] = defaultdict(float)
        for payload in payloads[args.stored :]:
            t0 = clock()
            data = otlp.decompress(payload, "gzip", 1 << 26)
            t1 = clock()
            request = otlp.parse(data, otlp.PROTOBUF)
            t2 = clock()
            extract(request, settings, none, now)  # the same without feature definitions
            t3 = clock()
            batch = extract(request, settings, definitions, now)
            t4 = clock()
            fold = batch.fold(kinds)
            fold(batch.rows)
            t5 = clock()
            store.record_events(batch.rows, fold)  # folds again (before its write), then the SQL
            steps["gunzip"] += t1 - t0
            steps["protobuf parse"] += t2 - t1
            steps["record extraction (events, ids, identity)"] += t3 - t2
            steps["feature matching"] += (t4 - t3) - (t3 - t2)
            steps["bucket fold"] += t5 - t4
        writer.finish()
        if args.database_url:
            pg = postgres_cpu(args.database_url) - pg_before
            backend = _process_cpu(conn.raw.info.backend_pid) - backend_before
    records = args.batches * args.batch
    print(
        f"CPU per record in one thread: {args.batches} batches of {args.batch} after {args.stored} stored, "
        f"{args.per_commit} per commit, on {writer.engine}"
        + (" (SQL: this thread's CPU, then the wall time waiting for PostgreSQL too)" if args.database_url else "")
    )
    for name, seconds in steps.items():
        print(f"  {name:<44} {1e6 * seconds / records:6.1f} µs")
    for name, seconds in sorted(writer.spent.items(), key=lambda item: -item[1]):
        wall = f"  wall {1e6 * writer.waited[name] / records:6.1f} µs" if args.database_url else ""
        print(f"  SQL: {name:<39} {1e6 * seconds / records:6.1f} µs{wall}")
    turn = sum(v for k, v in writer.spent.items() if not k.startswith("checkpoint"))
    wall = f"  wall {1e6 * sum(writer.waited.values()) / records:6.1f} µs" if args.database_url else ""
    print(f"  the writer's SQL and COMMIT (SQLite: its turn)   {1e6 * turn / records:6.1f} µs{wall}")
    print(f"  request thread (gunzip to fold)                {1e6 * sum(steps.values()) / records:6.1f} µs")
    if args.database_url:
        print(f"  PostgreSQL's own CPU meanwhile                 {1e6 * pg / records:6.1f} µs")
        print(f"    of which the writer's backend process        {1e6 * backend / records:6.1f} µs")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load (default 15)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up first (default 2)")
    parser.add_argument("--batch", type=int, default=512, help="records per request (default 512)")
    parser.add_argument("--concurrency", type=int, default=8, help="sending connections (default 8)")
    parser.add_argument("--rate-guess", type=int, default=40_000, help="records/s to prepare batches for")
    parser.add_argument(
        "--spread-days", type=float, default=1.0, help="record times spread over this many past days (default 1)"
    )
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--workers", type=int, help="RANKER_WORKERS (default: the setting's)")
    parser.add_argument("--threads", type=int, help="RANKER_THREADS (default: the setting's)")
    parser.add_argument("--check", action="store_true", help="exit 1 when under 20,000 records/s")
    parser.add_argument("--breakdown", action="store_true", help="no server: CPU per record of each step")
    parser.add_argument("--per-commit", type=int, default=4, help="--breakdown: batches per commit (default 4)")
    parser.add_argument("--stored", type=int, default=200, help="--breakdown: batches stored first (default 200)")
    parser.add_argument("--batches", type=int, default=100, help="--breakdown: batches measured (default 100)")
    parser.add_argument(
        "--database-url", help="compare SQLite with this PostgreSQL database (an empty or ranker-migrated one)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="--database-url: rounds of both engines (default 2)")
    args = parser.parse_args(argv)
    if args.breakdown:
        return breakdown(args)
    if args.database_url:
        return compare(args)

    count = int(args.rate_guess * (args.duration + args.warmup) / args.batch) + 4
    started = time.process_time()
    payloads = batches(count, args.batch, args.accounts, args.users, args.spread_days)
    size = sum(len(p) for p in payloads) / len(payloads)
    print(
        f"prepared {count} batches of {args.batch} records ({size / 1024:.0f} KiB gzip each) "
        f"in {time.process_time() - started:.1f} s of CPU",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="ranker-bench-ingest-") as tmp:
        data_dir = Path(tmp)
        server = start_server(data_dir, args.workers, args.threads, CONFIG)
        try:
            print(
                f"ranker serve on {server.url}, {len(server.worker_pids())} workers; {os.cpu_count()} CPUs", flush=True
            )
            warm = int(args.warmup * args.rate_guess / args.batch)
            requests = [request_bytes(server.port, p) for p in payloads]
            warm_ok = asyncio.run(
                send_all(server.port, requests[:warm], Phase("warm-up"), args.concurrency, args.warmup)
            )
            phase = Phase("ingest")
            cpu_client, cpu_server, cpu_machine = time.process_time(), server.cpu_seconds(), machine_busy_seconds()
            ok = asyncio.run(send_all(server.port, requests[warm:], phase, args.concurrency, args.duration))
            phase.client_cpu = time.process_time() - cpu_client
            phase.server_cpu = server.cpu_seconds() - cpu_server
            phase.machine_cpu = machine_busy_seconds() - cpu_machine
        finally:
            server.stop()
        rows = stored_events(data_dir)
    records = ok * args.batch
    acknowledged = (ok + warm_ok) * args.batch  # the warm-up's 200s count as well for the rows check
    lat = sorted(phase.latencies)
    others = max(0.0, phase.machine_cpu - phase.server_cpu - phase.client_cpu) / phase.elapsed
    rate = records / phase.elapsed
    print()
    print(f"batches answered 200   {ok:8d} of {phase.done} ({phase.statuses})")
    print(f"records/s              {rate:8.0f}          (target >= 20,000)")
    print(
        f"server CPU per record  {1e6 * phase.server_cpu / max(records, 1):8.1f} µs      "
        f"({phase.server_cpu / phase.elapsed:.2f} CPUs busy)"
    )
    print(f"batch latency p50/p99  {1e3 * percentile(lat, 0.5):8.1f} / {1e3 * percentile(lat, 0.99):.1f} ms")
    print(
        f"client                 {100 * phase.client_cpu / phase.elapsed:8.0f} % of a CPU; "
        f"other processes {100 * others:.0f} % of a CPU"
    )
    consistent = rows == acknowledged
    print(
        f"event rows stored      {rows:8d}          records acknowledged: {acknowledged}  "
        f"{'OK' if consistent else 'MISMATCH'}"
    )
    if not consistent:
        return 2
    return 1 if args.check and rate < 20_000 else 0


if __name__ == "__main__":
    sys.exit(main())
