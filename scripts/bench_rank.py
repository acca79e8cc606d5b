"""Benchmark Rank against the null endpoint on a real ``ranker serve``, in one run.

The script starts the server exactly as production does (``python -m ranker serve``, so gunicorn with
``ranker.server.gunicorn_config``), with ``RANKER_NULL_ENDPOINT=1`` (``POST /null`` parses the JSON body and
answers a small 201), a temporary data folder and a free 127.0.0.1 port. Durable logging stays at its
default (SQLite ``synchronous=FULL``): every 201 of a Rank is committed before it is sent.

This process then loads the server with a small asyncio HTTP/1.1 keep-alive client (standard library
only, far cheaper per request than the server, so on 2 cores it takes little from the server):

1. warm-up of both endpoints;
2. closed loop, ``--concurrency`` connections each sending its next request as soon as the previous
   one is answered: the maximum rate of ``/null`` and of Rank with the same body, alternated for
   ``--rounds`` rounds; the best round of each counts;
3. open loop for Rank at half its maximum rate (``--fraction``): requests are due at fixed intervals
   whatever the server does, and a latency runs from the moment a request was due, so a slow answer
   that delays the next ones is counted against the server (no coordinated omission).

4. Reward (each names an event ranked above, ``{"value": 1.0}``, 204) alternated with ``/null`` for
   ``--rounds`` rounds; the best round of each gives Reward / null;
5. multi-slot Rank (the same context, 20 actions, 3 slots each with a position feature and a baseline action) on
   a second server started the same way whose one loop is multi-slot, alternated with that server's ``/null``:
   multi-slot / null, and its rows checked against the Ranks sent. ``--rank-only`` skips 4 and 5.

Each phase stops after ``--requests`` requests or ``--duration`` seconds, whichever comes first.
Every Rank carries a unique eventId; at the end the ``decisions`` table must hold exactly one row per
201 answered. The body: 10 context features and 10 actions with 5 features each (strings and
numbers), as a B2B dashboard would send.

Each phase also reports the CPU time the server's processes spent per request, the client's share of
a CPU, and the CPU that other processes of the machine took meanwhile (from /proc): the throughput
figures only mean something when that last one is small.

With ``--enrichment`` it compares instead, interleaved round by round in one run, the server CPU per Rank
of three variants on one server: a loop without enrichment (the body above), a loop whose Rank names an
account and a user, to which the server adds 2 x 20 features and their attributes (``loops.<name>.entities``),
and the plain loop with that same merged context sent inline by the caller (so the difference between the
last two is the lookup and merge alone, the rest being the cost of a larger context in VW and the log).

With ``--database-url postgresql://...`` it compares instead, in one run, Rank on SQLite (as above) and on that
PostgreSQL database (an empty or ranker-migrated one, on this machine), one server at a time: each phase starts
its engine's server, warms it up and stops it after (scripts/bench_engines.py). Closed-loop rounds alternate
between the engines; then each gets its open loop at half its own maximum. Besides the best rounds' ratio it
prints each round's ratio and the ratio of CPU per Rank (ranker's and PostgreSQL's together), and what a
capacity plan needs: the CPU per Rank of the ranker processes and of PostgreSQL's (the server's processes,
found from its checkpointer), PostgreSQL's commits per second and decisions per commit (group commit), and the
bytes per decision row (table and indexes).

Example:
    python scripts/bench_rank.py --concurrency 24 --duration 8 --requests 50000
    python scripts/bench_rank.py --enrichment --rounds 9 --duration 3
    python scripts/bench_rank.py --database-url postgresql://postgres@/bench?host=/tmp/pg --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ranker.core.settings import hash_key
from ranker.harness import Server

RANK_PATH = "/personalizer/v1.0/rank"
NULL_PATH = "/null"
MULTISLOT_PATH = "/personalizer/v1.0/multislot/rank"
REWARD_PATH = "/personalizer/v1.0/events/{id}/reward"
MULTISLOT_CONFIG = '[loops.default]\npolicy = "multislot"\n'  # the multi-slot server's one loop

CONTEXT = [
    {
        "account": {
            "plan": "enterprise",
            "industry": "financial-services",
            "region": "EMEA",
            "seats": 240,
            "renewalInDays": 45,
        },
        "usage": {
            "weeklyActiveUsers": 183,
            "featureAdoption": 0.62,
            "openTickets": 3,
            "nps": 41,
            "role": "admin",
        },
    }
]
ACTIONS = [
    {"id": "quarterly-business-review", "kind": "meeting", "team": "customer-success", "effort": 3, "impact": 0.8},
    {"id": "sso-setup-guide", "kind": "guide", "team": "support", "effort": 1, "impact": 0.4},
    {"id": "advanced-reporting-webinar", "kind": "training", "team": "education", "effort": 2, "impact": 0.5},
    {"id": "renewal-discount-offer", "kind": "offer", "team": "sales", "effort": 1, "impact": 0.9},
    {"id": "api-rate-limit-upgrade", "kind": "upsell", "team": "sales", "effort": 2, "impact": 0.7},
    {"id": "health-check-call", "kind": "meeting", "team": "customer-success", "effort": 2, "impact": 0.6},
    {"id": "admin-certification", "kind": "training", "team": "education", "effort": 5, "impact": 0.3},
    {"id": "usage-dashboard-tour", "kind": "guide", "team": "product", "effort": 1, "impact": 0.35},
    {"id": "executive-sponsor-intro", "kind": "meeting", "team": "leadership", "effort": 4, "impact": 0.75},
    {"id": "ticket-escalation-review", "kind": "support", "team": "support", "effort": 2, "impact": 0.55},
]


def rank_body_parts(context: list | None = None) -> tuple[bytes, bytes]:
    """The Rank body around its eventId: ``head + event_id + tail``."""
    actions = [
        {
            "id": a["id"],
            "features": [
                {"kind": a["kind"], "team": a["team"], "effortDays": a["effort"], "impact": a["impact"], "cost": 120.0}
            ],
        }
        for a in ACTIONS
    ]
    body = {"contextFeatures": CONTEXT if context is None else context, "actions": actions, "eventId": "\x00"}
    head, tail = json.dumps(body, separators=(",", ":")).split('"\\u0000"')
    return (head + '"').encode(), ('"' + tail).encode()


def multislot_body_parts(actions: int = 20, slots: int = 3) -> tuple[bytes, bytes]:
    """A multi-slot Rank body around its eventId: the context above, ``actions`` actions (the 10 above and
    numbered copies) and ``slots`` slots, each with a position feature and a baseline action."""
    listed = [dict(a, id=a["id"] if i < len(ACTIONS) else f"{a['id']}-{i}") for i, a in enumerate(ACTIONS * 3)]
    listed = listed[:actions]
    body = {
        "contextFeatures": CONTEXT,
        "actions": [
            {
                "id": a["id"],
                "features": [
                    {
                        "kind": a["kind"],
                        "team": a["team"],
                        "effortDays": a["effort"],
                        "impact": a["impact"],
                        "cost": 120.0,
                    }
                ],
            }
            for a in listed
        ],
        "slots": [
            {"id": f"slot-{k}", "features": [{"position": k}], "baselineAction": listed[k]["id"]}
            for k in range(1, slots + 1)
        ],
        "eventId": "\x00",
    }
    head, tail = json.dumps(body, separators=(",", ":")).split('"\\u0000"')
    return (head + '"').encode(), ('"' + tail).encode()


REWARD_PARTS = (b'{"value":1.0}', b"")  # a Reward's body; its path names the event (REWARD_PATH)


def request_bytes(path: str, port: int, head: bytes, event_id: str, tail: bytes, key: str = "") -> bytes:
    """A whole request: the event id goes into the path where it holds ``{id}`` (Reward), else into the body."""
    if "{id}" in path:
        path, body = path.replace("{id}", event_id), head + tail
    else:
        body = head + event_id.encode() + tail
    auth = f"Ocp-Apim-Subscription-Key: {key}\r\n" if key else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# -- the load generator ------------------------------------------------------------------------


class Connection(asyncio.Protocol):
    """One keep-alive connection; ``request`` sends a whole request and returns the response's status."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        length = 0
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        status = int(self.buffer[9:12])
        del self.buffer[:total]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result(status)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    async def request(self, data: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Connection, "127.0.0.1", port)
    return conn


