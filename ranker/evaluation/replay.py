"""Replay candidate policies over logged decisions: what would each have earned? (``ranker evaluate``)

The input is a loop's log over a time range (:class:`LoopLog`, read through the trainer's own join, exactly as
``ranker export`` writes it) or a DSJSON file (:class:`DsjsonFile`; both live in :mod:`ranker.export`), taken in
order: id order for a log (the order decisions were committed in, which the trainer learns in), line order for a
file. Each event is the logged record with its label, and every candidate sees exactly that line; there is no
second feature mapping.

Candidates:

- a VW policy (``Candidate(name, arguments)`` with ``--cb_explore_adf``): replayed progressively. On each
  event VW learns from the labeled record, and the PMF it reports is the one it computed *before* updating
  (VW's progressive validation; identical to predicting first, which costs a second pass), so the policy is
  scored on every event before it learns from it. Its probability of the logged action is the target one.
- ``Online``: what was logged; its target probability is the logged one (weight 1), so its IPS is the mean
  logged reward.
- ``Baseline``: the first eligible action (``_multi[0]``, the first action of the request): probability 1
  when it was the logged action, else 0.
- ``Random``: uniform over the K eligible actions: 1/K.

Each policy's events become one :class:`~ranker.evaluation.LoggedData` and go through
:func:`~ranker.evaluation.evaluate` (IPS, SNIPS, the Cressie-Read estimate and its interval, the primary one).
With a reward model (default ``--cb_adf --cb_type mtr -q ::``, VW's importance-weighted regression of each
action's cost, trained progressively on the same lines; its predictions negated and clipped to the reward range),
DM and DR are added: r̂(x, a) for every action gives r̂_π = Σ_a π(a|x) r̂(x, a) for each policy and
r̂(x, a_logged). Events skipped: deferred decisions never activated (``"_skipLearn": true`` in a file), lines
without a label, lines that are not valid DSJSON (reported with their line number), and records VW refuses.

A VW candidate is scored on its own PMF. At serving time the loop's priority rules reweight the model's PMF, and
the record does not keep their factors (the decision's explanation names the rules), so a candidate is evaluated
as it would serve without priority rules; exclusions are in the record already (excluded actions are not in
``_multi``).

The rewards must lie in ``reward_range``, by default [0, 1] when no logged reward is negative, else [-1, 1]
(the reward API's range); the Cressie-Read interval relies on those bounds.

The source is read once, in this process; the VW workspaces (one per VW candidate, and the reward model) learn
here, or in ``workers`` processes that are sent exactly the lines of the events kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import shlex
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import vowpalwabbit
from vowpalwabbit.pyvw import pylibvw

from ranker.evaluation.estimators import LoggedData, evaluate
from ranker.export import DsjsonFile, Event, LoopLog, Skipped
from ranker.settings import Policy, Settings

__all__ = [
    "BASELINE",
    "BUILT_INS",
    "DEFAULT_REWARD_MODEL",
    "ONLINE",
    "RANDOM",
    "Candidate",
    "DsjsonFile",
    "Event",
    "LoopLog",
    "Report",
    "Skipped",
    "plot",
    "policy_candidates",
    "replay",
    "write",
]

ONLINE, BASELINE, RANDOM = "Online", "Baseline", "Random"
DEFAULT_REWARD_MODEL = "--cb_adf --cb_type mtr -q ::"
CHECKPOINTS = 200  # points of the cumulative estimate curves
MAX_ERRORS = 100  # bad lines listed in a report
CHUNK = 256  # lines handed to the learners at a time
_NOT_VW_OPTIONS = {"-t", "--testonly", "--dsjson", "--json", "--quiet"}


@dataclass(frozen=True)
class Candidate:
    """A policy to replay: VW ``arguments`` (with ``--cb_explore_adf``), or None for a built-in by ``name``."""

    name: str
    arguments: str | None = None

    def __post_init__(self) -> None:
        if self.arguments is None:
            if self.name not in (ONLINE, BASELINE, RANDOM):
                raise ValueError(f"{self.name!r}: give VW arguments, or use {ONLINE}, {BASELINE} or {RANDOM}")
            return
        words = [word for word in shlex.split(self.arguments) if word not in _NOT_VW_OPTIONS]
        if "--cb_explore_adf" not in words:
            raise ValueError(f"{self.name!r}: the arguments must use --cb_explore_adf")
        object.__setattr__(self, "arguments", " ".join(words))


BUILT_INS = (Candidate(ONLINE), Candidate(BASELINE), Candidate(RANDOM))


def policy_candidates(settings: Settings, policies: Sequence[str] = ()) -> list[Candidate]:
    """Candidates from policy files (``{"name", "arguments"}``): each entry a file path or a policy name in
    ``settings.policies_dir``; with none, every policy file there. Their arguments are used as written."""
    paths = [Path(p) if p.endswith(".json") else settings.policies_dir / f"{p}.json" for p in policies]
    candidates = []
    for path in paths or sorted(settings.policies_dir.glob("*.json")):
        try:
            policy = Policy.model_validate_json(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read policy {path}: {exc}") from exc
        candidates.append(Candidate(policy.name, policy.arguments))
    return candidates


# -- the passes ---------------------------------------------------------------------------------------------


@dataclass
class _Scan:
    """What the main pass keeps of each event (besides the VW passes' outputs)."""

    reward: array = field(default_factory=lambda: array("d"))
    chosen: array = field(default_factory=lambda: array("q"))
    probability: array = field(default_factory=lambda: array("d"))
    actions: array = field(default_factory=lambda: array("q"))
    a: array = field(default_factory=lambda: array("q"))  # every event's ``a`` and ``p``, one after the other
    p: array = field(default_factory=lambda: array("d"))
    lengths: array = field(default_factory=lambda: array("q"))  # of each event's ``a``
    timestamps: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)

    def add(self, event: Event) -> None:
        self.reward.append(event.reward)
        self.chosen.append(event.chosen)
        self.probability.append(event.probability)
        self.actions.append(event.actions)
        self.a.extend(event.a)
        self.p.extend(event.p)
        self.lengths.append(len(event.a))
        self.timestamps.append(event.timestamp)

    def logged_pmf(self) -> np.ndarray:
        """The logged PMFs over each event's K actions, flat (0 for an action missing from ``a``)."""
        k = _ints(self.actions)
        pmf = np.zeros(int(k.sum()))
        starts = np.repeat(np.cumsum(k) - k, _ints(self.lengths))
        pmf[starts + _ints(self.a) - 1] = np.frombuffer(self.p, dtype=float) if len(self.p) else 0.0
        return pmf

    def skip(self, skipped: Skipped) -> None:
        self.skipped[skipped.reason] = self.skipped.get(skipped.reason, 0) + 1
        if skipped.error is not None and len(self.errors) < MAX_ERRORS:
            self.errors.append((skipped.line, skipped.error))


