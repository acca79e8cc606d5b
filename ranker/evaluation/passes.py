"""The replay's one pass over its source: read each event once, keep what the built-in policies need, and have
every VW workspace learn exactly the lines of the events kept.

:func:`read` reads the source in order and hands the kept events' lines to the learners in chunks of ``CHUNK``:
in this process, and in up to ``workers`` - 1 :class:`~ranker.evaluation.learners.Worker` processes that are sent
them (:func:`~ranker.evaluation.scheduling.spread` decides which workspace learns where, and which share one parse
of a line). Events of the other kind (a single-slot event in a multi-slot source, or the reverse) are skipped as
``other_kind``, as the trainer skips them. :func:`kept` then tells which events every VW pass read whole.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ranker.evaluation import scheduling, segments
from ranker.evaluation.learners import Chosen, Learners, Worker
from ranker.evaluation.sources import DsjsonFile, Event, LoopLog, MultiSlotEvent, Skipped

__all__ = ["CHUNK", "MAX_ERRORS", "Scan", "Skips", "SlotScan", "ints", "kept", "read"]

MAX_ERRORS = 100  # bad lines listed in a report
CHUNK = 128  # lines handed to the learners at a time


@dataclass
class Skips:
    """The events the main pass leaves out: counts by reason, and the first errors with their line."""

    skipped: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)
    segments: list[tuple[str, ...]] = field(default_factory=list)  # each event's values at the --by paths

    def skip(self, skipped: Skipped) -> None:
        self.skipped[skipped.reason] = self.skipped.get(skipped.reason, 0) + 1
        if skipped.error is not None and len(self.errors) < MAX_ERRORS:
            self.errors.append((skipped.line, skipped.error))


@dataclass
class Scan(Skips):
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
        k = ints(self.actions)
        pmf = np.zeros(int(k.sum()))
        starts = np.repeat(np.cumsum(k) - k, ints(self.lengths))
        pmf[starts + ints(self.a) - 1] = np.frombuffer(self.p, dtype=float) if len(self.p) else 0.0
        return pmf


@dataclass
class SlotScan(Skips):
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


def read(
    source: LoopLog | DsjsonFile,
    jobs: Sequence[str],
    workers: int,
    progress: Callable[[int], None] | None,
    multislot: bool = False,
    by: Sequence[str] = (),
) -> tuple[Any, list[tuple[array, array]]]:
    """Read the source once, keep what the built-ins need (a :class:`Scan`, or a :class:`SlotScan` for a
    multi-slot source), and have every VW workspace learn exactly the lines of the events kept: here, or shared
    between this process and up to ``workers`` - 1 others fed through pipes
    (:func:`~ranker.evaluation.scheduling.spread`)."""
    scan: Scan | SlotScan = SlotScan() if multislot else Scan()
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


def kept(
    source: LoopLog | DsjsonFile, skipped: dict[str, int], outputs: list[tuple[array, array]], expected: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Which events every VW pass read whole (``expected`` outputs each: probabilities per action, or per slot),
    and each pass's output counts per event; the others are counted as ``refused_by_vw`` in ``skipped``."""
    keep = np.ones(expected.size, dtype=bool)
    counts = []
    for _, output_counts in outputs:
        counts.append(ints(output_counts))
        if counts[-1].size != expected.size:
            raise RuntimeError("the VW passes read different events; was the source changed during the replay?")
        keep &= counts[-1] == expected
    if expected.size - int(keep.sum()):
        skipped["refused_by_vw"] = expected.size - int(keep.sum())
    if not keep.any():
        raise ValueError(f"no event to evaluate in {source} (skipped: {skipped or 'none'})")
    return keep, counts


def ints(values: array) -> np.ndarray:
    return np.frombuffer(values, dtype=np.int64) if len(values) else np.zeros(0, dtype=np.int64)
