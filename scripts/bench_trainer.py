"""Benchmark the learning loop: trainer throughput, publish-to-serving time, trainer lag under load.

1. In process: N decisions (10 context features, 10 actions x 5 features) logged through the service,
   half of them rewarded; the trainer joins and learns them all (``Trainer.run_once``, checkpoint
   included), then VW learns the same labelled records in-process, both through pyvw's public API and
   through the pylibvw calls the trainer makes. Prints events/s and the ratios, in one run.
2. A real ``ranker serve`` with rewardWaitTime and modelExportFrequency of 1 s under a bounded Rank +
   Reward load from a second process: how long after a model version is published any request is
   still served by an older one (read from the decision log), and the trainer lag reported by
   /metrics, sampled every 0.5 s.

Example:
    python3 scripts/bench_trainer.py --events 20000 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import vowpalwabbit
from vowpalwabbit.pyvw import pylibvw

from ranker.core import dsjson
from ranker.core.schemas import RankRequest
from ranker.core.settings import load_settings
from ranker.harness import Server
from ranker.learning.trainer import Trainer
from ranker.serving.service import Service
from ranker.store import models

T0 = datetime(2030, 1, 1, tzinfo=UTC)
CONTEXT = [{f"signal{k}": {"value": f"v{k}", "score": k / 10}} for k in range(5)]
ACTIONS = [
    {"id": f"action-{i}", "features": [{"item": {"kind": f"k{i % 3}", "topic": f"t{i}", "tier": "pro", "price": i}}]}
    for i in range(10)
]


def body(event_id: str, segment: int) -> dict:
    return {
        "contextFeatures": [*CONTEXT, {"account": {"segment": f"s{segment}"}}],
        "actions": ACTIONS,
        "eventId": event_id,
    }


def throughput(events: int, folder: Path) -> None:
    settings = load_settings(
        environ={},
        overrides={"data_dir": folder, "synchronous": "NORMAL", "loops": {"default": {"rewardWaitTime": "PT1S"}}},
    )
    service = Service(settings)
    loop = service.loops["default"]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda n: service.rank(loop, RankRequest.model_validate(body(f"e{n}", n % 7)), now=T0), range(events)
            )
        )
    service.store.write(
        lambda conn: conn.execute(
            "INSERT INTO rewards (decision_id, value, received_at) "
            "SELECT id, 1.0, created_at FROM decisions WHERE id % 2 = 0"
        )
    )
    with Trainer(settings) as trainer:
        started = time.perf_counter()
        learned = trainer.run_once(now=T0 + timedelta(hours=1))["learned"]
        trainer_rate = learned / (time.perf_counter() - started)
        trained = trainer.model("default")

    rows = service.store.read("SELECT id, record FROM decisions ORDER BY id")
    lines = [dsjson.labeled(row["record"], 1.0 if row["id"] % 2 == 0 else 0.0) for row in rows]
    rates, same = {}, {}
    for name in ("pyvw", "pylibvw"):
        ws = vowpalwabbit.Workspace(loop.arguments + " --dsjson --quiet")
        started = time.perf_counter()
        for line in lines:
            if name == "pyvw":
                examples = ws.parse(line)
                ws.learn(examples)
                ws.finish_example(examples)
            else:
                examples = ws._parse(line)
                pylibvw.vw.learn_multi(ws, examples)
                pylibvw.vw._finish_example_multi_ex(ws, examples)
        rates[name] = len(lines) / (time.perf_counter() - started)
        path = folder / f"{name}.vw"
        ws.save(str(path))
        ws.finish()
        same[name] = path.read_bytes() == trained
    print(f"trainer join + learn + checkpoint  {trainer_rate:8.0f} events/s  ({learned} events; target >= 2,000)")
    print(f"in-process VW, pyvw API            {rates['pyvw']:8.0f} events/s  ratio {trainer_rate / rates['pyvw']:.2f}")
    print(
        f"in-process VW, pylibvw calls       {rates['pylibvw']:8.0f} events/s  ratio "
        f"{trainer_rate / rates['pylibvw']:.2f} (target >= 0.50)"
    )
    print(f"model byte-identical to in-process VW: {all(same.values())}")


def lag_under_load(seconds: float, threads: int, folder: Path) -> None:
    folder.mkdir(parents=True)
    server = Server(folder, '[loops.default]\nrewardWaitTime = "PT1S"\nmodelExportFrequency = "PT1S"\n')
    url = server.url
    try:
        stop = threading.Event()
        published: dict[str, float] = {}
        lags: list[float] = []
        counter = iter(range(10**9))
        lock = threading.Lock()

        def post(path: str, payload: dict) -> bytes:
            request = urllib.request.Request(
                url + path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.read()

        def load() -> None:
            while not stop.is_set():
                with lock:
                    n = next(counter)
                answer = json.loads(post("/personalizer/v1.0/rank", body(f"e{n}", n % 7)))
                value = 1.0 if answer["rewardActionId"] == f"action-{n % 7}" else 0.0
                post(f"/personalizer/v1.0/events/e{n}/reward", {"value": value})

        def watch() -> None:
            scraped = 0.0
            while not stop.wait(0.02):
                current = models.current(folder, "default")
                if current is not None and current[0] not in published:
                    published[current[0]] = time.time()
                if time.monotonic() - scraped >= 0.5:
                    scraped = time.monotonic()
                    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
                    for line in text.splitlines():
                        if line.startswith("ranker_trainer_lag_seconds{"):
                            lags.append(float(line.rsplit(" ", 1)[1]))

        workers = [threading.Thread(target=load) for _ in range(threads)] + [threading.Thread(target=watch)]
        for worker in workers:
            worker.start()
        time.sleep(seconds)
        stop.set()
        for worker in workers:
            worker.join()
        with sqlite3.connect(folder / "ranker.db") as conn:
            rows = conn.execute("SELECT created_at, model_version FROM decisions ORDER BY id").fetchall()
        conn.close()
    finally:
        server.stop()
    served = [(datetime.fromisoformat(at).timestamp(), version) for at, version in rows]
    delays = []
    for version, at in sorted(published.items()):
        stale = [t - at for t, v in served if v < version and t > at]
        delays.append(max(stale, default=0.0))
    delays.sort()
    print(
        f"load: {len(rows)} Rank + Reward in {seconds:.0f} s from {threads} client threads; {len(published)} versions"
    )
    if delays:
        print(
            f"publish -> every request on the new version: median {delays[len(delays) // 2]:.3f} s, "
            f"max {delays[-1]:.3f} s (target <= 1 s)"
        )
    if lags:
        print(f"trainer lag under load (/metrics): max {max(lags):.2f} s over {len(lags)} samples")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000, help="decisions for the throughput part")
    parser.add_argument("--seconds", type=float, default=20, help="length of the load on the real server")
    parser.add_argument("--threads", type=int, default=4, help="client threads of that load")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ranker-bench-trainer-") as folder:
        throughput(args.events, Path(folder) / "throughput")
        lag_under_load(args.seconds, args.threads, Path(folder) / "serve")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