class _Learners:
    """VW workspaces that learn the same lines, each keeping the scores it reported: flat, with their count per
    line (0 where VW refused the line)."""

    def __init__(self, arguments: Sequence[str]):
        self.workspaces = [vowpalwabbit.Workspace(f"{args} --dsjson --quiet") for args in arguments]
        self.outputs = [(array("d"), array("q")) for _ in arguments]

    def learn(self, lines: Sequence[str]) -> None:
        parse, learn = vowpalwabbit.Workspace._parse, pylibvw.vw.learn_multi
        finish = pylibvw.vw._finish_example_multi_ex
        for ws, (scores, counts) in zip(self.workspaces, self.outputs, strict=True):
            for line in lines:
                # the calls pyvw's parse and learn make, without wrapping every example in Python
                try:
                    examples = parse(ws, line)
                except RuntimeError:
                    counts.append(0)
                    continue
                try:
                    learn(ws, examples)
                    pmf = examples[0].get_action_scores()
                except RuntimeError:
                    pmf = ()
                finally:
                    finish(ws, examples)
                scores.extend(pmf)
                counts.append(len(pmf))

    def close(self) -> None:
        for ws in self.workspaces:
            ws.finish()


def _learner_process(conn: Connection, arguments: list[str]) -> None:
    """A worker process: learn the chunks of lines it is sent until an empty one, then send back the outputs."""
    learners = None
    try:
        learners = _Learners(arguments)
        while chunk := conn.recv_bytes():
            learners.learn(chunk.decode().split("\n"))
        conn.send(learners.outputs)
    except BaseException as exc:  # reported to the main process, which raises it (unless it is gone)
        with contextlib.suppress(OSError):
            conn.send(RuntimeError(f"replay worker: {exc!r}"))
    finally:
        if learners is not None:
            learners.close()
        conn.close()


