"""Replay candidate policies over logged decisions: what would each have earned? (``ranker evaluate``)

(Longer than the house's ~500 lines: the single- and multi-slot replays share one scan of the source, the VW
passes and the rows' construction; the report's parts that stand alone live beside it: paired differences in
:mod:`~ranker.evaluation.compare`, segments in :mod:`~ranker.evaluation.segments`, rule what-ifs in
:mod:`~ranker.evaluation.whatif`.)

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

The source is read once, in this process; the VW workspaces (one per VW candidate, and the reward model) learn
exactly the lines of the events kept, here and in up to ``workers`` - 1 other processes that are sent them.
Workspaces whose arguments differ only in learning options (learning rate, power_t, epsilon, l2, initial_t) learn
each line from one parse of it, which is most of VW's cost of a line (:func:`parse_group`). A reward model that
learns what an epsilon-greedy policy's regressor learns (the default one and the ``default`` policy file) has no
workspace of its own: the policy's reports its scores too (:func:`regressor`).
"""

from __future__ import annotations

import json
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ranker import vwoptions
from ranker.engine import IO_OPTIONS, drop_options, is_multislot
from ranker.evaluation import scheduling, segments
from ranker.evaluation.compare import compare, describe
from ranker.evaluation.estimators import LoggedData, evaluate, weight_bound
from ranker.evaluation.learners import Chosen, Learners, Worker
from ranker.export import DsjsonFile, Event, LoopLog, MultiSlotEvent, Skipped
from ranker.settings import POLICY_KINDS, Policy, Settings, policy_kind

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

ONLINE, BASELINE, RANDOM = "Online", "Baseline", "Random"
DEFAULT_REWARD_MODEL = "--cb_adf --cb_type mtr -q ::"
CHECKPOINTS = 200  # points of the cumulative estimate curves
MAX_ERRORS = 100  # bad lines listed in a report
CHUNK = 128  # lines handed to the learners at a time
MAX_SLOT_ROWS = 50  # slot ids of a multi-slot source with a row of their own (the most often filled)
OVERALL = "overall"


@dataclass(frozen=True)
class Candidate:
    """A policy to replay: VW ``arguments`` (with ``--cb_explore_adf``, or ``--ccb_explore_adf`` for a
    multi-slot source), or None for a built-in by ``name``."""

    name: str
    arguments: str | None = None

    def __post_init__(self) -> None:
        if self.arguments is None:
            if self.name not in (ONLINE, BASELINE, RANDOM):
                raise ValueError(f"{self.name!r}: give VW arguments, or use {ONLINE}, {BASELINE} or {RANDOM}")
            return
        try:
            words = vwoptions.split(self.arguments)
            policy_kind(words)
            vwoptions.check(words)
        except ValueError as exc:
            raise ValueError(f"{self.name!r}: {exc}") from None
        object.__setattr__(self, "arguments", " ".join(drop_options(words, set(), IO_OPTIONS)))

    @property
    def multislot(self) -> bool | None:
        """Whether the VW policy is multi-slot; None for a built-in, which replays either kind."""
        return None if self.arguments is None else is_multislot(self.arguments)


BUILT_INS = (Candidate(ONLINE), Candidate(BASELINE), Candidate(RANDOM))


def policy_candidates(settings: Settings, policies: Sequence[str] = (), *, multislot: bool = False) -> list[Candidate]:
    """Candidates from policy files (``{"name", "arguments"}``): each entry a file path or a policy name in
    ``settings.policies_dir``; with none, every policy file there of the source's kind (``--cb_explore_adf``,
    or with ``multislot`` ``--ccb_explore_adf``). Their arguments are used as written; a policy named
    explicitly is taken whatever its kind, and :func:`replay` refuses it on a source of the other kind."""
    paths = [Path(p) if p.endswith(".json") else settings.policies_dir / f"{p}.json" for p in policies]
    candidates = []
    for path in paths or sorted(settings.policies_dir.glob("*.json")):
        try:
            policy = Policy.model_validate_json(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read policy {path}: {exc}") from exc
        candidate = Candidate(policy.name, policy.arguments)
        if paths or candidate.multislot == multislot:
            candidates.append(candidate)
    return candidates


def source_is_multislot(source: Any) -> bool:
    """Whether a source is multi-slot (see the module docstring); sources without ``multislot()`` are not."""
    kind = getattr(source, "multislot", None)
    return bool(kind()) if callable(kind) else False


# -- the passes ---------------------------------------------------------------------------------------------


@dataclass
class _Skips:
    """The events the main pass leaves out: counts by reason, and the first errors with their line."""

    skipped: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)
    segments: list[tuple[str, ...]] = field(default_factory=list)  # each event's values at the --by paths

    def skip(self, skipped: Skipped) -> None:
        self.skipped[skipped.reason] = self.skipped.get(skipped.reason, 0) + 1
        if skipped.error is not None and len(self.errors) < MAX_ERRORS:
            self.errors.append((skipped.line, skipped.error))


