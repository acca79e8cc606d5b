"""DSJSON in and out of the decision log: ``ranker export`` and ``ranker import``.

Export writes a loop's decisions as VW's DSJSON lines for contextual bandits, in id order (the order they
were committed in, which is the trainer's): the logged record exactly, with the label the trainer learns, the
reward joined by the trainer's own :class:`~ranker.join.RewardJoin`. A single-slot record gets the CB label in
front of it (:func:`ranker.dsjson.labeled`); a multi-slot (CCB) record gets a cost on each slot's outcome
(:func:`ranker.dsjson.labeled_slots`, each slot's own reward, joined per slot). So ``vw --cb_explore_adf
--dsjson -d export.json`` (``--ccb_explore_adf`` for a multi-slot loop) with the loop's arguments trains the
model the trainer trained. What each decision becomes:

- learned by the trainer (Online): the labeled record;
- deferred and not activated within its reward window: the labeled record with ``"_skipLearn":true``, as
  Personalizer's own logs marked events that were never activated (in front of a single-slot record, right
  after ``c`` in a multi-slot one, before ``_outcomes``). VW's DSJSON parser drops such a line
  (``Workspace.parse`` returns one empty example), so VW learns nothing from it, though its example counter
  still counts it; the replay ignores them, and ``ranker import`` reads single-slot ones back as deferred
  decisions that were never activated;
- logged in LoggingOnly or Apprentice mode: the labeled record with the real reward. The trainer learns
  nothing from the first and imitation labels from the second, but the rewards are what happened, which is
  what offline evaluation and another loop's training need;
- no eligible action: left out (there is no record, nothing for VW to read);
- still inside its reward window (plus the trainer's commit grace): left out, its label is not final yet.

The trainer learns only the records of its policy's kind (single- or multi-slot); a loop whose policy changed
kind exports the records of both, each labeled in its own kind, and VW is to be given those of its kind.

Import reads DSJSON decision logs (what a Personalizer resource mirrored to storage, VW's
``test/train-sets/dsjson_cb.json``, or an export) into a loop's log. Each line is checked as a Rank request
is (features VW can read) and parsed by VW with the loop's arguments, then becomes one decision row, with
its record in ranker's shape (``EventId``, ``Timestamp``, ``a``, ``p`` and ``c``; every ``_multi`` entry
gets an ``_id``: its own, else its ``_tag``, else its index), and one reward row of ``-_label_cost``
received at the decision's time, when the line has a label. A line is written whole or not at all: its
decision and reward go in under one savepoint inside a transaction of up to ``IMPORT_BATCH`` lines. Bad
lines (invalid JSON, missing or malformed ``c``, ``_multi``, ``a``, ``p``, ``EventId`` or ``Timestamp``,
features VW cannot read, an EventId already in the loop) are reported with their 1-based line number and
skipped; blank lines are ignored. Import reads single-slot lines into single-slot loops only: a multi-slot line
(one with ``_outcomes``), and every line sent to a multi-slot loop, is refused with its line number.

For evaluation, :class:`LoopLog` and :class:`DsjsonFile` read a loop's log or a DSJSON file as the events
:mod:`ranker.evaluation.replay` replays: the labeled line VW learns from, the logged action, its probability,
the reward (an :class:`Event`), or for a multi-slot decision the same per slot (a :class:`MultiSlotEvent`);
never-activated decisions, unlabeled and invalid lines are :class:`Skipped`.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import pydantic_core
import vowpalwabbit

from . import dsjson, loopconfig, vwcalls
from .engine import is_multislot
from .join import Joined, Outcome, RewardJoin, joined
from .schemas import check_features
from .settings import Settings
from .store import log, open_database, parse_time, timestamp

IMPORT_BATCH = 500  # lines per import transaction
EXPLANATION = json.dumps({"excluded": {}, "reweighted": {}})
_MULTI_KEYS = {"_id", "_tag"}  # reserved keys kept in a _multi entry; VW ignores them as features


def log_time(value: datetime | str) -> str:
    """A moment in the log's timestamp format (UTC, microseconds); naive ones are taken as UTC."""
    if isinstance(value, str):
        try:
            value = parse_time(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return timestamp(moment.astimezone(UTC))


# -- export -------------------------------------------------------------------------------------------------


def decisions(
    settings: Settings,
    loop: str,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    now: datetime | None = None,
) -> Iterator[tuple[Joined, str]]:
    """The loop's due decisions with a record and ``start <= created_at < end``, in id order, each with its
    DSJSON line as :func:`export` writes it (the one reader of export and the replay)."""
    if loop not in settings.loops:
        raise ValueError(f"unknown loop {loop!r}")
    conn = open_database(settings).open_log()
    try:
        join = RewardJoin.of(loopconfig.read(conn, settings, loop)[0])
        # due as the trainer has it: made at or before now - rewardWaitTime - commit grace (the log's
        # timestamps have one fixed width, so they compare as strings)
        due = log_time(join.due_before(now or datetime.now(UTC)))
        start = log_time(start) if start is not None else None
        end = log_time(end) if end is not None else None
        for decision in joined(conn, loop, join, start=start, end=end):
            outcome = decision.outcome
            if outcome is not None and decision.created_at <= due:
                yield decision, exported_line(decision.record, outcome)
    finally:
        conn.close()


def exported_line(record: str, outcome: Outcome) -> str:
    """A logged record as the export writes it: labeled as the trainer learns it, ``"_skipLearn":true`` when
    it was never activated."""
    if outcome.slots is None:
        return dsjson.labeled(record, outcome.reward, skip_learn=not outcome.shown)
    return dsjson.labeled_slots(record, list(outcome.slots), skip_learn=not outcome.shown)


def export(
    settings: Settings,
    loop: str,
    out: TextIO | str | Path,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    now: datetime | None = None,
) -> int:
    """Write the loop's decisions made in ``[start, end)`` as DSJSON lines to ``out`` (a text stream or a path);
    return how many lines were written. See the module docstring for what each decision becomes."""
    if loop not in settings.loops:
        raise ValueError(f"unknown loop {loop!r}")
    with contextlib.ExitStack() as stack:
        stream = out if hasattr(out, "write") else stack.enter_context(open(out, "w", encoding="utf-8"))
        count = 0
        for _, line in decisions(settings, loop, start, end, now):
            stream.write(line + "\n")
            count += 1
        return count


# -- import -------------------------------------------------------------------------------------------------


class Imported(NamedTuple):
    """One DSJSON decision in ranker's shape."""

    event_id: str
    created_at: str
    record: str  # the decision line, unlabeled, as ranker logs it
    action_ids: list[str]
    chosen: int  # 0-based index of the chosen action in ``_multi``
    probability: float
    reward: float | None  # -_label_cost, None when the line has no label
    shown: bool  # False for ``"_skipLearn": true``: never activated


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_decision(obj: Any) -> Imported:
    """A parsed DSJSON line (CB) as an :class:`Imported`; a :class:`ValueError` says what is wrong with it."""
    if not isinstance(obj, dict):
        raise ValueError("a DSJSON line must be a JSON object")
    if "_outcomes" in obj:
        raise ValueError("a multi-slot (CCB) line: ranker import reads single-slot (CB) lines only")
    event_id = obj.get("EventId")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 256 or not event_id.isprintable():
        raise ValueError("EventId must be a string of 1-256 printable characters")
    stamp = obj.get("Timestamp")
    try:
        created_at = log_time(stamp if isinstance(stamp, str) else "")
    except ValueError:
        raise ValueError(f"Timestamp must be an ISO 8601 time, got {stamp!r}") from None
    c = obj.get("c")
    if not isinstance(c, dict):
        raise ValueError('"c" must be an object')
    multi = c.get("_multi")
    if not isinstance(multi, list) or not multi or not all(isinstance(entry, dict) for entry in multi):
        raise ValueError('"c._multi" must be a non-empty array of objects')
    context = {key: value for key, value in c.items() if key != "_multi"}
    _check_features(context, "c")
    actions = []
    for i, entry in enumerate(multi):
        features = {key: value for key, value in entry.items() if key not in _MULTI_KEYS}
        _check_features(features, f"c._multi[{i}]")
        action_id = entry.get("_id", entry.get("_tag", str(i)))
        if not isinstance(action_id, str) or not action_id:
            raise ValueError(f"c._multi[{i}]: _id and _tag must be non-empty strings")
        actions.append((action_id, {key: value for key, value in entry.items() if key != "_id"}))
    ids = [action_id for action_id, _ in actions]
    if len(set(ids)) != len(ids):
        raise ValueError("the actions' ids (_id, _tag or index) repeat")
    a, p = obj.get("a"), obj.get("p")
    if not isinstance(a, list) or not a or not all(isinstance(i, int) and not isinstance(i, bool) for i in a):
        raise ValueError('"a" must be a non-empty array of 1-based action indices')
    if len(set(a)) != len(a) or not all(1 <= i <= len(multi) for i in a):
        raise ValueError(f'"a" must hold distinct indices from 1 to {len(multi)}')
    if not isinstance(p, list) or len(p) != len(a) or not all(_number(x) and 0 <= x <= 1 for x in p):
        raise ValueError('"p" must hold a probability in [0, 1] for each entry of "a"')
    if p[0] <= 0:
        raise ValueError("the chosen action (first in a) must have a positive probability")
    reward = None
    if "_label_cost" in obj:
        cost = obj["_label_cost"]
        if not _number(cost) or not -1 <= -cost <= 1:
            raise ValueError("_label_cost must be a number in [-1, 1] (the reward negated)")
        if obj.get("_label_Action", a[0]) != a[0] or obj.get("_labelIndex", a[0] - 1) != a[0] - 1:
            raise ValueError("the label must be on the chosen action (the first in a)")
        reward = 0.0 - cost  # no -0.0
    skip = obj.get("_skipLearn", False)
    if not isinstance(skip, bool):
        raise ValueError("_skipLearn must be true or false")
    order = [i - 1 for i in a]
    pmf = [0.0] * len(multi)
    for i, probability in zip(order, p, strict=True):
        pmf[i] = float(probability)
    c_json = dsjson.context_json(context, actions, id_feature=False)
    record = dsjson.decision_line(event_id, created_at, c_json, order, pmf)
    return Imported(event_id, created_at, record, ids, order[0], pmf[order[0]], reward, not skip)


def _check_features(features: dict[str, Any], where: str) -> None:
    """The checks a Rank request's features pass, so VW reads an imported record as it reads a served one."""
    for key in features:
        if key.startswith("_"):
            raise ValueError(f"{where}: {key!r} is not supported (reserved keys other than _multi, _id, _tag)")
    check_features(features, where)


class _Parser:
    """Checks that VW parses a record with the given arguments, as the trainer will."""

    def __init__(self, arguments: str):
        self._vw = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet")

    def check(self, line: str, actions: int) -> None:
        try:
            read = vwcalls.action_count(self._vw, line)
        except RuntimeError as exc:
            raise ValueError(f"VW cannot parse it: {exc}") from None
        if read != actions:
            raise ValueError(f"VW reads {read} actions where _multi has {actions}")

    def close(self) -> None:
        self._vw.finish()


def import_dsjson(settings: Settings, loop: str, lines: Iterable[str]) -> tuple[int, list[tuple[int, str]]]:
    """Load DSJSON decision lines into the loop's log; return (lines imported, [(line number, error), ...]).

    See the module docstring for what a line becomes and which lines are refused.
    """
    if loop not in settings.loops:
        raise ValueError(f"unknown loop {loop!r}")
    database = open_database(settings)
    database.migrate()
    conn = database.connect()
    errors: list[tuple[int, str]] = []
    imported = 0
    try:
        loop_settings, policy, _ = loopconfig.read(conn, settings, loop)
        if is_multislot(policy.arguments):
            refused = f"loop {loop!r} is multi-slot (--ccb_explore_adf): ranker import reads single-slot lines only"
            return 0, [(number, refused) for number, line in enumerate(lines, start=1) if line.strip()]
        parser = _Parser(loopconfig.learning_fingerprint(loop_settings, policy)[0])
        try:
            batch: list[tuple[int, Imported]] = []
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    try:
                        obj = json.loads(line)
                    except ValueError as exc:
                        raise ValueError(f"invalid JSON: {exc}") from None
                    decision = read_decision(obj)
                    parser.check(dsjson.labeled(decision.record, decision.reward or 0.0), len(decision.action_ids))
                except ValueError as exc:
                    errors.append((number, str(exc)))
                    continue
                batch.append((number, decision))
                if len(batch) >= IMPORT_BATCH:
                    imported += _write(database, conn, loop, batch, errors)
                    batch = []
            if batch:
                imported += _write(database, conn, loop, batch, errors)
        finally:
            parser.close()
    finally:
        conn.close()
    errors.sort()
    return imported, errors


def _write(
    database: Any,
    conn: sqlite3.Connection,
    loop: str,
    batch: list[tuple[int, Imported]],
    errors: list[tuple[int, str]],
) -> int:
    """One transaction; a refused line leaves nothing behind (:func:`ranker.store.log.import_decisions`)."""
    rows = [
        (
            number,
            {
                "event_id": d.event_id,
                "created_at": d.created_at,
                "record": d.record,
                "action_ids": d.action_ids,
                "reward_action_id": d.action_ids[d.chosen],
                "probability": d.probability,
                "explanation": EXPLANATION,
                "deferred": int(not d.shown),
                "reward": d.reward,
            },
        )
        for number, d in batch
    ]
    written, refused = log.import_decisions(conn, database, loop, rows)
    errors.extend((number, f"not written: {reason}") for number, reason in refused)
    return written


# -- reading events for evaluation ----------------------------------------------------------------------------


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
            head = json.loads(record[: record.index(',"c":')] + "}")
            a, p = head["a"], head["p"]
            reward = decision.outcome.reward
            yield Event(line, a[0] - 1, p[0], reward, a, p, len(a), decision.created_at)


@dataclass(frozen=True)
class DsjsonFile:
    """A DSJSON file of decisions (``ranker export`` writes them; Personalizer's logs and VW's are read as
    ``ranker import`` reads them). Single-slot lines in the export's shape (label, head, then ``c``) are replayed
    as they are; others are rebuilt in ranker's record shape by :func:`ranker.export.read_decision`. Multi-slot
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
    cut = line.find(',"c":')
    try:
        head = _decode(line[:cut] + "}") if cut > 0 else None
    except ValueError:
        head = None
    if type(head) is dict and "_label_cost" in head and "a" in head and "p" in head:
        try:
            if not line.isascii():  # only a non-ASCII name can be one VW cannot read (see ranker.schemas)
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
    head = json.loads(decision.record[: decision.record.index(',"c":')] + "}")
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
    _check_features({key: value for key, value in c.items() if key not in ("_multi", "_slots")}, "c")
    for name, reserved in (("_multi", _MULTI_KEYS), ("_slots", {"_id", "_inc"})):
        entries = c.get(name)
        for i, entry in enumerate(entries if isinstance(entries, list) else ()):
            if isinstance(entry, dict):
                _check_features({key: value for key, value in entry.items() if key not in reserved}, f"c.{name}[{i}]")


def _exported_event(number: int, line: str, head: dict[str, Any]) -> Event | Skipped:
    if head.get("_skipLearn") is True:
        return Skipped(number, "not_activated")
    a, p, cost = head["a"], head["p"], head["_label_cost"]
    k = len(a)  # the export lists every eligible action in "a"
    if not k or len(p) != k or head.get("_labelIndex", a[0] - 1) != a[0] - 1:
        raise ValueError('"a", "p" and the label do not agree')
    if not all(type(i) is int for i in a) or min(a) < 1 or max(a) > k:
        raise ValueError(f'"a" must hold the action indices 1 to {k}')
    if min(p) < 0 or max(p) > 1 or not p[0] > 0:
        raise ValueError('"p" must hold probabilities, the first one positive')
    if type(cost) not in (int, float) or not -1 <= cost <= 1:
        raise ValueError("_label_cost must be a number in [-1, 1] (the reward negated)")
    return Event(line, a[0] - 1, float(p[0]), 0.0 - cost, a, p, k, str(head.get("Timestamp", "")))


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
        p = [p] if _number(p) else p
        if not isinstance(p, list) or len(p) != len(a) or not all(_number(x) and 0 <= x <= 1 for x in p):
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
        if cost is None:
            labeled = False
        elif not _number(cost) or not -1 <= cost <= 1:
            raise ValueError(f"_outcomes[{position}]._label_cost must be a number in [-1, 1] (the reward negated)")
        slot_id = outcome.get("_id", slot.get("_id", position))
        baseline = baselines[position] if baselines is not None else candidates[0]
        reward = 0.0 - cost if labeled else 0.0
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