def _passes(
    source: LoopLog | DsjsonFile,
    jobs: Sequence[str],
    workers: int,
    progress: Callable[[int], None] | None,
) -> tuple[_Scan, list[tuple[array, array]]]:
    """Read the source once, keep what the built-ins need, and have every VW workspace learn exactly the lines
    of the events kept: here, or in ``workers`` processes fed through pipes (this one then only reads)."""
    scan = _Scan()
    processes: list[tuple[Any, Connection]] = []
    local = _Learners(jobs) if workers <= 1 or not jobs else None
    try:
        if local is None:
            context = multiprocessing.get_context("spawn")
            groups = [list(jobs[i :: min(workers, len(jobs))]) for i in range(min(workers, len(jobs)))]
            for group in groups:
                parent, child = context.Pipe()
                process = context.Process(target=_learner_process, args=(child, group), daemon=True)
                process.start()
                child.close()
                processes.append((process, parent))
        chunk: list[str] = []

        def flush() -> None:
            if local is not None:
                local.learn(chunk)
            else:
                data = "\n".join(chunk).encode()
                for _, conn in processes:
                    conn.send_bytes(data)
            if progress is not None:
                progress(len(chunk))
            chunk.clear()

        for event in source.events():
            if type(event) is Skipped:
                scan.skip(event)
                continue
            scan.add(event)
            chunk.append(event.line)
            if len(chunk) == CHUNK:
                flush()
        if chunk:
            flush()
        if local is not None:
            return scan, local.outputs
        outputs: list[tuple[array, array]] = []
        for _, conn in processes:
            conn.send_bytes(b"")
        for _, conn in processes:
            result = conn.recv()
            if isinstance(result, BaseException):
                raise result
            outputs.extend(result)
        # the processes took their jobs round-robin: put the outputs back in the jobs' order
        order = [i for start in range(len(processes)) for i in range(start, len(jobs), len(processes))]
        return scan, [output for _, output in sorted(zip(order, outputs, strict=True))]
    except (BrokenPipeError, EOFError) as exc:
        raise RuntimeError("a replay worker process died") from exc
    finally:
        if local is not None:
            local.close()
        for process, conn in processes:
            conn.close()
            process.join(5)
            if process.is_alive():
                process.kill()


