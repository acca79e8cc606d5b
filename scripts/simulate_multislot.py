"""Multi-slot learning quality: the real HTTP service against in-process VW CCB, on a simulated B2B dashboard.

A B2B dashboard fills three places, ``hero``, ``side`` and ``footer``, from 20 modules (cards, training
modules, next-best actions for a Customer Success manager) for a user of an account: account segment
(fintech, healthcare, retail, manufacturing) × plan × user role (admin, analyst, cs-manager, executive) ×
time of day × days since the contract renewed. Each slot carries its position as a feature
(``{"slot": {"position": "hero"}}``). Four entitlement rules keep modules where they may be shown:
enterprise modules need ``account.plan = enterprise``, the expansion upsell needs
``contract.daysSinceRenewal >= 30``, the admin console course needs ``user.role = admin``, and the wide
modules fit only the hero slot (``slot.position = hero``: a rule on a slot feature). A priority rule boosts
the renewal review 1.5× once the contract is 60 days old.

Rewards are Bernoulli with position effects: a module in slot k is clicked with probability
``relevance(context, module) × position factor[k]`` (1.0, 0.6, 0.3), where relevance grows with how well the
module suits the user's role (the strongest signal), the account's segment and the time of day (0.03-0.66).

The stream is generated once from ``--seed``: the contexts, their event ids, and one uniform number per
(event, slot); the module chosen for slot k of event t earns ``u[t, k] < p``. Three learners see that same
stream:

- the service: this script starts ``python -m ranker serve`` (gunicorn workers and the trainer) on a free
  127.0.0.1 port with a temporary data folder and one loop (policy ``multislot``, rewardWaitTime PT1S,
  modelExportFrequency PT1S, the rules above), and ``--threads`` clients send Personalizer's multi-slot Rank
  and Reward calls (every slot's reward right after its Rank), at most ``--rate`` events per second;
- in-process VW with the same arguments (``ranker.serving.engine.vw_arguments``), the same rules
  (``ranker.core.rules.apply`` per slot, on the context with the slot's features), the same records
  (``ranker.core.dsjson``), the same per-slot PMFs (VW's, each slot conditioned on the earlier slots pinned to
  their actions with ``_inc``, as ``Service.rank_multislot`` asks) and the same seeded sampling
  (``ranker.serving.engine.sample`` on ``"{event id}\\n{slot index}"``), learning each event as soon as it happened
  (``ranker.core.dsjson.labeled_slots``, as the trainer does);
- a non-learning baseline: per slot, uniform over the modules left, drawn from the same per-slot number.

The service learns an event only once its reward window and the trainer's commit grace have passed and the
next model is published and loaded, so it serves with a model a few seconds behind the in-process one; the
report shows that lag, and what in-process VW earns when it learns that many events late. It also fills
again, with this script's code and the model that served them, the decisions whose model is still stored
(the untrained one and the last published versions): each must get the modules and probabilities the
service logged, or the comparison would not be like for like.

It prints the mean reward per slot of each learner over the last ``--last`` events (default: the last
quarter), the service / in-process ratio, and writes their moving averages as a PNG (needs matplotlib;
without it the PNG is skipped).

Example:
    python scripts/simulate_multislot.py --events 20000 --threads 4 --rate 100 --png multislot-learning.png
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import secrets
import sqlite3
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
import vowpalwabbit

from ranker.core import dsjson, rules
from ranker.core.settings import hash_key
from ranker.harness import Server
from ranker.serving.engine import Engine, slot_scores_of, uniform, vw_arguments
from ranker.serving.slots import choose_slots, slot_options
from ranker.store import models


def _load_b2b() -> Any:
    """scripts/simulate_b2b.py, for its server runner, serving report and plot (loaded once)."""
    module = sys.modules.get("simulate_b2b")
    if module is None:
        spec = importlib.util.spec_from_file_location("simulate_b2b", Path(__file__).with_name("simulate_b2b.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return module


b2b = _load_b2b()

LOOP = "dashboard"
RANK_PATH = "/personalizer/v1.0/multislot/rank"
REWARD_PATH = "/personalizer/v1.0/multislot/events/{}/reward"

SLOTS = ("hero", "side", "footer")
POSITION_FACTORS = (1.0, 0.6, 0.3)  # click probability = relevance × the slot's factor
BASELINES = ("card-usage-trends", "training-dashboards-101", "nba-health-check-call")  # the dashboard's fixed layout
SLOT_FEATURES = [[{"slot": {"position": name}}] for name in SLOTS]
REQUEST_SLOTS = [
    {"id": name, "features": features, "baselineAction": baseline}
    for name, features, baseline in zip(SLOTS, SLOT_FEATURES, BASELINES, strict=True)
]


@dataclass(frozen=True)
class Module:
    id: str
    kind: str  # card, training, nba (next-best action)
    topic: str
    tier: str  # standard or enterprise
    format: str  # compact, or wide (hero slot only)
    roles: tuple[str, ...]  # who it suits (strongest signal)
    segments: tuple[str, ...] = ()  # industries it suits
    dayparts: tuple[str, ...] = ()  # when it lands

    def features(self) -> list[dict[str, Any]]:
        return [{"item": {"kind": self.kind, "topic": self.topic, "tier": self.tier, "format": self.format}}]


# id, kind, topic, tier, format, and who it suits: roles, segments, time of day ("-": none)
_CATALOGUE = """
card-usage-trends        card     usage          standard   compact analyst              retail             morning
card-revenue-forecast    card     finance        standard   wide    executive            fintech            morning
card-compliance-audit    card     compliance     enterprise compact admin                healthcare,fintech afternoon
card-api-health          card     engineering    enterprise compact admin                manufacturing      evening
card-seat-utilization    card     licensing      standard   compact admin                retail             afternoon
card-churn-risk          card     retention      standard   wide    cs-manager           -                  morning
card-pipeline-health     card     sales          standard   compact executive            manufacturing      afternoon
card-support-backlog     card     support        standard   compact cs-manager,admin     healthcare         evening
training-sql-reports     training analytics      standard   compact analyst              manufacturing      afternoon
training-admin-console   training administration standard   wide    admin                -                  morning
training-exec-insights   training strategy       standard   wide    executive            -                  evening
training-hipaa-workflows training compliance     standard   compact analyst              healthcare         evening
training-dashboards-101  training analytics      standard   compact analyst,cs-manager   retail,fintech     morning
training-sso-setup       training security       enterprise compact admin                fintech            afternoon
nba-schedule-qbr         nba      relationship   standard   compact cs-manager,executive manufacturing      morning
nba-health-check-call    nba      retention      standard   compact cs-manager           healthcare,retail  afternoon
nba-expansion-upsell     nba      expansion      standard   compact cs-manager           fintech            evening
nba-exec-sponsor-intro   nba      relationship   enterprise compact executive            healthcare         morning
nba-renewal-review       nba      renewal        standard   wide    executive,cs-manager retail             afternoon
nba-adoption-workshop    nba      adoption       standard   compact analyst              -                  evening
"""


def _catalogue(text: str) -> tuple[Module, ...]:
    def names(cell: str) -> tuple[str, ...]:
        return () if cell == "-" else tuple(cell.split(","))

    rows = [line.split() for line in text.strip().splitlines()]
    return tuple(
        Module(i, kind, topic, tier, fmt, names(r), names(s), names(d)) for i, kind, topic, tier, fmt, r, s, d in rows
    )


MODULES = _catalogue(_CATALOGUE)
REQUEST_ACTIONS = [{"id": m.id, "features": m.features()} for m in MODULES]
ACTIONS = [(a["id"], dsjson.merge(a["features"], "features")) for a in REQUEST_ACTIONS]  # as the service merges them
BASELINE_INDICES = [[m.id for m in MODULES].index(b) for b in BASELINES]

RULES_TOML = f"""
[[loops.{LOOP}.rules.entitlements]]
name = "enterprise-plan"
actions = {{ features = [{{ path = "item.tier", equals = "enterprise" }}] }}
requires = [{{ path = "account.plan", equals = "enterprise" }}]

