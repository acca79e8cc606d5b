"""In-process timeline for ``scripts/profile_tail.py``: what each process of a ``ranker serve`` did, and when.

``register()`` (from a ``sitecustomize`` that the script puts on the server's ``PYTHONPATH``) arranges for every
forked gunicorn worker to record, before it loads the app, with ``time.monotonic()`` (one clock for every
process of the machine, the load generator's too):

- every garbage collection (``gc.callbacks``): generation, start, end, objects collected, the thread it ran in;
- every request: when the poller handed it to a thread, when a thread took it, when its answer was written;
- every group commit of the decision log: waiting for the write turn (``flock``), BEGIN, the INSERTs, the
  COMMIT, and the batch's size; every WAL checkpoint; each look of the refresher thread; each model load and
  ``malloc_trim``;
- every 0.1 s, the process's threads' time spent runnable but not running (``/proc/self/task/*/schedstat``).

In the trainer (``python -m ranker train``) it records each learning pass (``Trainer.run_once``) with the CPU it
took, and each job run. A process writes its timeline to ``$PROFILE_TAIL_OUT/<pid>.json`` when told (see ``_dumper``).

Variants for comparisons, set in the server's environment (the script's ``--variant``): ``TAIL_GC_FREEZE=1`` calls
``gc.freeze()`` in each worker after its app is loaded; ``TAIL_GC_THRESHOLD=a,b,c`` sets the collector's
thresholds there; ``TAIL_SWITCH_INTERVAL=s`` sets ``sys.setswitchinterval`` in each worker. Nothing here is part
of ranker.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
import threading
import time

_now = time.monotonic
_events: list[list] = []  # [kind, start, end, detail...]
_gc_start: dict[int, float] = {}


def _record(kind: str, start: float, end: float, *detail) -> None:
    _events.append([kind, start, end, *detail])


def _timed(kind: str, fn, detail=None):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        start = _now()
        try:
            return fn(*args, **kwargs)
        finally:
            _record(kind, start, _now(), *(detail(args) if detail else ()))

    return timed


def _on_gc(phase: str, info: dict) -> None:
    tid = threading.get_ident()
    if phase == "start":
        _gc_start[tid] = _now()
    else:
        start = _gc_start.pop(tid, None)
        if start is not None:
            _record("gc", start, _now(), info["generation"], info["collected"], threading.current_thread().name)


def _schedstat() -> float:
    """Seconds this process's threads spent runnable, waiting for a CPU, so far."""
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except OSError:
                continue
    except OSError:
        return 0.0
    return total / 1e9


def _dumper(role: str) -> None:
    """Every 0.1 s note the run-queue wait; write the timeline once ``$PROFILE_TAIL_OUT/dump`` appears (after the
    load: writing it meanwhile would hold the GIL for milliseconds)."""
    out = os.environ["PROFILE_TAIL_OUT"]
    path = os.path.join(out, f"{os.getpid()}.json")
    flag = os.path.join(out, "dump")
    waits: list[list[float]] = []
    while True:
        time.sleep(0.1)
        waits.append([_now(), _schedstat()])
        if os.path.exists(flag) and not os.path.exists(path):
            body = {"role": role, "pid": os.getpid(), "events": list(_events), "runqueue": waits}
            with open(path + ".tmp", "w") as f:
                json.dump(body, f)
            os.replace(path + ".tmp", path)