# -- the report ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Estimates per policy, as rows of :func:`~ranker.evaluation.evaluate` plus the cumulative curves."""

    source: str
    events: int
    skipped: dict[str, int]
    errors: list[tuple[int, str]]
    reward_range: tuple[float, float]
    alpha: float
    reward_model: str | None
    policies: list[dict[str, Any]]
    cumulative: dict[str, Any]
    seconds: float
    data: dict[str, LoggedData] = field(repr=False, default_factory=dict)  # not serialised

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "events": self.events,
            "skipped": self.skipped,
            "errors": [{"line": line, "error": error} for line, error in self.errors],
            "reward_range": list(self.reward_range),
            "alpha": self.alpha,
            "reward_model": self.reward_model,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events / self.seconds) if self.seconds > 0 else None,
            "policies": self.policies,
            "cumulative": self.cumulative,
        }

    def table(self) -> str:
        """The terminal table: policy, n, IPS, SNIPS, DR and the Cressie-Read interval."""
        level = f"{100 * (1 - self.alpha):g}% interval"
        rows = [("policy", "n", "IPS", "SNIPS", "DR", level)]
        for row in self.policies:
            lo, hi = row["interval"]
            rows.append(
                (
                    row["policy"],
                    str(row["n"]),
                    _fmt(row["ips"]),
                    _fmt(row["snips"]),
                    _fmt(row["dr"]),
                    f"[{_fmt(lo)}, {_fmt(hi)}]",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def replay(
    source: LoopLog | DsjsonFile,
    candidates: Sequence[Candidate] = BUILT_INS,
    *,
    reward_model: str | None = DEFAULT_REWARD_MODEL,
    reward_range: tuple[float, float] | None = None,
    alpha: float = 0.05,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Replay ``candidates`` over ``source`` (see the module docstring) and estimate each one's expected reward.

    ``workers`` > 1 runs the VW workspaces in that many processes (at most one per workspace), fed the lines
    through pipes while this one reads the source; they are started with multiprocessing's "spawn", so a script
    calling this needs the ``if __name__ == "__main__":`` guard.
    ``progress`` is called with the number of events read since its last call. Raises :class:`ValueError` when
    no event is left to evaluate.
    """
    names = [candidate.name for candidate in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    started = time.perf_counter()
    vw = [candidate for candidate in candidates if candidate.arguments is not None]
    jobs = [candidate.arguments for candidate in vw] + ([reward_model] if reward_model else [])
    scan, outputs = _passes(source, jobs, workers, progress)

    n_read = len(scan.reward)
    k = _ints(scan.actions)
    keep = np.ones(n_read, dtype=bool)
    counts = []
    for _, output_counts in outputs:
        counts.append(_ints(output_counts))
        if counts[-1].size != n_read:
            raise RuntimeError("the VW passes read different events; was the source changed during the replay?")
        keep &= counts[-1] == k
    if n_read - int(keep.sum()):
        scan.skipped["refused_by_vw"] = n_read - int(keep.sum())
    if not keep.any():
        raise ValueError(f"no event to evaluate in {source} (skipped: {scan.skipped or 'none'})")

    def kept(flat: array | np.ndarray, per_event: np.ndarray) -> np.ndarray:
        """The per-action entries of the kept events, flat."""
        values = np.frombuffer(flat, dtype=float) if len(flat) else np.zeros(0)
        return values if keep.all() else values[np.repeat(keep, per_event)]

    reward = np.frombuffer(scan.reward, dtype=float)[keep]
    if reward_range is None:
        reward_range = (0.0 if reward.min() >= 0 else -1.0, 1.0)
    r_min, r_max = reward_range
    logged_p = np.frombuffer(scan.probability, dtype=float)[keep]
    logged_a = _ints(scan.chosen)[keep]
    logged_pmf = kept(scan.logged_pmf(), k)
    k = k[keep]
    first = np.cumsum(k) - k  # where each event's K entries start in a flat per-action array
    r_hat = np.clip(-kept(outputs[-1][0], counts[-1]), r_min, r_max) if reward_model else None
    vw_pmf = {candidate.name: np.clip(kept(outputs[i][0], counts[i]), 0.0, 1.0) for i, candidate in enumerate(vw)}

    policies, data, curves = [], {}, {"ips": {}, "snips": {}}
    for candidate in candidates:
        if candidate.arguments is not None:
            pmf = vw_pmf[candidate.name]
            target = pmf[first + logged_a]
        elif candidate.name == ONLINE:
            target, pmf = logged_p, logged_pmf
        elif candidate.name == BASELINE:
            target = (logged_a == 0).astype(float)
            pmf = np.zeros_like(logged_pmf)
            pmf[first] = 1.0
        else:  # RANDOM
            target = 1.0 / k
            pmf = np.repeat(target, k)
        model: dict[str, np.ndarray] = {}
        if r_hat is not None:
            model = {
                "reward_model_target": np.add.reduceat(pmf * r_hat, first),
                "reward_model_logged": r_hat[first + logged_a],
            }
        logged = LoggedData(reward=reward, logged_probability=logged_p, target_probability=target, **model)
        data[candidate.name] = logged
        policies.append(_row(candidate, evaluate(logged, alpha=alpha, r_min=r_min, r_max=r_max)))
        checkpoints, curves["ips"][candidate.name], curves["snips"][candidate.name] = _cumulative(logged)

    rows = np.nonzero(keep)[0]
    stamps = [scan.timestamps[i] for i in rows]
    cumulative = {"event": checkpoints, "timestamp": [stamps[i - 1] for i in checkpoints], **curves}
    return Report(
        source=str(source),
        events=int(keep.sum()),
        skipped=scan.skipped,
        errors=scan.errors,
        reward_range=(float(r_min), float(r_max)),
        alpha=alpha,
        reward_model=reward_model,
        policies=policies,
        cumulative=cumulative,
        seconds=time.perf_counter() - started,
        data=data,
    )


def _ints(values: array) -> np.ndarray:
    return np.frombuffer(values, dtype=np.int64) if len(values) else np.zeros(0, dtype=np.int64)


def _row(candidate: Candidate, table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def estimate(name: str) -> float | None:
        return table[name]["estimate"] if name in table else None

    return {
        "policy": candidate.name,
        "arguments": candidate.arguments,
        "n": table["ips"]["n"],
        "ips": estimate("ips"),
        "snips": estimate("snips"),
        "dm": estimate("dm"),
        "dr": estimate("dr"),
        "cressie_read": estimate("cressie_read"),
        "interval": list(table["ips"]["interval"]),
        "interval_method": table["ips"]["interval_method"],
        "gaussian_interval": {
            name: list(row["gaussian_interval"]) if row["gaussian_interval"] is not None else None
            for name, row in table.items()
        },
    }


def _cumulative(data: LoggedData) -> tuple[list[int], list[float], list[float | None]]:
    """IPS and SNIPS over the first i events, at up to CHECKPOINTS values of i spread over the replay."""
    n = data.n
    checkpoints = np.unique(np.linspace(1, n, min(n, CHECKPOINTS)).round().astype(np.int64))
    weighted = np.cumsum(data.weights * data.reward)[checkpoints - 1]
    weights = np.cumsum(data.weights)[checkpoints - 1]
    ips = weighted / checkpoints
    snips = [float(x / w) if w > 0 else None for x, w in zip(weighted, weights, strict=True)]
    return checkpoints.tolist(), ips.tolist(), snips


# -- output -------------------------------------------------------------------------------------------------


def write(report: Report, folder: str | Path) -> tuple[Path, Path | None]:
    """Write ``report.json`` and, when matplotlib is installed, ``report.png`` into ``folder``; return their
    paths (None for the plot without matplotlib: ``pip install 'ranker[eval]'``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "report.json"
    body = report.to_dict()
    try:
        png_path: Path | None = plot(report, folder / "report.png")
    except ImportError:
        png_path = None
        body["plot"] = "matplotlib is not installed: pip install 'ranker[eval]'"
    else:
        body["plot"] = png_path.name
    json_path.write_text(json.dumps(body, indent=2) + "\n")
    return json_path, png_path


def plot(report: Report, path: str | Path) -> Path:
    """A PNG of each policy's estimate with its interval, and of its cumulative SNIPS estimate over time.

    Needs matplotlib (raises :class:`ImportError` without it); uses its object API, no pyplot or display.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.8), layout="constrained")
    bars, curves = figure.subplots(1, 2, width_ratios=[1, 1.6])
    names = [row["policy"] for row in report.policies]
    values = [row["snips"] if row["snips"] is not None else math.nan for row in report.policies]
    low = [v - row["interval"][0] for v, row in zip(values, report.policies, strict=True)]
    high = [row["interval"][1] - v for v, row in zip(values, report.policies, strict=True)]
    positions = list(range(len(names)))
    bars.errorbar(values, positions, xerr=[low, high], fmt="o", capsize=4)
    bars.set_yticks(positions, names)
    bars.invert_yaxis()
    bars.set_xlabel(f"expected reward (SNIPS, {100 * (1 - report.alpha):g}% Cressie-Read interval)")
    bars.grid(axis="x", alpha=0.3)
    cumulative = report.cumulative
    try:
        x: list[Any] = [datetime.fromisoformat(stamp) for stamp in cumulative["timestamp"]]
        curves.set_xlabel("time")
    except (TypeError, ValueError):
        x = cumulative["event"]
        curves.set_xlabel("events")
    for name in names:
        y = [math.nan if v is None else v for v in cumulative["snips"][name]]
        curves.plot(x, y, label=name)
    curves.set_ylabel("cumulative SNIPS estimate")
    curves.grid(alpha=0.3)
    curves.legend(fontsize="small")
    figure.suptitle(f"{report.source}: {report.events} events")
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path
