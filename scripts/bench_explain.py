"""In-process cost of Rank's explanations on ``scripts/bench_rank.py``'s body, optionally against an earlier commit.

``scripts/bench_rank.py --explain`` measures what the issue names (server CPU per Rank with explanations on
against off, on a real ``ranker serve``), but on a shared machine it does not resolve a change of a tenth of a
millisecond. This script measures in one process, alternating the variants so that the machine's load falls on
each alike:

1. the terms: CPU time of ``explain.rank_explanation`` over the bench body (10 actions of about 150 terms under
   ``-q ::``, the 10 largest of each) with a model trained as bench_rank trains it, in blocks of calls, the code
   of this tree and (``--against REV``) that of a commit alternately; first it checks that both list the same
   terms for every action (``explanation_features`` 1000: names and scores equal, constants within 1e-12);
2. the answer's encoding (``pydantic_core.to_json``, as Rank's 201 encodes it) and its size;
3. the Rank path: Rank through the Flask test client in this one thread (JSON, validation, rules, VW, the
   durable log, encoding), explanations off, on with the commit's code, on with this tree's, round by round:
   the process's CPU per Rank (with the store's writer thread) and the request thread's CPU inside
   ``rank_explanation``, which here runs between the other steps of a request, as in a server (its caches
   cooler than in 1.).

Each figure is the median over blocks or rounds; the load average is printed with them.

Example:
    python scripts/bench_explain.py
    python scripts/bench_explain.py --against bca4587~1 --calls 2000 --rounds 10
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from bench_rank import rank_body_parts, trained_model
from pydantic_core import to_json

from ranker.core import dsjson
from ranker.serving import explain, vwfeatures
from ranker.serving.engine import Engine, vw_arguments
from ranker.store import models

POLICY = "--cb_explore_adf --epsilon 0.2 --cb_type mtr -q ::"  # the default policy's
HERE = Path(__file__).resolve().parent.parent


def module_at(rev: str, path: str, name: str) -> ModuleType:
    """A module of the package as it was at commit ``rev`` (its relative imports resolve in this tree's package)."""
    text = subprocess.run(["git", "-C", str(HERE), "show", f"{rev}:{path}"], capture_output=True, text=True, check=True)
    file = Path(tempfile.mkdtemp()) / Path(path).name
    file.write_text(text.stdout)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def explain_at(rev: str) -> ModuleType:
    old = module_at(rev, "ranker/serving/explain.py", "ranker.serving._explain_then")
    if hasattr(old, "rankterms"):  # its own kept terms, apart from this tree's
        old.rankterms = module_at(rev, "ranker/serving/rankterms.py", "ranker.serving._rankterms_then")
    return old


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["id"] == y["id"]
        and x["features"] == y["features"]
        and x["score"] == y["score"]
        and abs(x["constant"] - y["constant"]) <= 1e-12
        for x, y in zip(a, b, strict=True)
    )


