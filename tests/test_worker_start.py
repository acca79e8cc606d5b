"""A serving worker, once its app is loaded, sets its start-up objects aside from the garbage collector (no full
collection walks them while requests wait), keeps no start-up garbage, and starts its refresher."""

from __future__ import annotations

import gc
import threading
import time
import weakref

from ranker.server.gunicorn_config import worker_started


class _Node:
    pass


def _full_collection_cpu() -> float:
    start = time.thread_time()
    gc.collect()
    return time.thread_time() - start


def test_a_started_worker_freezes_its_start_up_objects_and_keeps_no_garbage(app):
    service = app.extensions["ranker"]
    garbage = _Node()
    garbage.me = garbage  # a cycle: only the collector can free it
    gone = weakref.ref(garbage)
    del garbage
    before = min(_full_collection_cpu() for _ in range(2))
    try:
        worker_started(app)
        assert gone() is None  # collected, not frozen for the worker's life
        assert gc.get_freeze_count() > 50_000  # the app's, Flask's, pydantic's and VW's objects
        assert gc.is_tracked(service) and not any(o is service for o in gc.get_objects())  # set aside, not walked
        after = min(_full_collection_cpu() for _ in range(2))
        assert after < before / 5, (before, after)
        assert [t for t in threading.enumerate() if t.name == "ranker-refresh"]
    finally:
        service.stop_refresher()
        gc.unfreeze()
