"""In-worker CPU accounting for ``scripts/profile_rank.py``: each piece of a request timed with its thread's CPU clock.

``register()`` (from a ``sitecustomize`` that the profiler puts on the server's ``PYTHONPATH``) arranges for every
forked gunicorn worker to wrap the functions of ``PIECES`` before it loads the app. A wrapper adds the thread CPU
time spent in its function, less what nested wrapped functions took (exclusive time), to its piece, and counts the
calls; the threads' CPU clock counts no time spent waiting (for the GIL, a lock, the disk). Every 0.5 s the worker
writes its totals, and the CPU of its main thread (the poller that reads requests) and of its store writer thread
(from /proc), and of its threads by name, to ``$PROFILE_RANK_OUT/<pid>.json``. Nothing here is part of ranker.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time

_clock = time.thread_time_ns
_totals: dict[str, list[int]] = {}  # piece -> [exclusive ns, calls]
_writer_tids: set[int] = set()
# A request served in a greenlet (ranker.server.inline_worker) is switched out while its round commits and the
# other requests run: its wrappers' stacks are the greenlet's, and its time switched out is not its own.
try:
    from greenlet import getcurrent as _current
    from greenlet import settrace as _settrace
except ImportError:
    _current, _settrace = threading.get_ident, None
_stacks: dict = {}  # greenlet (or thread) -> its wrappers' stack of nested ns
_paused: dict = {}  # greenlet -> thread CPU ns spent while it was switched out
_out_at: dict = {}


def _trace(event: str, args) -> None:
    if event in ("switch", "throw"):
        origin, target = args
        now = _clock()
        _out_at[origin] = now
        left = _out_at.pop(target, None)
        if left is not None:
            _paused[target] = _paused.get(target, 0) + now - left


def _wrap(fn, piece: str):
    entry = _totals.setdefault(piece, [0, 0])

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        me = _current()
        stack = _stacks.get(me)
        if stack is None:
            stack = _stacks[me] = []
        stack.append(0)
        paused = _paused.get(me, 0)
        start = _clock()
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = _clock() - start - (_paused.get(me, 0) - paused)
            nested = stack.pop()
            entry[0] += elapsed - nested
            entry[1] += 1
            if stack:
                stack[-1] += elapsed
            else:
                del _stacks[me]
                _paused.pop(me, None)

    return timed


def _patch(owner, name: str, piece: str) -> None:
    """Time ``owner.name`` as ``piece``; nothing when this version of ranker has no such name."""
    raw = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if raw is None:
        return
    if isinstance(raw, staticmethod):
        setattr(owner, name, staticmethod(_wrap(raw.__func__, piece)))
    else:
        setattr(owner, name, _wrap(raw, piece))


def _calibrate() -> tuple[float, float]:
    """(ns a wrapper adds inside its own measure, ns it adds to its caller) per call, from a wrapped no-op."""

    def noop():
        return None

    wrapped = _wrap(noop, "calibration")
    n = 3000
    for _ in range(2):
        start = _clock()
        for _ in range(n):
            noop()
        plain = _clock() - start
        _totals["calibration"] = [0, 0]
        start = _clock()
        for _ in range(n):
            wrapped()
        total = _clock() - start
    inside = _totals.pop("calibration")[0] / n
    return inside, max(0.0, (total - plain) / n - inside)


def _thread_cpu(tid: int) -> float:
    try:
        fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _by_thread_name() -> dict[str, float]:
    """CPU seconds of this process's Python threads, summed by name with the digits taken out."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.native_id is not None:
            name = re.sub(r"\d+", "N", thread.name)
            out[name] = out.get(name, 0.0) + _thread_cpu(thread.native_id)
    return out


