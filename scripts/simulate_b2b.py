"""Learning quality: the real HTTP service against in-process VW, on a simulated B2B SaaS product.

A B2B product ranks 12 actions (dashboard cards, training modules, next-best actions for a Customer
Success manager) for a user of an account: account segment (fintech, healthcare, retail, manufacturing) ×
plan × user role (admin, analyst, cs-manager, executive) × time of day × days since the contract renewed.
Three entitlement rules keep actions away from accounts that may not see them: enterprise actions need
``account.plan = enterprise``, the expansion upsell needs ``contract.daysSinceRenewal >= 30``, the admin
console course needs ``user.role = admin``. Rewards are Bernoulli with known probabilities: in each
context one eligible action is clicked with probability 0.6 and the others with 0.05-0.25.

The stream is generated once from ``--seed``: the contexts, their event ids, and one uniform number per
event; an action chosen for event t earns ``u[t] < p(context[t], action)``. Three learners see that same
stream:

- the service: this script starts ``python -m ranker serve`` (gunicorn workers and the trainer) on a free
  127.0.0.1 port with a temporary data folder and one loop (rewardWaitTime PT1S, modelExportFrequency
  PT1S, the default policy, the rules above), and ``--threads`` clients send Personalizer's Rank and
  Reward calls (the reward right after its Rank), at most ``--rate`` events per second;
- in-process VW with the same arguments (``ranker.serving.engine.vw_arguments``), the same rules
  (``ranker.core.rules.apply`` with the loop's parsed rules), the same records (``ranker.core.dsjson``) and the same
  seeded sampling (``ranker.serving.engine.sample`` on the event id), learning each event as soon as it happened;
- a non-learning baseline: uniform over the eligible actions, drawn from the event id's uniform number.

The service learns an event only once its reward window and the trainer's commit grace have passed and
the next model is published and loaded, so it serves with a model a few seconds (rate × seconds events)
behind the in-process one; the report shows that lag, read from the decision log and the trainer's log.

It prints the mean reward of each over the last ``--last`` events, the service / in-process ratio, and
writes their moving averages as a PNG (needs matplotlib; without it the PNG is skipped).

Example:
    python scripts/simulate_b2b.py --events 20000 --threads 4 --rate 100 --png b2b-learning.png
"""

from __future__ import annotations

import argparse
import re
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
from ranker.core.settings import Settings, hash_key, load_settings
from ranker.harness import Server
from ranker.serving.engine import reweight, sample, uniform, vw_arguments

LOOP = "b2b"
RANK_PATH = "/personalizer/v1.0/rank"
REWARD_PATH = "/personalizer/v1.0/events/{}/reward"

SEGMENTS = ("fintech", "healthcare", "retail", "manufacturing")
ROLES = ("admin", "analyst", "cs-manager", "executive")
DAYPARTS = ("morning", "afternoon", "evening")
PLANS = ("starter", "pro", "enterprise")
PLAN_SHARES = (0.3, 0.4, 0.3)


@dataclass(frozen=True)
class Action:
    id: str
    kind: str  # card, training, nba (next-best action)
    topic: str
    tier: str  # standard or enterprise
    roles: tuple[str, ...]  # who it suits (strongest signal)
    segments: tuple[str, ...] = ()  # industries it suits
    dayparts: tuple[str, ...] = ()  # when it lands

    def features(self) -> list[dict[str, Any]]:
        return [{"item": {"kind": self.kind, "topic": self.topic, "tier": self.tier}}]


# id, kind, topic, tier, and who it suits: roles (the strongest signal), segments, time of day ("-": none)
_CATALOGUE = """
card-usage-trends         card      usage           standard    analyst               retail                morning
card-revenue-forecast     card      finance         standard    executive             fintech               morning
card-compliance-audit     card      compliance      enterprise  admin                 healthcare,fintech    afternoon
card-api-health           card      engineering     enterprise  admin                 manufacturing         evening
card-seat-utilization     card      licensing       standard    admin                 retail                afternoon
training-sql-reports      training  analytics       standard    analyst               manufacturing         afternoon
training-admin-console    training  administration  standard    admin                 -                     morning
training-exec-insights    training  strategy        standard    executive             -                     evening
training-hipaa-workflows  training  compliance      standard    analyst               healthcare            evening
nba-schedule-qbr          nba       relationship    standard    cs-manager,executive  manufacturing         morning
nba-health-check-call     nba       retention       standard    cs-manager            healthcare,retail     afternoon
nba-expansion-upsell      nba       expansion       standard    cs-manager            fintech               evening
"""


