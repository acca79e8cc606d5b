"""Two servers of two source trees, closed-loop Rank (and /null) rounds alternated between them: server CPU per request.

    cd /tmp && python3 /path/to/scripts/bench_rank_ab.py TREE_A TREE_B [rounds, default 5] [seconds, default 4]

Each tree is served as ``bench_rank.py`` serves it (``ranker serve`` with ``PYTHONPATH=TREE``, the null endpoint
on), both at once on their own data folders; every round loads A then B (B then A on odd rounds) with
bench_rank's client and body, 24 connections, so both see the same spells of the machine's load. Prints each
round's server CPU per request and the medians: a small change to a Rank's CPU shows here where the spread of
separate bench_rank runs hides it. Run it from /tmp (``python -m ranker serve`` puts the current folder first on
``sys.path``) and under the shared benchmark lock.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import bench_rank as br

from ranker.harness import Server


async def compare(trees: list[str], rounds: int, seconds: float) -> None:
    servers = []
    for tree in trees:
        os.environ["PYTHONPATH"] = tree
        servers.append(Server(Path(tempfile.mkdtemp(prefix="ab-")), null_endpoint=1))
    parts = br.rank_body_parts()
    out: dict[tuple[int, str], list[float]] = {(t, p): [] for t in range(2) for p in ("rank", "null")}
    try:
        conns = {i: [await br.connect(s.port) for _ in range(24)] for i, s in enumerate(servers)}
        ids = br.EventIds("ab-" + os.urandom(3).hex())
        for i, s in enumerate(servers):  # warm-up
            for path in (br.NULL_PATH, br.RANK_PATH):
                await br.closed_loop(s.port, conns[i], path, parts, ids, br.Phase("warm-up"), 10**6, 2.0)
        for r in range(rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for what, path in (("rank", br.RANK_PATH), ("null", br.NULL_PATH)):
                if what == "null" and r % 2:  # null every other round
                    continue
                for i in order:
                    server, phase = servers[i], br.Phase(what)
                    run = br.closed_loop(server.port, conns[i], path, parts, ids, phase, 10**6, seconds)
                    await br.measure(server, phase, run)
                    cpu = 1e6 * phase.server_cpu / phase.done
                    out[(i, what)].append(cpu)
                    print(f"round {r} {'AB'[i]} {what}: {cpu:7.0f} us/req {phase.rate:6.0f} req/s", flush=True)
    finally:
        for server in servers:
            server.stop()
    medians = {key: statistics.median(values) for key, values in out.items()}
    for what in ("null", "rank"):
        a, b = medians[(0, what)], medians[(1, what)]
        print(f"{what}: A median {a:.0f} us, B median {b:.0f} us, B/A {b / a:.3f}")
    by_a, by_b = medians[(0, "null")] / medians[(0, "rank")], medians[(1, "null")] / medians[(1, "rank")]
    print(f"by CPU: A {100 * by_a:.1f} %, B {100 * by_b:.1f} %; load average {os.getloadavg()}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    asyncio.run(
        compare(
            sys.argv[1:3],
            int(sys.argv[3]) if len(sys.argv) > 3 else 5,
            float(sys.argv[4]) if len(sys.argv) > 4 else 4.0,
        )
    )