[[loops.{LOOP}.rules.entitlements]]
name = "upsell-after-renewal"
actions = {{ ids = ["nba-expansion-upsell"] }}
requires = [{{ path = "contract.daysSinceRenewal", gte = 30 }}]

[[loops.{LOOP}.rules.entitlements]]
name = "admins-only"
actions = {{ ids = ["training-admin-console"] }}
requires = [{{ path = "user.role", equals = "admin" }}]

[[loops.{LOOP}.rules.entitlements]]
name = "wide-in-hero"
actions = {{ features = [{{ path = "item.format", equals = "wide" }}] }}
requires = [{{ path = "slot.position", equals = "hero" }}]

[[loops.{LOOP}.rules.priority]]
name = "renewal-season"
actions = {{ ids = ["nba-renewal-review"] }}
factor = 1.5
when = [{{ path = "contract.daysSinceRenewal", gte = 60 }}]
"""


def config_toml(key: str | None = None, policy: str = "multislot") -> str:
    """The server's TOML: one multi-slot loop with 1 s reward wait and model export, the rules, a rank key."""
    text = (
        f'[loops.{LOOP}]\npolicy = "{policy}"\nrewardWaitTime = "PT1S"\nmodelExportFrequency = "PT1S"\n'
        "explorationPercentage = 0.2\n"
    )
    if key is not None:
        text += f'keys = [{{ role = "rank", sha256 = "{hash_key(key)}" }}]\n'
    return text + RULES_TOML


