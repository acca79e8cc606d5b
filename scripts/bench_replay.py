"""Replay throughput against VW parsing and learning the same DSJSON file in-process, in one run.

Writes a synthetic log of ``--events`` decisions (10 actions of 5 features, a context of 5 features, uniform
logging, rewards from a simulated world) with ranker's record builder, then times:

- VW alone, in this process, with the default policy's arguments: ``Workspace.parse`` + ``learn`` over the
  file's lines (pyvw's public API), the same through pylibvw's calls (as the trainer and the replay make them),
  and VW's own reader (``-d file``: no Python per line, parsing on a thread of its own);
- the replay of 5 policies (Online, Baseline, Random, and the ``default`` and ``personalizer`` policy files)
  over the same file, with ``--workers`` processes, with and without the DR reward model.

VW in two processes at once shows how much two busy cores of this machine do, against one alone.

Replay events/s is events / wall time for all 5 policies together (two of them VW learners, plus the DR reward
model when on); the ratios compare it with VW's events/s for one policy (target: at least 50%).

``--replay-only`` times the two replays alone: run it for two versions of ranker in turn (PYTHONPATH) to compare
their replay throughput.

Example: python scripts/bench_replay.py --events 100000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import vowpalwabbit
from vowpalwabbit.pyvw import pylibvw

from ranker.core import dsjson
from ranker.evaluation.replay import BUILT_INS, DEFAULT_REWARD_MODEL, Candidate, DsjsonFile, replay

POLICIES = Path(__file__).resolve().parent.parent / "policies"
VW_LABELS = ("VW parse+learn (pyvw), 1 policy", "VW parse+learn (pylibvw), 1 policy", "VW -d reader, 1 policy")


def write_log(path: Path, events: int, actions: int, seed: int = 7) -> None:
    """A DSJSON log as ``ranker export`` writes it: labeled records, uniform logging policy."""
    rng = random.Random(seed)
    items = []
    for i in range(actions):
        features = {"kind": f"k{i % 4}", "vendor": f"v{i % 3}", "price": i / actions, "fresh": i % 2 == 0}
        items.append((f"item{i}", {"item": {**features, "tag": f"t{i}"}}))
    pmf = [1.0 / actions] * actions
    start = 1_900_000_000.0
    with open(path, "w") as out:
        for n in range(events):
            segment = rng.randrange(8)
            account = {"segment": f"s{segment}", "seats": rng.randrange(5, 500), "plan": f"p{n % 3}"}
            context = {"account": account, "user": {"role": f"r{rng.randrange(4)}", "tenure": rng.random()}}
            chosen = rng.randrange(actions)
            order = [chosen] + [i for i in range(actions) if i != chosen]
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + n)) + ".000000Z"
            record = dsjson.decision_line(
                f"e{n}", stamp, dsjson.context_json(context, items, id_feature=True), order, pmf
            )
            clicked = rng.random() < (0.6 if chosen == (segment * 3) % actions else 0.1)
            out.write(dsjson.labeled(record, 1.0 if clicked else 0.0) + "\n")


def vw_parse_learn(path: Path, arguments: str) -> float:
    """Seconds for pyvw's parse + learn over the file's lines, lines read from the file."""
    ws = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet")
    started = time.perf_counter()
    with open(path) as lines:
        for line in lines:
            examples = ws.parse(line)
            ws.learn(examples)
            ws.finish_example(examples)
    elapsed = time.perf_counter() - started
    ws.finish()
    return elapsed


def vw_pylibvw(path: Path, arguments: str) -> float:
    """Seconds for the same parse + learn through pylibvw's calls, as the trainer and the replay make them
    (pyvw also wraps every example in a Python object)."""
    ws = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet")
    started = time.perf_counter()
    with open(path) as lines:
        for line in lines:
            examples = ws._parse(line)
            pylibvw.vw.learn_multi(ws, examples)
            pylibvw.vw._finish_example_multi_ex(ws, examples)
    elapsed = time.perf_counter() - started
    ws.finish()
    return elapsed


def vw_pylibvw_twice(path: Path, arguments: str) -> float:
    """Seconds per pass for :func:`vw_pylibvw` in two processes at once, each over the whole file (wall time / 2):
    its events/s is what two busy cores of this machine do together."""
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        started = time.perf_counter()
        pool.starmap(vw_pylibvw, [(path, arguments)] * 2)
        return (time.perf_counter() - started) / 2


def vw_reader(path: Path, arguments: str) -> float:
    """Seconds for VW's own DSJSON reader and learner over the file (``-d``), in this process."""
    started = time.perf_counter()
    ws = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet -d {path}")
    ws.run_parser()
    ws.finish()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--actions", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement, interleaved; the best counts")
    parser.add_argument(
        "--replay-only", action="store_true", help="time the two replays only (for runs of two versions in turn)"
    )
    args = parser.parse_args()

    candidates = list(BUILT_INS)
    for name in ("default", "personalizer"):
        policy = json.loads((POLICIES / f"{name}.json").read_text())
        candidates.append(Candidate(policy["name"], policy["arguments"]))
    default_arguments = candidates[3].arguments
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "log.json"
        write_log(path, args.events, args.actions)
        size = path.stat().st_size
        shape = f"{args.actions} actions, {size / args.events:.0f} bytes per line"
        print(f"{args.events} events, {shape}, {os.cpu_count()} cores, {args.workers} workers")

        def replayed(model: str | None) -> Callable[[], float]:
            def run() -> float:
                started = time.perf_counter()
                report = replay(DsjsonFile(path), candidates, reward_model=model, workers=args.workers)
                assert report.events == args.events
                runs.append(report)
                return time.perf_counter() - started

            return run

        runs: list = []
        measurements = {
            "VW parse+learn (pyvw), 1 policy": lambda: vw_parse_learn(path, default_arguments),
            "VW parse+learn (pylibvw), 1 policy": lambda: vw_pylibvw(path, default_arguments),
            "VW -d reader, 1 policy": lambda: vw_reader(path, default_arguments),
            "VW parse+learn (pylibvw), 2 processes": lambda: vw_pylibvw_twice(path, default_arguments),
            "replay, 5 policies, with DR model": replayed(DEFAULT_REWARD_MODEL),
            "replay, 5 policies, without DR model": replayed(None),
        }
        if args.replay_only:
            measurements = {label: run for label, run in measurements.items() if label.startswith("replay")}
        # Other work on the machine slows some runs down: each measurement runs --repeat times, interleaved
        # with the others, and its fastest run counts.
        best = {label: math.inf for label in measurements}
        for _ in range(args.repeat):
            for label, measure in measurements.items():
                best[label] = min(best[label], measure())
        rate = {label: args.events / seconds for label, seconds in best.items()}
        print(runs[-1].table())
        print()
        pyvw, raw, reader = (rate.get(label, math.nan) for label in VW_LABELS)
        for label, value in rate.items():
            line = f"{label:40s} {value:10,.0f} events/s"
            if label == "VW parse+learn (pylibvw), 2 processes":
                line += f"   two busy cores do {value / raw:.2f}x the work of one"
            if label.startswith("replay") and not args.replay_only:
                line += f"   {value / pyvw:6.1%} of pyvw, {value / raw:6.1%} of pylibvw, {value / reader:6.1%} of -d"
            print(line)


if __name__ == "__main__":
    main()
