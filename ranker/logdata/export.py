"""DSJSON in and out of the decision log: ``ranker export`` and ``ranker import``.

Export writes a loop's decisions as VW's DSJSON lines for contextual bandits, in id order (the order they
were committed in, which is the trainer's): the logged record exactly, with the label the trainer learns, the
reward joined by the trainer's own :class:`~ranker.logdata.join.RewardJoin`. A single-slot record gets the CB label in
front of it (:func:`ranker.core.dsjson.labeled`); a multi-slot (CCB) record gets a cost on each slot's outcome
(:func:`ranker.core.dsjson.labeled_slots`, each slot's own reward, joined per slot). So ``vw --cb_explore_adf
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

:mod:`ranker.evaluation.sources` reads the same decisions (:func:`decisions`) as the events a replay scores.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import vowpalwabbit

from ..core import dsjson, vwcalls
from ..core.schemas import check_features
from ..core.settings import Settings
from ..serving import loopconfig
from ..serving.engine import is_multislot
from ..store import decision_row, log, open_database, parse_time, timestamp
from .join import Joined, Outcome, RewardJoin, joined

IMPORT_BATCH = 500  # lines per import transaction
EXPLANATION = json.dumps({"excluded": {}, "reweighted": {}})
MULTI_KEYS = {"_id", "_tag"}  # reserved keys kept in a _multi entry; VW ignores them as features


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


def is_number(value: Any) -> bool:
    """A finite JSON number, not a boolean."""
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
    check_dsjson_features(context, "c")
    actions = []
    for i, entry in enumerate(multi):
        features = {key: value for key, value in entry.items() if key not in MULTI_KEYS}
        check_dsjson_features(features, f"c._multi[{i}]")
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
    if not isinstance(p, list) or len(p) != len(a) or not all(is_number(x) and 0 <= x <= 1 for x in p):
        raise ValueError('"p" must hold a probability in [0, 1] for each entry of "a"')
    if p[0] <= 0:
        raise ValueError("the chosen action (first in a) must have a positive probability")
    reward = None
    if "_label_cost" in obj:
        reward = dsjson.label_reward(obj["_label_cost"])
        if obj.get("_label_Action", a[0]) != a[0] or obj.get("_labelIndex", a[0] - 1) != a[0] - 1:
            raise ValueError("the label must be on the chosen action (the first in a)")
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


def check_dsjson_features(features: dict[str, Any], where: str) -> None:
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
            decision_row(
                d.event_id,
                d.created_at,
                d.action_ids,
                deferred=not d.shown,
                record=d.record,
                reward_action_id=d.action_ids[d.chosen],
                probability=d.probability,
                explanation=EXPLANATION,
            ),
            d.reward,
        )
        for number, d in batch
    ]
    written, refused = log.import_decisions(conn, database, loop, rows)
    errors.extend((number, f"not written: {reason}") for number, reason in refused)
    return written