# -- the environment ----------------------------------------------------------------------------


def relevance(context: dict[str, Any]) -> dict[str, float]:
    """Per module, how likely the user clicks it in the hero slot: role 0.34, segment 0.17, time of day 0.12."""
    segment, role = context["account"]["segment"], context["user"]["role"]
    daypart = context["time"]["daypart"]
    return {
        m.id: 0.03 + 0.17 * (2.0 * (role in m.roles) + 1.0 * (segment in m.segments) + 0.7 * (daypart in m.dayparts))
        for m in MODULES
    }


@dataclass
class Event:
    event_id: str
    features: list[dict[str, Any]]  # contextFeatures as sent
    context: dict[str, Any]  # merged, as the service merges them
    u: list[float]  # the reward draw of each slot
    verdicts: list[rules.Verdict]  # what the rules allow in each slot
    relevance: dict[str, float]  # click probability of each module in the hero slot

    def reward(self, k: int, module_id: str | None) -> float:
        """Whether the user clicks ``module_id`` in slot ``k`` (0 for an empty slot)."""
        return float(module_id is not None and self.u[k] < self.relevance[module_id] * POSITION_FACTORS[k])


def make_stream(events: int, seed: int, loop_rules: rules.Rules) -> list[Event]:
    """The contexts, event ids and reward draws of one run, with what the rules allow in each slot."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    stream = []
    for t in range(events):
        features = b2b.draw_context(rng)
        context = dsjson.merge(features, "contextFeatures")
        verdicts = [
            rules.apply(loop_rules, {**context, **dsjson.merge(slot, "features")}, ACTIONS, set(), now)
            for slot in SLOT_FEATURES
        ]
        stream.append(
            Event(
                event_id=f"m{seed}-{t:06d}",
                features=features,
                context=context,
                u=[float(x) for x in rng.random(len(SLOTS))],
                verdicts=verdicts,
                relevance=relevance(context),
            )
        )
    return stream


def oracle(stream: list[Event], exploration: float) -> float:
    """Expected mean slot reward of a policy that knows the relevance and, per slot in order, takes the best
    module left with probability 1 - exploration + exploration / n, and each other one with exploration / n."""

    def value(event: Event, k: int, taken: frozenset[int]) -> float:
        if k == len(SLOTS):
            return 0.0
        left = [i for i in event.verdicts[k].eligible if i not in taken]
        if not left:
            return value(event, k + 1, taken)
        best = max(left, key=lambda i: event.relevance[MODULES[i].id])
        total = 0.0
        for i in left:
            p = exploration / len(left) + (1 - exploration) * (i == best)
            total += p * (event.relevance[MODULES[i].id] * POSITION_FACTORS[k] + value(event, k + 1, taken | {i}))
        return total

    known: dict[tuple[Any, ...], float] = {}  # contexts repeat: same verdicts and relevance, same value
    values = []
    for event in stream:
        key = (*(tuple(v.eligible) for v in event.verdicts), *event.relevance.values())
        if key not in known:
            known[key] = value(event, 0, frozenset()) / len(SLOTS)
        values.append(known[key])
    return float(np.mean(values))


# -- filling the slots as the service does ------------------------------------------------------


@dataclass
class Filling:
    """What the service decides for one event: the record and each slot's module."""

    record: str | None
    chosen: list[int | None]  # per slot: index into MODULES, None when no module was left
    probabilities: list[float | None]


