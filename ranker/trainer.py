"""The trainer: join decisions with their rewards, learn each once, checkpoint, publish models.

One trainer learns for every loop. For each loop it keeps a VW workspace built from the loop's policy
(the serving arguments, without ``-t``) and reads the loop's decisions in id order, the order they were
committed in. A decision is learnable once its reward window, ``created_at + rewardWaitTime``, has closed
(plus ``commit_grace``, so a reward stamped inside the window but still in a writer's queue is committed
before the join reads it); the trainer stops at the first decision that is not yet due, so none is skipped.

What a due decision becomes (:class:`RewardJoin`, which ``ranker export`` and the replay use too):

- no eligible action (``record`` is null), logged in LoggingOnly mode, or deferred and not activated
  within its window: skipped (kept in the log, not learned);
- otherwise its rewards received within the window are aggregated by ``rewardAggregation`` (see
  :func:`aggregate`), ``defaultReward`` when none arrived, and VW learns from exactly the logged record
  with the label added (:func:`ranker.dsjson.labeled`);
- logged in Apprentice mode: the model learns to imitate the served baseline (the record's chosen
  action) with the reward ``1 if action == baseline else 0``, revealed for two actions: the baseline
  gets 1 and, when the training model's greedy choice on the record is another action, that action gets
  0 (both at probability 1: known rewards, not explored ones). Labelling the baseline alone never
  corrects a model that disagrees with it (on a segment-dependent baseline, 12% of decisions matched
  after 3,000 events, against 100% this way). The real rewards stay in the log.

The learning mode is the one logged with each decision, i.e. the mode that served it.

Exactly once: the checkpoint (table ``trainer_state``) holds the model bytes, with VW's optimiser
state and counters, together with the id of the last decision learned or skipped, written by one
UPDATE, i.e. one SQLite transaction. After a crash at any moment the trainer restarts from the last
checkpoint, so the decisions after it are learned again by a model that has not seen them, and no
decision is learned twice or skipped. The UPDATE only applies when the stored checkpoint is the one the
workspace started from, so two trainers on one log cannot interleave their histories.

The checkpoint also records the learning settings (VW arguments, reward wait time, aggregation, default
reward). When they change, the model is reset and retrained from the decisions still in the log, as
Personalizer did.

Publishing: at most once per ``modelExportFrequency``, and only when something was learned since the last
publication, the checkpointed model becomes a new version in the model store (:mod:`ranker.models`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import vowpalwabbit
from vowpalwabbit.pyvw import pylibvw

from . import dsjson, loopconfig, models, store
from .engine import is_multislot, pmf_of, slot_scores_of, vw_arguments
from .join import BATCH, COMMIT_GRACE, RewardJoin, joined
from .settings import LoopSettings, Policy, Settings, SettingsError, load_settings, parse_duration
from .store import connect, migrate, parse_time, timestamp, write_turn

log = logging.getLogger("ranker.trainer")

CHECKPOINT_EVENTS = 5000  # checkpoint after this many decisions ...
CHECKPOINT_SECONDS = 1.0  # ... or this long after the previous checkpoint, whichever comes first
KEEP_VERSIONS = 5  # published versions kept per loop
POLL_SECONDS = 0.2  # idle wait of run_forever
RETENTION_EVERY = timedelta(minutes=1)  # how often logRetentionDays is enforced
JOBS_EVERY = 5.0  # seconds between looks for evaluation jobs while there is learning to do
APPRENTICE_WINDOW = 1000  # Apprentice progress is reported over this many most recent decisions
GRADUATION_EVERY = timedelta(minutes=1)  # how often an Apprentice loop's graduation is checked


class CheckpointConflict(RuntimeError):
    """The stored checkpoint moved under this trainer (another trainer, or a reset)."""


@dataclass
class _Loop:
    """The trainer's view of one loop: its workspace and how far it has come."""

    name: str
    settings: LoopSettings
    arguments: str
    fingerprint: str
    join: RewardJoin
    export: timedelta
    ws: vowpalwabbit.Workspace | None = None
    generation: int = 0  # of the stored checkpoint; a model import or reset raises it
    last_id: int = 0  # the last decision learned or skipped
    checkpoint_id: int = 0  # the last decision of the stored checkpoint
    learned: int = 0
    skipped: int = 0
    model: bytes | None = None  # bytes of the last checkpoint
    published_learned: int = 0
    published_at: datetime | None = None
    retained_at: datetime | None = None  # last enforcement of logRetentionDays
    graduation_checked_at: datetime | None = None  # last check of apprenticeGraduationEvents
    # Apprentice decisions learned most recently: (created_at, model matched the baseline, reward)
    apprentice: list[tuple[str, bool, float]] = field(default_factory=list)
    multislot: bool = False  # the policy is multi-slot (CCB); records of the other kind are skipped
    # progress since the last checkpoint
    pending: int = 0
    checkpointed_at: float = field(default_factory=time.monotonic)