def _catalogue(text: str) -> tuple[Action, ...]:
    def names(cell: str) -> tuple[str, ...]:
        return () if cell == "-" else tuple(cell.split(","))

    rows = [line.split() for line in text.strip().splitlines()]
    return tuple(Action(i, kind, topic, tier, names(r), names(s), names(d)) for i, kind, topic, tier, r, s, d in rows)


ACTIONS = _catalogue(_CATALOGUE)
REQUEST_ACTIONS = [{"id": a.id, "features": a.features()} for a in ACTIONS]
BEST, OTHER_LOW, OTHER_HIGH = 0.6, 0.05, 0.25  # click probabilities

RULES_TOML = """
[[loops.b2b.rules.entitlements]]
name = "enterprise-plan"
actions = { features = [{ path = "item.tier", equals = "enterprise" }] }
requires = [{ path = "account.plan", equals = "enterprise" }]

[[loops.b2b.rules.entitlements]]
name = "upsell-after-renewal"
actions = { ids = ["nba-expansion-upsell"] }
requires = [{ path = "contract.daysSinceRenewal", gte = 30 }]

[[loops.b2b.rules.entitlements]]
name = "admins-only"
actions = { ids = ["training-admin-console"] }
requires = [{ path = "user.role", equals = "admin" }]
"""


def config_toml(key: str | None = None, policy: str = "default") -> str:
    """The server's TOML: one loop with 1 s reward wait and model export, the entitlement rules, a rank key."""
    text = (
        f'[loops.{LOOP}]\npolicy = "{policy}"\nrewardWaitTime = "PT1S"\nmodelExportFrequency = "PT1S"\n'
        "explorationPercentage = 0.2\n"
    )
    if key is not None:
        text += f'keys = [{{ role = "rank", sha256 = "{hash_key(key)}" }}]\n'
    return text + RULES_TOML


