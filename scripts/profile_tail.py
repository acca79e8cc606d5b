"""What the slow Ranks at half rate waited for: a timeline of a real ``ranker serve`` under bench_rank's open loop.

The script starts the server as ``scripts/bench_rank.py`` does, with ``scripts/tail_hook.py`` loaded into its
processes (through a ``sitecustomize`` on the server's ``PYTHONPATH``; nothing of it is in ranker), which
records with one clock (``time.monotonic()``, the same in every process of the machine) each garbage
collection per worker and thread, each request's hand-off and answer, each group commit (write turn, BEGIN,
INSERTs, COMMIT, batch size), each WAL checkpoint, the refresher's looks, model loads, the trainer's passes, and
every 0.1 s the time the process's threads spent runnable but not running. The load is bench_rank's open loop:
Ranks due at fixed intervals, a latency counted from when the request was due.

Then, per run: the p50 / p99, how many Ranks took over ``--slow`` ms, and for each kind of event how often it
overlaps a slow Rank against how often it overlaps any Rank (a kind that lines up with the slow ones overlaps
them far more often than the others); the longest events of each kind; and the worst episodes (slow Ranks
close together) with what ran during each.

``--variant NAME:VAR=VALUE,...`` (repeatable) runs the server with those variables set (``TAIL_GC_FREEZE=1``
and others, see ``tail_hook.py``; ``RANKER_THREADS=4``, a setting; ``TREE=/path`` serves another source tree);
variants alternate round by round, all at the same rate (``--rate``, or half the first variant's maximum measured
at the start).

Example:
    python scripts/profile_tail.py --seconds 12
    python scripts/profile_tail.py --rounds 3 --variant base: --variant freeze:TAIL_GC_FREEZE=1
    python scripts/profile_tail.py --database-url 'postgresql://postgres@/bench?host=/tmp/pg'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_rank import (
    RANK_PATH,
    EventIds,
    Phase,
    closed_loop,
    connect,
    percentile,
    rank_body_parts,
    start_server,
)
from bench_rank import open_loop as bench_open_loop


async def open_loop(port: int, rate: float, seconds: float, connections: int = 64) -> list[tuple[float, float, int]]:
    """bench_rank's open loop of Ranks, keeping (due, answered, status) of each."""
    conns = [await connect(port) for _ in range(connections)]
    ids = EventIds(f"tail-{os.urandom(4).hex()}")
    answers: list[tuple[float, float, int]] = []
    phase = Phase("open")
    await bench_open_loop(port, conns, RANK_PATH, rank_body_parts(), ids, phase, rate, 10**9, seconds, answers)
    return answers


async def max_rate(port: int, seconds: float) -> float:
    conns = [await connect(port) for _ in range(24)]
    parts = rank_body_parts()
    ids = EventIds(f"max-{os.urandom(4).hex()}")
    await closed_loop(port, conns, RANK_PATH, parts, ids, Phase("warm-up"), 10**9, 2.0)
    phase = Phase("max")
    await closed_loop(port, conns, RANK_PATH, parts, ids, phase, 10**9, seconds)
    for conn in conns:
        conn.close()
    return phase.rate


async def warm(port: int, seconds: float) -> None:
    conns = [await connect(port) for _ in range(8)]
    await closed_loop(
        port,
        conns,
        RANK_PATH,
        rank_body_parts(),
        EventIds(f"warm-{os.urandom(4).hex()}"),
        Phase("warm"),
        10**9,
        seconds,
    )
    for conn in conns:
        conn.close()


def run_server(variant: dict[str, str], args, tmp: Path, site: Path, out: Path, fn):
    """Start the server with the variant's variables, run ``fn(server)``, stop it; the processes' timelines."""
    saved = dict(os.environ)
    tree = variant.get("TREE")
    here = str(Path(__file__).resolve().parent)
    os.environ.update({k: v for k, v in variant.items() if k != "TREE" and not k.startswith("RANKER_")})
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), here, tree or saved.get("PYTHONPATH")]))
    os.environ["PROFILE_TAIL_OUT"] = str(out)
    for old in [*out.glob("*.json"), out / "dump"]:
        old.unlink(missing_ok=True)
    data = Path(tempfile.mkdtemp(dir=tmp))
    more = {"database_url": args.database_url} if args.database_url else {}
    more.update({k[7:].lower(): v for k, v in variant.items() if k.startswith("RANKER_")})  # the server's settings
    try:
        server = start_server(data, None, more.pop("threads", args.threads), None, **more)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        result = fn(server)
        (out / "dump").touch()  # each process writes its timeline within 0.1 s
        time.sleep(1.0)
    finally:
        server.stop()
    timelines = [json.loads(p.read_text()) for p in out.glob("*.json")]
    return result, timelines


