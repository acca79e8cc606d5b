"""The events a replay scores: a loop's log (:class:`LoopLog`) or a DSJSON file (:class:`DsjsonFile`).

A source yields, in order (id order for a log, the order decisions were committed in, which the trainer learns
in; line order for a file), one item per decision or line: an :class:`Event` for a single-slot decision (the
labeled line VW learns from, the logged action, its probability, the reward and the logged PMF), a
:class:`MultiSlotEvent` for a multi-slot one (the same per filled slot, :class:`SlotOutcome`), or a
:class:`Skipped` with the reason it is left out: never activated (``"_skipLearn": true`` in a file),
unlabeled, or not valid DSJSON (with its line number and what is wrong). A loop's log is read through the
export's own join (:func:`ranker.logdata.export.decisions`), so every candidate sees exactly the line ``ranker
export`` writes; a file's lines are read as the export writes them, else as ``ranker import`` reads them.

A source is multi-slot when its loop's policy uses ``--ccb_explore_adf`` (for a file: when its first line has
``_outcomes``): :func:`source_is_multislot`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import pydantic_core

from ranker.core import dsjson
from ranker.core.settings import Settings
from ranker.logdata.export import MULTI_KEYS, check_dsjson_features, decisions, is_number, log_time, read_decision
from ranker.serving import loopconfig
from ranker.serving.engine import is_multislot
from ranker.store import log, open_database

__all__ = ["DsjsonFile", "Event", "LoopLog", "MultiSlotEvent", "Skipped", "SlotOutcome", "source_is_multislot"]


class Event(NamedTuple):
    """One logged single-slot event as the replay uses it."""

    line: str  # the labeled record every VW candidate learns from
    chosen: int  # 0-based index of the logged action in ``_multi``
    probability: float  # logged probability of the logged action
    reward: float
    a: list[int]  # the record's ``a`` (1-based indices) and ``p``: the logged PMF
    p: list[float]
    actions: int  # K, the number of eligible actions
    timestamp: str


class SlotOutcome(NamedTuple):
    """One filled slot of a multi-slot event, in the record's ``_outcomes`` order."""

    id: str  # the slot's ``_id`` (its position, from 0, when it has none)
    chosen: int  # 0-based ``_multi`` index of the logged action
    probability: float  # its logged probability, given the actions of the slots before (``_p[0]``)
    reward: float
    candidates: int  # how many actions the slot could take: its ``_inc``, else those no earlier slot took
    baseline: int  # ``_multi`` index of the slot's baseline (``_ba``; without one, its first candidate)


class MultiSlotEvent(NamedTuple):
    """One logged multi-slot (CCB) event as the replay uses it."""

    line: str  # the labeled record, ``_outcomes`` after ``c``, every VW candidate learns from
    slots: tuple[SlotOutcome, ...]
    timestamp: str


class Skipped(NamedTuple):
    """A decision or line the replay leaves out: ``reason`` is a count key, ``error`` what was wrong (or None)."""

    line: int  # 1-based line number in a file; the decision id in a log
    reason: str
    error: str | None = None


@dataclass(frozen=True)
class LoopLog:
    """A loop's logged decisions made in ``[start, end)``, joined with their rewards as the trainer joins them."""

    settings: Settings
    loop: str
    start: datetime | str | None = None
    end: datetime | str | None = None
    now: datetime | None = None

    def __str__(self) -> str:
        return (
            f"loop {self.loop}"
            + (f" from {self.start}" if self.start else "")
            + (f" to {self.end}" if self.end else "")
        )

    def size(self) -> int:
        """An upper bound of the events: the loop's decisions in the time range (for a progress bar)."""
        start, end = (log_time(moment) if moment is not None else None for moment in (self.start, self.end))
        conn = open_database(self.settings).open_log()
        try:
            return log.count_decisions(conn, self.loop, start, end)
        finally:
            conn.close()

    def multislot(self) -> bool:
        """Whether the loop's policy is multi-slot: its multi-slot decisions are the ones the trainer learns."""
        conn = open_database(self.settings).open_log()
        try:
            return is_multislot(loopconfig.read(conn, self.settings, self.loop)[1].arguments)
        finally:
            conn.close()

    def events(self) -> Iterator[Event | MultiSlotEvent | Skipped]:
        for decision, line in decisions(self.settings, self.loop, self.start, self.end, self.now):
            if not decision.outcome.shown:
                yield Skipped(decision.id, "not_activated")
                continue
            record = decision.record
            if decision.outcome.slots is not None:
                event = _slot_event(json.loads(line), decision.created_at, line)
                assert event is not None  # the export labels every slot
                yield event
                continue
            head = dsjson.head(record)
            a, p = head["a"], head["p"]
            reward = decision.outcome.reward
            yield Event(line, a[0] - 1, p[0], reward, a, p, len(a), decision.created_at)


