"""Rank, Reward and Activate as library calls: rules, record, model, sampling, log.

The HTTP blueprint and the scripts are thin shells over ``Service``.

About 500 lines: Rank's two paths, Reward, Activate and the loops' model refresh stay beside the one ``Call``
they share; the multi-slot filling (:mod:`.slots`) and the rules already live apart.
"""

from __future__ import annotations

import ctypes
import hmac
import json
import logging
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..core import dsjson, rules
from ..core.errors import ApiError, StoreUnavailable
from ..core.schemas import MultiSlotRankRequest, RankRequest
from ..core.settings import LoopSettings, Policy, Settings, hash_key
from ..signals.service import Signals
from ..store import decision_row, open_database, timestamp
from . import discovery, explain, loopconfig, vwfeatures
from .engine import Engine, reweight, sample, unreadable, vw_arguments
from .slots import choose_slots, fill_slots, record_line, slot_options

log = logging.getLogger("ranker")

_NO_RULES = json.dumps(explain.logged(rules.Verdict([], [], {}, {}), {}))  # a decision no rule touched
REFRESH_SECONDS = 0.1  # how often a loop looks for new configuration (one query) and models (one stat or query)
RELEASE_WAIT_SECONDS = 0.5  # how long a model load waits for requests to let go of the replaced model


def utcnow() -> datetime:
    return datetime.now(UTC)


try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim  # glibc
except (AttributeError, OSError):  # another C library: nothing to trim
    _malloc_trim = None


def release_memory() -> None:
    """Give the heap memory freed by a replaced VW workspace back to the system.

    Works around glibc's allocator keeping it: a workspace is loaded in one thread and freed in another,
    each thread allocates from its own arena, and the freed weights stay in the arenas as reusable but
    resident memory. With models published every second on two loops a worker grew from 75 to 160 MB
    over two minutes; trimming once the replaced workspace is freed keeps it near 90 MB.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def check_kind(engine: Engine, multislot: bool) -> None:
    """400 InvalidMultiSlotApiAccess for a single-slot call to a multi-slot loop, or the reverse."""
    if engine.multislot != multislot:
        kind, other = ("multi-slot", "multislot/") if engine.multislot else ("single-slot", "the single-slot ")
        raise ApiError(
            400, "InvalidMultiSlotApiAccess", f"this loop's policy is {kind}: call {other}rank, reward and activate"
        )


@dataclass
class Loop:
    name: str
    settings: LoopSettings
    policy: Policy
    engine: Engine  # replaced, never changed, when a new model is published
    arguments: str = ""
    config_stamp: str | None = None  # loop_config.updated_at of the configuration in use
    model_stamp: tuple[int, int] | None = None
    checked_at: float = 0.0
    loading: threading.Lock = field(default_factory=threading.Lock)
    refreshing: threading.Lock = field(default_factory=threading.Lock)  # one look for changes at a time


@dataclass(slots=True)
class Call:
    """One Rank call's inputs once checked: the loop's configuration, policy and model as the call began (one of
    each serves the whole request and is the one logged), the action ids, the merged (and enriched) context and
    ``(id, features)`` actions, the time and the event id."""

    loop: Loop
    settings: LoopSettings
    policy: Policy
    engine: Engine
    ids: list[str]
    context: dict[str, Any]
    actions: list[tuple[str, dict[str, Any]]]
    now: datetime
    stamp: str
    event_id: str
    deferred: bool
    times: dict[str, float] | None = None  # the enriched paths' signal times, for fresh_within

    def row(self, **fields: Any) -> dict[str, Any]:
        """The decision's row: what every decision logs, and ``fields`` (its record, choice and explanation)."""
        return decision_row(
            self.event_id,
            self.stamp,
            self.ids,
            deferred=self.deferred,
            model_version=self.engine.version,
            policy=self.policy.name,
            learning_mode=self.settings.learning_mode,
            **fields,
        )