def cpu_per_call(fn, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls


def terms(variants: dict[str, ModuleType], model_file: Path, arguments: str, calls: int, blocks: int) -> None:
    # an engine each: what a variant keeps per model stays its own
    engines = {name: Engine(arguments, str(model_file), "1") for name in variants}
    head, tail = rank_body_parts()
    body = json.loads(head + b"x" + tail)
    context = dsjson.merge(body["contextFeatures"], "contextFeatures")
    actions = [(a["id"], dsjson.merge(a["features"], "features")) for a in body["actions"]]
    c_json = dsjson.context_json(context, actions, True)
    line = dsjson.predict_line(c_json, len(actions))
    pmf, parsed = vwfeatures.predict_parsed(next(iter(engines.values())), line, vwfeatures.read_cb)
    order = sorted(range(len(actions)), key=lambda i: -pmf[i])

    def explained(module: ModuleType, top: int) -> list[dict]:
        engine = engines[next(name for name, m in variants.items() if m is module)]
        return module.rank_explanation(vwfeatures.model_of(engine), parsed, context, actions, order, True, top, {})

    if len(variants) == 2:
        full = [explained(m, 1000) for m in variants.values()]
        print(f"every term listed alike by both (explanation_features 1000): {same(*full)}")
    for module in variants.values():
        cpu_per_call(lambda m=module: explained(m, 10), 50)
    spent: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(blocks):
        for name, module in variants.items():
            spent[name].append(cpu_per_call(lambda m=module: explained(m, 10), calls // blocks))
    print(f"rank_explanation, CPU per call ({calls} calls each, {blocks} blocks, alternating):")
    for name, values in spent.items():
        print(f"  {name:<10} median {1e3 * statistics.median(values):.3f} ms (min {1e3 * min(values):.3f})")
    answer = {"eventId": "x", "rewardActionId": "y", "inferenceExplanation": explained(explain, 10)}
    encode = statistics.median(cpu_per_call(lambda: to_json(answer), 500) for _ in range(5))
    print(f"the answer's explanation encoded by pydantic_core.to_json: {1e3 * encode:.3f} ms, {len(to_json(answer))} B")
    for engine in engines.values():
        engine.close()


def rank_path(variants: dict[str, ModuleType], model: bytes, rounds: int, ranks: int) -> None:
    from ranker.app import create_app

    clients = {}  # a server each (its own engine, so what a variant keeps per model stays its own); off: the last
    for name in [*variants, "off"]:
        data = Path(tempfile.mkdtemp(prefix="ranker-bench-explain-"))
        models.publish(data, "l", model)
        app = create_app({"data_dir": data, "loops": {"l": {"policy": {"name": "p", "arguments": POLICY}}}})
        clients[name] = (app.test_client(), app.extensions["ranker"].settings.loops["l"])
    head, tail = rank_body_parts()
    inside = [0.0]

    def timed(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                inside[0] += time.thread_time() - start

        return call

    functions = {"off": None, **{name: timed(module.rank_explanation) for name, module in variants.items()}}
    sent = [0]

    def run(name: str, n: int) -> tuple[float, float]:
        client, loop = clients[name]
        loop.is_inference_explainability_enabled = functions[name] is not None
        if functions[name] is not None:
            explain.rank_explanation = functions[name]  # what the service calls
        inside[0] = 0.0
        start = time.process_time()
        for _ in range(n):
            sent[0] += 1
            answer = client.post(
                "/personalizer/v1.0/rank", data=head + f"e{sent[0]}".encode() + tail, content_type="application/json"
            )
            assert answer.status_code == 201, answer.data
        return (time.process_time() - start) / n, inside[0] / n

    for name in functions:
        run(name, 100)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name in functions:
            results[name].append(run(name, ranks))
    off = statistics.median(c for c, _ in results["off"])
    print(f"Rank through the Flask test client ({rounds} rounds of {ranks} each, alternating), median CPU per Rank:")
    for name, values in results.items():
        cpu = statistics.median(c for c, _ in values)
        terms_cpu = statistics.median(t for _, t in values)
        each = " ".join(f"{1e3 * c:.2f}" for c, _ in values)
        print(
            f"  {name:<10} {1e3 * cpu:.3f} ms ({100 * (cpu / off - 1):+.0f} % vs off), of which rank_explanation "
            f"{1e3 * terms_cpu:.3f} ms  (rounds: {each})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="a commit whose explain.py (and rankterms.py) to compare with")
    parser.add_argument("--calls", type=int, default=2000, help="rank_explanation calls per variant (default 2000)")
    parser.add_argument("--blocks", type=int, default=10, help="blocks the calls alternate in (default 10)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of the Rank path (default 6)")
    parser.add_argument("--ranks", type=int, default=200, help="Ranks per variant and round (default 200)")
    args = parser.parse_args(argv)
    variants = {"this tree": explain}
    if args.against:
        variants = {args.against: explain_at(args.against), **variants}
    print(f"load average at the start {os.getloadavg()[0]:.1f}")
    arguments = vw_arguments(POLICY, 0.2)
    model = trained_model(arguments)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.vw").write_bytes(model)
        terms(variants, Path(tmp) / "model.vw", arguments, args.calls, args.blocks)
    rank_path(variants, model, args.rounds, args.ranks)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