def load_config(text: str) -> Settings:
    """Parse the TOML exactly as the server does."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ranker.toml"
        path.write_text(text)
        return load_settings(path, environ={})


# -- the environment ----------------------------------------------------------------------------


def scores(context: dict[str, Any]) -> list[float]:
    """How well each action suits the context: role 2, segment 1, time of day 0.7 (ties: list order)."""
    segment, role = context["account"]["segment"], context["user"]["role"]
    daypart = context["time"]["daypart"]
    return [
        2.0 * (role in a.roles) + 1.0 * (segment in a.segments) + 0.7 * (daypart in a.dayparts) - 0.01 * i
        for i, a in enumerate(ACTIONS)
    ]


def click_probabilities(context: dict[str, Any], eligible: list[int]) -> dict[str, float]:
    """Per eligible action: BEST for the best-suited one, OTHER_LOW..OTHER_HIGH for the rest by suitability."""
    s = scores(context)
    ranked = sorted(eligible, key=lambda i: -s[i])
    rest = [s[i] for i in ranked[1:]]
    low, high = min(rest, default=0.0), max(rest, default=0.0)
    p = {ACTIONS[ranked[0]].id: BEST}
    for i in ranked[1:]:
        share = (s[i] - low) / (high - low) if high > low else 0.5
        p[ACTIONS[i].id] = OTHER_LOW + (OTHER_HIGH - OTHER_LOW) * share
    return p


@dataclass
class Event:
    event_id: str
    features: list[dict[str, Any]]  # contextFeatures as sent
    context: dict[str, Any]  # merged, as the service merges them
    u: float  # the reward draw
    eligible: list[int]  # indices into ACTIONS after the rules
    factors: list[float]
    p: dict[str, float]  # click probability of each eligible action


def draw_context(rng: np.random.Generator) -> list[dict[str, Any]]:
    """One Rank's contextFeatures: an account (segment, plan), a user's role, the daypart, the contract."""
    return [
        {
            "account": {
                "segment": SEGMENTS[rng.integers(len(SEGMENTS))],
                "plan": PLANS[rng.choice(len(PLANS), p=PLAN_SHARES)],
            }
        },
        {"user": {"role": ROLES[rng.integers(len(ROLES))]}},
        {"time": {"daypart": DAYPARTS[rng.integers(len(DAYPARTS))]}},
        {"contract": {"daysSinceRenewal": int(rng.integers(0, 91))}},
    ]


def make_stream(events: int, seed: int, loop_rules: rules.Rules) -> list[Event]:
    """The contexts, event ids and reward draws of one run, with what the rules allow in each."""
    rng = np.random.default_rng(seed)
    actions = [(a["id"], dsjson.merge(a["features"], "features")) for a in REQUEST_ACTIONS]
    now = datetime.now(UTC)
    stream = []
    for t in range(events):
        features = draw_context(rng)
        context = dsjson.merge(features, "contextFeatures")
        verdict = rules.apply(loop_rules, context, actions, set(), now)
        stream.append(
            Event(
                event_id=f"s{seed}-{t:06d}",
                features=features,
                context=context,
                u=float(rng.random()),
                eligible=verdict.eligible,
                factors=verdict.factors,
                p=click_probabilities(context, verdict.eligible),
            )
        )
    return stream


def ceiling(stream: list[Event], exploration: float) -> float:
    """Expected reward of a policy that knows the best action and explores uniformly with ``exploration``."""
    values = [(1 - exploration) * BEST + exploration * float(np.mean(list(e.p.values()))) for e in stream]
    return float(np.mean(values))


# -- the learners -------------------------------------------------------------------------------


def run_in_process(stream: list[Event], arguments: str, id_feature: bool, delay: int = 0) -> np.ndarray:
    """VW in this process with the service's rules, records and sampling; returns the reward of each event.

    Each event is learned right after it (``delay`` = 0), or once ``delay`` more events were served, which
    imitates a service whose model is that many events behind.
    """
    ws = vowpalwabbit.Workspace(f"{arguments} --dsjson --quiet")
    rewards = np.zeros(len(stream))
    waiting: deque[str] = deque()
    try:
        for t, event in enumerate(stream):
            eligible = [(ACTIONS[i].id, dsjson.merge(ACTIONS[i].features(), "features")) for i in event.eligible]
            c_json = dsjson.context_json(event.context, eligible, id_feature)
            example = ws.parse(dsjson.predict_line(c_json, len(eligible)))
            model_pmf = list(ws.predict(example))
            ws.finish_example(example)
            pmf = reweight(model_pmf, event.factors)
            chosen = sample(pmf, event.event_id)
            rewards[t] = reward = float(event.u < event.p[eligible[chosen][0]])
            order = [chosen] + sorted((i for i in range(len(eligible)) if i != chosen), key=lambda i: -pmf[i])
            waiting.append(dsjson.labeled(dsjson.decision_line(event.event_id, "", c_json, order, pmf), reward))
            while len(waiting) > delay:
                example = ws.parse(waiting.popleft())
                ws.learn(example)
                ws.finish_example(example)
    finally:
        ws.finish()
    return rewards


def run_random(stream: list[Event]) -> np.ndarray:
    """Uniform over the eligible actions, drawn with the event id's number: what no learning earns."""
    rewards = np.zeros(len(stream))
    for t, event in enumerate(stream):
        chosen = ACTIONS[event.eligible[int(uniform(event.event_id) * len(event.eligible))]].id
        rewards[t] = float(event.u < event.p[chosen])
    return rewards


@dataclass
class ServiceRun:
    rewards: np.ndarray
    seconds: float
    violations: int = 0  # rewardActionId not among the eligible actions (must stay 0)
    errors: list[str] = field(default_factory=list)


