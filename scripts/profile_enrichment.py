"""Where an enriched Rank's extra CPU goes, in-process (no server, no HTTP): the variants of ``bench_rank.py
--enrichment`` through ``Service.rank``, one Rank of each in turn.

The app comes from ``ranker.app.create_app`` on a temporary data folder with bench_rank's enrichment settings
(two loops, 2 entities x 20 features), seeded through its test client as bench_rank seeds its server. Each
variant runs ``--requests`` Ranks per round: the body validated from its bytes (pydantic and the feature checks)
then ``Service.rank`` (enrichment, rules, record, VW predict, the decision handed to the writer and committed).
The variants take turns Rank by Rank (so a busy machine weighs on each alike); per Rank the script reports the
median and mean of the calling thread's CPU (the request thread's share) and of the process's (adding the
writer thread's INSERT and COMMIT):

- plain: the bench body on the loop without enrichment;
- enriched: ids only, on the loop that adds the entities' attributes and features;
- enriched, recheck 0: the same with ``signals.recheck_seconds = 0``, the versions read at every Rank (left out
  when the code measured has no such setting: run the script against an earlier tree, ``PYTHONPATH=<tree>``, to
  compare with it);
- inline: the plain loop with the merged context sent by the caller.

Then, in tight loops: the enrichment alone (``Enricher.enrich``), VW's parse and predict and the record's JSON
encoding of the plain and the merged context.

Example:
    python scripts/profile_enrichment.py --requests 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench_rank import SIGNALS_KEY, enrichment_config, enrichment_variants

from ranker.app import create_app
from ranker.core import dsjson, vwcalls
from ranker.core.schemas import RankRequest
from ranker.core.settings import load_settings

ALL_VARIANTS = ("plain", "enriched", "enriched, recheck 0", "inline")


def per_call(fn, n: int) -> float:
    """Microseconds of this thread's CPU per call of ``fn``."""
    start = time.thread_time_ns()
    for _ in range(n):
        fn()
    return (time.thread_time_ns() - start) / n / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="Ranks of each variant (default 2000)")
    args = parser.parse_args(argv)

    data_dir = Path(tempfile.mkdtemp(prefix="ranker-profile-enrichment-"))
    (data_dir / "ranker.toml").write_text(enrichment_config())
    app = create_app(load_settings(data_dir / "ranker.toml", environ={}, overrides={"data_dir": data_dir}))
    client = app.test_client()
    service = app.extensions["ranker"]
    signals = service.signals
    recheck = getattr(signals.settings, "recheck_seconds", None)
    variants = [name for name in ALL_VARIANTS if recheck is not None or "recheck" not in name]

    def set_recheck(seconds: float | None) -> None:
        if recheck is not None:
            signals.settings.recheck_seconds = seconds

    def call(method: str, path: str, body: dict | None = None):
        answer = client.open(path, method=method, json=body, headers={"Ocp-Apim-Subscription-Key": SIGNALS_KEY})
        assert answer.status_code < 300, answer.get_data(as_text=True)
        return answer.json

    bodies = enrichment_variants(call)
    loops = {"plain": service.loops["plain"], "enriched": service.loops["enriched"]}
    runs = {
        "plain": (loops["plain"], bodies["plain"], recheck),
        "enriched": (loops["enriched"], bodies["enriched"], recheck),
        "enriched, recheck 0": (loops["enriched"], bodies["enriched"], 0.0),
        "inline": (loops["plain"], bodies["inline"], recheck),
    }
    counter = 0

    def rank(name: str) -> tuple[int, int]:
        """One Rank of a variant: nanoseconds of this thread's CPU and of the process's."""
        nonlocal counter
        loop, (head, tail, _key), seconds = runs[name]
        set_recheck(seconds)
        counter += 1
        body = head + f"profile-{counter}".encode() + tail
        thread, process = time.thread_time_ns(), time.process_time_ns()
        service.rank(loop, RankRequest.model_validate_json(body))
        return time.thread_time_ns() - thread, time.process_time_ns() - process

    for _ in range(max(args.requests // 4, 20)):  # warm-up
        for name in variants:
            rank(name)
    measured: dict[str, list[tuple[int, int]]] = {name: [] for name in variants}
    for i in range(args.requests):
        for name in variants if i % 2 == 0 else reversed(variants):
            measured[name].append(rank(name))
    set_recheck(recheck)

    print(f"µs of CPU per Rank over {args.requests} Ranks of each variant, one of each in turn")
    print("  variant                 thread median  process median  thread mean  process mean")
    stats = {}
    for name in variants:
        thread, process = ([m[k] / 1000 for m in measured[name]] for k in (0, 1))
        stats[name] = (statistics.median(thread), statistics.median(process))
        print(
            f"  {name:<22} {stats[name][0]:13.1f}  {stats[name][1]:14.1f}  {statistics.mean(thread):11.1f}  "
            f"{statistics.mean(process):12.1f}"
        )
    plain = stats["plain"]
    pairs = [("enriched", "plain"), ("enriched, recheck 0", "plain"), ("enriched", "inline"), ("inline", "plain")]
    for a, b in (pair for pair in pairs if pair[0] in variants):
        thread, process = (stats[a][k] - stats[b][k] for k in (0, 1))
        print(
            f"  {a} - {b}: {thread:+6.1f} µs thread ({100 * thread / plain[0]:+.1f} % of plain), "
            f"{process:+6.1f} µs process ({100 * process / plain[1]:+.1f} %)"
        )

    loop = loops["enriched"]
    head, tail, _ = bodies["enriched"]
    context = dsjson.merge(RankRequest.model_validate_json(head + b"x" + tail).contextFeatures, "contextFeatures")
    now = datetime.now(UTC)
    enricher = signals.enricher
    print("tight loops, µs of CPU per call")
    for seconds in (recheck, 0.0) if recheck is not None else (None,):
        set_recheck(seconds)
        cost = per_call(lambda: enricher.enrich(loop.settings.entities, context, now, False), 2000)
        setting = "" if seconds is None else f", recheck_seconds = {seconds:g}"
        print(f"  Enricher.enrich, 2 entities{setting}: {cost:.1f}")
    set_recheck(recheck)
    merged, _ = enricher.enrich(loop.settings.entities, context, now, False)
    plain_request = RankRequest.model_validate_json(bodies["plain"][0] + b"x" + bodies["plain"][1])
    plain_context = dsjson.merge(plain_request.contextFeatures, "contextFeatures")
    actions = [(a.id, dsjson.merge(a.features, "features")) for a in plain_request.actions]
    workspace = loops["plain"].engine._vw
    for name, c in (("plain", plain_context), ("merged", merged)):
        c_json = dsjson.context_json(c, actions, True)
        line = dsjson.predict_line(c_json, len(actions))

        def parse(line=line):
            vwcalls.finish_multi(workspace, vwcalls.parse(workspace, line))

        encode = per_call(lambda c=c: dsjson.context_json(c, actions, True), 2000)
        parsed = per_call(parse, 2000)
        predicted = per_call(lambda line=line: vwcalls.pmf(workspace, line), 2000)
        print(
            f"  {name} context ({len(c_json):,} bytes of JSON): encoding {encode:.1f}, VW parse {parsed:.1f}, "
            f"VW parse and predict {predicted:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
