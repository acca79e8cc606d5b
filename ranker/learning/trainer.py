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
  with the label added (:func:`ranker.core.dsjson.labeled`);
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
publication, the checkpointed model becomes a new version in the model store (:mod:`ranker.store.models`).

About 530 lines: the pass, the checkpoint and the publication share one loop state and its compare-and-set;
the reward join (:mod:`ranker.logdata.join`) and graduation (:mod:`.apprentice`) already live apart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import vowpalwabbit

from ..core import dsjson, vwcalls
from ..core.errors import StoreUnavailable
from ..core.settings import LoopSettings, Settings, parse_duration
from ..evaluation import jobs
from ..logdata.join import BATCH, COMMIT_GRACE, RewardJoin, joined
from ..serving import loopconfig
from ..serving.engine import is_multislot
from ..store import learning, open_database, parse_time, timestamp, transaction
from ..triage.schedule import TriageSchedule
from . import apprentice

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
        create_database: bool = True,
    ):
        """``create_database`` False: the decision log must exist (``StoreUnavailable`` otherwise), as for
        the trainer ``ranker serve`` starts (again) beside its workers."""
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.checkpoint_events = checkpoint_events
        self.checkpoint_seconds = checkpoint_seconds
        self.commit_grace = timedelta(seconds=commit_grace)
        self.keep_versions = keep_versions
        self.database = open_database(settings)  # SQLite in data_dir, or PostgreSQL with database_url
        try:
            self.database.migrate(create=create_database)
            self._conn = self.database.connect(create=create_database)
            self._identity = self.database.identity()
        except (OSError, sqlite3.OperationalError) as exc:
            if create_database:
                raise
            raise StoreUnavailable(f"the decision log {settings.database_name} cannot be opened: {exc}") from exc
        self._scratch = self.data_dir / ".trainer"
        self._scratch.mkdir(parents=True, exist_ok=True)
        self._loops: dict[str, _Loop] = {}
        self._read: dict[str, LoopSettings] = {}  # each loop's settings as the current pass read them
        self._stop: threading.Event | None = None

    # -- public -------------------------------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> dict[str, Any]:
        """Learn every decision due at ``now`` in every loop, checkpoint, publish what is due.

        Returns ``{"learned": n, "skipped": n, "malformed": n, "loops": {loop: {"learned", "skipped", "malformed",
        "last_decision_id", "published"}}}`` with the counts of this call (``malformed``: the skipped decisions
        whose record cannot be read; ``published``: the version published by this call, or None).
        """
        started = time.monotonic()
        now = now or datetime.now(UTC)
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (UTC)")

        def clock() -> datetime:
            return now + timedelta(seconds=time.monotonic() - started)

        report = {name: {"learned": 0, "skipped": 0, "malformed": 0, "published": None} for name in self.settings.loops}
        # What this pass read of each loop (its effective settings, in _loop): a loop that learned nothing since
        # keeps them for the rest of the pass, once its checkpoint's stamp shows no change (a reset, an import).
        self._read = {}
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
            untouched = (
                name in self._read and name in self._loops and not (report[name]["learned"] or report[name]["skipped"])
            )
            loop = self._loops[name] if untouched else None
            if loop is not None and learning.stamp(self._conn, name) != (
                loop.fingerprint,
                loop.last_id,
                loop.learned,
                loop.generation,
            ):  # a reset, an import or another trainer since the pass's first look: read the loop again
                loop, untouched = None, False
            loop = loop or self._loop(name)
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
            self._maybe_graduate(loop, now, self._read.get(name) if untouched else None)
        return {
            "learned": sum(r["learned"] for r in report.values()),
            "skipped": sum(r["skipped"] for r in report.values()),
            "malformed": sum(r["malformed"] for r in report.values()),
            "loops": report,
        }

    def run_forever(self, stop_event: threading.Event, poll: float = POLL_SECONDS) -> None:
        """Hold the trainer lease and learn until ``stop_event`` is set; checkpoint before returning.

        Only one trainer per data folder works at a time: another one waits for the lease and takes
        over when the first one stops or dies. Between learning passes it runs the evaluation and feature
        importance jobs (:mod:`ranker.evaluation.jobs`), one at a time: whenever idle, and every JOBS_EVERY seconds,
        and the triage passes on their schedule (:mod:`ranker.triage.schedule`).
        """
        with self.lease(stop_event) as held:
            if not held:
                return
            self._stop = stop_event
            jobs.requeue_interrupted(self._conn)
            jobs_at = time.monotonic()
            triage = TriageSchedule(self.settings)
            try:
                while not stop_event.is_set():
                    self.check()
                    try:
                        report = self.run_once()
                    except CheckpointConflict as exc:
                        log.warning("%s; reloading from the stored checkpoint", exc)
                        continue
                    idle = not report["learned"] and not report["skipped"]
                    if triage.due() and self.database.leading():
                        triage.tick()  # renewal-risk triage, every triage.schedule, on the leading trainer only
                    if idle or time.monotonic() - jobs_at >= JOBS_EVERY:
                        # evaluations and feature importances, one at a time between learning passes
                        jobs_at = time.monotonic()
                        if jobs.run_pending(self.settings, conn=self._conn):
                            continue
                    if idle:
                        stop_event.wait(poll)
            finally:
                self._stop = None

    def leading(self) -> bool:
        """Whether this trainer works now: inside :meth:`run_forever`, holding the lease (what runs beside the
        learning, the outbox's sender, runs only then)."""
        return self._stop is not None and self.database.leading()

    def check(self) -> None:
        """Raise ``StoreUnavailable`` when the decision log's file was deleted or replaced under the trainer, or
        when it lost the leadership (PostgreSQL: its session ended): it stops rather than learn from, and write
        into, a log the server no longer has, or learn beside the trainer that leads now."""
        if not self.database.check(self._identity):
            raise StoreUnavailable(f"the decision log {self.settings.database_name} was deleted or replaced")
        if self._stop is not None and not self.database.leading():
            raise StoreUnavailable("the trainer lost its leadership")

    def state(self, loop: str) -> dict[str, Any] | None:
        """The stored checkpoint of a loop, without the model bytes (with their size)."""
        return learning.state(self._conn, loop)

    def model(self, loop: str) -> bytes | None:
        """The checkpointed model bytes of a loop (None before anything was learned)."""
        return learning.model(self._conn, loop)

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
        cutoff = loop.join.due_before(now, self.commit_grace)
        budget = self.checkpoint_events
        while budget > 0 and not self._stopping():
            limit = min(BATCH, budget)
            # Read row by row and stop at the first decision not yet due: an idle trainer polls every 0.2 s,
            # and reading a whole batch of decisions still waiting for their rewards cost it more than learning.
            due, last_due, waiting = 0, 0, False
            for decision_id, created_at in learning.decision_times(self._conn, loop.name, loop.last_id, limit):
                if parse_time(created_at) > cutoff:
                    waiting = True
                    break
                due, last_due = due + 1, decision_id
            if due == 0:
                return False
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
            if waiting or due < limit:
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
            problem = outcome.malformed if outcome is not None else None
            if label is not None and problem is None:
                problem = dsjson.record_problem(record)
            if problem is not None:  # never written by the server: a bad copy or edit; skipped, left in the log
                log.error(
                    "loop %s: decision %d skipped, not learned: its record is malformed: %s",
                    loop.name,
                    decision_id,
                    problem,
                )
                report["malformed"] += 1
                label = None
            if label is not None:
                try:
                    if mode == "Apprentice":
                        matched = apprentice.imitate(ws, record)
                        loop.apprentice.append((created_at, matched, label))
                        del loop.apprentice[:-APPRENTICE_WINDOW]
                    elif outcome.slots is not None:
                        vwcalls.learn(ws, dsjson.labeled_slots(record, list(outcome.slots)))
                    else:
                        vwcalls.learn(ws, dsjson.labeled(record, label))
                except (RuntimeError, ValueError, LookupError, TypeError) as exc:  # it never can be: skipped
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

    # -- checkpoints ----------------------------------------------------------------------------

    def _loop(self, name: str) -> _Loop:
        """The loop's in-memory state, (re)loaded from the checkpoint when it is missing or stale."""
        loop = self._loops.get(name)
        if loop is not None and loop.pending:
            return loop  # mid-run: the checkpoint's compare-and-set settles whether it is still current
        if loop is not None:
            row = learning.stamp(self._conn, name)
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
        stored, last_id, model, learned, skipped, published_learned, published_at, generation, apprentice = (
            learning.open_checkpoint(self._conn, name, fingerprint, timestamp(datetime.now(UTC)))
        )
        if stored != fingerprint:
            log.warning("loop %s: learning settings changed; the model restarts from the retained log", name)
            learning.restart(self._conn, name, fingerprint, timestamp(datetime.now(UTC)))
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
        arguments, fingerprint = loopconfig.learning_fingerprint(settings, policy)
        self._read[name] = settings
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
        saved = learning.save_checkpoint(
            self._conn,
            loop.name,
            fingerprint=loop.fingerprint,
            from_id=loop.checkpoint_id,
            generation=loop.generation,
            last_id=loop.last_id,
            model=model,
            learned=loop.learned,
            skipped=loop.skipped,
            apprentice=json.dumps(loop.apprentice),
            now=timestamp(datetime.now(UTC)),
        )
        if not saved:
            raise CheckpointConflict(f"loop {loop.name}: the stored checkpoint changed under the trainer")
        loop.model, loop.checkpoint_id = model, loop.last_id
        loop.pending = 0
        loop.checkpointed_at = time.monotonic()

    def _maybe_publish(self, loop: _Loop, now: datetime) -> str | None:
        if loop.model is None or loop.learned <= loop.published_learned:
            return None
        # A clock that went back does not hold publications up.
        if loop.published_at is not None and timedelta(0) <= now - loop.published_at < loop.export:
            return None
        if self._learning(loop.name)[2] != loop.fingerprint:
            return None  # the learning settings changed: this model is about to be retrained
        # In the log's write turn, as a model import or reset is: neither publishes over the other.
        with self.database.write_turn(), transaction(self._conn):
            if learning.generation(self._conn, loop.name) != loop.generation:
                raise CheckpointConflict(f"loop {loop.name}: the model was imported or reset under the trainer")
            version = self.database.models.publish(loop.name, loop.model, self._conn)
            learning.record_publication(self._conn, loop.name, version, loop.learned, timestamp(now))
        loop.published_learned, loop.published_at = loop.learned, now
        # versions that served recent decisions stay, so those decisions can be explained (ranker.server.events)
        since = timestamp(now - parse_duration(self.settings.explanation_retention))
        served = learning.served_versions(self._conn, loop.name, since)
        self.database.models.prune(loop.name, self.keep_versions, served, self._conn)
        log.info("loop %s: published model %s (%d events learned)", loop.name, version, loop.learned)
        return version

    def _retain(self, loop: _Loop, now: datetime) -> None:
        """Delete decisions older than logRetentionDays (at most once a minute), only checkpointed ones."""
        days = loop.settings.log_retention_days
        if days < 0 or (loop.retained_at is not None and timedelta(0) <= now - loop.retained_at < RETENTION_EVERY):
            return
        loop.retained_at = now
        before = timestamp(now - timedelta(days=days))
        deleted = learning.delete_older(self._conn, loop.name, before, loop.checkpoint_id)
        if deleted:
            log.info("loop %s: deleted %d decisions older than %d days", loop.name, deleted, days)

    def _maybe_graduate(self, loop: _Loop, now: datetime, settings: LoopSettings | None = None) -> None:
        """Apprentice -> Online once the replayed model's lower bound beats the baseline (apprenticeGraduationEvents).

        At most every GRADUATION_EVERY. The switch is stored as the API would store it (``loop_config``), so
        workers apply it within 0.1 s, and recorded with its evidence in ``mode_switches``. ``settings``: the
        loop's effective settings as this pass read them, when nothing was learned since (else read here).
        """
        if settings is None:
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

        apprentice.graduate(self._conn, self.settings, loop.name, loop.arguments, needed, now)

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

    def lease(self, stop_event: threading.Event) -> contextlib.AbstractContextManager[bool]:
        """Hold the trainer's lease (yield True), or wait for it until ``stop_event`` (False): the data folder's
        lock file on SQLite, a session advisory lock on PostgreSQL (one trainer across every node)."""
        return self.database.lease(stop_event, self._clear_scratch)

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()