class Trainer:
    """Learns every loop of ``settings`` from the decision log; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        checkpoint_events: int = CHECKPOINT_EVENTS,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
        commit_grace: float = COMMIT_GRACE,
        keep_versions: int = KEEP_VERSIONS,
    ):
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.checkpoint_events = checkpoint_events
        self.checkpoint_seconds = checkpoint_seconds
        self.commit_grace = timedelta(seconds=commit_grace)
        self.keep_versions = keep_versions
        migrate(settings.database_path)
        self._conn = connect(settings.database_path, settings.synchronous)
        self._scratch = self.data_dir / ".trainer"
        self._scratch.mkdir(parents=True, exist_ok=True)
        self._loops: dict[str, _Loop] = {}
        self._stop: threading.Event | None = None

    # -- public -------------------------------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> dict[str, Any]:
        """Learn every decision due at ``now`` in every loop, checkpoint, publish what is due.

        Returns ``{"learned": n, "skipped": n, "loops": {loop: {"learned", "skipped",
        "last_decision_id", "published"}}}`` with the counts of this call (``published``: the version
        published by this call, or None).
        """
        started = time.monotonic()
        now = now or datetime.now(UTC)
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (UTC)")

        def clock() -> datetime:
            return now + timedelta(seconds=time.monotonic() - started)

        report = {name: {"learned": 0, "skipped": 0, "published": None} for name in self.settings.loops}
        pending = list(self.settings.loops)
        while pending:
            more = []
            for name in pending:
                if self._stopping():
                    break
                loop = self._loop(name)
                try:
                    if self._advance(loop, now, clock, report[name]):
                        more.append(name)
                except BaseException:
                    self._drop(name)
                    raise
            pending = more
        for name in self.settings.loops:
            loop = self._loop(name)
            try:
                if loop.pending:
                    self._checkpoint(loop)
                version = self._maybe_publish(loop, clock())
            except BaseException:
                self._drop(name)
                raise
            if version is not None:
                report[name]["published"] = version
            report[name]["last_decision_id"] = loop.last_id
            self._retain(loop, now)
            self._maybe_graduate(loop, now)
        return {
            "learned": sum(r["learned"] for r in report.values()),
            "skipped": sum(r["skipped"] for r in report.values()),
            "loops": report,
        }

    def run_forever(self, stop_event: threading.Event, poll: float = POLL_SECONDS) -> None:
        """Hold the trainer lease and learn until ``stop_event`` is set; checkpoint before returning.

        Only one trainer per data folder works at a time: another one waits for the lease and takes
        over when the first one stops or dies. Between learning passes it runs the evaluation and feature
        importance jobs (:mod:`ranker.evaluations`), one at a time: whenever idle, and every JOBS_EVERY seconds.
        """
        from . import evaluations  # it imports this module

        with self.lease(stop_event) as held:
            if not held:
                return
            self._stop = stop_event
            evaluations.requeue_interrupted(self._conn)
            jobs_at = time.monotonic()
            try:
                while not stop_event.is_set():
                    try:
                        report = self.run_once()
                    except CheckpointConflict as exc:
                        log.warning("%s; reloading from the stored checkpoint", exc)
                        continue
                    idle = not report["learned"] and not report["skipped"]
                    if idle or time.monotonic() - jobs_at >= JOBS_EVERY:
                        # evaluations and feature importances, one at a time between learning passes
                        jobs_at = time.monotonic()
                        if evaluations.run_pending(self.settings, conn=self._conn):
                            continue
                    if idle:
                        stop_event.wait(poll)
            finally:
                self._stop = None

    def state(self, loop: str) -> dict[str, Any] | None:
        """The stored checkpoint of a loop, without the model bytes (with their size)."""
        cursor = self._conn.execute(
            "SELECT loop, settings, last_decision_id, length(model) AS model_bytes, learned, skipped, updated_at, "
            "published_version, published_learned, published_at, apprentice FROM trainer_state WHERE loop = ?",
            (loop,),
        )
        row = cursor.fetchone()
        return None if row is None else dict(zip([d[0] for d in cursor.description], row, strict=True))

    def model(self, loop: str) -> bytes | None:
        """The checkpointed model bytes of a loop (None before anything was learned)."""
        row = self._conn.execute("SELECT model FROM trainer_state WHERE loop = ?", (loop,)).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        for name in list(self._loops):
            self._drop(name)
        self._conn.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one loop -----------------------------------------------------------------------------

    def _advance(self, loop: _Loop, now: datetime, clock: Callable[[], datetime], report: dict[str, Any]) -> bool:
        """Handle up to one checkpoint's worth of due decisions; True when more may be due."""
        cutoff = now - loop.join.wait - self.commit_grace
        budget = self.checkpoint_events
        while budget > 0 and not self._stopping():
            limit = min(BATCH, budget)
            heads = self._conn.execute(
                "SELECT id, created_at FROM decisions WHERE loop = ? AND id > ? ORDER BY id LIMIT ?",
                (loop.name, loop.last_id, limit),
            ).fetchall()
            due = 0
            for _, created_at in heads:
                if parse_time(created_at) > cutoff:
                    break
                due += 1
            if due == 0:
                return False
            last_due = heads[due - 1][0]
            self._learn_range(loop, last_due, report)
            budget -= due
            if (
                loop.pending >= self.checkpoint_events
                or time.monotonic() - loop.checkpointed_at >= self.checkpoint_seconds
            ):
                self._checkpoint(loop)
                version = self._maybe_publish(loop, clock())
                if version is not None:
                    report["published"] = version
            if due < len(heads) or len(heads) < limit:
                return False
        return budget <= 0

    def _learn_range(self, loop: _Loop, last_due: int, report: dict[str, Any]) -> None:
        """Learn or skip the loop's decisions with ids in (loop.last_id, last_due], in id order."""
        ws = loop.ws
        for decision_id, created_at, record, mode, outcome in joined(
            self._conn, loop.name, loop.join, after_id=loop.last_id, through_id=last_due
        ):
            label = outcome.reward if outcome is not None and outcome.learn else None
            if label is not None and (outcome.slots is not None) != loop.multislot:
                label = None  # logged under a policy of the other kind (single- or multi-slot): not learnable
            if label is not None:
                try:
                    if mode == "Apprentice":
                        matched = self._imitate(ws, record)
                        loop.apprentice.append((created_at, matched, label))
                        del loop.apprentice[:-APPRENTICE_WINDOW]
                    elif outcome.slots is not None:
                        _learn(ws, dsjson.labeled_slots(record, list(outcome.slots)))
                    else:
                        _learn(ws, dsjson.labeled(record, label))
                except RuntimeError as exc:  # VW refused the record: learning it can never succeed
                    log.error("loop %s: decision %d cannot be learned: %s", loop.name, decision_id, exc)
                    label = None
                else:
                    loop.learned += 1
                    report["learned"] += 1
            if label is None:
                loop.skipped += 1
                report["skipped"] += 1
            loop.last_id = decision_id
            loop.pending += 1

    @staticmethod
    def _imitate(ws: vowpalwabbit.Workspace, record: str) -> bool:
        """Apprentice: learn that the served baseline earns 1 and the model's other choice, if any, 0.

        Returns whether the model already chose the baseline before learning from this decision. A
        multi-slot decision is imitated slot by slot: each slot's served baseline (its ``_a[0]``) earns 1 and,
        when the model's chain of greedy choices differs anywhere, a second example labels those choices (1
        where they are the baseline, else 0).
        """
        if dsjson.is_multislot(record):
            baselines = dsjson.logged_actions(record)
            greedy = [max(scores, key=lambda m: (scores[m], -m)) for scores in slot_scores_of(ws, record)]
            _learn(ws, dsjson.with_slot_labels(record, [(b, 1.0) for b in baselines]))
            if greedy != baselines and len(greedy) == len(baselines) == len(set(greedy)):
                _learn(
                    ws,
                    dsjson.with_slot_labels(
                        record, [(g, float(g == b)) for g, b in zip(greedy, baselines, strict=True)]
                    ),
                )
            return greedy == baselines
        head = json.loads(record[: record.index(',"c":')] + "}")
        baseline = head["a"][0] - 1
        greedy = _greedy(ws, record)
        _learn(ws, _with_label(record, baseline, 1.0))
        if greedy != baseline:
            _learn(ws, _with_label(record, greedy, 0.0))
        return greedy == baseline

    # -- checkpoints ----------------------------------------------------------------------------

    def _loop(self, name: str) -> _Loop:
        """The loop's in-memory state, (re)loaded from the checkpoint when it is missing or stale."""
        loop = self._loops.get(name)
        if loop is not None and loop.pending:
            return loop  # mid-run: the checkpoint's compare-and-set settles whether it is still current
        if loop is not None:
            row = self._conn.execute(
                "SELECT settings, last_decision_id, learned, generation FROM trainer_state WHERE loop = ?", (name,)
            ).fetchone()
            current = (self._learning(name)[2], loop.last_id, loop.learned, loop.generation)
            if row == current and row[0] == loop.fingerprint:
                return loop
            self._drop(name)
        return self._restore(name)

    def _restore(self, name: str) -> _Loop:
        settings, arguments, fingerprint = self._learning(name)
        loop = _Loop(
            name=name,
            settings=settings,
            arguments=arguments,
            fingerprint=fingerprint,
            join=RewardJoin.of(settings),
            export=parse_duration(settings.model_export_frequency),
            multislot=is_multislot(arguments),
        )
        self._conn.execute(
            "INSERT OR IGNORE INTO trainer_state (loop, settings, updated_at) VALUES (?, ?, ?)",
            (name, fingerprint, timestamp(datetime.now(UTC))),
        )
        stored, last_id, model, learned, skipped, published_learned, published_at, generation, apprentice = (
            self._conn.execute(
                "SELECT settings, last_decision_id, model, learned, skipped, published_learned, published_at, "
                "generation, apprentice FROM trainer_state WHERE loop = ?",
                (name,),
            ).fetchone()
        )
        if stored != fingerprint:
            log.warning("loop %s: learning settings changed; the model restarts from the retained log", name)
            self._conn.execute(
                "UPDATE trainer_state SET settings = ?, last_decision_id = 0, model = NULL, learned = 0, "
                "skipped = 0, published_learned = 0, apprentice = NULL, updated_at = ? WHERE loop = ?",
                (fingerprint, timestamp(datetime.now(UTC)), name),
            )
            last_id, model, learned, skipped, published_learned, apprentice = 0, None, 0, 0, 0, None
        loop.generation = generation
        loop.apprentice = [tuple(event) for event in json.loads(apprentice or "[]")]
        loop.last_id = loop.checkpoint_id = last_id
        loop.learned, loop.skipped, loop.model = learned, skipped, model
        loop.published_learned = published_learned
        loop.published_at = parse_time(published_at) if published_at else None
        loop.ws = self._workspace(arguments, model)
        self._loops[name] = loop
        return loop

    def _learning(self, name: str) -> tuple[LoopSettings, str, str]:
        """The loop's effective settings (file + API), VW arguments and learning-settings fingerprint."""
        settings, policy, _ = loopconfig.read(self._conn, self.settings, name)
        arguments, fingerprint = learning_fingerprint(settings, policy)
        return settings, arguments, fingerprint

    def _workspace(self, arguments: str, model: bytes | None) -> vowpalwabbit.Workspace:
        options = f"{arguments} --dsjson --quiet"
        if model is None:
            return vowpalwabbit.Workspace(options)
        with self._scratch_file() as path:
            path.write_bytes(model)
            # Without --preserve_performance_counters VW resets its example counters on load, and the
            # saved model would differ from one trained without interruption.
            return vowpalwabbit.Workspace(f"{options} --preserve_performance_counters -i {shlex.quote(str(path))}")

    def _checkpoint(self, loop: _Loop) -> None:
        """Store the model with the last decision handled, in one transaction (compare-and-set)."""
        with self._scratch_file() as path:
            loop.ws.save(str(path))
            model = path.read_bytes()
        cursor = self._conn.execute(
            "UPDATE trainer_state SET last_decision_id = ?, model = ?, learned = ?, skipped = ?, apprentice = ?, "
            "updated_at = ? WHERE loop = ? AND settings = ? AND last_decision_id = ? AND generation = ?",
            (
                loop.last_id,
                model,
                loop.learned,
                loop.skipped,
                json.dumps(loop.apprentice),
                timestamp(datetime.now(UTC)),
                loop.name,
                loop.fingerprint,
                loop.checkpoint_id,
                loop.generation,
            ),
        )
        if cursor.rowcount != 1:
            raise CheckpointConflict(f"loop {loop.name}: the stored checkpoint changed under the trainer")
        loop.model, loop.checkpoint_id = model, loop.last_id
        loop.pending = 0
        loop.checkpointed_at = time.monotonic()

    def _maybe_publish(self, loop: _Loop, now: datetime) -> str | None:
        if loop.model is None or loop.learned <= loop.published_learned:
            return None
        if self._learning(loop.name)[2] != loop.fingerprint:
            return None  # the learning settings changed: this model is about to be retrained
        # A clock that went back does not hold publications up.
        if loop.published_at is not None and timedelta(0) <= now - loop.published_at < loop.export:
            return None
        # In the log's write turn, as a model import or reset is: neither publishes over the other.
        with write_turn(self.settings.database_path):
            (generation,) = self._conn.execute(
                "SELECT generation FROM trainer_state WHERE loop = ?", (loop.name,)
            ).fetchone()
            if generation != loop.generation:
                raise CheckpointConflict(f"loop {loop.name}: the model was imported or reset under the trainer")
            version = models.publish(self.data_dir, loop.name, loop.model)
            self._conn.execute(
                "UPDATE trainer_state SET published_version = ?, published_learned = ?, published_at = ? "
                "WHERE loop = ?",
                (version, loop.learned, timestamp(now), loop.name),
            )
        loop.published_learned, loop.published_at = loop.learned, now
        # versions that served recent decisions stay, so those decisions can be explained (ranker.events)
        since = timestamp(now - parse_duration(self.settings.explanation_retention))
        served = store.served_versions(self._conn, loop.name, since)
        models.prune(self.data_dir, loop.name, self.keep_versions, also_keep=served)
        log.info("loop %s: published model %s (%d events learned)", loop.name, version, loop.learned)
        return version

    def _retain(self, loop: _Loop, now: datetime) -> None:
        """Delete decisions older than logRetentionDays (at most once a minute), only checkpointed ones."""
        days = loop.settings.log_retention_days
        if days < 0 or (loop.retained_at is not None and timedelta(0) <= now - loop.retained_at < RETENTION_EVERY):
            return
        loop.retained_at = now
        old = (
            "loop = ? AND created_at < ? AND id <= ?",
            (loop.name, timestamp(now - timedelta(days=days)), loop.checkpoint_id),
        )
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(
                f"DELETE FROM rewards WHERE decision_id IN (SELECT id FROM decisions WHERE {old[0]})", old[1]
            )
            deleted = self._conn.execute(f"DELETE FROM decisions WHERE {old[0]}", old[1]).rowcount
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        if deleted:
            log.info("loop %s: deleted %d decisions older than %d days", loop.name, deleted, days)

    def _maybe_graduate(self, loop: _Loop, now: datetime) -> None:
        """Apprentice -> Online once the replayed model's lower bound beats the baseline (apprenticeGraduationEvents).

        At most every GRADUATION_EVERY. The switch is stored as the API would store it (``loop_config``), so
        workers apply it within 0.1 s, and recorded with its evidence in ``mode_switches``.
        """
        settings, _, _ = loopconfig.read(self._conn, self.settings, loop.name)
        needed = settings.apprentice_graduation_events
        if settings.learning_mode != "Apprentice" or needed <= 0 or loop.learned < needed:
            return
        if (
            loop.graduation_checked_at is not None
            and timedelta(0) <= now - loop.graduation_checked_at < GRADUATION_EVERY
        ):
            return
        loop.graduation_checked_at = now
        from .evaluation.replay import LoopLog  # the replay imports the export, which imports this module
        from .evaluation.search import graduation

        evidence = graduation(LoopLog(self.settings, loop.name, now=now), loop.arguments, needed)
        if not evidence["graduate"]:
            log.info("loop %s: stays in Apprentice mode: %s", loop.name, evidence["reason"])
            return
        row = self._conn.execute(loopconfig.SELECT, (loop.name,)).fetchone()
        service = {**json.loads((row and row[0]) or "{}"), "learningMode": "Online"}
        stamp = timestamp(now)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(loopconfig.UPSERT, (loop.name, json.dumps(service), row and row[1], stamp))
            self._conn.execute(
                "INSERT INTO mode_switches (loop, switched_at, from_mode, to_mode, evidence) VALUES (?, ?, ?, ?, ?)",
                (loop.name, stamp, "Apprentice", "Online", json.dumps(evidence)),
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        log.warning("loop %s: switched from Apprentice to Online: %s", loop.name, json.dumps(evidence))

    def _drop(self, name: str) -> None:
        loop = self._loops.pop(name, None)
        if loop is not None and loop.ws is not None:
            loop.ws.finish()
            loop.ws = None

    # -- files and the lease ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _scratch_file(self) -> Iterator[Path]:
        fd, name = tempfile.mkstemp(dir=self._scratch, suffix=".vw")
        os.close(fd)
        try:
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def _clear_scratch(self) -> None:
        for path in self._scratch.glob("*.vw"):  # left by a trainer killed between save and unlink
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @contextlib.contextmanager
    def lease(self, stop_event: threading.Event) -> Iterator[bool]:
        """Hold the data folder's trainer lock (yield True), or wait for it until ``stop_event`` (False)."""
        with open(self.data_dir / "trainer.lock", "w") as lock:
            waiting = False
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waiting:
                        log.info("another trainer holds %s; waiting for it", lock.name)
                        waiting = True
                    if stop_event.wait(0.2):
                        yield False
                        return
            self._clear_scratch()
            yield True

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()


def learning_fingerprint(settings: LoopSettings, policy: Policy) -> tuple[str, str]:
    """(VW arguments, fingerprint) of what the model learns with; a change resets the model."""
    arguments = vw_arguments(policy.arguments, settings.exploration_percentage)
    fingerprint = json.dumps(
        {
            "arguments": arguments,
            "rewardWaitTime": parse_duration(settings.reward_wait_time).total_seconds(),
            "rewardAggregation": settings.reward_aggregation,
            "defaultReward": settings.default_reward,
        },
        sort_keys=True,
    )
    return arguments, fingerprint


def apprentice_metrics(stored: str | None) -> dict[str, Any] | None:
    """Personalizer's ``latestApprenticeModeMetrics`` from a checkpoint's Apprentice window.

    Over the most recent APPRENTICE_WINDOW Apprentice decisions learned: how many, the reward the
    baseline earned (``sumOfRewards``), how many the model would have chosen the same way
    (``numberOfImitatedEvents``) and the reward on those (``sumOfImitatedRewards``).
    """
    events = json.loads(stored or "[]")
    if not events:
        return None
    window = {
        "numberOfEvents": len(events),
        "sumOfRewards": sum(reward for _, _, reward in events),
        "numberOfImitatedEvents": sum(1 for _, matched, _ in events if matched),
        "sumOfImitatedRewards": sum(reward for _, matched, reward in events if matched),
    }
    return {"startTime": events[0][0], "lastProcessedEventTime": events[-1][0], **window, "lastBatchMetrics": window}


def fresh_model(arguments: str) -> bytes:
    """The bytes of an untrained model with these VW arguments."""
    ws = vowpalwabbit.Workspace(f"{arguments} --quiet")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fresh.vw"
        ws.save(str(path))
        ws.finish()
        return path.read_bytes()


def _learn(ws: vowpalwabbit.Workspace, line: str) -> None:
    """``ws.learn(ws.parse(line))`` then ``ws.finish_example``, through the same pylibvw calls.

    pyvw wraps every parsed example in a Python object, which costs about twice VW's own parse and
    learn on a 10-action record; the calls underneath are the ones pyvw makes, so the model is the same.
    """
    examples = ws._parse(line)
    try:
        pylibvw.vw.learn_multi(ws, examples)
    finally:
        pylibvw.vw._finish_example_multi_ex(ws, examples)


def _with_label(record: str, index: int, reward: float) -> str:
    """The record with a CB label on ``_multi[index]`` at probability 1, placed before ``c`` as VW needs
    (see :func:`ranker.dsjson.labeled`, which labels the served action with its logged probability)."""
    label = {"_label_cost": -reward, "_label_probability": 1.0, "_label_Action": index + 1, "_labelIndex": index}
    return json.dumps(label, separators=(",", ":"))[:-1] + "," + record[1:]


def _greedy(ws: vowpalwabbit.Workspace, record: str) -> int:
    """The action the workspace would choose without exploring: the most probable one, first on ties."""
    pmf = pmf_of(ws, record)
    return max(range(len(pmf)), key=lambda i: (pmf[i], -i))


def run(
    settings: Settings, *, once: bool = False, parent_pid: int | None = None, **options: Any
) -> dict[str, Any] | None:
    """Run a trainer in this process until SIGTERM or SIGINT (``once``: learn what is due, then return).

    With ``parent_pid`` it also stops when that process is gone (a killed ``ranker serve`` leaves no
    trainer behind). ``ranker train`` and ``python -m ranker.trainer`` call this; ``options`` go to
    :class:`Trainer`.
    """
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if parent_pid is not None:

        def watch_parent() -> None:
            while not stop.wait(0.5):
                if os.getppid() != parent_pid:
                    log.warning("parent process %d is gone; stopping", parent_pid)
                    stop.set()

        threading.Thread(target=watch_parent, name="ranker-trainer-parent", daemon=True).start()
    with Trainer(settings, **options) as trainer:
        if not once:
            trainer.run_forever(stop)
            return None
        with trainer.lease(stop) as held:
            return trainer.run_once() if held else None


class Supervisor:
    """Keeps one trainer process (``python -m ranker.trainer``) running until stopped.

    ``ranker serve`` runs one beside the gunicorn master. The trainer inherits the environment, so it reads
    the same settings (``RANKER_CONFIG``, ``RANKER_*``). When it exits for any reason it is started again,
    after ``backoff`` seconds, doubling up to ``max_backoff`` while it keeps dying within a minute.
    """

    def __init__(
        self,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ):
        self.argv = argv or [sys.executable, "-m", "ranker.trainer", "--parent-pid", str(os.getpid())]
        self.env = env
        self.backoff, self.max_backoff = backoff, max_backoff
        self.restarts = 0
        self.process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="ranker-trainer-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def halt(self) -> None:
        """Start no new trainer from now on (safe in a signal handler); ``stop`` ends the running one."""
        self._stop.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the trainer (SIGTERM, then SIGKILL after ``timeout``) and stop restarting it."""
        with self._lock:
            self._stop.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._thread.join(timeout)

    def _watch(self) -> None:
        delay = self.backoff
        while True:
            with self._lock:
                if self._stop.is_set():
                    return
                self.process = subprocess.Popen(self.argv, env=self.env)
                started = time.monotonic()
            while self.process.poll() is None:
                if self._stop.wait(0.2):
                    return
            if self._stop.is_set():
                return
            if time.monotonic() - started > 60:
                delay = self.backoff
            log.error(
                "trainer (pid %d) exited with %s; starting it again in %.1f s",
                self.process.pid,
                self.process.returncode,
                delay,
            )
            self.restarts += 1
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.max_backoff)


def main(argv: list[str] | None = None) -> int:
    """``python -m ranker.trainer``: run the trainer until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m ranker.trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML settings file (default: RANKER_CONFIG)")
    parser.add_argument("--data-dir", help="folder of the decision log and models")
    parser.add_argument("--checkpoint-events", type=int, default=CHECKPOINT_EVENTS)
    parser.add_argument("--checkpoint-seconds", type=float, default=CHECKPOINT_SECONDS)
    parser.add_argument("--once", action="store_true", help="learn what is due now, print the counts, exit")
    parser.add_argument("--parent-pid", type=int, help="stop when this process is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [trainer] %(levelname)s %(message)s")
    try:
        settings = load_settings(args.config, overrides={"data_dir": args.data_dir} if args.data_dir else None)
    except SettingsError as exc:
        parser.error(str(exc))
    report = run(
        settings,
        once=args.once,
        parent_pid=args.parent_pid,
        checkpoint_events=args.checkpoint_events,
        checkpoint_seconds=args.checkpoint_seconds,
    )
    if report is not None:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
