"""Policy search (Personalizer's "optimized policy") and the Apprentice graduation check.

:func:`search` replays VW argument combinations over a loop's log or a DSJSON file within a time budget and
returns the best one by a conservative criterion: a candidate whose paired difference with Online (what was logged)
is distinguishably better (:func:`~ranker.evaluation.compare.paired_difference`, its interval above 0) comes before
one that is not, then the lower end of its Cressie-Read interval, then its SNIPS estimate. The combinations come in
a fixed order: the loop's current policy and Personalizer's default first (always replayed, whatever the budget),
then a grid over interactions (none / ``-q ::``), ``--cb_type`` (mtr, ips, dr), exploration (``--epsilon e``,
``--squarecb --gamma_scale g``, ``--cover n``), learning rate ``-l`` and ``--power_t``, shuffled with ``seed``.
They are replayed in batches (one :func:`~ranker.evaluation.replay.replay` call reads the source once for the whole
batch); a batch is sized from the time the previous ones took per candidate so that it ends within the budget,
and the search stops when not even one more candidate fits. Over a multi-slot source every combination uses
``--ccb_explore_adf`` instead of ``--cb_explore_adf`` (Personalizer's default too), the loop's current policy is
tried only when it is of the source's kind, and the criterion is the replay's overall row (every filled slot
pooled).

:func:`graduation` is the evidence for switching a loop from Apprentice to Online: the candidate's replayed
lower confidence bound against the Baseline's estimate (the Apprentice's reference, the first eligible action)
over at least ``min_events`` events. The trainer would call it on the loop's log since the last switch with the
loop's policy arguments and a configured minimum, and log the returned dict with each switch.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ranker.core.settings import POLICY_KINDS
from ranker.evaluation.candidates import BASELINE, ONLINE, Candidate
from ranker.evaluation.compare import BETTER
from ranker.evaluation.replay import replay
from ranker.evaluation.sources import DsjsonFile, LoopLog, source_is_multislot
from ranker.serving.engine import is_multislot

__all__ = ["PERSONALIZER_DEFAULT", "SearchResult", "graduation", "grid", "search"]

PERSONALIZER_DEFAULT = "--cb_explore_adf --epsilon 0.2 --power_t 0 -l 0.001 --cb_type mtr -q ::"


def _explore(multislot: bool) -> str:
    return POLICY_KINDS[multislot][1]


def grid(base: str = "--cb_explore_adf -q ::") -> list[str]:
    """Every combination the search can try, in a fixed order, each one VW arguments with ``--cb_explore_adf``
    (``--ccb_explore_adf`` when ``base`` uses it: a multi-slot policy).

    ``base`` gives the interactions of the first half (its ``-q``/``--quadratic`` options are kept); the second
    half tries no interaction at all.
    """
    explore = _explore(is_multislot(base))
    words = base.split()
    interactions = " ".join(
        words[i] + " " + words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-q", "--quadratic")
    )
    explorations = [
        "--epsilon 0.2",
        "--epsilon 0.05",
        "--squarecb --gamma_scale 10",
        "--squarecb --gamma_scale 1000",
        "--cover 4",
    ]
    combinations = []
    for quadratic, cb_type, exploration, rate, power_t in itertools.product(
        [interactions or "-q ::", ""], ["mtr", "ips", "dr"], explorations, [0.001, 0.01, 0.1, 0.5], [0.0, 0.5]
    ):
        if exploration.startswith("--squarecb") and cb_type != "mtr":
            continue  # VW's SquareCB learns with mtr only
        arguments = f"{explore} {exploration} --cb_type {cb_type} -l {rate:g} --power_t {power_t:g}"
        combinations.append(f"{arguments} {quadratic}".strip())
    return combinations


@dataclass
class SearchResult:
    """The best policy found, with the rows of every candidate replayed (best first) and Online's row."""

    best: dict[str, str]  # {"name", "arguments"}: the shape of a policy file and of PUT configurations/policy
    best_row: dict[str, Any]
    online: dict[str, Any]
    rows: list[dict[str, Any]]
    events: int
    seconds: float
    tried: int
    budget_seconds: float
    improvement: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_row": self.best_row,
            "online": self.online,
            "improvement": self.improvement,
            "events": self.events,
            "tried": self.tried,
            "seconds": round(self.seconds, 3),
            "budget_seconds": self.budget_seconds,
            "rows": self.rows,
        }


def _score(row: dict[str, Any]) -> tuple[bool, float, float]:
    """Distinguishably better than Online first (paired difference above 0), then the lower end, then SNIPS."""
    better = row.get("versus", {}).get(ONLINE, {}).get("verdict") == BETTER
    return (better, row["interval"][0], row["snips"] if row["snips"] is not None else float("-inf"))