@dataclass
class _Scan(_Skips):
    """What the main pass keeps of each event (besides the VW passes' outputs)."""

    reward: array = field(default_factory=lambda: array("d"))
    chosen: array = field(default_factory=lambda: array("q"))
    probability: array = field(default_factory=lambda: array("d"))
    actions: array = field(default_factory=lambda: array("q"))
    a: array = field(default_factory=lambda: array("q"))  # every event's ``a`` and ``p``, one after the other
    p: array = field(default_factory=lambda: array("d"))
    lengths: array = field(default_factory=lambda: array("q"))  # of each event's ``a``
    timestamps: list[str] = field(default_factory=list)

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


@dataclass
class _SlotScan(_Skips):
    """What the main pass keeps of a multi-slot source: per event its number of slots and time, per (event,
    slot) pair its slot (an index into ``ids``) and what was logged there."""

    slots: array = field(default_factory=lambda: array("q"))
    timestamps: list[str] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    slot: array = field(default_factory=lambda: array("q"))
    chosen: array = field(default_factory=lambda: array("q"))
    probability: array = field(default_factory=lambda: array("d"))
    reward: array = field(default_factory=lambda: array("d"))
    candidates: array = field(default_factory=lambda: array("q"))
    baseline: array = field(default_factory=lambda: array("q"))

    def add(self, event: MultiSlotEvent) -> None:
        self.slots.append(len(event.slots))
        self.timestamps.append(event.timestamp)
        for slot in event.slots:
            self.slot.append(self.ids.setdefault(slot.id, len(self.ids)))
            self.chosen.append(slot.chosen)
            self.probability.append(slot.probability)
            self.reward.append(slot.reward)
            self.candidates.append(slot.candidates)
            self.baseline.append(slot.baseline)


def _passes(
    source: LoopLog | DsjsonFile,
    jobs: Sequence[str],
    workers: int,
    progress: Callable[[int], None] | None,
    multislot: bool = False,
    by: Sequence[str] = (),
) -> tuple[Any, list[tuple[array, array]]]:
    """Read the source once, keep what the built-ins need (a :class:`_Scan`, or a :class:`_SlotScan` for a
    multi-slot source), and have every VW workspace learn exactly the lines of the events kept: here, or shared
    between this process and up to ``workers`` - 1 others fed through pipes
    (:func:`~ranker.evaluation.scheduling.spread`)."""
    scan: _Scan | _SlotScan = _SlotScan() if multislot else _Scan()
    kind = MultiSlotEvent if multislot else Event
    shares = [scheduling.learner_groups(jobs, share) for share in scheduling.spread(jobs, workers)]
    others: list[Worker] = []
    local = Learners(shares[0][0]) if shares[0][0] else None
    try:
        others.extend(Worker(groups) for groups, _ in shares[1:])
        chunk: list[str] = []
        chosen: list[Chosen] = []

        def flush() -> None:
            if others:
                data = "\n".join([json.dumps(chosen), *chunk]).encode()
                for worker in others:
                    worker.send(data)
            if local is not None:  # while the other processes learn the same chunk
                local.learn(chunk, chosen)
            if progress is not None:
                progress(len(chunk))
            chunk.clear()
            chosen.clear()

        for event in source.events():
            if type(event) is not kind:
                scan.skip(event if type(event) is Skipped else Skipped(0, "other_kind"))
                continue
            scan.add(event)  # type: ignore[arg-type]
            if by:
                scan.segments.append(segments.segment_values(event.line, by))
            chunk.append(event.line)
            chosen.append([slot.chosen for slot in event.slots] if multislot else event.chosen)  # type: ignore[union-attr]
            if len(chunk) == CHUNK:
                flush()
        if chunk:
            flush()
        outputs = list(local.outputs) if local is not None else []
        for worker in others:
            worker.end()
        for worker in others:
            outputs.extend(worker.outputs())
        # put the outputs back in the jobs' order
        order = [i for _, indices in shares for i in indices]
        return scan, [output for _, output in sorted(zip(order, outputs, strict=True), key=lambda pair: pair[0])]
    finally:
        if local is not None:
            local.close()
        for worker in others:
            worker.close()


