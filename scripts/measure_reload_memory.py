"""Measure a serving worker's memory while models are published often.

Starts a real ``ranker serve`` (two workers, two loops with keys), ranks on both loops from client
threads, publishes a trained model into each loop every ``--period`` seconds (as the trainer does, through
the model store), and prints each worker's resident memory (VmRSS) every ``--every`` seconds. A worker
swaps in every published version, so its memory should not depend on how many it has served.

Example:
    python3 scripts/measure_reload_memory.py --seconds 120 --period 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import vowpalwabbit

from ranker.core.settings import PACKAGE_POLICIES, hash_key
from ranker.harness import Server
from ranker.serving.engine import vw_arguments
from ranker.store import models

LOOPS = {"cards": "cards-key-0123456789", "actions": "actions-key-0123456789"}
ACTIONS = [{"id": f"action-{i}", "features": [{"item": {"kind": f"k{i % 3}", "price": i}}]} for i in range(10)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def trained_model(folder: Path) -> bytes:
    """A model of the default policy that has learned a few events."""
    policy = json.loads((PACKAGE_POLICIES / "default.json").read_text())
    workspace = vowpalwabbit.Workspace(vw_arguments(policy["arguments"], 0.2) + " --dsjson --quiet")
    for n in range(200):
        chosen = n % len(ACTIONS)
        line = {
            "_label_cost": -float(n % 3 == 0),
            "_label_probability": 0.5,
            "_label_Action": chosen + 1,
            "_labelIndex": chosen,
            "a": [chosen + 1],
            "c": {"user": {"n": f"n{n % 7}"}, "_multi": [{"id": a["id"], **a["features"][0]} for a in ACTIONS]},
            "p": [0.5],
        }
        workspace.learn(json.dumps(line))
    path = folder / "trained.vw"
    workspace.save(str(path))
    workspace.finish()
    return path.read_bytes()


def rank_load(url: str, stop: threading.Event, thread: int) -> None:
    n = 0
    while not stop.is_set():
        for loop, key in LOOPS.items():
            body = {"contextFeatures": [{"user": {"n": f"n{n % 7}"}}], "actions": ACTIONS}
            request = urllib.request.Request(
                f"{url}/personalizer/v1.0/rank",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "Ocp-Apim-Subscription-Key": key},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
            except OSError as exc:
                print(f"thread {thread}, loop {loop}: {exc}", file=sys.stderr)
                time.sleep(0.1)
        n += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="how long to publish and rank")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between publications of each loop")
    parser.add_argument("--every", type=float, default=10, help="seconds between memory samples")
    parser.add_argument("--threads", type=int, default=4, help="client threads ranking")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="ranker-memory-"))
    config = "".join(
        f'[loops.{loop}]\nkeys = [{{ role = "admin", sha256 = "{hash_key(key)}" }}]\n\n' for loop, key in LOOPS.items()
    )
    server = Server(folder, config, workers=2)
    url = server.url
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        model = trained_model(folder)
        threads += [threading.Thread(target=rank_load, args=(url, stop, t), daemon=True) for t in range(args.threads)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        pids = sorted(server.worker_pids())
        print(f"workers {pids}; publishing every {args.period} s into {len(LOOPS)} loops for {args.seconds} s")
        print("seconds  versions  " + "  ".join(f"rss[{pid}] MB" for pid in pids))
        started = time.monotonic()
        published, sampled = 0, -args.every
        while (elapsed := time.monotonic() - started) < args.seconds:
            if elapsed - sampled >= args.every:
                sampled = elapsed
                print(f"{elapsed:7.0f}  {published:8d}  " + "  ".join(f"{rss_mb(pid):12.1f}" for pid in pids))
            for loop in LOOPS:
                models.publish(folder, loop, model)
            published += 1
            time.sleep(args.period)
        print(f"{time.monotonic() - started:7.0f}  {published:8d}  " + "  ".join(f"{rss_mb(p):12.1f}" for p in pids))
        if sorted(server.worker_pids()) != pids:
            print("a worker was replaced during the run: its numbers are not comparable", file=sys.stderr)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