@dataclass
class Phase:
    name: str
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)  # status -> count; 0 = connection error
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)  # open loop: how late the client issued a request
    elapsed: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    machine_cpu: float = 0.0  # busy CPU seconds of the whole machine, every process included
    ok_status: int = 201  # the status of a request that succeeded (Reward: 204)

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed else 0.0

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


class EventIds:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.next = 0

    def __call__(self) -> str:
        self.next += 1
        return f"{self.prefix}-{self.next:09d}"


STUCK_SECONDS = 30.0  # a phase still waiting for answers this long after its end gives up on them


async def finish(requests, seconds: float, phase: Phase) -> None:
    """Wait for a phase's requests; the ones not answered within STUCK_SECONDS count as failed."""
    try:
        await asyncio.wait_for(requests, seconds + STUCK_SECONDS)
    except TimeoutError:
        phase.statuses[0] = phase.statuses.get(0, 0) + phase.sent - phase.done
        print(f"{phase.name}: {phase.sent - phase.done} requests got no answer; giving up on them", flush=True)


async def closed_loop(
    port: int,
    conns: list[Connection],
    path: str,
    parts: tuple,
    ids: EventIds,
    phase: Phase,
    limit: int,
    seconds: float,
) -> None:
    """Each connection sends its next request as soon as the last one is answered."""
    head, tail, *rest = parts  # (body head, body tail[, key])
    key = rest[0] if rest else ""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + seconds
    last = start

    async def user(i: int) -> None:
        nonlocal last
        while phase.sent < limit and loop.time() < deadline:
            phase.sent += 1
            data = request_bytes(path, port, head, ids(), tail, key)
            sent = loop.time()
            try:
                if conns[i].closed:
                    conns[i] = await connect(port)
                status = await conns[i].request(data)
            except OSError:
                status = 0
            last = loop.time()
            phase.count(status)
            phase.latencies.append(last - sent)

    await finish(asyncio.gather(*(user(i) for i in range(len(conns)))), seconds, phase)
    phase.elapsed = last - start