# -- the report ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Estimates per policy, as rows of :func:`~ranker.evaluation.evaluate` plus the cumulative curves.

    For a multi-slot source (``multislot``) each policy row is the overall one, with ``"slots"``: {slot id:
    row}; ``slots`` lists the slot ids with a row, ``samples`` counts the (event, slot) pairs, and ``data``
    holds the overall :class:`~ranker.evaluation.LoggedData` per policy, ``slot_data`` the slots' ones.
    """

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
    multislot: bool = False
    samples: int = 0  # (event, slot) pairs of a multi-slot source
    slots: list[str] = field(default_factory=list)
    slots_not_reported: int = 0  # slot ids past MAX_SLOT_ROWS: in the overall rows only
    slot_data: dict[str, dict[str, LoggedData]] = field(repr=False, default_factory=dict)  # not serialised
    references: list[str] = field(default_factory=list)  # the policies each row's "versus" compares it with
    segments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by --by path: see segments.py
    # single-slot: each policy's PMF over every kept event's actions, flat, with each event's first index and
    # count of actions (for rule what-ifs, :mod:`ranker.evaluation.whatif`); not serialised
    pmfs: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    rules_what_if: dict[str, Any] | None = None  # ranker evaluate --rules: :func:`ranker.evaluation.whatif.what_if`
    starts: np.ndarray | None = field(repr=False, default=None)
    min_segment_events: int = 0

    def to_dict(self) -> dict[str, Any]:
        multislot = (
            {
                "multislot": True,
                "samples": self.samples,
                "slots": self.slots,
                "slots_not_reported": self.slots_not_reported,
            }
            if self.multislot
            else {}
        )
        return {
            "source": self.source,
            "events": self.events,
            "skipped": self.skipped,
            "errors": [{"line": line, "error": error} for line, error in self.errors],
            "reward_range": list(self.reward_range),
            "alpha": self.alpha,
            "references": self.references,
            "reward_model": self.reward_model,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events / self.seconds) if self.seconds > 0 else None,
            **multislot,
            "policies": self.policies,
            **({"segments": self.segments, "min_segment_events": self.min_segment_events} if self.segments else {}),
            **({"rules_what_if": self.rules_what_if} if self.rules_what_if is not None else {}),
            "cumulative": self.cumulative,
        }

    def table(self) -> str:
        """The terminal table: policy, n, IPS, SNIPS, DR and the Cressie-Read interval, then per reference the
        paired difference with its interval and verdict. For a multi-slot source: policy, slot (each policy's
        overall row, then one per slot), n, IPS, SNIPS, the interval and the differences."""
        level = f"{100 * (1 - self.alpha):g}% interval"
        rows: list[tuple[str, ...]] = []
        versus = tuple(f"vs {reference}" for reference in self.references)

        def differences(values: dict[str, Any]) -> tuple[str, ...]:
            return tuple(describe(values.get("versus", {}).get(reference)) for reference in self.references)

        if self.multislot:
            rows.append(("policy", "slot", "n", "IPS", "SNIPS", level, *versus))
            for row in self.policies:
                for name, slot, values in [(row["policy"], OVERALL, row)] + [
                    ("", slot, values) for slot, values in row["slots"].items()
                ]:
                    lo, hi = values["interval"]
                    cells = (str(values["n"]), _fmt(values["ips"]), _fmt(values["snips"]), f"[{_fmt(lo)}, {_fmt(hi)}]")
                    rows.append((name, slot, *cells, *differences(values)))
        else:
            rows.append(("policy", "n", "IPS", "SNIPS", "DR", level, *versus))
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
                        *differences(row),
                    )
                )
        text_columns = 2 if self.multislot else 1
        first_versus = len(rows[0]) - len(versus)
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        text = "\n".join(
            "  ".join(
                cell.ljust(w) if i < text_columns or i >= first_versus else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in rows
        )
        if self.segments:  # then one block per --by path
            text += "\n\n" + segments.table(self.segments, self.policies, self.references, self.alpha)
        return text


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
        segmenting = (by, min_segment_events)
        return _replay_slots(
            source, candidates, reward_range, alpha, workers, progress, started, references, segmenting
        )
    vw = [candidate for candidate in candidates if candidate.arguments is not None]
    jobs = [candidate.arguments for candidate in vw] + ([reward_model] if reward_model else [])
    scan, outputs = _passes(source, jobs, workers, progress, by=by)

    k = _ints(scan.actions)
    keep, counts = _kept(source, scan.skipped, outputs, k)

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
    pmfs: dict[str, np.ndarray] = {}
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
        pmfs[candidate.name] = pmf
        policies.append(_row(candidate, _evaluate(logged, alpha, r_min, r_max)))
        checkpoints, curves["ips"][candidate.name], curves["snips"][candidate.name] = _cumulative(logged)

    versus = compare(data, references, alpha=alpha, r_min=r_min, r_max=r_max)
    for row in policies:
        row["versus"] = versus[row["policy"]]
    rows = np.nonzero(keep)[0]
    by_segment = _segments(
        candidates, data, np.arange(rows.size), scan, rows, by, min_segment_events, references, alpha, (r_min, r_max)
    )
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
        references=references,
        segments=by_segment,
        min_segment_events=min_segment_events,
        pmfs=pmfs,
        starts=first,
    )


def _kept(
    source: LoopLog | DsjsonFile, skipped: dict[str, int], outputs: list[tuple[array, array]], expected: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Which events every VW pass read whole (``expected`` outputs each: probabilities per action, or per slot),
    and each pass's output counts per event; the others are counted as ``refused_by_vw`` in ``skipped``."""
    keep = np.ones(expected.size, dtype=bool)
    counts = []
    for _, output_counts in outputs:
        counts.append(_ints(output_counts))
        if counts[-1].size != expected.size:
            raise RuntimeError("the VW passes read different events; was the source changed during the replay?")
        keep &= counts[-1] == expected
    if expected.size - int(keep.sum()):
        skipped["refused_by_vw"] = expected.size - int(keep.sum())
    if not keep.any():
        raise ValueError(f"no event to evaluate in {source} (skipped: {skipped or 'none'})")
    return keep, counts