def fill_slots(event: Event, id_feature: bool, predict_slots: Callable[[str], list[dict[int, float]]]) -> Filling:
    """The slots of one event filled as ``Service.rank_multislot`` fills them (Online mode): ``_multi`` holds
    the modules some slot may take, in request order, and :func:`choose_slots` fills the slots."""
    offered, slots = slot_options(
        [slot["id"] for slot in REQUEST_SLOTS],
        [dsjson.merge(slot["features"], f"slots[{k}].features") for k, slot in enumerate(REQUEST_SLOTS)],
        event.verdicts,
        BASELINE_INDICES,
    )
    c_json = dsjson.context_json(event.context, [ACTIONS[i] for i in offered], id_feature)
    filling = choose_slots(event.event_id, c_json, slots, predict_slots)
    record = None
    if filling.slots:
        record = dsjson.multislot_line(
            event.event_id, "", dsjson.with_slots(c_json, filling.slots), filling.outcomes, filling.baselines
        )
    return Filling(
        record,
        [None if c is None else offered[c[0]] for c in filling.chosen],
        [None if c is None else c[1] for c in filling.chosen],
    )


class Learner:
    """In-process VW CCB: one ``--dsjson`` workspace that learns the records and predicts the slots.

    The service predicts with a ``--json`` workspace on the ``c`` object alone; VW's DSJSON parser needs
    ``_outcomes`` to read a CCB line (without them it predicts nothing or crashes), so a prediction here
    sends the same ``c`` with an unlabeled outcome per slot naming the actions the slot may take. VW's
    scores for a slot do not depend on those outcomes, only on ``c``.
    """

    def __init__(self, arguments: str):
        self.ws = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet")
        self.empty_predictions = 0  # predictions without a score for every slot (the service draws uniformly)

    def predict_slots(self, c_json: str) -> list[dict[int, float]]:
        slots = json.loads(c_json)["_slots"]
        outcomes = [{"_id": s["_id"], "_a": s["_inc"], "_p": [1.0 / len(s["_inc"])] * len(s["_inc"])} for s in slots]
        scores = slot_scores_of(self.ws, dsjson.multislot_line("", "", c_json, outcomes, []))
        self.empty_predictions += len(scores) != len(slots)
        return scores

    def learn(self, line: str) -> None:
        examples = self.ws.parse(line)
        self.ws.learn(examples)
        self.ws.finish_example(examples)

    def close(self) -> None:
        self.ws.finish()


@dataclass
class Rewards:
    """Per event and slot: the reward earned (NaN until known), and the module chosen (-1: none)."""

    slots: np.ndarray  # events × slots
    chosen: np.ndarray  # events × slots

    @classmethod
    def empty(cls, events: int) -> Rewards:
        return cls(np.full((events, len(SLOTS)), np.nan), np.full((events, len(SLOTS)), -1, dtype=int))

    @property
    def per_event(self) -> np.ndarray:
        """Each event's mean slot reward (what the trainer learns as the event's reward)."""
        return self.slots.mean(axis=1)


