"""Replay candidate policies over logged decisions: what would each have earned? (``ranker evaluate``)

The input is a loop's log over a time range (:class:`LoopLog`, read through the trainer's own join, exactly as
``ranker export`` writes it) or a DSJSON file (:class:`DsjsonFile`; both in :mod:`ranker.evaluation.sources`), taken in
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
:func:`~ranker.evaluation.evaluate` (IPS, SNIPS, the Cressie-Read estimate and its interval, the primary one),
with the importance weight's known bound ``w_max = 1 / min μ`` over those events
(:func:`~ranker.evaluation.weight_bound`; per slot for a multi-slot source, over the products of logged
probabilities used there), reported as each row's ``"w_max"`` (None: no bound, every μ was 1).
With a reward model (default ``--cb_adf --cb_type mtr -q ::``, VW's importance-weighted regression of each
action's cost, trained progressively on the same lines; its predictions negated and clipped to the reward range),
DM and DR are added: r̂(x, a) for every action gives r̂_π = Σ_a π(a|x) r̂(x, a) for each policy and
r̂(x, a_logged). Events skipped: deferred decisions never activated (``"_skipLearn": true`` in a file), lines
without a label, lines that are not valid DSJSON (reported with their line number), and records VW refuses.

**Multi-slot sources.** A source is multi-slot when its loop's policy uses ``--ccb_explore_adf`` (for a file:
when its first line has ``_outcomes``). Its multi-slot events are replayed and its single-slot ones skipped
(``other_kind``), and the reverse for a single-slot source: what the trainer does. The candidates are VW
policies with ``--ccb_explore_adf`` (one with ``--cb_explore_adf`` on a multi-slot source, or the reverse, is a
:class:`ValueError`), Online, Baseline and Random, evaluated on every filled slot:

- a VW policy learns each labeled line as above. VW's CCB scores each slot in turn, with the logged actions of
  the slots before it in place (that is how it learns), so its probability of a slot's logged action, read
  before the update, is the policy's probability of that action given the same earlier slots;
- ``Online``: the slot's logged probability (``_p[0]``);
- ``Baseline``: the slot's baseline (``_ba``, the request's ``baselineAction``, or the first action left when
  the rules forbid it there): 1 when it was the slot's logged action, else 0;
- ``Random``: uniform over the actions the slot could take given the earlier slots (its ``_inc``): 1/K_slot.

A slot's reward depends on the slots above it (an action they took cannot be shown in it), so slot k of an
event is weighed by the probability of the event's logged actions in slots 0..k: the product of those
conditional probabilities, for the policy and for the logging (Online's weight stays 1). Per-slot
conditionals alone would score "the logging policy fills the slots above, the candidate this one", which
credits a policy that wants the same best action everywhere with it in every slot. The weights' spread, and
so the intervals, grow with the slot's depth.

Every slot is estimated over the events that filled it, and ``overall`` over all (event, slot) pairs pooled:
it treats the slots of one event as separate samples (the interval ignores that they share a context), and
estimates the mean reward of a filled slot. The report's policy rows are then the overall ones, each with
``"slots"``: {slot id: the slot's row}; slots are told apart by their ids, in the order first seen, and at
most ``MAX_SLOT_ROWS`` of them (those filled most often) get a row of their own. The cumulative curves are over
events: at event i, the estimate over the pairs of the first i events (overall, and per slot under
``cumulative["slots"]``). DM and DR are not computed for a multi-slot source (VW's CCB reductions report
exploration probabilities, not the cost estimates a reward model needs): IPS, SNIPS and Cressie-Read only.

A VW candidate is scored on its own PMF. At serving time the loop's priority rules reweight the model's PMF, and
the record does not keep their factors (the decision's explanation names the rules), so a candidate is evaluated
as it would serve without priority rules; exclusions are in the record already (excluded actions are not in
``_multi``, or not in the slot's ``_inc``).

The rewards must lie in ``reward_range``, by default [0, 1] when no logged reward is negative, else [-1, 1]
(the reward API's range); the Cressie-Read interval relies on those bounds.

The source is read once, in this process, and the VW workspaces (one per VW candidate, and the reward model)
learn exactly the lines of the events kept, here and in up to ``workers`` - 1 other processes
(:mod:`~ranker.evaluation.passes`). Workspaces whose arguments differ only in learning options (learning rate,
power_t, epsilon, l2, initial_t) learn each line from one parse of it, which is most of VW's cost of a line
(:func:`~ranker.evaluation.scheduling.parse_group`). A reward model that learns what an epsilon-greedy policy's
regressor learns (the default one and the ``default`` policy file) has no workspace of its own: the policy's
reports its scores too (:func:`~ranker.evaluation.scheduling.regressor`).

Both kinds of source go through one skeleton: one pass (:func:`~ranker.evaluation.passes.read`), the samples
(:func:`_event_samples`: one per event; :func:`_slot_samples`: one per filled slot), then per policy its
:class:`~ranker.evaluation.LoggedData`, row and curves, the paired differences and the segments; a multi-slot
source adds its slots' rows (:func:`_slot_rows`). The report (:class:`~ranker.evaluation.report.Report`) and the
policies (:mod:`~ranker.evaluation.candidates`) live beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ranker.core.settings import POLICY_KINDS
from ranker.evaluation import passes, segments
from ranker.evaluation.candidates import BASELINE, BUILT_INS, ONLINE, RANDOM, Candidate, policy_candidates
from ranker.evaluation.compare import compare
from ranker.evaluation.estimators import LoggedData, evaluate, weight_bound
from ranker.evaluation.learners import Output
from ranker.evaluation.report import Report
from ranker.evaluation.sources import DsjsonFile, Event, LoopLog, MultiSlotEvent, Skipped, source_is_multislot

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
    "MultiSlotEvent",
    "Report",
    "Skipped",
    "policy_candidates",
    "replay",
    "source_is_multislot",
]

DEFAULT_REWARD_MODEL = "--cb_adf --cb_type mtr -q ::"
CHECKPOINTS = 200  # points of the cumulative estimate curves
MAX_SLOT_ROWS = 50  # slot ids of a multi-slot source with a row of their own (the most often filled)


def replay(
    source: LoopLog | DsjsonFile,
    candidates: Sequence[Candidate] = BUILT_INS,
    *,
    reward_model: str | None = DEFAULT_REWARD_MODEL,
    reward_range: tuple[float, float] | None = None,
    alpha: float = 0.05,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    reference: str | None = None,
    by: Sequence[str] = (),
    min_segment_events: int = 100,
) -> Report:
    """Replay ``candidates`` over ``source`` (see the module docstring) and estimate each one's expected reward.

    ``workers`` > 1 runs the VW workspaces in up to that many processes, this one and
    :class:`~ranker.evaluation.learners.Worker` processes fed the lines through pipes
    (:func:`~ranker.evaluation.scheduling.spread`).
    ``progress`` is called with the number of events read since its last call. Raises :class:`ValueError` when
    no event is left to evaluate, and when a VW candidate is not of the source's kind (single- or multi-slot).
    ``reward_model`` is not used on a multi-slot source (no DM or DR there).

    Every row (and every slot's row) gets ``"versus"``: {reference: the paired difference of the policy's value
    minus the reference's on the same events, :func:`~ranker.evaluation.compare.paired_difference`}, against
    ``Online`` when it is a candidate and against ``reference`` (a candidate's name) when given.

    ``by`` (dotted paths of the logged context) adds the report's ``segments``: every policy's row per segment
    value of each path, segments of fewer than ``min_segment_events`` events pooled as ``other``
    (:mod:`ranker.evaluation.segments`).
    """
    if min_segment_events < 1:
        raise ValueError("min_segment_events must be at least 1")
    if any(not path or any(not part for part in path.split(".")) for path in by):
        raise ValueError(f"--by takes dotted paths of the logged context, such as account.plan; got {list(by)}")
    names = [candidate.name for candidate in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    if reference is not None and reference not in names:
        raise ValueError(f"the reference {reference!r} is not a candidate: {', '.join(names)}")
    references = [name for name in dict.fromkeys([ONLINE, reference]) if name in names]
    started = time.perf_counter()
    multislot = source_is_multislot(source)
    for candidate in candidates:
        if candidate.multislot not in (None, multislot):
            kinds = POLICY_KINDS[multislot]
            raise ValueError(
                f"{candidate.name!r} is not a {kinds[0]} policy, and {source} is {kinds[0]}: "
                f"its candidates' arguments must use {kinds[1]}"
            )
    if multislot:
        reward_model = None  # no DM or DR for a multi-slot source
    jobs = [candidate.arguments for candidate in candidates if candidate.arguments is not None]
    scan, outputs = passes.read(
        source, jobs + ([reward_model] if reward_model else []), workers, progress, multislot, by
    )
    per_event = passes.ints(scan.slots if multislot else scan.actions)  # type: ignore[union-attr]
    keep, counts = passes.kept(source, scan.skipped, outputs, per_event)
    make = _slot_samples if multislot else _event_samples
    samples = make(_Pass(scan, per_event, keep, counts, outputs), candidates, reward_range)
    r_min, r_max = samples.reward_range
    events = int(keep.sum())

    checkpoints = np.unique(np.linspace(1, events, min(events, CHECKPOINTS)).round().astype(np.int64))
    policies, data, curves = [], {}, {"ips": {}, "snips": {}}
    for candidate in candidates:
        logged = LoggedData(
            reward=samples.reward,
            logged_probability=samples.logged,
            target_probability=samples.targets[candidate.name],
            **samples.model.get(candidate.name, {}),
        )
        data[candidate.name] = logged
        policies.append(_row(candidate, _evaluate(logged, alpha, r_min, r_max)))
        curves["ips"][candidate.name], curves["snips"][candidate.name] = _pooled(logged, samples.event, checkpoints)
    extras = samples.extras
    if multislot:  # each policy's row gets its slots' rows, before its "versus"
        assert samples.slot is not None
        extras |= _slot_rows(scan, samples, data, policies, curves, checkpoints, references, alpha)  # type: ignore[arg-type]
    versus = compare(data, references, alpha=alpha, r_min=r_min, r_max=r_max)
    for row in policies:
        row["versus"] = versus[row["policy"]]

    kept = np.nonzero(keep)[0]
    by_segment = _segments(
        candidates, data, samples.event, scan, kept, by, min_segment_events, references, alpha, (r_min, r_max)
    )
    stamps = [scan.timestamps[i] for i in kept]
    cumulative = {"event": checkpoints.tolist(), "timestamp": [stamps[i - 1] for i in checkpoints], **curves}
    return Report(
        source=str(source),
        events=events,
        skipped=scan.skipped,
        errors=scan.errors,
        reward_range=(float(r_min), float(r_max)),
        alpha=alpha,
        reward_model=reward_model,
        policies=policies,
        cumulative=cumulative,
        seconds=time.perf_counter() - started,
        data=data,
        references=references,
        segments=by_segment,
        min_segment_events=min_segment_events,
        **extras,
    )


class _Pass(NamedTuple):
    """The pass over the source: what it kept of each event, each event's expected VW outputs (its actions, or
    its slots), which events every VW pass read whole, each pass's output counts per event, and the outputs."""

    scan: Any  # passes.Scan, or passes.SlotScan for a multi-slot source
    per_event: np.ndarray
    keep: np.ndarray
    counts: list[np.ndarray]
    outputs: list[Output]


@dataclass
class _Samples:
    """What a replay scores, per sample: an event of a single-slot source, an (event, slot) pair of a multi-slot
    one (in event order); every array over the kept events' samples."""

    reward: np.ndarray
    logged: np.ndarray  # the logging policy's probability of the sample's logged action(s)
    targets: dict[str, np.ndarray]  # per policy, its probability of the same
    event: np.ndarray  # each sample's event, an index among the kept events
    reward_range: tuple[float, float]
    model: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # per policy, DM's and DR's inputs
    slot: np.ndarray | None = None  # multi-slot: each sample's slot, an index into the scan's ids
    extras: dict[str, Any] = field(default_factory=dict)  # the report's fields of this kind of source


def _event_samples(read: _Pass, candidates: Sequence[Candidate], reward_range: tuple[float, float] | None) -> _Samples:
    """A single-slot source's samples: its events. A VW candidate's target probability is its PMF's at the
    logged action; with a reward model (the last output), each policy's DM and DR inputs."""
    scan, k, keep, counts, outputs = read

    def kept(flat: Any, per_event: np.ndarray) -> np.ndarray:
        """The per-action entries of the kept events, flat."""
        values = np.frombuffer(flat, dtype=float) if len(flat) else np.zeros(0)
        return values if keep.all() else values[np.repeat(keep, per_event)]

    vw = [candidate for candidate in candidates if candidate.arguments is not None]
    reward = np.frombuffer(scan.reward, dtype=float)[keep]
    r_min, r_max = reward_range = _reward_range(reward, reward_range)
    logged_p = np.frombuffer(scan.probability, dtype=float)[keep]
    logged_a = passes.ints(scan.chosen)[keep]
    logged_pmf = kept(scan.logged_pmf(), k)
    k = k[keep]
    first = np.cumsum(k) - k  # where each event's K entries start in a flat per-action array
    with_model = len(outputs) > len(vw)
    r_hat = np.clip(-kept(outputs[-1][0], counts[-1]), r_min, r_max) if with_model else None
    vw_pmf = {candidate.name: np.clip(kept(outputs[i][0], counts[i]), 0.0, 1.0) for i, candidate in enumerate(vw)}
    targets, pmfs, model = {}, {}, {}
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
        targets[candidate.name], pmfs[candidate.name] = target, pmf
        if r_hat is not None:
            model[candidate.name] = {
                "reward_model_target": np.add.reduceat(pmf * r_hat, first),
                "reward_model_logged": r_hat[first + logged_a],
            }
    return _Samples(
        reward, logged_p, targets, np.arange(k.size), reward_range, model, extras={"pmfs": pmfs, "starts": first}
    )


def _slot_samples(read: _Pass, candidates: Sequence[Candidate], reward_range: tuple[float, float] | None) -> _Samples:
    """A multi-slot source's samples: its (event, slot) pairs, each weighed by the probability of its event's
    logged prefix (see the module docstring)."""
    scan, per_event, keep, counts, outputs = read
    vw = [candidate for candidate in candidates if candidate.arguments is not None]
    pairs = np.repeat(keep, per_event)  # the (event, slot) pairs of the kept events
    event = np.repeat(np.arange(int(keep.sum())), per_event[keep])  # each pair's event, among the kept ones
    reward = np.frombuffer(scan.reward, dtype=float)[pairs]
    reward_range = _reward_range(reward, reward_range)
    logged_p = np.frombuffer(scan.probability, dtype=float)[pairs]
    chosen = passes.ints(scan.chosen)[pairs]
    targets = {
        ONLINE: logged_p,
        BASELINE: (chosen == passes.ints(scan.baseline)[pairs]).astype(float),
        RANDOM: 1.0 / passes.ints(scan.candidates)[pairs],
    }
    for i, candidate in enumerate(vw):
        values = np.frombuffer(outputs[i][0], dtype=float) if len(outputs[i][0]) else np.zeros(0)
        targets[candidate.name] = np.clip(values[np.repeat(keep, counts[i])], 0.0, 1.0)
    # A slot's reward depends on the actions above it (they are taken, it cannot show them): it is weighed
    # by the probability of the event's whole logged prefix, slots 0..k, under each policy.
    logged_p = _prefix_product(logged_p, per_event[keep])
    targets = {name: _prefix_product(target, per_event[keep]) for name, target in targets.items()}
    extras = {"multislot": True, "samples": int(reward.size)}
    slot = passes.ints(scan.slot)[pairs]
    return _Samples(reward, logged_p, targets, event, reward_range, slot=slot, extras=extras)


def _slot_rows(
    scan: passes.SlotScan,
    samples: _Samples,
    data: dict[str, LoggedData],
    policies: list[dict[str, Any]],
    curves: dict[str, Any],
    checkpoints: np.ndarray,
    references: list[str],
    alpha: float,
) -> dict[str, Any]:
    """Each policy row's ``"slots"`` (a row per slot id, for the ``MAX_SLOT_ROWS`` most often filled, with its
    ``"versus"``), the slots' curves under ``curves["slots"]``; the report's fields of the slots."""
    slot, event = samples.slot, samples.event
    assert slot is not None
    r_min, r_max = samples.reward_range
    filled = np.bincount(slot, minlength=len(scan.ids))
    ranked = {i for i in sorted(range(len(scan.ids)), key=lambda i: -filled[i])[:MAX_SLOT_ROWS] if filled[i]}
    reported = [(name, i) for name, i in scan.ids.items() if i in ranked]
    curves["slots"] = {name: {"ips": {}, "snips": {}} for name, _ in reported}
    slot_data: dict[str, dict[str, LoggedData]] = {policy: {} for policy in data}
    for row in policies:
        policy, row["slots"] = row["policy"], {}
        for name, index in reported:
            mask = slot == index
            part = slot_data[policy][name] = data[policy].subset(mask)
            row["slots"][name] = _estimates(_evaluate(part, alpha, r_min, r_max))
            ips, snips = _pooled(part, event[mask], checkpoints)
            curves["slots"][name]["ips"][policy], curves["slots"][name]["snips"][policy] = ips, snips
    for name, _ in reported:
        versus = compare({p: slot_data[p][name] for p in slot_data}, references, alpha=alpha, r_min=r_min, r_max=r_max)
        for row in policies:
            row["slots"][name]["versus"] = versus[row["policy"]]
    return {
        "slots": [name for name, _ in reported],
        "slots_not_reported": int(np.count_nonzero(filled)) - len(reported),
        "slot_data": slot_data,
    }


def _reward_range(reward: np.ndarray, given: tuple[float, float] | None) -> tuple[float, float]:
    """The given range, else [0, 1] when no logged reward is negative, else [-1, 1]."""
    return given if given is not None else (0.0 if reward.min() >= 0 else -1.0, 1.0)


def _segments(
    candidates: Sequence[Candidate],
    data: dict[str, LoggedData],
    sample_event: np.ndarray,
    scan: passes.Skips,
    kept: np.ndarray,
    by: Sequence[str],
    minimum: int,
    references: list[str],
    alpha: float,
    reward_range: tuple[float, float],
) -> dict[str, list[dict[str, Any]]]:
    """The report's ``segments`` (:func:`~ranker.evaluation.segments.segment_rows`); {} without ``by``."""
    if not by:
        return {}
    r_min, r_max = reward_range
    by_name = {candidate.name: candidate for candidate in candidates}

    def row(name: str, part: LoggedData) -> dict[str, Any]:
        return _row(by_name[name], _evaluate(part, alpha, r_min, r_max))

    event_segments = [scan.segments[i] for i in kept]
    return segments.segment_rows(
        data, sample_event, event_segments, by, minimum, row, references, alpha=alpha, r_min=r_min, r_max=r_max
    )


def _prefix_product(values: np.ndarray, per_event: np.ndarray) -> np.ndarray:
    """Per (event, slot) pair, its value times those of the event's earlier slots: from each slot's probability
    given the actions above it, the probability of the event's first k+1 logged actions."""
    out = values.astype(float)
    starts = np.cumsum(per_event) - per_event
    for k in range(1, int(per_event.max(initial=1))):
        at = starts[per_event > k] + k
        out[at] *= out[at - 1]
    return out


def _pooled(
    data: LoggedData, event: np.ndarray, checkpoints: np.ndarray
) -> tuple[list[float | None], list[float | None]]:
    """IPS and SNIPS over the samples of the first i events (``event``: each sample's 0-based event, in order),
    at each checkpoint i; None before the first sample."""
    seen = np.searchsorted(event, checkpoints)  # samples of the first i events
    weighted = np.concatenate([[0.0], np.cumsum(data.weights * data.reward)])[seen]
    weights = np.concatenate([[0.0], np.cumsum(data.weights)])[seen]
    ips = [float(x / m) if m else None for x, m in zip(weighted, seen, strict=True)]
    snips = [float(x / w) if w > 0 else None for x, w in zip(weighted, weights, strict=True)]
    return ips, snips


def _evaluate(data: LoggedData, alpha: float, r_min: float, r_max: float) -> dict[str, dict[str, Any]]:
    """:func:`~ranker.evaluation.evaluate` with the importance weight's known bound, ``1 / min μ`` over ``data``."""
    w_max = weight_bound(data.logged_probability)
    table = evaluate(data, alpha=alpha, r_min=r_min, r_max=r_max, w_max=w_max)
    for row in table.values():
        row["w_max"] = w_max
    return table


def _row(candidate: Candidate, table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A policy's row of the report: its name and arguments, then its estimates."""
    return {"policy": candidate.name, "arguments": candidate.arguments, **_estimates(table)}


def _estimates(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The estimates and intervals of an :func:`_evaluate` table, as a report's row holds them."""

    def estimate(name: str) -> float | None:
        return table[name]["estimate"] if name in table else None

    return {
        "n": table["ips"]["n"],
        "ips": estimate("ips"),
        "snips": estimate("snips"),
        "dm": estimate("dm"),
        "dr": estimate("dr"),
        "cressie_read": estimate("cressie_read"),
        "interval": list(table["ips"]["interval"]),
        "interval_method": table["ips"]["interval_method"],
        "w_max": table["ips"]["w_max"] if table["ips"]["w_max"] != float("inf") else None,
        "gaussian_interval": {
            name: list(row["gaussian_interval"]) if row["gaussian_interval"] is not None else None
            for name, row in table.items()
        },
    }