def _replay_slots(
    source: LoopLog | DsjsonFile,
    candidates: Sequence[Candidate],
    reward_range: tuple[float, float] | None,
    alpha: float,
    workers: int,
    progress: Callable[[int], None] | None,
    started: float,
    references: list[str],
    segmenting: tuple[Sequence[str], int],
) -> Report:
    """:func:`replay` of a multi-slot source: every slot, and all of them pooled (see the module docstring)."""
    vw = [candidate for candidate in candidates if candidate.arguments is not None]
    by, min_segment_events = segmenting
    jobs = [candidate.arguments for candidate in vw]
    scan, outputs = _passes(source, jobs, workers, progress, multislot=True, by=by)
    per_event = _ints(scan.slots)
    keep, counts = _kept(source, scan.skipped, outputs, per_event)

    pairs = np.repeat(keep, per_event)  # the (event, slot) pairs of the kept events
    event = np.repeat(np.arange(int(keep.sum())), per_event[keep])  # each pair's event, among the kept ones
    slot = _ints(scan.slot)[pairs]
    reward = np.frombuffer(scan.reward, dtype=float)[pairs]
    if reward_range is None:
        reward_range = (0.0 if reward.min() >= 0 else -1.0, 1.0)
    r_min, r_max = reward_range
    logged_p = np.frombuffer(scan.probability, dtype=float)[pairs]
    chosen = _ints(scan.chosen)[pairs]
    targets = {
        ONLINE: logged_p,
        BASELINE: (chosen == _ints(scan.baseline)[pairs]).astype(float),
        RANDOM: 1.0 / _ints(scan.candidates)[pairs],
    }
    for i, candidate in enumerate(vw):
        values = np.frombuffer(outputs[i][0], dtype=float) if len(outputs[i][0]) else np.zeros(0)
        targets[candidate.name] = np.clip(values[np.repeat(keep, counts[i])], 0.0, 1.0)
    # A slot's reward depends on the actions above it (they are taken, it cannot show them): it is weighed
    # by the probability of the event's whole logged prefix, slots 0..k, under each policy.
    logged_p = _prefix_product(logged_p, per_event[keep])
    targets = {name: _prefix_product(target, per_event[keep]) for name, target in targets.items()}

    filled = np.bincount(slot, minlength=len(scan.ids))
    ranked = {i for i in sorted(range(len(scan.ids)), key=lambda i: -filled[i])[:MAX_SLOT_ROWS] if filled[i]}
    reported = [(name, i) for name, i in scan.ids.items() if i in ranked]
    checkpoints = np.unique(np.linspace(1, event[-1] + 1, min(event[-1] + 1, CHECKPOINTS)).round().astype(np.int64))
    policies, data, slot_data = [], {}, {}
    curves: dict[str, Any] = {"ips": {}, "snips": {}, "slots": {name: {"ips": {}, "snips": {}} for name, _ in reported}}
    for candidate in candidates:
        logged = LoggedData(reward=reward, logged_probability=logged_p, target_probability=targets[candidate.name])
        data[candidate.name] = logged
        row = _row(candidate, _evaluate(logged, alpha, r_min, r_max))
        curves["ips"][candidate.name], curves["snips"][candidate.name] = _pooled(logged, event, checkpoints)
        row["slots"], slot_data[candidate.name] = {}, {}
        for name, index in reported:
            mask = slot == index
            part = LoggedData(
                reward=reward[mask],
                logged_probability=logged_p[mask],
                target_probability=logged.target_probability[mask],
            )
            slot_data[candidate.name][name] = part
            slot_row = _row(candidate, _evaluate(part, alpha, r_min, r_max))
            row["slots"][name] = {key: value for key, value in slot_row.items() if key not in ("policy", "arguments")}
            ips, snips = _pooled(part, event[mask], checkpoints)
            curves["slots"][name]["ips"][candidate.name], curves["slots"][name]["snips"][candidate.name] = ips, snips
        policies.append(row)
    versus = compare(data, references, alpha=alpha, r_min=r_min, r_max=r_max)
    slot_versus = {
        name: compare({p: slot_data[p][name] for p in slot_data}, references, alpha=alpha, r_min=r_min, r_max=r_max)
        for name, _ in reported
    }
    for row in policies:
        row["versus"] = versus[row["policy"]]
        for name, slot_row in row["slots"].items():
            slot_row["versus"] = slot_versus[name][row["policy"]]
    kept = np.nonzero(keep)[0]
    by_segment = _segments(
        candidates, data, event, scan, kept, by, min_segment_events, references, alpha, (r_min, r_max)
    )

    stamps = [scan.timestamps[i] for i in np.nonzero(keep)[0]]
    cumulative = {"event": checkpoints.tolist(), "timestamp": [stamps[i - 1] for i in checkpoints], **curves}
    return Report(
        source=str(source),
        events=int(keep.sum()),
        skipped=scan.skipped,
        errors=scan.errors,
        reward_range=(float(r_min), float(r_max)),
        alpha=alpha,
        reward_model=None,
        policies=policies,
        cumulative=cumulative,
        seconds=time.perf_counter() - started,
        data=data,
        references=references,
        segments=by_segment,
        min_segment_events=min_segment_events,
        multislot=True,
        samples=int(reward.size),
        slots=[name for name, _ in reported],
        slots_not_reported=int(np.count_nonzero(filled)) - len(reported),
        slot_data=slot_data,
    )


def _segments(
    candidates: Sequence[Candidate],
    data: dict[str, LoggedData],
    sample_event: np.ndarray,
    scan: _Skips,
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


def _ints(values: array) -> np.ndarray:
    return np.frombuffer(values, dtype=np.int64) if len(values) else np.zeros(0, dtype=np.int64)


def _evaluate(data: LoggedData, alpha: float, r_min: float, r_max: float) -> dict[str, dict[str, Any]]:
    """:func:`~ranker.evaluation.evaluate` with the importance weight's known bound, ``1 / min μ`` over ``data``."""
    w_max = weight_bound(data.logged_probability)
    table = evaluate(data, alpha=alpha, r_min=r_min, r_max=r_max, w_max=w_max)
    for row in table.values():
        row["w_max"] = w_max
    return table


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
        "w_max": table["ips"]["w_max"] if table["ips"]["w_max"] != float("inf") else None,
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