KINDS = ("gc0", "gc1", "gc2", "turn", "begin", "insert", "commit", "checkpoint", "look", "load", "trim", "pass", "jobs")


def events_of(timelines: list[dict]) -> list[tuple[str, float, float, dict, str]]:
    """(kind, start, end, timeline, detail) of every recorded event; a garbage collection's kind names its
    generation, a commit's detail is its batch size."""
    found = []
    for t in timelines:
        for kind, start, end, *detail in t["events"]:
            if kind == "gc":
                kind = f"gc{detail[0]}"
            found.append((kind, start, end, t, detail))
    return found


def overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 < b1 and b0 < a1


def analyse(name: str, results: list, timelines: list[dict], slow_ms: float) -> dict:
    latencies = sorted(1e3 * (done - due) for due, done, _ in results)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    errors = sum(1 for *_, status in results if status != 201)
    slow = [(due, done) for due, done, _ in results if 1e3 * (done - due) > slow_ms]
    events = events_of(timelines)
    roles = {t["pid"]: t["role"] for t in timelines}
    loaded = [e for t in timelines for e in t["events"] if e[0] == "serving"]
    print(
        f"\n== {name}: {len(results)} Ranks, p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {latencies[-1]:.1f} ms, "
        f"{len(slow)} over {slow_ms:g} ms" + (f", {errors} not 201" if errors else "")
    )
    for e in loaded:
        print(f"   worker serving: frozen {e[3]} objects, tracked {e[4]}, thresholds {e[5]}")
    print(
        f"   {'event':<11}{'count':>7}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'total ms/s':>11}"
        f"{'% of slow':>10}{'% of all':>9}"
    )
    span = (results[-1][0] - results[0][0]) if results else 1.0
    t0 = results[0][0] - 0.05
    t1 = max(done for _, done, _ in results)
    for kind in KINDS:
        these = [(s, e) for k, s, e, _, _ in events if k == kind and overlaps(s, e, t0, t1)]
        if not these:
            continue
        durations = sorted(1e3 * (e - s) for s, e in these)
        starts = sorted(these)
        hit_slow = sum(1 for a, b in slow if _any_overlap(starts, a, b))
        sample = results[:: max(1, len(results) // 2000)]
        hit_all = sum(1 for a, b, _ in sample if _any_overlap(starts, a, b))
        print(
            f"   {kind:<11}{len(these):>7}{percentile(durations, 0.5):>8.2f}{percentile(durations, 0.99):>8.2f}"
            f"{durations[-1]:>8.2f}{sum(durations) / span:>11.1f}"
            f"{100 * hit_slow / max(1, len(slow)):>9.0f}%{100 * hit_all / max(1, len(sample)):>8.0f}%"
        )
    served = [(d[0] - s, e - d[0]) for k, s, e, _, d in events if k == "request" and t0 <= s <= t1]
    if served:
        waits, times = sorted(1e3 * w for w, _ in served), sorted(1e3 * x for _, x in served)
        print(
            f"   in the server: waiting for a thread p50 {percentile(waits, 0.5):.2f} / "
            f"p99 {percentile(waits, 0.99):.2f}"
            f" ms, in the thread p50 {percentile(times, 0.5):.2f} / p99 {percentile(times, 0.99):.2f} ms"
        )
    commits = [d[0] for k, s, e, _, d in events if k == "commit" and overlaps(s, e, t0, t1) and d]
    if commits:
        print(f"   batch size: mean {statistics.mean(commits):.2f}, max {max(commits)}")
    # run-queue: CPU wanted but not given, per process, in ms per second, over the run
    for t in timelines:
        rq = [(a, w) for a, w in t["runqueue"] if t0 <= a <= t1]
        if len(rq) > 1:
            per_s = 1e3 * (rq[-1][1] - rq[0][1]) / (rq[-1][0] - rq[0][0])
            print(f"   {t['role']} {t['pid']}: runnable-not-running {per_s:.0f} ms/s")
    # episodes: slow Ranks whose due times are within 50 ms of each other
    episodes: list[list[tuple[float, float]]] = []
    for a, b in sorted(slow):
        if episodes and a - episodes[-1][-1][0] < 0.05:
            episodes[-1].append((a, b))
        else:
            episodes.append([(a, b)])
    episodes.sort(key=lambda ep: -max(b - a for a, b in ep))
    for ep in episodes[:8]:
        a0, a1 = ep[0][0], max(b for _, b in ep)
        worst = 1e3 * max(b - a for a, b in ep)
        seen = []
        for kind, s, e, t, _ in events:
            if overlaps(s, e, a0 - 0.005, a1) and (e - s) > 0.002 and kind != "request":
                where = f"{roles[t['pid']][0]}{t['pid'] % 1000}"
                seen.append((e - s, f"{kind}[{where}] {1e3 * (e - s):.1f} @{1e3 * (s - a0):+.0f}"))
        rqs = []
        for t in timelines:
            rq = [(a, w) for a, w in t["runqueue"] if a0 - 0.1 <= a <= a1 + 0.1]
            if len(rq) > 1:
                rqs.append(
                    f"{t['role'][0]}{t['pid'] % 1000}:{1e3 * (rq[-1][1] - rq[0][1]) / (rq[-1][0] - rq[0][0]):.0f}"
                )
        print(
            f"   episode at {a0 - t0:6.2f} s: {len(ep)} slow, worst {worst:.0f} ms, {1e3 * (a1 - a0):.0f} ms long; "
            f"runq ms/s {' '.join(rqs)}; " + ", ".join(text for _, text in sorted(seen, reverse=True)[:12])
        )
    return {"p50": p50, "p99": p99, "slow": len(slow), "n": len(results)}


def _any_overlap(starts: list[tuple[float, float]], a: float, b: float) -> bool:
    import bisect

    i = bisect.bisect_left(starts, (b, b))
    for s, e in starts[max(0, i - 50) : i]:
        if s < b and a < e:
            return True
    return False


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    env = dict(item.split("=", 1) for item in rest.split(",") if item)
    return name, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds of the open loop (default 12)")
    parser.add_argument("--rate", type=float, help="Ranks per second (default: half the maximum, measured first)")
    parser.add_argument("--max-seconds", type=float, default=5.0, help="seconds of the closed loop for the maximum")
    parser.add_argument(
        "--preload", type=float, default=0.0, help="seconds of closed loop at the maximum before each open loop"
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the variants, alternated (default 1)")
    parser.add_argument("--variant", action="append", default=[], help="NAME:VAR=VALUE,... (repeatable)")
    parser.add_argument("--slow", type=float, default=20.0, help="a slow Rank takes more than this (ms, default 20)")
    parser.add_argument("--threads", type=int, help="RANKER_THREADS for the server (default: the setting's)")
    parser.add_argument("--database-url", help="serve from this PostgreSQL database (default: SQLite)")
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant] or [("as is", {})]
    summary: dict[str, list[dict]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory(prefix="ranker-tail-") as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text("import tail_hook\n\ntail_hook.register()\n")
        out = Path(tmp) / "out"
        out.mkdir()
        rate = args.rate
        if rate is None:
            found, _ = run_server(
                variants[0][1], args, Path(tmp), site, out, lambda s: asyncio.run(max_rate(s.port, args.max_seconds))
            )
            rate = found / 2
            print(f"maximum {found:.0f} Ranks/s ({variants[0][0]}); open loops at {rate:.0f}/s", flush=True)
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for name, env in order:
                load = os.getloadavg()[0]

                def run(server):
                    asyncio.run(warm(server.port, 2.0))
                    if args.preload:  # as bench_rank's closed-loop rounds before its open loop
                        asyncio.run(max_rate(server.port, args.preload))
                    return asyncio.run(open_loop(server.port, rate, args.seconds))

                results, timelines = run_server(env, args, Path(tmp), site, out, run)
                summary[name].append(analyse(f"{name}, round {r + 1} (load {load:.1f})", results, timelines, args.slow))
    print(f"\nat {rate:.0f} Ranks/s, {args.seconds:g} s each; p99 (ms) per round, then median:")
    for name, runs in summary.items():
        p99s = [r["p99"] for r in runs]
        print(
            f"   {name:<14} " + " ".join(f"{p:7.1f}" for p in p99s) + f"   median {statistics.median(p99s):.1f};"
            f" p50 {statistics.median(r['p50'] for r in runs):.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