@dataclass(frozen=True)
class DsjsonFile:
    """A DSJSON file of decisions (``ranker export`` writes them; Personalizer's logs and VW's are read as
    ``ranker import`` reads them). Single-slot lines in the export's shape (label, head, then ``c``) are replayed
    as they are; others are rebuilt in ranker's record shape by :func:`ranker.logdata.export.read_decision`. Multi-slot
    lines (with ``_outcomes``) are replayed with their ``_outcomes`` (``_a`` and ``_p`` as arrays) and ``_ba``
    put after ``c``, where VW reads them."""

    path: Path

    def __str__(self) -> str:
        return f"file {self.path}"

    def size(self) -> int:
        """An upper bound of the events: the file's lines (for a progress bar)."""
        with open(self.path, "rb") as stream:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b""))

    def multislot(self) -> bool:
        """Whether the file holds multi-slot decisions: its first JSON object line has ``_outcomes``."""
        with open(self.path, encoding="utf-8") as lines:
            for line in lines:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    return "_outcomes" in obj
        return False

    def events(self) -> Iterator[Event | MultiSlotEvent | Skipped]:
        with open(self.path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield _file_event(number, line)


# The head of every line of a file is decoded before anything else; pydantic's JSON parser (jiter) does it in
# a third of the time of the standard library's, which matters when a replay reads 100,000 lines.
_decode = pydantic_core.from_json


def _file_event(number: int, line: str) -> Event | MultiSlotEvent | Skipped:
    if '"_outcomes"' in line:  # perhaps multi-slot: only a key of the line itself says so
        try:
            obj = json.loads(line)
        except ValueError as exc:
            return Skipped(number, "invalid", f"invalid JSON: {exc}")
        if isinstance(obj, dict) and "_outcomes" in obj:
            if obj.get("_skipLearn") is True:
                return Skipped(number, "not_activated")
            try:
                _check_c(obj.get("c"))
                event = _slot_event(obj, str(obj.get("Timestamp", "")))
            except (TypeError, ValueError) as exc:
                return Skipped(number, "invalid", str(exc))
            return Skipped(number, "unlabeled") if event is None else event
    try:
        head = dsjson.head(line, _decode)
    except ValueError:
        head = None
    if type(head) is dict and "_label_cost" in head and "a" in head and "p" in head:
        try:
            if not line.isascii():  # only a non-ASCII name can be one VW cannot read (see ranker.core.schemas)
                _check_c(json.loads(line).get("c"))
            return _exported_event(number, line, head)
        except (TypeError, ValueError, IndexError) as exc:
            return Skipped(number, "invalid", str(exc))
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return Skipped(number, "invalid", f"invalid JSON: {exc}")
    try:
        decision = read_decision(obj)
    except ValueError as exc:
        return Skipped(number, "invalid", str(exc))
    if not decision.shown:
        return Skipped(number, "not_activated")
    if decision.reward is None:
        return Skipped(number, "unlabeled")
    line = dsjson.labeled(decision.record, decision.reward)
    head = dsjson.head(decision.record)
    return Event(
        line,
        decision.chosen,
        decision.probability,
        decision.reward,
        head["a"],
        head["p"],
        len(decision.action_ids),
        decision.created_at,
    )


def _check_c(c: Any) -> None:
    """The checks a Rank request's features pass, on a file line's ``c`` (context, ``_multi`` and ``_slots``
    entries): a line VW would misread, or crash on, is refused before VW reads it."""
    if not isinstance(c, dict):
        raise ValueError('"c" must be an object')
    check_dsjson_features({key: value for key, value in c.items() if key not in ("_multi", "_slots")}, "c")
    for name, reserved in (("_multi", MULTI_KEYS), ("_slots", {"_id", "_inc"})):
        entries = c.get(name)
        for i, entry in enumerate(entries if isinstance(entries, list) else ()):
            if isinstance(entry, dict):
                check_dsjson_features(
                    {key: value for key, value in entry.items() if key not in reserved}, f"c.{name}[{i}]"
                )


def _exported_event(number: int, line: str, head: dict[str, Any]) -> Event | Skipped:
    if head.get("_skipLearn") is True:
        return Skipped(number, "not_activated")
    a, p = head["a"], head["p"]
    k = len(a)  # the export lists every eligible action in "a"
    if not k or len(p) != k or head.get("_labelIndex", a[0] - 1) != a[0] - 1:
        raise ValueError('"a", "p" and the label do not agree')
    if not all(type(i) is int for i in a) or min(a) < 1 or max(a) > k:
        raise ValueError(f'"a" must hold the action indices 1 to {k}')
    if min(p) < 0 or max(p) > 1 or not p[0] > 0:
        raise ValueError('"p" must hold probabilities, the first one positive')
    reward = dsjson.label_reward(head["_label_cost"])
    return Event(line, a[0] - 1, float(p[0]), reward, a, p, k, str(head.get("Timestamp", "")))


def _indices(value: Any, k: int, where: str) -> list[int]:
    """A non-empty array (or one number) of distinct 0-based ``_multi`` indices."""
    indices = [value] if type(value) is int else value
    if not isinstance(indices, list) or not indices or not all(type(i) is int and 0 <= i < k for i in indices):
        raise ValueError(f'"{where}" must hold 0-based indices of the {k} actions in c._multi')
    if len(set(indices)) != len(indices):
        raise ValueError(f'"{where}" repeats an action')
    return indices


def _slot_event(obj: Any, timestamp: str, line: str | None = None) -> MultiSlotEvent | None:
    """A parsed multi-slot line as a :class:`MultiSlotEvent`; None when a slot has no ``_label_cost``. ``line``
    is the text VW learns; without it, the line is rebuilt with ``_outcomes`` and ``_ba`` after ``c``, where
    VW reads them. A :class:`ValueError` says what is wrong with the line."""
    if not isinstance(obj, dict):
        raise ValueError("a DSJSON line must be a JSON object")
    c, outcomes, baselines = obj.get("c"), obj.get("_outcomes"), obj.get("_ba")
    if not isinstance(c, dict):
        raise ValueError('"c" must be an object')
    multi, slots = c.get("_multi"), c.get("_slots")
    if not isinstance(multi, list) or not multi:
        raise ValueError('"c._multi" must be a non-empty array of objects')
    if not (isinstance(slots, list) and isinstance(outcomes, list) and outcomes and len(slots) == len(outcomes)):
        raise ValueError('"c._slots" and "_outcomes" must be arrays with one entry per slot')
    if not all(isinstance(x, dict) for x in [*slots, *outcomes]):
        raise ValueError('the entries of "c._slots" and "_outcomes" must be objects')
    if baselines is not None and not (
        isinstance(baselines, list) and len(baselines) == len(slots) and all(type(b) is int for b in baselines)
    ):
        raise ValueError('"_ba" must hold one 0-based action index per slot')
    taken: set[int] = set()
    read: list[SlotOutcome] = []
    normalized = []
    labeled = True
    for position, (slot, outcome) in enumerate(zip(slots, outcomes, strict=True)):
        a = _indices(outcome.get("_a"), len(multi), f"_outcomes[{position}]._a")
        p = outcome.get("_p")
        p = [p] if is_number(p) else p
        if not isinstance(p, list) or len(p) != len(a) or not all(is_number(x) and 0 <= x <= 1 for x in p):
            raise ValueError(f'"_outcomes[{position}]._p" must hold a probability for each entry of its "_a"')
        if not p[0] > 0:
            raise ValueError(f"slot {position}: the chosen action (first in _a) must have a positive probability")
        if "_inc" in slot:
            candidates = _indices(slot["_inc"], len(multi), f"c._slots[{position}]._inc")
        else:
            candidates = [m for m in range(len(multi)) if m not in taken]
        if a[0] in taken or a[0] not in candidates:
            raise ValueError(f"slot {position}: the chosen action is taken by an earlier slot or not in its _inc")
        cost = outcome.get("_label_cost")
        labeled = labeled and cost is not None
        reward = 0.0 if cost is None else dsjson.label_reward(cost, f"_outcomes[{position}]._label_cost")
        slot_id = outcome.get("_id", slot.get("_id", position))
        baseline = baselines[position] if baselines is not None else candidates[0]
        read.append(SlotOutcome(str(slot_id), a[0], float(p[0]), reward, len(candidates), baseline))
        normalized.append({**outcome, "_a": a, "_p": p})
        taken.add(a[0])
    if not labeled:
        return None
    if line is None:
        head = {key: v for key, v in obj.items() if key not in ("c", "_outcomes", "_ba", "_skipLearn")}
        tail = {"_outcomes": normalized} | ({"_ba": baselines} if baselines is not None else {})
        line = dsjson.ccb_line(head, c, tail)
    return MultiSlotEvent(line, tuple(read), timestamp)


def source_is_multislot(source: Any) -> bool:
    """Whether a source is multi-slot (see the module docstring); sources without ``multislot()`` are not."""
    kind = getattr(source, "multislot", None)
    return bool(kind()) if callable(kind) else False