def install() -> None:
    from gunicorn.workers import gthread

    from ranker.core import dsjson, rules, schemas
    from ranker.server import api, http_worker, meta, metrics
    from ranker.serving import engine, explain, service, slots, vwfeatures
    from ranker.signals import enrich
    from ranker.store import decisions, sqlite

    try:
        from ranker.store import postgres
    except ImportError:  # psycopg not installed: SQLite only
        postgres = None

    inside, outside = _calibrate()
    for module in (api, meta):
        _patch(module, "parse_json", "JSON parse")
    for module in (api, meta):
        _patch(module, "request_bytes", "request body")
    _patch(api, "validate", "pydantic validation")
    _patch(api, "validate_json", "JSON parse and pydantic validation, one pass")
    _patch(schemas, "_check_object", "feature checks")
    _patch(api, "caller", "auth (key, loop)")
    _patch(service.Service, "_begin", "candidates, ids, timestamp")
    _patch(service.Service, "rank", "Service.rank's own lines")
    _patch(service.Service, "rank_multislot", "Service.rank's own lines")
    _patch(service.Service, "reward", "Service.reward's own lines")
    _patch(enrich.Enricher, "enrich", "enrichment")
    _patch(rules, "apply", "rules")
    for name in ("context_json", "decision_line", "multislot_line", "with_slots"):
        _patch(dsjson, name, "record building")
    _patch(service.Call, "row", "record building")
    _patch(explain, "logged", "record building")
    _patch(engine.Engine, "predict", "VW predict")
    _patch(engine.Engine, "predict_slots", "VW predict")
    _patch(vwfeatures, "predict_parsed", "VW predict")  # with explanations: VW's parsed examples kept and read
    _patch(explain, "rank_explanation", "explanation (terms, names)")
    _patch(explain, "slots_explanation", "explanation (terms, names)")
    for name in ("reweight", "sample"):
        _patch(service, name, "sampling")
    _patch(explain, "explored", "sampling")
    _patch(service, "choose_slots", "slot filling (predicts inside)")
    _patch(slots, "choose_slots", "slot filling (predicts inside)")  # multi-slot Rank's one-parse filling
    if hasattr(engine, "SlotPredictor"):
        for name in ("__init__", "scores", "close"):  # its parse, predictions and finish
            _patch(engine.SlotPredictor, name, "VW predict")
    _patch(api, "json_response", "response encoding")
    _patch(api, "answer", "response encoding")
    _patch(metrics.Metrics, "started", "metrics")
    _patch(metrics.Metrics, "finished", "metrics")
    _patch(sqlite.Store, "write", "hand-off to the writer (request thread)")
    _patch(decisions.DecisionLog, "record_decision", "hand-off to the writer (request thread)")
    _patch(sqlite, "_run_merged", "writer: INSERT")
    _patch(sqlite.Store, "_commit", "writer: BEGIN, COMMIT")
    _patch(sqlite.Store, "check", "writer: file checks (stat)")
    if postgres is not None:
        _patch(postgres.PostgresStore, "_commit_pipelined", "writer: BEGIN … COMMIT, one query (PostgreSQL)")
        _patch(postgres.PostgresStore, "_read", "reads (pool)")
        _patch(postgres.PostgresDatabase, "read", "reads (pool)")
    _patch(http_worker.BufferingWorker, "serve", "request thread's framework")
    try:
        from ranker.server import inline_worker
    except ImportError:
        inline_worker = None
    if inline_worker is not None:
        _patch(inline_worker.InlineWorker, "serve_inline", "request thread's framework")
        _patch(inline_worker.InlineWorker, "serve_round", "requests served in the poller")
    if _settrace is not None:
        _settrace(_trace)  # this thread's switches: the poller's, where the inline worker runs its requests
    _patch(gthread.ThreadWorker, "handle_request", "request thread's framework")
    for name in ("null",):
        _patch(meta, name, "null view's own lines")

    def tracking(write_loop):
        def tracked(self):
            _writer_tids.add(threading.get_native_id())
            return write_loop(self)

        return tracked

    sqlite.Store._write_loop = tracking(sqlite.Store._write_loop)
    if postgres is not None:
        postgres.PostgresStore._write_loop = tracking(postgres.PostgresStore._write_loop)
    out = os.environ["PROFILE_RANK_OUT"]
    main_tid = threading.get_native_id()

    def dump() -> None:
        path = os.path.join(out, f"{os.getpid()}.json")
        while True:
            body = {
                "pieces": {k: list(v) for k, v in _totals.items()},
                "inside_ns": inside,
                "outside_ns": outside,
                "main_cpu": _thread_cpu(main_tid),
                "writer_cpu": sum(_thread_cpu(tid) for tid in list(_writer_tids)),
                "threads": _by_thread_name(),
            }
            with open(path + ".tmp", "w") as f:
                json.dump(body, f)
            os.replace(path + ".tmp", path)
            time.sleep(0.5)

    threading.Thread(target=dump, daemon=True, name="profile-dump").start()


def register() -> None:
    if os.environ.get("PROFILE_RANK_OUT"):
        os.register_at_fork(after_in_child=_in_worker)


def _in_worker() -> None:
    import sys

    if "gunicorn" in sys.modules and "ranker.app" not in sys.modules:  # a worker, before it loads the app
        install()