class Service:
    """One per process: the loops with their engines, the key ring and the store."""

    def __init__(self, settings: Settings, create_database: bool = True):
        """``create_database`` False: the decision log must exist (see :class:`Store`)."""
        self.settings = settings
        self.database = open_database(settings)  # SQLite in data_dir, or PostgreSQL with database_url
        self.models = self.database.models
        self.store = self.database.store(settings.commit_timeout, create_database)
        self.exposures = discovery.Exposures(self.store, settings.discovery_refresh_seconds)
        self.signals = Signals(settings.signals, self.store)
        self.loops: dict[str, Loop] = {}
        for name in settings.loops:
            try:
                stored = self.stored_config(name)
            except StoreUnavailable:  # the worker starts and answers 503 until the server is restarted
                stored = None
            loop_settings, policy, stamp = loopconfig.effective(settings, name, stored)
            arguments = vw_arguments(policy.arguments, loop_settings.exploration_percentage)
            loop = self.loops[name] = Loop(name, loop_settings, policy, Engine(arguments), arguments, stamp)
            loop.loading.acquire()
            try:
                stamp = self.models.stamp(name)
            except StoreUnavailable:
                stamp = None
            self._load_published(loop, stamp)
        self._keys = [
            (bytes.fromhex(key.sha256), name, key.role) for name, loop in settings.loops.items() for key in loop.keys
        ]
        self._refresher: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- keys ---------------------------------------------------------------------------------

    def authenticate(self, key: str | None, admin: bool = False, signals: bool = False, review: bool = False) -> Loop:
        """The loop a key belongs to; 401 for a missing or unknown key, 403 for a rank key on admin calls, for a
        signals key on anything but signals calls (``signals``: ingestion and entities; admin keys too) and for a
        review key on anything but review calls (``review``: triage items and the review pages; admin too)."""
        if not self.settings.auth:
            return self.loops[self.settings.default_loop]
        if not key:
            raise ApiError(401, "Unauthorized", "send the loop's key in Ocp-Apim-Subscription-Key")
        digest = bytes.fromhex(hash_key(key))
        found = None
        for stored, loop, role in self._keys:  # compare with every key: time does not depend on which matched
            if hmac.compare_digest(stored, digest):
                found = (loop, role)
        if found is None:
            raise ApiError(401, "Unauthorized", "the key is not valid for any loop")
        loop, role = found
        if signals:
            if role not in ("signals", "admin"):
                raise ApiError(403, "OperationNotAllowed", "this operation needs a signals or admin key")
        elif review:
            if role not in ("review", "admin"):
                raise ApiError(403, "OperationNotAllowed", "this operation needs a review or admin key")
        elif role == "signals":
            raise ApiError(403, "OperationNotAllowed", "a signals key may only send signals and read entities")
        elif role == "review":
            raise ApiError(403, "OperationNotAllowed", "a review key may only read and decide triage items")
        elif admin and role != "admin":
            raise ApiError(403, "OperationNotAllowed", "this operation needs the loop's admin key")
        return self.loops[loop]

    # -- published models ---------------------------------------------------------------------

    def stored_config(self, name: str) -> dict[str, Any] | None:
        return self.store.loop_config(name)

    def refresh(self, loop: Loop, now: bool = False) -> None:
        """Apply configuration changed through the API, and start loading a newly published model.

        With the process's refresher running (:meth:`start_refresher`, a serving worker) requests never look:
        the refresher does, every REFRESH_SECONDS. Without it (the Flask test client, the trainer's copy of
        the service) a request looks at most every REFRESH_SECONDS per loop. ``now``: look at once, whatever
        the time (after this process changed the configuration or the model). A look is one query of
        ``loop_config`` and one stat of the model pointer (on PostgreSQL, one query of both).
        Requests go on with the model in hand while a new one loads.
        """
        if now:
            with loop.refreshing:
                self._look(loop)
            return
        if self._refresher is not None or time.monotonic() - loop.checked_at < REFRESH_SECONDS:
            return
        # A request that finds another looking goes on with what is in hand: it may be a request served in the
        # poller (ranker.server.inline_worker), parked on the look's read while it holds the lock.
        if loop.refreshing.acquire(blocking=False):
            try:
                self._look(loop)
            finally:
                loop.refreshing.release()

    def _look(self, loop: Loop) -> None:
        """One look for the loop's new configuration and model (called holding ``loop.refreshing``)."""
        loop.checked_at = time.monotonic()
        row, model_stamp = self.store.look(loop.name, self.models)  # on PostgreSQL one round trip
        if (row and row["updated_at"]) != loop.config_stamp:
            try:
                settings, policy, stamp = loopconfig.effective(self.settings, loop.name, row)
                arguments = vw_arguments(policy.arguments, settings.exploration_percentage)
                engine = Engine(arguments) if arguments != loop.arguments else None
            except (ValueError, RuntimeError) as exc:  # keep serving with the configuration in hand
                log.error("loop %s: configuration of %s not applied: %s", loop.name, row and row["updated_at"], exc)
                loop.config_stamp = row and row["updated_at"]
            else:
                loop.settings, loop.policy, loop.config_stamp = settings, policy, stamp
                if engine is not None:  # a new policy starts from a fresh model until one is published
                    loop.arguments, loop.engine, loop.model_stamp = arguments, engine, None
                    release_memory()
                log.info("loop %s: configuration of %s applied", loop.name, loop.config_stamp)
        if model_stamp == loop.model_stamp or not loop.loading.acquire(blocking=False):
            return
        threading.Thread(target=self._load_published, args=(loop, model_stamp), daemon=True).start()

    def start_refresher(self) -> None:
        """Look for every loop's new configuration and model in a thread of this process, every REFRESH_SECONDS,
        so that no request waits for the look (a round trip on PostgreSQL, a GIL hand-off at least).

        A serving worker starts it after gunicorn forked it (a thread does not survive a fork) and stops it
        when it exits (:meth:`stop_refresher`). Starting it twice starts one thread.
        """
        if self._refresher is not None:
            return
        self._stopping.clear()
        self._refresher = threading.Thread(target=self._refresh_forever, name="ranker-refresh", daemon=True)
        self._refresher.start()

    def stop_refresher(self, timeout: float = 2.0) -> None:
        """Stop the refresher (a look in progress ends first); requests then look for themselves again."""
        thread = self._refresher
        if thread is None:
            return
        self._stopping.set()
        thread.join(timeout)
        self._refresher = None

    def _refresh_forever(self) -> None:
        failing: set[str] = set()  # loops whose last look failed: one log line per outage, not ten a second
        while not self._stopping.wait(REFRESH_SECONDS):
            for loop in self.loops.values():
                try:
                    with loop.refreshing:
                        self._look(loop)
                except Exception as exc:  # the refresher outlives any one look (the store may be unavailable)
                    if loop.name not in failing:
                        failing.add(loop.name)
                        log.error("loop %s: cannot look for a new configuration or model: %s", loop.name, exc)
                else:
                    if loop.name in failing:
                        failing.discard(loop.name)
                        log.info("loop %s: looking for a new configuration and model again", loop.name)

    def _load_published(self, loop: Loop, stamp: tuple[int, int] | None) -> None:
        """Swap in the published model the pointer names (called holding ``loop.loading``)."""
        try:
            current = self.models.current(loop.name)
            if current is not None and current[0] != loop.engine.version:
                version, path = current
                old = weakref.ref(loop.engine)
                loop.engine = Engine(loop.arguments, str(path), version)
                log.info("loop %s: serving model %s", loop.name, version)
                # The old engine is finished when the last request using it lets go of it, after one
                # prediction; then its memory can go back.
                deadline = time.monotonic() + RELEASE_WAIT_SECONDS
                while old() is not None and time.monotonic() < deadline:
                    time.sleep(0.005)
                release_memory()
        except (OSError, RuntimeError, ValueError, StoreUnavailable) as exc:  # keep serving the model in hand
            log.error("loop %s: cannot load the published model: %s", loop.name, exc)
        finally:
            loop.model_stamp = stamp
            loop.loading.release()

    # -- Rank ---------------------------------------------------------------------------------

    @staticmethod
    def _candidates(
        engine: Engine, settings: LoopSettings, request: RankRequest | MultiSlotRankRequest, multislot: bool
    ) -> tuple[list[str], dict[str, Any], list[tuple[str, dict[str, Any]]]]:
        """The request's action ids, merged context and ``(id, features)`` actions, once the loop's kind
        (single- or multi-slot) and its limits are checked."""
        check_kind(engine, multislot)
        if len(request.actions) > settings.max_actions:
            raise ApiError(
                400,
                "InvalidRankRequest",
                f"{len(request.actions)} actions exceed this loop's maximum of {settings.max_actions}",
                target="actions",
            )
        ids = [a.id for a in request.actions]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise ApiError(400, "InvalidRankRequest", f"action id {duplicate!r} appears twice", target="actions")
        context = dsjson.merge(request.contextFeatures, "contextFeatures")
        actions = [(a.id, dsjson.merge(a.features, f"actions[{i}].features")) for i, a in enumerate(request.actions)]
        return ids, context, actions

    def _begin(
        self, loop: Loop, request: RankRequest | MultiSlotRankRequest, multislot: bool, now: datetime | None
    ) -> Call:
        """Check the request against the loop as it is now and fix the call's inputs (see :class:`Call`)."""
        self.refresh(loop)
        settings, policy, engine = loop.settings, loop.policy, loop.engine
        ids, context, actions = self._candidates(engine, settings, request, multislot)
        now = now or utcnow()
        event_id = request.eventId or uuid.uuid4().hex
        deferred = request.deferActivation
        return Call(loop, settings, policy, engine, ids, context, actions, now, timestamp(now), event_id, deferred)

    def _enrich(self, call: Call) -> None:
        """The stored values of the entities the context names join it, before the rules, VW and the record."""
        if call.settings.entities:
            call.context, call.times = self.signals.enricher.enrich(
                call.settings.entities, call.context, call.now, call.settings.rules.test_freshness
            )

    def _log(self, loop: Loop, row: dict[str, Any]) -> None:
        if not self.store.record_decision({"loop": loop.name, **row}):
            event_id = row["event_id"]
            raise ApiError(409, "EventIdAlreadyExists", f"event id {event_id!r} was already ranked", target="eventId")

    def rank(self, loop: Loop, request: RankRequest, now: datetime | None = None) -> dict[str, Any]:
        """Choose an action, log the decision durably, and return Personalizer's RankResponse."""
        call = self._begin(loop, request, False, now)
        self._enrich(call)
        settings, engine, ids, actions = call.settings, call.engine, call.ids, call.actions
        context, now, stamp, event_id = call.context, call.now, call.stamp, call.event_id
        verdict = rules.apply(settings.rules, context, actions, set(request.excludedActions), now, call.times)
        explaining = settings.is_inference_explainability_enabled
        parsed = was_explored = None
        raised_by: dict[str, dict[str, Any]] = {}

        record = chosen_id = chosen_p = None
        order: list[int] = []
        ranking: list[dict[str, Any]] = []  # the answer's: eligible actions in ``order``, then excluded ones
        if verdict.eligible:
            eligible = actions if len(verdict.eligible) == len(actions) else [actions[i] for i in verdict.eligible]
            c_json = dsjson.context_json(context, eligible, settings.action_id_feature)
            if settings.learning_mode == "Apprentice":
                pmf = [1.0] + [0.0] * (len(eligible) - 1)  # the baseline: first eligible action
                chosen = 0
            else:
                try:
                    if explaining:
                        model_pmf, parsed = vwfeatures.predict_parsed(
                            engine, dsjson.predict_line(c_json, len(eligible)), vwfeatures.read_cb
                        )
                        if len(model_pmf) != len(eligible):
                            raise ValueError(f"VW read {len(model_pmf)} actions where {len(eligible)} were given")
                    else:
                        model_pmf = engine.predict(c_json, len(eligible))
                except (RuntimeError, ValueError) as exc:  # VW refused the features
                    raise unreadable(exc) from exc
                pmf = reweight(model_pmf, verdict.factors)
                if verdict.discovery:
                    ids_eligible = [action_id for action_id, _ in eligible]
                    floors, why = discovery.floors(self.exposures, loop.name, verdict, ids_eligible, now)
                    pmf, raised = discovery.floor(pmf, floors)
                    raised_by = {ids_eligible[i]: why[i] for i in sorted(raised)}
                chosen = sample(pmf, event_id)
                was_explored = explain.explored(model_pmf, chosen)
            # by probability, highest first, ties in request order (a reversed sort keeps equal keys in order)
            others = [i for i in range(len(eligible)) if i != chosen]
            order = [chosen] + sorted(others, key=pmf.__getitem__, reverse=True)
            chosen_id, chosen_p = eligible[chosen][0], pmf[chosen]
            record = dsjson.decision_line(event_id, stamp, c_json, order, pmf)
            ranking = [{"id": eligible[i][0], "probability": pmf[i]} for i in order]

        row = call.row(
            record=record,
            reward_action_id=chosen_id,
            probability=chosen_p,
            explanation=_NO_RULES
            if not (verdict.excluded or verdict.reweighted or raised_by)
            else json.dumps(explain.logged(verdict, raised_by)),
            explored=None if was_explored is None else int(was_explored),
        )
        self._log(loop, row)

        if verdict.excluded:
            ranking += [{"id": i, "probability": 0.0} for i in ids if i in verdict.excluded]
        answer = {"eventId": event_id, "rewardActionId": chosen_id, "ranking": ranking}
        if explaining:
            answer.update(explain.logged(verdict, raised_by, was_explored, answer=True))
            if parsed is not None:
                answer["inferenceExplanation"] = explain.rank_explanation(
                    vwfeatures.model_of(engine),
                    parsed,
                    context,
                    [actions[i] for i in verdict.eligible],
                    order,
                    settings.action_id_feature,
                    self.settings.explanation_features,
                    raised_by,
                )
        return answer

    def rank_multislot(self, loop: Loop, request: MultiSlotRankRequest, now: datetime | None = None) -> dict[str, Any]:
        """Fill the request's slots in order, each with a different action, log the decision durably, and
        return Personalizer's MultiSlotRankResponse.

        Per slot, the loop's rules apply to the context with the slot's features added (a slot feature wins
        over a context feature of the same name), then the slot's ``excludedActions``; actions that earlier
        slots took are gone. VW's CCB model gives the PMF over what is left, conditioned on the earlier
        slots' actions; priority factors reweight it, the slot's discovery floors are mixed in, and the action
        is drawn with the event id's uniform number for the slot. In Apprentice mode a slot gets its
        baselineAction, or when the rules forbid it there or an earlier slot took it, the first action left. A
        slot with no action left gets ``rewardActionId`` null.
        """
        call = self._begin(loop, request, True, now)
        settings, engine, ids, actions = call.settings, call.engine, call.ids, call.actions
        index = {action_id: i for i, action_id in enumerate(ids)}
        slot_ids = [slot.id for slot in request.slots]
        if len(set(slot_ids)) != len(slot_ids):
            duplicate = next(i for i in slot_ids if slot_ids.count(i) > 1)
            raise ApiError(400, "InvalidRankRequest", f"slot id {duplicate!r} appears twice", target="slots")
        baselines: list[int] = []
        for k, slot in enumerate(request.slots):
            baseline = slot.baselineAction
            wrong = (
                "is not one of the actions"
                if baseline not in index
                else "is in its excludedActions"
                if baseline in slot.excludedActions
                else "is another slot's baseline too"
                if index[baseline] in baselines
                else None
            )
            if wrong:
                message = f"slot {slot.id!r}: baselineAction {baseline!r} {wrong}"
                raise ApiError(400, "InvalidRankRequest", message, target=f"slots.{k}.baselineAction")
            baselines.append(index[slot.baselineAction])
        slot_features = [dsjson.merge(slot.features, f"slots[{k}].features") for k, slot in enumerate(request.slots)]
        self._enrich(call)
        context, now, stamp, event_id = call.context, call.now, call.stamp, call.event_id
        verdicts = [
            rules.apply(settings.rules, {**context, **features}, actions, set(slot.excludedActions), now, call.times)
            for slot, features in zip(request.slots, slot_features, strict=True)
        ]
        offered, slots = slot_options(slot_ids, slot_features, verdicts, baselines)
        c_json = dsjson.context_json(context, [actions[i] for i in offered], settings.action_id_feature)

        explaining = settings.is_inference_explainability_enabled
        predicted: list[tuple[list[dict[int, float]], vwfeatures.Parsed | None]] = []  # per filled slot

        def predict(c: str) -> list[dict[int, float]]:  # explaining: each slot's line, parsed for its terms
            try:
                per_slot, parsed = vwfeatures.predict_parsed(engine, c, lambda e: vwfeatures.read_ccb(e, len(offered)))
            except (RuntimeError, ValueError) as exc:  # VW refused the features
                raise unreadable(exc) from exc
            predicted.append((per_slot, parsed))
            return per_slot

        floors = discovery.slot_floors(self.exposures, loop.name, verdicts, ids, offered, now)
        if settings.learning_mode == "Apprentice" or explaining:
            filling = choose_slots(
                event_id, c_json, slots, None if settings.learning_mode == "Apprentice" else predict, floors
            )
        else:  # VW parses the context and the actions once for all the slots
            filling = fill_slots(engine, event_id, c_json, slots, floors, predicted)
        answers = [
            {"id": slot.id, "rewardActionId": None, "probability": None}
            if chosen is None
            else {"id": slot.id, "rewardActionId": ids[offered[chosen[0]]], "probability": chosen[1]}
            for slot, chosen in zip(request.slots, filling.chosen, strict=True)
        ]
        record = None
        if filling.slots:
            record = record_line(event_id, stamp, c_json, filling)
        raised_by: dict[str, dict[str, Any]] = {}  # per slot, the actions a discovery floor raised
        explanation = {}
        for slot_id, verdict, up in zip(slot_ids, verdicts, filling.raised, strict=True):
            raised_by[slot_id] = {ids[offered[m]]: rule for m, rule in up.items()}
            explanation[slot_id] = explain.logged(verdict, raised_by[slot_id])
        self._log(
            loop,
            call.row(
                record=record,
                reward_action_id=None,
                probability=None,
                explanation=json.dumps(
                    {"slots": explanation, "explored": dict(explain.slots_explored(predicted, filling))}
                ),
                slots=json.dumps(answers),
            ),
        )
        answer = {
            "eventId": event_id,
            "slots": [{"id": a["id"], "rewardActionId": a["rewardActionId"]} for a in answers],
        }
        if explaining:
            answer["rules"] = explanation
            if predicted and predicted[0][1] is not None:
                answer["inferenceExplanation"] = explain.slots_explanation(
                    vwfeatures.model_of(engine),
                    predicted,
                    filling,
                    context,
                    [actions[i] for i in offered],
                    settings.action_id_feature,
                    self.settings.explanation_features,
                    raised_by,
                )
        return answer

    # -- Reward and Activate ------------------------------------------------------------------

    def reward(self, loop: Loop, event_id: str, value: float) -> None:
        self.refresh(loop)  # the loop's kind is the one its configuration has now
        check_kind(loop.engine, multislot=False)
        if not self.store.add_reward(loop.name, event_id, value, timestamp(utcnow())):
            if self.store.decision(loop.name, event_id) is not None:  # ranked before the loop's policy changed kind
                raise ApiError(
                    400, "InvalidRewardRequest", "the event was ranked by the multi-slot API; reward it there"
                )
            raise ApiError(404, "ResourceNotFound", f"no decision with event id {event_id!r} in this loop")

    def reward_slots(self, loop: Loop, event_id: str, values: list[tuple[str, float]]) -> None:
        """Keep the rewards of a multi-slot decision's slots: all, or none when one is wrong."""
        self.refresh(loop)
        check_kind(loop.engine, multislot=True)
        slot_ids = [slot_id for slot_id, _ in values]
        if len(set(slot_ids)) != len(slot_ids):
            duplicate = next(i for i in slot_ids if slot_ids.count(i) > 1)
            raise ApiError(400, "InvalidRewardRequest", f"slot {duplicate!r} is rewarded twice", target="reward")
        try:
            self.store.add_slot_rewards(loop.name, event_id, values, timestamp(utcnow()))
        except LookupError as exc:
            raise ApiError(404, "ResourceNotFound", f"no decision with event id {event_id!r} in this loop") from exc
        except ValueError as exc:
            raise ApiError(400, "InvalidRewardRequest", str(exc), target="reward") from exc

    def activate(self, loop: Loop, event_id: str, multislot: bool = False) -> None:
        self.refresh(loop)
        check_kind(loop.engine, multislot)
        if not self.store.activate(loop.name, event_id, timestamp(utcnow())):
            raise ApiError(404, "InvalidEventIdToActivate", f"no decision with event id {event_id!r} in this loop")