def search(
    source: LoopLog | DsjsonFile,
    budget_seconds: float,
    *,
    base: str | None = None,
    current: str | None = None,
    seed: int = 0,
    batch: int = 8,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> SearchResult:
    """Search VW arguments over ``source`` for at most ``budget_seconds`` (the first batch, the loop's
    ``current`` policy, Personalizer's default and ``base`` itself, always runs) and return the best by the
    lower end of its interval. ``base`` is ``<--cb_explore_adf or --ccb_explore_adf, the source's kind> -q ::``
    unless given; a ``current`` policy of the other kind is not tried. The best is a policy dict named
    ``optimized-<n>`` with its arguments as VW reads them; ``improvement`` gives its estimate and lower bound
    minus Online's, and ``versus_online`` its paired difference with Online (estimate, interval, verdict). Raises
    :class:`ValueError` when the source has no event, or ``base`` is of the other kind."""
    started = time.perf_counter()
    multislot = source_is_multislot(source)
    explore = _explore(multislot)
    base = base or f"{explore} -q ::"
    first = [current] if current and is_multislot(current) == multislot else []
    first += [
        PERSONALIZER_DEFAULT.replace("--cb_explore_adf", explore),
        f"{base} --epsilon 0.2" if "--epsilon" not in base else base,
    ]
    rest = grid(base)
    random.Random(seed).shuffle(rest)
    queue, seen = [], set()
    for arguments in first + rest:
        key = Candidate("x", arguments).arguments
        if key not in seen:
            seen.add(key)
            queue.append(key)
    rows: list[dict[str, Any]] = []
    online: dict[str, Any] | None = None
    events = 0
    per_candidate = None
    position = 0
    while position < len(queue):
        if per_candidate is None:
            size = len(first)
        else:
            left = budget_seconds - (time.perf_counter() - started)
            size = min(batch, int(left / per_candidate))
            if size < 1:
                break
        names = {f"optimized-{position + i}": args for i, args in enumerate(queue[position : position + size])}
        candidates = [Candidate(ONLINE)] + [Candidate(name, args) for name, args in names.items()]
        batch_started = time.perf_counter()
        report = replay(source, candidates, reward_model=None, workers=workers, progress=progress)
        # a replay reads the source once and runs every workspace: its time grows with the batch, plus the read
        per_candidate = (time.perf_counter() - batch_started) / size
        position += size
        events = report.events
        for row in report.policies:
            if row["policy"] == ONLINE:
                online = row
            else:
                rows.append(row)
    assert online is not None
    rows.sort(key=_score, reverse=True)
    best_row = rows[0]
    improvement = {
        "snips": best_row["snips"] - online["snips"],
        "lower_bound": best_row["interval"][0] - online["interval"][0],
    }
    improvement["versus_online"] = best_row["versus"].get(ONLINE)
    return SearchResult(
        best={"name": best_row["policy"], "arguments": best_row["arguments"]},
        best_row=best_row,
        online=online,
        rows=rows,
        events=events,
        seconds=time.perf_counter() - started,
        tried=len(rows),
        budget_seconds=budget_seconds,
        improvement=improvement,
    )


def graduation(
    source: LoopLog | DsjsonFile, candidate_args: str, min_events: int, *, alpha: float = 0.05
) -> dict[str, Any]:
    """Whether a model with ``candidate_args`` would beat the Baseline: its replayed interval's lower end above
    the Baseline's SNIPS estimate, over at least ``min_events`` events (for a multi-slot loop: the overall rows,
    every filled slot pooled, against each slot's baseline action). Returns the evidence:
    ``{"graduate", "reason", "events", "min_events", "lower_bound", "estimate", "baseline", "arguments"}``."""
    if min_events < 1:
        raise ValueError("min_events must be at least 1")
    candidate = Candidate("candidate", candidate_args)
    try:
        report = replay(source, [Candidate(BASELINE), candidate], reward_model=None, alpha=alpha)
    except ValueError:
        events, rows = 0, {}
    else:
        events, rows = report.events, {row["policy"]: row for row in report.policies}
    evidence: dict[str, Any] = {
        "events": events,
        "min_events": min_events,
        "arguments": candidate.arguments,
        "alpha": alpha,
        "lower_bound": rows["candidate"]["interval"][0] if rows else None,
        "estimate": rows["candidate"]["snips"] if rows else None,
        "baseline": rows[BASELINE]["snips"] if rows else None,
    }
    if events < min_events:
        return {**evidence, "graduate": False, "reason": f"{events} events, fewer than {min_events}"}
    baseline = evidence["baseline"] if evidence["baseline"] is not None else 0.0
    if evidence["lower_bound"] > baseline:
        return {**evidence, "graduate": True, "reason": "the model's lower confidence bound beats the baseline"}
    return {**evidence, "graduate": False, "reason": "the model's lower confidence bound does not beat the baseline"}