def clients(
    count: int, send: Callable[[requests.Session, int], None], threads: int, rate: float, key: str | None
) -> tuple[float, list[str]]:
    """Call ``send(session, t)`` for each t in 0..count-1 from ``threads`` clients, at most ``rate`` calls/s
    (0: no cap); the first error (an exception of ``send``) stops every client. Returns (seconds, errors)."""
    headers = {"Ocp-Apim-Subscription-Key": key} if key else {}
    lock = threading.Lock()
    counter = iter(range(count))
    failed = threading.Event()
    errors: list[str] = []
    started = time.monotonic()

    def client() -> None:
        session = requests.Session()
        session.headers.update(headers)
        while not failed.is_set():
            with lock:
                t = next(counter, None)
            if t is None:
                return
            if rate > 0:
                delay = started + t / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            try:
                send(session, t)
            except (requests.RequestException, RuntimeError, ValueError, KeyError) as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                failed.set()
                return

    workers = [threading.Thread(target=client, name=f"client-{i}") for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.monotonic() - started, errors


def post(session: requests.Session, url: str, body: dict[str, Any], status: int, what: str) -> requests.Response:
    """POST ``body``; a RuntimeError naming ``what`` unless the answer has ``status``."""
    response = session.post(url, json=body, timeout=30)
    if response.status_code != status:
        raise RuntimeError(f"{what}: {response.status_code} {response.text[:300]}")
    return response


def drive(url: str, stream: list[Event], threads: int = 4, rate: float = 0.0, key: str | None = None) -> ServiceRun:
    """Send each event's Rank, then its Reward, from ``threads`` clients, at most ``rate`` events/s (0: no cap)."""
    run = ServiceRun(rewards=np.full(len(stream), np.nan), seconds=0.0)
    lock = threading.Lock()

    def send(session: requests.Session, t: int) -> None:
        event = stream[t]
        body = {"contextFeatures": event.features, "actions": REQUEST_ACTIONS, "eventId": event.event_id}
        chosen = post(session, url + RANK_PATH, body, 201, f"Rank {event.event_id}").json()["rewardActionId"]
        if chosen not in event.p:
            with lock:
                run.violations += 1
        reward = float(event.u < event.p.get(chosen, 0.0))
        post(session, url + REWARD_PATH.format(event.event_id), {"value": reward}, 204, f"Reward {event.event_id}")
        run.rewards[t] = reward

    run.seconds, run.errors = clients(len(stream), send, threads, rate, key)
    return run


# -- the server ---------------------------------------------------------------------------------


_PUBLISHED = re.compile(r"published model (\d+) \((\d+) events learned\)")


def serving_report(data_dir: Path, stream: list[Event]) -> dict[str, Any]:
    """Which model served each event, and how far behind the log it was (from the decisions and the trainer log).

    ``versions``: model version per event in stream order ('0' before the first publication);
    ``published``: versions the trainer published; ``lag_events``/``lag_seconds``: per decision served by
    a published model, decisions logged before it that its model had not learned, and the age of the
    newest one it had.
    """
    conn = sqlite3.connect(data_dir / "ranker.db")
    try:
        rows = conn.execute("SELECT id, event_id, created_at, model_version FROM decisions ORDER BY id").fetchall()
    finally:
        conn.close()
    by_event = {event_id: version for _, event_id, _, version in rows}
    learned = {}
    log_path = data_dir / "server.log"
    if log_path.exists():
        learned = {m[1]: int(m[2]) for m in _PUBLISHED.finditer(log_path.read_text(errors="replace"))}
    created = [datetime.fromisoformat(at).timestamp() for _, _, at, _ in rows]
    lag_events, lag_seconds = [], []
    for position, (_, _, _, version) in enumerate(rows):
        n = learned.get(version)
        if n:
            lag_events.append(position - n)
            lag_seconds.append(created[position] - created[n - 1])
    return {
        "versions": [by_event.get(e.event_id) for e in stream],
        "published": sorted(learned),
        "served": sorted({v for v in by_event.values()}),
        "lag_events": np.asarray(lag_events, dtype=float),
        "lag_seconds": np.asarray(lag_seconds, dtype=float),
    }


# -- report -------------------------------------------------------------------------------------


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(values)))
    sums = np.cumsum(np.insert(values, 0, 0.0))
    return (sums[window:] - sums[:-window]) / window


def write_png(path: Path, curves: dict[str, np.ndarray], window: int, title: str) -> bool:
    """Moving averages of the per-event rewards; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    for label, rewards in curves.items():
        averaged = moving_average(rewards, window)
        ax.plot(np.arange(len(averaged)) + window, averaged, label=label, linewidth=1.4)
    ax.set_xlabel("event")
    ax.set_ylabel(f"mean reward, moving average of {window} events")
    ax.set_title(title)
    ax.set_ylim(0, 0.7)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


@dataclass
class Comparison:
    """Per-event rewards of the three learners on one stream, and how the service's models served."""

    stream: list[Event]
    service: ServiceRun
    in_process: np.ndarray
    random: np.ndarray
    served: dict[str, Any]
    arguments: str
    id_feature: bool
    exploration: float