def run_in_process(stream: list[Event], arguments: str, id_feature: bool, delay: int = 0) -> tuple[Rewards, int]:
    """VW in this process with the service's rules, records, per-slot PMFs and sampling.

    Each event is learned right after it (``delay`` = 0), or once ``delay`` more events were served, which
    imitates a service whose model is that many events behind. Returns the rewards and how many slot
    predictions VW left empty (0 expected).
    """
    learner = Learner(arguments)
    rewards = Rewards.empty(len(stream))
    waiting: deque[str] = deque()
    try:
        for t, event in enumerate(stream):
            filling = fill_slots(event, id_feature, learner.predict_slots)
            for k, chosen in enumerate(filling.chosen):
                rewards.chosen[t, k] = -1 if chosen is None else chosen
                rewards.slots[t, k] = event.reward(k, None if chosen is None else MODULES[chosen].id)
            if filling.record is not None:
                values = [rewards.slots[t, k] for k, chosen in enumerate(filling.chosen) if chosen is not None]
                waiting.append(dsjson.labeled_slots(filling.record, values))
            while len(waiting) > delay:
                learner.learn(waiting.popleft())
    finally:
        learner.close()
    return rewards, learner.empty_predictions


def run_random(stream: list[Event]) -> Rewards:
    """Per slot, uniform over the modules left, drawn with the slot's number: what no learning earns."""
    rewards = Rewards.empty(len(stream))
    for t, event in enumerate(stream):
        taken: set[int] = set()
        for k, verdict in enumerate(event.verdicts):
            left = [i for i in verdict.eligible if i not in taken]
            if not left:
                rewards.slots[t, k] = 0.0
                continue
            chosen = left[int(uniform(f"{event.event_id}\n{k}") * len(left))]
            taken.add(chosen)
            rewards.chosen[t, k] = chosen
            rewards.slots[t, k] = event.reward(k, MODULES[chosen].id)
    return rewards


# -- the service --------------------------------------------------------------------------------


@dataclass
class ServiceRun:
    rewards: Rewards
    seconds: float
    violations: int = 0  # a slot's rewardActionId the rules forbid there, or repeated across slots (must stay 0)
    errors: list[str] = field(default_factory=list)


def drive(url: str, stream: list[Event], threads: int = 4, rate: float = 0.0, key: str | None = None) -> ServiceRun:
    """Send each event's multi-slot Rank, then its slots' Reward, from ``threads`` clients, at most ``rate``
    events/s (0: no cap)."""
    run = ServiceRun(rewards=Rewards.empty(len(stream)), seconds=0.0)
    index = {m.id: i for i, m in enumerate(MODULES)}
    lock = threading.Lock()

    def send(session: requests.Session, t: int) -> None:
        event = stream[t]
        body = {
            "contextFeatures": event.features,
            "actions": REQUEST_ACTIONS,
            "slots": REQUEST_SLOTS,
            "eventId": event.event_id,
        }
        answer = b2b.post(session, url + RANK_PATH, body, 201, f"Rank {event.event_id}").json()
        answers = {slot["id"]: slot["rewardActionId"] for slot in answer["slots"]}
        chosen = [answers[slot_id] for slot_id in SLOTS]
        allowed = [
            c is None or index.get(c) in verdict.eligible for c, verdict in zip(chosen, event.verdicts, strict=True)
        ]
        filled = [c for c in chosen if c is not None]
        if not all(allowed) or len(set(filled)) != len(filled):
            with lock:
                run.violations += 1
        values = [event.reward(k, c if allowed[k] else None) for k, c in enumerate(chosen)]
        rewards = [
            {"slotId": slot_id, "value": value}
            for slot_id, value, c in zip(SLOTS, values, chosen, strict=True)
            if c is not None
        ]
        if rewards:
            b2b.post(
                session, url + REWARD_PATH.format(event.event_id), {"reward": rewards}, 204, f"Reward {event.event_id}"
            )
        run.rewards.slots[t] = values
        run.rewards.chosen[t] = [index.get(c, -1) if c is not None else -1 for c in chosen]

    run.seconds, run.errors = b2b.clients(len(stream), send, threads, rate, key)
    return run


