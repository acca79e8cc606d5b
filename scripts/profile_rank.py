"""Where a Rank's server CPU goes, piece by piece, measured inside the workers of a real ``ranker serve`` under load.

The script starts the server as ``scripts/bench_rank.py`` does (production gunicorn settings, ``synchronous =
FULL``, the null endpoint on) with ``scripts/profile_hook.py`` loaded into each gunicorn worker: every piece of
the request path (JSON parse, pydantic validation, feature checks, rules, record building, VW predict, sampling,
response encoding, metrics, the hand-off to the writer thread, INSERT, BEGIN/COMMIT, ...) is timed with its
thread's CPU clock, exclusive of the pieces it calls, so no time waiting for the GIL, a lock or the disk counts.
This process loads the server with bench_rank's keep-alive client and body, each endpoint in turn (``POST /null``,
then Rank), and prints the microseconds of CPU per request of each piece. What no piece names: the request
threads' framework (gunicorn's request handling, Flask, werkzeug), the worker's main thread (the poller that
reads whole requests, ``ranker.server.http_worker``), the writer thread's loop (queue, file lock, wake-ups) and the
worker's other threads, from /proc. "framework beyond null" is Rank's framework less the null request's.

A wrapper's own cost (two reads of the thread clock) is measured in each worker and taken off its piece and its
caller; the figures still run a few percent above an unprofiled server's, which the script also shows.

With ``--explain`` it serves a trained model (as ``scripts/bench_rank.py --explain`` does) and profiles Rank with
explanations off and on (``explained``), switched through ``PUT configurations/service`` between the phases.

With ``--multislot`` it profiles multi-slot Rank (3 slots of 20 actions, ``bench_rank.py``'s body) against null on
a server whose one loop is multi-slot; with ``--reward`` it also profiles Reward (each names an event the Rank
rounds ranked, ``{"value": 1.0}``) on the single-slot server.

With ``--enrichment`` it loads instead the three variants of ``bench_rank.py --enrichment`` in turn (plain,
enriched, inline: see there) on a server with its enrichment settings; the piece "enrichment" is the merge of the
entities' values (``Enricher.enrich``).

The workers' threads are also listed by name ("thread ..."), each with all the CPU it used (on PostgreSQL:
psycopg_pool's threads, the refresher that looks for new models).

Example:
    python scripts/profile_rank.py --seconds 10 --rounds 2
    python scripts/profile_rank.py --explain --seconds 6 --rounds 2
    python scripts/profile_rank.py --enrichment --seconds 5 --rounds 2
    python scripts/profile_rank.py --multislot --seconds 6 --rounds 2
    python scripts/profile_rank.py --reward --seconds 6 --rounds 2
    python scripts/profile_rank.py --seconds 10 --database-url 'postgresql://postgres@/bench?host=/tmp/pg'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_rank import (
    MULTISLOT_CONFIG,
    MULTISLOT_PATH,
    NULL_PATH,
    RANK_PATH,
    REWARD_PARTS,
    REWARD_PATH,
    EventIds,
    Phase,
    Ranked,
    closed_loop,
    connect,
    enrichment_config,
    enrichment_variants,
    explanations,
    http_call,
    multislot_body_parts,
    rank_body_parts,
    serve_trained_model,
    start_server,
)

from ranker.harness import cpu_seconds

REQUEST_PIECES = [
    "request body",
    "JSON parse",
    "pydantic validation",
    "JSON parse and pydantic validation, one pass",
    "feature checks",
    "auth (key, loop)",
    "candidates, ids, timestamp",
    "enrichment",
    "rules",
    "record building",
    "VW predict",
    "sampling",
    "explanation (terms, names)",
    "slot filling (predicts inside)",
    "Service.rank's own lines",
    "Service.reward's own lines",
    "response encoding",
    "metrics",
    "hand-off to the writer (request thread)",
    "null view's own lines",
]
WRITER_PIECES = [
    "writer: INSERT",
    "writer: BEGIN, COMMIT",
    "writer: file checks (stat)",
    "writer: BEGIN … COMMIT, one query (PostgreSQL)",
]
# The inline worker's requests: gunicorn's request handling run in the poller thread (counted with the framework).
INLINE = "requests served in the poller"
FRAMEWORK = ["request thread's framework", "poller (worker's main thread)", "worker's other threads"]


def snapshot(server, out: Path) -> dict:
    time.sleep(0.6)  # the workers write their totals every 0.5 s
    pids = server.worker_pids()
    dumps = [json.loads((out / f"{pid}.json").read_text()) for pid in pids]
    pieces: dict[str, list[float]] = {}
    for dump in dumps:
        for name, (ns, calls) in dump["pieces"].items():
            entry = pieces.setdefault(name, [0.0, 0])
            entry[0] += ns / 1e9
            entry[1] += calls
    return {
        "pieces": pieces,
        "inside": max(d["inside_ns"] for d in dumps) / 1e9,
        "outside": max(d["outside_ns"] for d in dumps) / 1e9,
        "main": sum(d["main_cpu"] for d in dumps),
        "writer": sum(d["writer_cpu"] for d in dumps),
        "threads": {name: sum(d["threads"].get(name, 0.0) for d in dumps) for d in dumps for name in d["threads"]},
        "workers": cpu_seconds(pids),
        "server": server.cpu_seconds(),
        "at": time.monotonic(),
    }


def breakdown(before: dict, after: dict, requests: int) -> dict[str, float]:
    """µs per request of each piece between two snapshots."""
    inside, outside = after["inside"], after["outside"]
    us: dict[str, float] = {}
    wrapped_calls = 0
    for name, (seconds, calls) in after["pieces"].items():
        seconds0, calls0 = before["pieces"].get(name, [0.0, 0])
        n = calls - calls0
        wrapped_calls += n if name not in FRAMEWORK else 0
        us[name] = 1e6 * (seconds - seconds0 - n * inside) / requests
    framework = us.get("request thread's framework", 0.0) - 1e6 * wrapped_calls * outside / requests
    us["request thread's framework"] = framework
    us["wrappers' own cost"] = 1e6 * wrapped_calls * (inside + outside) / requests
    per = {k: 1e6 * (after[k] - before[k]) / requests for k in ("main", "writer", "workers", "server")}
    writer = sum(us.get(p, 0.0) for p in WRITER_PIECES)
    in_threads = sum(us.get(p, 0.0) for p in REQUEST_PIECES) + framework + us["wrappers' own cost"]
    us["writer: loop (queue, lock, wake-ups)"] = per["writer"] - writer
    if after["pieces"].get(INLINE, [0, 0])[1] > before["pieces"].get(INLINE, [0, 0])[1]:
        # The requests ran in the poller (ranker.server.inline_worker): what they leave of its CPU is its own.
        us["poller (worker's main thread)"] = per["main"] - in_threads
        us["worker's other threads"] = per["workers"] - per["main"] - per["writer"]
    else:
        us["poller (worker's main thread)"] = per["main"]
        us["worker's other threads"] = per["workers"] - per["main"] - per["writer"] - in_threads
    us["trainer and gunicorn master"] = per["server"] - per["workers"]
    us["whole server"] = per["server"]
    for name, seconds in after["threads"].items():
        us[f"thread {name}"] = 1e6 * (seconds - before["threads"].get(name, 0.0)) / requests
    us["workers"] = per["workers"]
    return us


async def load(
    server, path: str, parts: tuple, seconds: float, concurrency: int, out: Path, rounds: int, ids=None, ok=201
):
    conns = [await connect(server.port) for _ in range(concurrency)]
    ids = ids or EventIds(f"{Path(path).name}-{os.urandom(3).hex()}")
    await closed_loop(server.port, conns, path, parts, ids, Phase("warm-up", ok_status=ok), 10**9, 2.0)
    results = []
    for _ in range(rounds):
        before = snapshot(server, out)
        phase = Phase(path, ok_status=ok)
        await closed_loop(server.port, conns, path, parts, ids, phase, 10**9, seconds)
        after = snapshot(server, out)
        results.append((phase, breakdown(before, after, phase.done)))
    for conn in conns:
        conn.close()
    return results


ORDER = REQUEST_PIECES + WRITER_PIECES + ["writer: loop (queue, lock, wake-ups)"] + FRAMEWORK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per round (default 10)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per endpoint, alternated (default 1)")
    parser.add_argument("--concurrency", type=int, default=24, help="closed-loop connections (default 24)")
    parser.add_argument("--threads", type=int, help="RANKER_THREADS for the server (default: the setting's)")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="serve a trained model (as bench_rank --explain) and also profile Rank with explanations on",
    )
    parser.add_argument(
        "--enrichment",
        action="store_true",
        help="profile bench_rank's --enrichment variants (plain, enriched, inline) instead of null and Rank",
    )
    parser.add_argument(
        "--multislot",
        action="store_true",
        help="profile multi-slot Rank (3 slots of 20 actions) against null, on a server whose loop is multi-slot",
    )
    parser.add_argument(
        "--reward", action="store_true", help="also profile Reward, each naming an event the Rank rounds ranked"
    )
    parser.add_argument("--database-url", help="serve from this PostgreSQL database (default: SQLite)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ranker-profile-") as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text("import profile_hook\n\nprofile_hook.register()\n")
        out = Path(tmp) / "out"
        out.mkdir()
        here = str(Path(__file__).resolve().parent)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), here, os.environ.get("PYTHONPATH")]))
        os.environ["PROFILE_RANK_OUT"] = str(out)
        data = Path(tmp) / "data"
        data.mkdir()
        more = {"database_url": args.database_url} if args.database_url else {}
        config = enrichment_config() if args.enrichment else MULTISLOT_CONFIG if args.multislot else None
        server = start_server(data, None, args.threads, config, **more)
        ranked = EventIds(f"rank-{os.urandom(3).hex()}")
        try:
            if args.multislot:
                loads = [
                    ("null", NULL_PATH, rank_body_parts(), None),
                    ("multislot", MULTISLOT_PATH, multislot_body_parts(), None),
                ]
            elif args.enrichment:
                loads = [
                    (name, RANK_PATH, parts, None) for name, parts in enrichment_variants(http_call(server)).items()
                ]
            else:
                loads = [("null", NULL_PATH, rank_body_parts(), None), ("rank", RANK_PATH, rank_body_parts(), False)]
                if args.reward:
                    loads.append(("reward", REWARD_PATH, REWARD_PARTS, None))
                if args.explain:
                    serve_trained_model(server)
                    loads.append(("explained", RANK_PATH, rank_body_parts(), True))
            runs: dict[str, list] = {name: [] for name, _, _, _ in loads}
            for _ in range(args.rounds):
                for name, path, parts, explaining in loads:
                    if explaining is not None and args.explain:
                        explanations(server, explaining)
                    ids, ok = (Ranked(ranked.prefix, ranked.next), 204) if path == REWARD_PATH else (None, 201)
                    ids = ids or (ranked if path == RANK_PATH else None)
                    run = load(server, path, parts, args.seconds, args.concurrency, out, 1, ids, ok)
                    runs[name] += asyncio.run(run)
        finally:
            server.stop()
    print(f"load average {os.getloadavg()[0]:.1f}; µs of CPU per request (each round)")
    columns = [(name, phase, us) for name in runs for phase, us in runs[name]]
    print(f"{'piece':<42}" + "".join(f"{name:>9}" for name, _, _ in columns))
    threads = sorted({piece for _, _, us in columns for piece in us if piece.startswith("thread ")})
    for piece in (
        ORDER + ["reads (pool)", "wrappers' own cost", "trainer and gunicorn master", "whole server"] + threads
    ):
        print(f"{piece:<42}" + "".join(f"{us.get(piece, 0.0):9.0f}" for _, _, us in columns))
    print(f"{'req/s (profiled)':<42}" + "".join(f"{phase.rate:9.0f}" for _, phase, _ in columns))
    for name in ("rank", "explained", "multislot", "reward") if "null" in runs else ():
        for (_, _, rank), (_, _, null) in zip(
            [c for c in columns if c[0] == name], [c for c in columns if c[0] == "null"], strict=False
        ):
            beyond = sum(rank.get(p, 0.0) for p in FRAMEWORK) - sum(null.get(p, 0.0) for p in FRAMEWORK)
            print(f"framework beyond null ({name}): {beyond:.0f} µs per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