def _install_worker() -> None:
    import concurrent.futures
    import fcntl as real_fcntl
    import types

    from ranker.server import http_worker
    from ranker.serving import service
    from ranker.store import sqlite

    gc.callbacks.append(_on_gc)

    submit = concurrent.futures.ThreadPoolExecutor.submit

    def submitting(self, fn, *args, **kwargs):
        if getattr(fn, "__name__", "") != "serve":
            return submit(self, fn, *args, **kwargs)
        handed = _now()

        def served(*a, **k):
            start = _now()
            try:
                return fn(*a, **k)
            finally:
                _record("request", handed, _now(), start)

        return submit(self, served, *args, **kwargs)

    concurrent.futures.ThreadPoolExecutor.submit = submitting

    # The write loop: its wait for the write turn, then each transaction's pieces.
    def flock(fd, op):
        if op == real_fcntl.LOCK_EX:
            start = _now()
            real_fcntl.flock(fd, op)
            _record("turn", start, _now())
        else:
            real_fcntl.flock(fd, op)

    sqlite.fcntl = types.SimpleNamespace(flock=flock, LOCK_EX=real_fcntl.LOCK_EX, LOCK_UN=real_fcntl.LOCK_UN)
    sqlite.Store._commit = _timed("commit", sqlite.Store._commit, lambda a: (len(a[2]),))
    sqlite.Store._begin = _timed("begin", sqlite.Store._begin)
    sqlite._run_merged = _timed("insert", sqlite._run_merged, lambda a: (len(a[1]),))
    sqlite.checkpoint = _timed("checkpoint", sqlite.checkpoint)
    try:
        from ranker.store import postgres
    except ImportError:
        postgres = None
    if postgres is not None:
        name = "_commit_pipelined"
        if hasattr(postgres.PostgresStore, name):
            setattr(
                postgres.PostgresStore,
                name,
                _timed("commit", getattr(postgres.PostgresStore, name), lambda a: (len(a[2]),)),
            )
    service.Service._look = _timed("look", service.Service._look)
    service.Service._load_published = _timed("load", service.Service._load_published)
    service.release_memory = _timed("trim", service.release_memory)

    load_wsgi = http_worker.BufferingWorker.load_wsgi

    def loading(self):
        load_wsgi(self)
        if os.environ.get("TAIL_GC_THRESHOLD"):
            gc.set_threshold(*(int(v) for v in os.environ["TAIL_GC_THRESHOLD"].split(",")))
        if os.environ.get("TAIL_GC_FREEZE") == "1":
            gc.collect()
            gc.freeze()
        if os.environ.get("TAIL_SWITCH_INTERVAL"):
            sys.setswitchinterval(float(os.environ["TAIL_SWITCH_INTERVAL"]))

    http_worker.BufferingWorker.load_wsgi = loading
    run = http_worker.BufferingWorker.run

    def running(self):  # after gunicorn's post_worker_init
        _record("serving", _now(), _now(), gc.get_freeze_count(), len(gc.get_objects()), list(gc.get_threshold()))
        return run(self)

    http_worker.BufferingWorker.run = running
    threading.Thread(target=_dumper, args=("worker",), daemon=True, name="tail-dump").start()


def _install_trainer() -> None:
    from ranker.learning import trainer

    gc.callbacks.append(_on_gc)
    run_once = trainer.Trainer.run_once

    def timed(self, *args, **kwargs):
        start, cpu = _now(), time.thread_time()
        try:
            return run_once(self, *args, **kwargs)
        finally:
            _record("pass", start, _now(), time.thread_time() - cpu)

    trainer.Trainer.run_once = timed
    try:
        from ranker.evaluation import jobs

        jobs.run_pending = _timed("jobs", jobs.run_pending)  # the trainer calls it as jobs.run_pending
    except (ImportError, AttributeError):
        pass
    threading.Thread(target=_dumper, args=("trainer",), daemon=True, name="tail-dump").start()


def register() -> None:
    if not os.environ.get("PROFILE_TAIL_OUT"):
        return
    argv = list(getattr(sys, "orig_argv", []))
    if argv[1:4] == ["-m", "ranker", "train"]:  # sys.argv is not set yet while sitecustomize runs
        _install_trainer()
        return
    os.register_at_fork(after_in_child=_in_worker)


def _in_worker() -> None:
    if "gunicorn" in sys.modules and "ranker.app" not in sys.modules:  # a worker, before it loads the app
        _install_worker()