def replay_served(data_dir: Path, stream: list[Event], arguments: str, id_feature: bool) -> tuple[int, int]:
    """Fill again, with :func:`fill_slots` and the model that served them, the decisions whose model is still
    stored (the untrained one and the last published versions); returns (decisions replayed, decisions whose
    modules or probabilities differ from the logged ones). A difference means this script does not mirror
    ``Service.rank_multislot``.
    """
    conn = sqlite3.connect(data_dir / "ranker.db")
    try:
        rows = conn.execute("SELECT event_id, model_version, slots FROM decisions").fetchall()
    finally:
        conn.close()
    by_id = {event.event_id: event for event in stream}
    paths = {version: models.loop_dir(data_dir, LOOP) / f"{version}.vw" for version in models.versions(data_dir, LOOP)}
    index = {m.id: i for i, m in enumerate(MODULES)}
    replayed = differ = 0
    engines: dict[str, Engine] = {}
    try:
        for event_id, version, slots in rows:
            if version != "0" and version not in paths:
                continue
            if version not in engines:
                path = None if version == "0" else str(paths[version])
                engines[version] = Engine(arguments, path, version)
            filling = fill_slots(by_id[event_id], id_feature, engines[version].predict_slots)
            logged = json.loads(slots)
            chosen = [None if s["rewardActionId"] is None else index[s["rewardActionId"]] for s in logged]
            probabilities = [s["probability"] for s in logged]
            replayed += 1
            differ += (chosen, probabilities) != (filling.chosen, filling.probabilities)
    finally:
        for engine in engines.values():
            engine.close()
    return replayed, differ


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Per-event, per-slot rewards of the three learners on one stream, and how the service's models served."""

    stream: list[Event]
    service: ServiceRun
    in_process: Rewards
    random: Rewards
    served: dict[str, Any]
    arguments: str
    id_feature: bool
    exploration: float
    empty_predictions: int
    replayed: tuple[int, int]  # decisions filled again with the model that served them, and how many differ