def compare(
    events: int,
    seed: int = 1,
    threads: int = 4,
    rate: float = 100.0,
    port: int = 0,
    policy: str = "default",
    keep: Path | None = None,
) -> Comparison:
    """Generate the stream, run in-process VW and the random baseline on it, then drive a fresh server."""
    key = secrets.token_hex(16)
    config = config_toml(key, policy)
    settings = load_config(config)
    loop = settings.loops[LOOP]
    arguments = vw_arguments(settings.policy(LOOP).arguments, loop.exploration_percentage)
    stream = make_stream(events, seed, loop.rules)
    in_process = run_in_process(stream, arguments, loop.action_id_feature)
    baseline = run_random(stream)
    with tempfile.TemporaryDirectory(prefix="ranker-b2b-") as tmp:
        folder = keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        with Server(folder, config, port=port) as server:
            service = drive(server.url, stream, threads, rate, key)
        if keep is not None:  # `ranker explain --config DIR/explain.toml --loop b2b EVENT_ID` reads it afterwards
            (folder / "explain.toml").write_text(f'data_dir = "{folder.resolve()}"\n' + config)
        served = serving_report(folder, stream)
    if service.errors:
        raise RuntimeError(f"the service failed: {service.errors[0]}")
    return Comparison(
        stream, service, in_process, baseline, served, arguments, loop.action_id_feature, loop.exploration_percentage
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=4, help="concurrent clients")
    parser.add_argument("--rate", type=float, default=100.0, help="most events per second sent (0: no cap)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--last", type=int, default=5000, help="events at the end that the means cover")
    parser.add_argument("--png", type=Path, default=Path("b2b-learning.png"), help="reward curves")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--policy", default="default", help="policy name in policies/")
    parser.add_argument("--keep", type=Path, help="keep the server's data (log, models) in this folder")
    args = parser.parse_args(argv)

    began = time.monotonic()
    try:
        run = compare(args.events, args.seed, args.threads, args.rate, args.port, args.policy, args.keep)
    except RuntimeError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    stream, service, served = run.stream, run.service, run.served
    last = min(args.last, args.events)
    lag_events, lag_seconds = served["lag_events"], served["lag_seconds"]
    lag = int(np.median(lag_events)) if len(lag_events) else 0
    lagged = run_in_process(stream, run.arguments, run.id_feature, delay=lag)

    def tail(values: np.ndarray) -> float:
        return float(np.mean(values[-last:]))

    s, v, r, w = tail(service.rewards), tail(run.in_process), tail(run.random), tail(lagged)
    window = max(100, args.events // 40)
    curves = {"service (HTTP, trainer)": service.rewards, "in-process VW": run.in_process, "uniform random": run.random}
    title = f"B2B simulation, {args.events} events, seed {args.seed}: moving average of {window} events"
    png = args.png if write_png(args.png, curves, window, title) else None

    print(f"{args.events} events, seed {args.seed}; VW arguments: {run.arguments}")
    print(
        f"contexts: {len({str(e.features[:3]) for e in stream})} of segment × plan × role × time of day;"
        f" {len({max(e.p, key=e.p.get) for e in stream})} distinct best actions"
    )
    print(
        f"service: {service.seconds:.1f} s for {args.events} events ({args.events / service.seconds:.0f}/s) "
        f"from {args.threads} clients, rate cap {args.rate or 'none'}/s; entitlement violations: {service.violations}"
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
    rows = [
        ("service (HTTP, trainer, published models)", f"{s:.4f}"),
        ("in-process VW (learns each event at once)", f"{v:.4f}"),
        ("ratio service / in-process (target >= 0.95)", f"{s / v:.4f}"),
        ("uniform random over eligible actions", f"{r:.4f}"),
        (f"in-process VW learning {lag} events late", f"{w:.4f}"),
        ("epsilon-greedy ceiling (best action known)", f"{ceiling(stream[-last:], run.exploration):.4f}"),
    ]
    print(f"mean reward over the last {last} events:")
    for label, value in rows:
        print(f"  {label:<45} {value}")
    print(f"reward curves: {png}" if png else "reward curves: not written (needs matplotlib)")
    print(f"total time: {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