async def open_loop(
    port: int,
    conns: list[Connection],
    path: str,
    parts: tuple,
    ids: EventIds,
    phase: Phase,
    rate: float,
    limit: int,
    seconds: float,
    answers: list[tuple[float, float, int]] | None = None,
) -> None:
    """Requests due every ``1/rate`` s, each on an idle connection; latency runs from when it was due.
    ``answers``: also keep each request's (due, answered, status), on the event loop's clock."""
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for conn in conns:
        idle.put_nowait(conn)
    head, tail, *rest = parts  # (body head, body tail[, key])
    key = rest[0] if rest else ""
    loop = asyncio.get_running_loop()
    total = min(limit, int(rate * seconds))
    tasks = set()

    async def one(due: float, data: bytes) -> None:
        conn = await idle.get()
        try:
            if conn.closed:
                conn = await connect(port)
            status = await conn.request(data)
        except OSError:
            status = 0
        answered = loop.time()
        phase.latencies.append(answered - due)
        phase.count(status)
        if answers is not None:
            answers.append((due, answered, status))
        idle.put_nowait(conn)

    start = loop.time() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        phase.lags.append(loop.time() - due)
        phase.sent += 1
        task = asyncio.ensure_future(one(due, request_bytes(path, port, head, ids(), tail, key)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await finish(asyncio.gather(*tasks), 0, phase)
    phase.elapsed = loop.time() - start
    while not idle.empty():
        idle.get_nowait().close()


# -- the server --------------------------------------------------------------------------------


def start_server(
    data_dir: Path, workers: int | None, threads: int | None, config: str | None = None, **more: str
) -> Server:
    """``ranker serve`` on a free loopback port with the null endpoint on (and a settings file's text)."""
    settings = {"null_endpoint": 1, **more}
    settings.update({name: value for name, value in (("workers", workers), ("threads", threads)) if value is not None})
    return Server(data_dir, config, **settings)


def explanations(server: Server, on: bool) -> None:
    """Switch the default loop's isInferenceExplainabilityEnabled (workers follow within 0.1 s)."""
    body = json.dumps({"isInferenceExplainabilityEnabled": on}).encode()
    request = urllib.request.Request(
        server.url + "/personalizer/v1.0/configurations/service",
        data=body,
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["isInferenceExplainabilityEnabled"] is on
    time.sleep(0.5)


def trained_model(arguments: str) -> bytes:
    """A model (VW's file) trained with ``arguments`` on the bench body's features with random rewards."""
    import vowpalwabbit

    from ranker.core import dsjson

    head, tail = rank_body_parts()
    body = json.loads(head + b"train" + tail)
    context = dsjson.merge(body["contextFeatures"], "contextFeatures")
    actions = [(a["id"], dsjson.merge(a["features"], "features")) for a in body["actions"]]
    c_json = dsjson.context_json(context, actions, True)
    rng = random.Random(1)
    ws = vowpalwabbit.Workspace(arguments + " --dsjson --quiet")
    for t in range(500):
        order = rng.sample(range(len(actions)), len(actions))
        line = dsjson.decision_line(f"train{t}", "2026-01-01T00:00:00.000000Z", c_json, order, [0.1] * len(actions))
        ws.learn(dsjson.labeled(line, float(rng.random() < 0.1 + 0.08 * order[0])))
    with tempfile.TemporaryDirectory() as tmp:
        ws.save(f"{tmp}/model.vw")
        ws.finish()
        return Path(f"{tmp}/model.vw").read_bytes()


def serve_trained_model(server: Server) -> None:
    """Import (``PUT model``) a model trained on the bench body's features with random rewards, so that Rank
    with explanations lists real contributions: an untrained model's weights are all zero and its
    explanations list none (less to sort, name and encode than a served model's)."""
    from ranker.serving.engine import vw_arguments

    def get(path: str) -> dict:
        with urllib.request.urlopen(server.url + "/personalizer/v1.0/configurations/" + path, timeout=10) as answer:
            return json.loads(answer.read())

    data = trained_model(vw_arguments(get("policy")["arguments"], get("service")["explorationPercentage"]))
    put = urllib.request.Request(server.url + "/personalizer/v1.0/model", data=data, method="PUT")
    with urllib.request.urlopen(put, timeout=60) as answer:
        assert answer.status == 204
    time.sleep(1.0)  # the workers load it within 0.1 s of the pointer moving


# -- the run -----------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def machine_busy_seconds() -> float:
    """CPU seconds the machine spent busy so far, all processes together (Linux /proc/stat)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


async def measure(server: Server, phase: Phase, run) -> Phase:
    cpu_client, cpu_server, cpu_machine = time.process_time(), server.cpu_seconds(), machine_busy_seconds()
    await run
    phase.client_cpu = time.process_time() - cpu_client
    phase.server_cpu = server.cpu_seconds() - cpu_server
    phase.machine_cpu = machine_busy_seconds() - cpu_machine
    return phase


def describe(phase: Phase) -> str:
    lat = sorted(phase.latencies)
    errors = phase.done - phase.statuses.get(phase.ok_status, 0)
    per_request = 1e3 * phase.server_cpu / phase.done if phase.done else float("nan")
    others = max(0.0, phase.machine_cpu - phase.server_cpu - phase.client_cpu) / max(phase.elapsed, 1e-9)
    return (
        f"{phase.name:<22} {phase.done:>7} req in {phase.elapsed:5.1f} s = {phase.rate:7.0f} req/s  "
        f"p50 {1e3 * percentile(lat, 0.5):6.2f} ms  p99 {1e3 * percentile(lat, 0.99):7.2f} ms  "
        f"server CPU {per_request:.2f} ms/req, client {100 * phase.client_cpu / max(phase.elapsed, 1e-9):3.0f}%, "
        f"other processes {100 * others:3.0f}% of a CPU" + (f"  NON-201: {errors} {phase.statuses}" if errors else "")
    )


async def benchmark(server: Server, args) -> tuple[list[Phase], int]:
    parts = rank_body_parts()
    run_id = os.urandom(4).hex()
    rank_ids, null_ids = EventIds(f"bench-{run_id}"), EventIds(f"null-{run_id}")
    port, n, s = server.port, args.requests, args.duration
    # The closed-loop phases share one set of connections, so null and Rank see the same spread of
    # connections over the workers (each worker accepts whichever connections it wins).
    conns = [await connect(port) for _ in range(args.concurrency)]
    rank_phases: list[Phase] = []

    def rank(name: str) -> Phase:
        rank_phases.append(Phase(name))
        return rank_phases[-1]

    for path, ids, phase in ((NULL_PATH, null_ids, Phase("warm-up null")), (RANK_PATH, rank_ids, rank("warm-up"))):
        await closed_loop(port, conns, path, parts, ids, phase, int(args.warmup * 500), args.warmup)
    nulls, ranks, explained = [], [], []
    if args.explain:  # explanations off and on, with a trained model
        serve_trained_model(server)
    for r in range(1, args.rounds + 1):
        phase = Phase(f"null, closed loop #{r}")
        nulls.append(await measure(server, phase, closed_loop(port, conns, NULL_PATH, parts, null_ids, phase, n, s)))
        print(describe(phase), flush=True)
        if args.explain:
            explanations(server, False)
        phase = rank(f"rank, closed loop #{r}")
        ranks.append(await measure(server, phase, closed_loop(port, conns, RANK_PATH, parts, rank_ids, phase, n, s)))
        print(describe(phase), flush=True)
        if args.explain:  # the same server, explanations switched on through the API
            explanations(server, True)
            phase = rank(f"rank explained #{r}")
            run = closed_loop(port, conns, RANK_PATH, parts, rank_ids, phase, n, s)
            explained.append(await measure(server, phase, run))
            print(describe(phase), flush=True)
    if explained:
        off = sum(p.server_cpu for p in ranks) / sum(p.done for p in ranks)
        on = sum(p.server_cpu for p in explained) / sum(p.done for p in explained)
        rate = max(p.rate for p in explained) / max(p.rate for p in ranks)
        print(
            f"explanations on / off: server CPU {1e3 * on:.2f} / {1e3 * off:.2f} ms per Rank = "
            f"{100 * (on / off - 1):+.0f} %, best rate {100 * rate:.0f} %  (target <= +50 % CPU)",
            flush=True,
        )
        explanations(server, False)
    for conn in conns:
        conn.close()
    best_null = max(nulls, key=lambda p: p.rate)
    best_rank = max(ranks, key=lambda p: p.rate)
    rate = args.fraction * best_rank.rate
    phase = rank(f"rank, open {rate:.0f}/s")
    paced = [await connect(port) for _ in range(args.open_connections)]
    await measure(server, phase, open_loop(port, paced, RANK_PATH, parts, rank_ids, phase, rate, n, args.open_duration))
    print(describe(phase), flush=True)
    ok = sum(p.statuses.get(201, 0) for p in rank_phases)
    return [best_null, best_rank, phase], ok, rank_ids


async def against_null(server: Server, args, path: str, parts: tuple, ids, ok_status: int, name: str) -> list[Phase]:
    """Closed-loop rounds of ``path`` alternated with ``/null`` (after a warm-up of each): [best null, best
    of ``path``]. ``ids`` gives each request's event id."""
    null_ids = EventIds(f"null-{name}-{os.urandom(4).hex()}")
    null_parts = rank_body_parts()
    port, n, s = server.port, args.requests, args.duration
    conns = [await connect(port) for _ in range(args.concurrency)]
    await closed_loop(port, conns, NULL_PATH, null_parts, null_ids, Phase("warm-up null"), int(args.warmup * 500), 1)
    await closed_loop(port, conns, path, parts, ids, Phase("warm-up", ok_status=ok_status), int(args.warmup * 500), 1)
    nulls, others = [], []
    for r in range(1, args.rounds + 1):
        phase = Phase(f"null, closed loop #{r}")
        nulls.append(
            await measure(server, phase, closed_loop(port, conns, NULL_PATH, null_parts, null_ids, phase, n, s))
        )
        print(describe(phase), flush=True)
        phase = Phase(f"{name}, closed loop #{r}", ok_status=ok_status)
        others.append(await measure(server, phase, closed_loop(port, conns, path, parts, ids, phase, n, s)))
        print(describe(phase), flush=True)
    for conn in conns:
        conn.close()
    return [max(nulls, key=lambda p: p.rate), max(others, key=lambda p: p.rate)]


class Ranked:
    """The event ids the Rank phases used (``prefix-000000001`` on), in turn: each Reward names a ranked event."""

    def __init__(self, prefix: str, count: int) -> None:
        self.prefix, self.count, self.next = prefix, count, 0

    def __call__(self) -> str:
        self.next += 1
        return f"{self.prefix}-{(self.next - 1) % self.count + 1:09d}"


def ratio_line(name: str, null: Phase, other: Phase) -> str:
    return (
        f"{name:<14} {other.rate:7.0f} req/s, server CPU {1e3 * other.server_cpu / other.done:.2f} ms/req;  "
        f"null {null.rate:7.0f} req/s, {1e3 * null.server_cpu / null.done:.2f} ms/req;  "
        f"{name} / null {100 * other.rate / null.rate:5.1f} %"
    )


# -- enrichment mode ---------------------------------------------------------------------------

PLAIN_KEY, ENRICHED_KEY, SIGNALS_KEY = "bench-plain-key-0123", "bench-enriched-key-0123", "bench-signals-key-0123"
_AGGREGATES = [
    ("count", None, "P7D"),
    ("count", None, "P30D"),
    ("change", None, "P7D"),
    ("change", None, "P30D"),
    ("sum", "rows", "P7D"),
    ("sum", "rows", "P30D"),
    ("max", "rows", "P30D"),
    ("min", "rows", "P30D"),
    ("distinct", "api.name", "P7D"),
    ("distinct", "api.name", "P30D"),
    ("last", "api.name", None),
    ("days_since_last", None, None),
]
_EVENTS = ["api.call", "report.export", "dashboard.view"]


def enrichment_config() -> str:
    """Two loops with the same policy: ``plain`` and ``enriched`` (2 entities x 20 features)."""
    lines = [
        "[loops.plain]",
        f'keys = [{{ role = "rank", sha256 = "{hash_key(PLAIN_KEY)}" }}]',
        "[loops.enriched]",
        'entities = { account = "account.id", user = "user.id" }',
        f'keys = [{{ role = "rank", sha256 = "{hash_key(ENRICHED_KEY)}" }}, '
        f'{{ role = "signals", sha256 = "{hash_key(SIGNALS_KEY)}" }}]',
        "[signals]",
    ]
    for entity in ("account", "user"):
        definitions = [("days_until", "contract.renewalDate", None), ("days_since", "contract.startDate", None)]
        definitions += [_AGGREGATES[i % len(_AGGREGATES)] for i in range(18)]
        for i, (aggregate, field_, window) in enumerate(definitions):
            lines += ["[[signals.features]]", f'name = "f{i:02d}_{aggregate}"', f'entity = "{entity}"']
            lines.append(f'aggregate = "{aggregate}"')
            if aggregate not in ("days_until", "days_since"):
                lines.append(f'event = "{_EVENTS[i % len(_EVENTS)]}"')
                if i % 4 == 1:
                    lines.append('where = [{ path = "api.name", in = ["reporting", "billing"] }]')
            if field_:
                lines.append(f'field = "{field_}"')
            if window:
                lines.append(f'window = "{window}"')
    return "\n".join(lines) + "\n"


def http_call(server: Server):
    """``call(method, path, body)`` over HTTP with the signals key: the answer's JSON (None when empty)."""

    def call(method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Ocp-Apim-Subscription-Key": SIGNALS_KEY}
        request = urllib.request.Request(server.url + path, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = response.read()
        return json.loads(answer) if answer else None

    return call


def seed(call, account: str, user: str, events: int = 600) -> dict:
    """Attributes and 30 days of events for the entities the enriched Rank names, sent with ``call(method,
    path, body)`` (see http_call); the context the server then builds (what the inline variant sends itself)."""
    now = time.time_ns()
    rng = random.Random(7)
    records = []
    for i in range(events):
        attributes = {"account.id": account, "user.id": user, "api.name": rng.choice(["reporting", "billing", "x"])}
        records.append(
            {
                "timeUnixNano": str(now - rng.randrange(30 * 86_400 * 10**9) - i),
                "eventName": rng.choice(_EVENTS),
                "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes.items()]
                + [{"key": "rows", "value": {"intValue": str(rng.randrange(1, 1000))}}],
            }
        )
    call("POST", "/v1/logs", {"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]})
    attributes = {
        "plan": "enterprise",
        "segment": "fintech",
        "csm": "ana",
        "contract": {"renewalDate": "2027-06-30", "startDate": "2023-07-01"},
    }
    call("PUT", f"/entities/account/{account}", {"attributes": attributes})
    user_attributes = {"role": "admin", "contract": {"renewalDate": "2027-06-30", "startDate": "2024-01-01"}}
    call("PUT", f"/entities/user/{user}", {"attributes": user_attributes})
    merged = {}
    for entity, entity_id in (("account", account), ("user", user)):
        view = call("GET", f"/entities/{entity}/{entity_id}")
        values = {name: f["value"] for name, f in view["features"].items() if f["value"] is not None}
        merged[entity] = {**view["attributes"], **values}
    return merged


def enrichment_variants(call, account: str = "acct-bench", user: str = "user-bench") -> dict[str, tuple]:
    """Seed the entities; the three variants' ``(body head, body tail, key)``: plain, enriched (ids only, the
    server adds 2 x 20 features and the attributes) and inline (the plain loop, the merged context sent)."""
    merged = seed(call, account, user)
    base = CONTEXT[0]
    enriched_context = [{**base, "account": {**base["account"], "id": account}, "user": {"id": user}}]
    inline_context = [
        {
            **base,
            "account": {**merged["account"], **base["account"], "id": account},
            "user": {**merged["user"], "id": user},
        }
    ]
    return {
        "plain": (*rank_body_parts(), PLAIN_KEY),
        "enriched": (*rank_body_parts(enriched_context), ENRICHED_KEY),
        "inline": (*rank_body_parts(inline_context), PLAIN_KEY),
    }


async def enrichment_benchmark(server: Server, args) -> tuple[dict[str, list[Phase]], int]:
    """Rank on the plain loop, on the enriched loop and on the plain loop with the same merged context sent
    inline (see enrichment_variants), interleaved round by round. Returns the phases by variant and the 201s
    of the warm-up."""
    variants = enrichment_variants(http_call(server))
    run_id = os.urandom(4).hex()
    ids = EventIds(f"bench-{run_id}")
    port, n, s = server.port, args.requests, args.duration
    conns = [await connect(port) for _ in range(args.concurrency)]
    phases: dict[str, list[Phase]] = {name: [] for name in variants}
    warm = [Phase(f"warm-up {name}") for name in variants]
    for phase, parts in zip(warm, variants.values(), strict=True):
        await closed_loop(port, conns, RANK_PATH, parts, ids, phase, int(args.warmup * 500), args.warmup)
    for r in range(1, args.rounds + 1):
        order = list(variants) if r % 2 else list(reversed(variants))
        for name in order:
            phase = Phase(f"{name} #{r}")
            phases[name].append(
                await measure(server, phase, closed_loop(port, conns, RANK_PATH, variants[name], ids, phase, n, s))
            )
            print(describe(phase), flush=True)
    for conn in conns:
        conn.close()
    return phases, sum(p.statuses.get(201, 0) for p in warm)


def committed_decisions(data_dir: Path) -> int:
    conn = sqlite3.connect(f"file:{data_dir / 'ranker.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000, help="most requests per phase (default 50000)")
    parser.add_argument("--concurrency", type=int, default=24, help="closed-loop connections (default 24)")
    parser.add_argument("--duration", type=float, default=7.0, help="most seconds per closed-loop phase (default 7)")
    parser.add_argument("--open-duration", type=float, default=12.0, help="seconds of the open loop (default 12)")
    parser.add_argument(
        "--open-connections", type=int, default=64, help="connections the open loop may use at once (default 64)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="null/rank closed-loop rounds (default 2)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per endpoint (default 2)")
    parser.add_argument("--fraction", type=float, default=0.5, help="open-loop rate / max Rank rate (default 0.5)")
    parser.add_argument("--workers", type=int, help="RANKER_WORKERS for the server (default: the setting's)")
    parser.add_argument("--threads", type=int, help="RANKER_THREADS for the server (default: the setting's)")
    parser.add_argument("--data-dir", type=Path, help="keep the server's data here (default: a temporary folder)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--rank-only", action="store_true", help="skip the Reward and multi-slot Rank ratios (and their server)"
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="serve a trained model, and each round also runs Rank with explanations on (same server)",
    )
    parser.add_argument(
        "--database-url",
        help="compare Rank on SQLite with Rank on this PostgreSQL database (instead of Rank against /null)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="with --database-url: also run every phase with the servers of this source tree, to compare code",
    )
    parser.add_argument(
        "--enrichment",
        action="store_true",
        help="compare Rank without enrichment, with 2 entities x 20 features added by the server, and with the "
        "same context sent inline, interleaved (instead of Rank against /null)",
    )
    args = parser.parse_args(argv)
    if args.enrichment:
        return enrichment_main(args)
    if args.database_url:
        from bench_engines import engines_main

        return engines_main(args)

    with tempfile.TemporaryDirectory(prefix="ranker-bench-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        server = start_server(data_dir, args.workers, args.threads)
        try:
            print(
                f"ranker serve on {server.url}, {len(server.worker_pids())} workers, data in {data_dir}; "
                f"{os.cpu_count()} CPUs shared with this client",
                flush=True,
            )
            (null, rank, paced), ok, ranked = asyncio.run(benchmark(server, args))
            if not args.rank_only:
                rewards = Ranked(ranked.prefix, ranked.next)
                print("Reward (each names an event ranked above), alternated with null:", flush=True)
                reward_pair = asyncio.run(against_null(server, args, REWARD_PATH, REWARD_PARTS, rewards, 204, "reward"))
        finally:
            server.stop()
        rows = committed_decisions(data_dir)
    multislot_pair, multislot_ok, multislot_rows = None, 0, 0
    if not args.rank_only:
        with tempfile.TemporaryDirectory(prefix="ranker-bench-") as tmp:
            server = start_server(Path(tmp), args.workers, args.threads, MULTISLOT_CONFIG)
            try:
                print(f"multi-slot Rank (3 slots of 20 actions), a server of its own on {server.url}:", flush=True)
                ids = EventIds(f"slots-{os.urandom(4).hex()}")
                run = against_null(server, args, MULTISLOT_PATH, multislot_body_parts(), ids, 201, "multi-slot")
                multislot_pair = asyncio.run(run)
                multislot_ok = ids.next  # every request of the warm-up and rounds; each must be a 201 and a row
                multislot_errors = sum(p.done - p.statuses.get(201, 0) for p in multislot_pair)
            finally:
                server.stop()
            multislot_rows = committed_decisions(Path(tmp))

    lat = sorted(paced.latencies)
    ratio = rank.rate / null.rate
    p50, p99 = 1e3 * percentile(lat, 0.5), 1e3 * percentile(lat, 0.99)
    lag = 1e3 * percentile(sorted(paced.lags), 0.99)
    errors = sum(p.done - p.statuses.get(201, 0) for p in (null, rank, paced))
    others = max(0.0, sum(p.machine_cpu - p.server_cpu - p.client_cpu for p in (null, rank, paced)))
    others /= sum(p.elapsed for p in (null, rank, paced))
    print()
    print(f"null  max throughput   {null.rate:8.0f} req/s   server CPU {1e3 * null.server_cpu / null.done:.2f} ms/req")
    print(f"rank  max throughput   {rank.rate:8.0f} req/s   server CPU {1e3 * rank.server_cpu / rank.done:.2f} ms/req")
    print(f"ratio rank/null        {100 * ratio:8.1f} %       (target >= 55 %, median of 5 runs)")
    cpu_ratio = (null.server_cpu / null.done) / (rank.server_cpu / rank.done)
    print(f"  by CPU per request   {100 * cpu_ratio:8.1f} %       (null's server CPU / Rank's)")
    print(f"rank at {paced.rate:.0f} req/s (open loop, {100 * args.fraction:.0f}% of max):")
    print(f"      p50              {p50:8.2f} ms")
    print(f"      p99              {p99:8.2f} ms      (target < 20 ms)")
    print(f"      max              {1e3 * lat[-1]:8.2f} ms      client timer lag p99 {lag:.2f} ms")
    print(f"rows committed         {rows:8d}          201s answered to Rank: {ok}")
    print(f"other processes        {100 * others:8.0f} % of a CPU meanwhile (the targets assume an idle machine)")
    if not args.rank_only:
        print(ratio_line("reward", *reward_pair))
        print(ratio_line("multi-slot", *multislot_pair))
        print(f"multi-slot rows committed {multislot_rows}; Ranks sent {multislot_ok}")
    consistent = rows == ok and (args.rank_only or (multislot_rows == multislot_ok and not multislot_errors))
    met = ratio >= 0.55 and p99 < 20
    print(
        f"durability check       {'OK' if consistent else 'MISMATCH'}; targets {'met' if met else 'missed'}"
        + (f"; {errors} non-201 answers" if errors else "")
    )
    if not consistent:
        return 2
    return 1 if args.check and not met else 0


def enrichment_main(args) -> int:
    with tempfile.TemporaryDirectory(prefix="ranker-bench-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        server = start_server(data_dir, args.workers, args.threads, enrichment_config())
        try:
            print(f"ranker serve on {server.url}, {len(server.worker_pids())} workers; enrichment mode", flush=True)
            phases, warm_ok = asyncio.run(enrichment_benchmark(server, args))
        finally:
            server.stop()
        rows = committed_decisions(data_dir)
    cpu = {}
    for name, runs in phases.items():
        done = sum(p.done for p in runs)
        cpu[name] = sum(p.server_cpu for p in runs) / max(done, 1)
        rate = sum(p.done for p in runs) / sum(p.elapsed for p in runs)
        print(f"{name:<9} server CPU {1e3 * cpu[name]:.3f} ms/req over {done} Ranks ({rate:.0f} req/s)")
    # Each round's three phases ran back to back, so their ratios move less with the machine's other load
    # than the totals: the verdict is the median of the rounds' ratios, and every round is shown.
    per_round = {name: [p.server_cpu / max(p.done, 1) for p in runs] for name, runs in phases.items()}
    vs_plain = [e / p - 1 for e, p in zip(per_round["enriched"], per_round["plain"], strict=True)]
    vs_inline = [e / i - 1 for e, i in zip(per_round["enriched"], per_round["inline"], strict=True)]
    inline_vs_plain = [i / p - 1 for i, p in zip(per_round["inline"], per_round["plain"], strict=True)]
    print("round   plain ms  enriched ms  inline ms  enriched/plain  enriched/inline  other processes")
    for r, (p, e, i) in enumerate(zip(*per_round.values(), strict=True)):
        others = [
            max(0.0, q.machine_cpu - q.server_cpu - q.client_cpu) / q.elapsed for q in (phases[n][r] for n in phases)
        ]
        print(
            f"{r + 1:5d}   {1e3 * p:8.3f}  {1e3 * e:11.3f}  {1e3 * i:9.3f}  {100 * vs_plain[r]:+13.1f} %"
            f"  {100 * vs_inline[r]:+14.1f} %  {100 * min(others):.0f}-{100 * max(others):.0f} % of a CPU"
        )
    extra = statistics.median(vs_plain)
    print(
        f"enriched vs plain      {100 * extra:+6.1f} % server CPU per Rank, median of {len(vs_plain)} rounds "
        "(target <= +10 %)"
    )
    print(f"enriched vs inline     {100 * statistics.median(vs_inline):+6.1f} % median (the lookup and merge alone)")
    print(
        f"inline vs plain        {100 * statistics.median(inline_vs_plain):+6.1f} % median (the larger context alone, "
        "sent by the caller)"
    )
    errors = sum(p.done - p.statuses.get(201, 0) for runs in phases.values() for p in runs)
    ok = sum(p.statuses.get(201, 0) for runs in phases.values() for p in runs)
    consistent = rows == ok + warm_ok
    print(f"rows committed         {rows}; 201s answered {ok + warm_ok}: {'OK' if consistent else 'MISMATCH'}")
    if errors:
        print(f"non-201 answers        {errors}")
    if not consistent:
        return 2
    return 1 if args.check and extra > 0.10 else 0


if __name__ == "__main__":
    sys.exit(main())