def compare(
    events: int,
    seed: int = 1,
    threads: int = 4,
    rate: float = 100.0,
    port: int = 0,
    policy: str = "multislot",
) -> Comparison:
    """Generate the stream, run in-process VW and the random baseline on it, then drive a fresh server."""
    key = secrets.token_hex(16)
    config = config_toml(key, policy)
    settings = b2b.load_config(config)
    loop = settings.loops[LOOP]
    arguments = vw_arguments(settings.policy(LOOP).arguments, loop.exploration_percentage)
    stream = make_stream(events, seed, loop.rules)
    in_process, empty = run_in_process(stream, arguments, loop.action_id_feature)
    baseline = run_random(stream)
    with tempfile.TemporaryDirectory(prefix="ranker-multislot-") as folder:
        with Server(Path(folder), config, port=port) as server:
            service = drive(server.url, stream, threads, rate, key)
        served = b2b.serving_report(Path(folder), stream)
        # once the server stopped: the trainer no longer prunes the model versions being replayed
        replayed = replay_served(Path(folder), stream, arguments, loop.action_id_feature)
    if service.errors:
        raise RuntimeError(f"the service failed: {service.errors[0]}")
    return Comparison(
        stream,
        service,
        in_process,
        baseline,
        served,
        arguments,
        loop.action_id_feature,
        loop.exploration_percentage,
        empty,
        replayed,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=4, help="concurrent clients")
    parser.add_argument("--rate", type=float, default=100.0, help="most events per second sent (0: no cap)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--last", type=int, default=0, help="events at the end that the means cover (0: a quarter)")
    parser.add_argument("--png", type=Path, default=Path("multislot-learning.png"), help="reward curves")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--policy", default="multislot", help="policy name in policies/ (with --ccb_explore_adf)")
    args = parser.parse_args(argv)

    began = time.monotonic()
    try:
        run = compare(args.events, args.seed, args.threads, args.rate, args.port, args.policy)
    except RuntimeError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    stream, service, served = run.stream, run.service, run.served
    last = min(args.last or args.events // 4, args.events)
    lag_events, lag_seconds = served["lag_events"], served["lag_seconds"]
    lag = int(np.median(lag_events)) if len(lag_events) else 0
    lagged, _ = run_in_process(stream, run.arguments, run.id_feature, delay=lag)

    def tail(rewards: Rewards) -> np.ndarray:
        """Mean reward per slot over the last events, then their mean."""
        per_slot = rewards.slots[-last:].mean(axis=0)
        return np.append(per_slot, per_slot.mean())

    s, v, r, w = tail(service.rewards), tail(run.in_process), tail(run.random), tail(lagged)
    ceiling = oracle(stream[-last:], run.exploration)
    window = max(100, args.events // 40)
    curves = {
        "service (HTTP, trainer)": service.rewards.per_event,
        "in-process VW CCB": run.in_process.per_event,
        "uniform random": run.random.per_event,
    }
    title = f"Multi-slot dashboard, {args.events} events, seed {args.seed}: moving average of {window} events"
    png = args.png if b2b.write_png(args.png, curves, window, title) else None

    print(f"{args.events} events, seed {args.seed}; VW arguments: {run.arguments}")
    print(
        f"{len(MODULES)} modules, {len(SLOTS)} slots "
        f"({', '.join(f'{n} ×{f}' for n, f in zip(SLOTS, POSITION_FACTORS, strict=True))});"
        f" contexts: {len({str(e.features[:3]) for e in stream})} of segment × plan × role × time of day"
    )
    print(
        f"service: {service.seconds:.1f} s for {args.events} events ({args.events / service.seconds:.0f}/s) "
        f"from {args.threads} clients, rate cap {args.rate or 'none'}/s; rule violations: {service.violations}"
    )
    print(
        f"models published: {len(served['published'])}; "
        f"versions that served decisions: {len(served['served'])} (with the initial untrained one)"
    )
    if len(lag_events):
        print(
            f"served model behind the log: median {lag} events / {np.median(lag_seconds):.2f} s, "
            f"p90 {np.percentile(lag_events, 90):.0f} events / {np.percentile(lag_seconds, 90):.2f} s"
        )
    print(
        f"decisions filled again by this script with the model that served them: {run.replayed[0]}, "
        f"different from the service's: {run.replayed[1]}"
    )
    if run.empty_predictions:
        print(f"in-process slot predictions VW left empty (drawn uniformly): {run.empty_predictions}")
    rows = [
        ("service (HTTP, trainer, published models)", s),
        ("in-process VW CCB (learns each event at once)", v),
        ("uniform random over the modules left", r),
        (f"in-process VW CCB learning {lag} events late", w),
    ]
    print(f"mean reward over the last {last} events:     " + "  ".join(f"{n:>7}" for n in (*SLOTS, "mean")))
    for label, values in rows:
        print(f"  {label:<47} " + "  ".join(f"{x:7.4f}" for x in values))
    ratios = "  ".join(f"{a / b:7.4f}" for a, b in zip(s, v, strict=True))
    print(f"  {'ratio service / in-process (target >= 0.95)':<47} {ratios}")
    print(f"  {'epsilon-greedy oracle (knows the relevance)':<47} {'':>7}  {'':>7}  {'':>7}  {ceiling:7.4f}")
    print(f"reward curves: {png}" if png else "reward curves: not written (needs matplotlib)")
    print(f"total time: {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
