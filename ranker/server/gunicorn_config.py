"""gunicorn settings for ``ranker serve``, read from ranker's settings (file, RANKER_* variables)."""

from __future__ import annotations

import gc
import logging
import os
import socket

from ranker.core.settings import LOOPBACK, load_settings
from ranker.store import open_database

_settings = load_settings()

# The workers open the decision log on_starting created; they never create one (see create_app).
wsgi_app = "ranker.app:create_app(create_database=False)"
bind = f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"
workers = _settings.workers
# The worker is gthread's, but its poller reads each request whole (under header_timeout and body_timeout), so
# clients that send slowly hold no thread (ranker/server/http_worker.py); it serves Rank, Reward and Activate
# itself, in greenlets, and their writes share the writer thread's group commits (ranker/server/inline_worker.py).
# The threads serve every other request.
worker_class = "ranker.server.inline_worker.InlineWorker"
threads = _settings.threads
worker_connections = _settings.max_connections
# Each worker listens on its own SO_REUSEPORT socket and the kernel spreads new connections over them.
# On one shared socket, the worker that happens to be awake accepts a whole burst of keep-alive
# connections (a client's or a proxy's pool) and keeps them: measured with 24 connections, every one
# landed on the same worker and the other stayed idle, which halved the throughput of Rank and /null.
reuse_port = True
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = None
control_socket_disable = True  # several servers may run side by side on one host
errorlog = "-"
loglevel = "info"


def on_starting(server) -> None:
    if not _settings.auth and _settings.host not in LOOPBACK:
        raise SystemExit(f"refusing to serve {_settings.host} without keys: add keys to a loop or bind 127.0.0.1")
    _check_address_free(_settings.host, _settings.port)
    applied = open_database(_settings).migrate()
    log = logging.getLogger("gunicorn.error")
    if applied:
        log.info("decision log %s: applied migrations %s", _settings.database_name, ", ".join(applied))
    if not _settings.auth:
        log.warning(
            "AUTH IS OFF: no loop has keys, every request goes to loop %r; serving on loopback only",
            _settings.default_loop,
        )
    log.info("loops: %s; decision log: %s", ", ".join(_settings.loops), _settings.database_name)
    # The workers share their request metrics through files in a folder of this server's (prometheus_client's
    # multiprocess mode). prometheus_client reads the variable when it is first imported: set it before.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_settings.data_dir.resolve() / "metrics" / str(os.getpid()))
    from ranker.server.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir()


def post_worker_init(worker) -> None:
    """In each worker, once forked and its app loaded (see :func:`worker_started`)."""
    worker_started(getattr(worker, "wsgi", None))


def worker_started(app) -> None:
    """A worker's app is loaded: set its start-up objects aside from the garbage collector, then look for new
    models and configuration in a thread of its own, never inside a request (a thread started before the fork
    would not exist in the worker).

    The modules, Flask, pydantic's schemas and VW's bindings make about 80,000 objects that live as long as the
    worker, and every full (generation 2) collection walked them all while holding the GIL: 50-95 ms in which no
    thread of the worker ran, nor the other workers' commits waiting for the write turn its writer held. Under
    Rank load that came about once per worker every 10 s and made the longest stalls at half rate
    (``scripts/profile_tail.py``). Frozen (``gc.freeze``), they are never collected nor walked again; what start-up
    left as garbage is collected first, so nothing unreachable is kept.
    """
    gc.collect()
    gc.freeze()
    service = getattr(app, "extensions", {}).get("ranker")
    if service is not None:
        service.start_refresher()


def worker_exit(server, worker) -> None:
    """In the worker, once it stopped serving (SIGTERM, a reload, max requests): stop its refresher."""
    service = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("ranker")
    if service is not None:
        service.stop_refresher()


def child_exit(server, worker) -> None:
    from ranker.server.metrics import worker_exited

    worker_exited(worker.pid)


def _check_address_free(host: str, port: int) -> None:
    """Refuse to start when something listens on the address already.

    With reuse_port a second server on the same address would bind as well and silently take part of
    the connections; a plain bind fails as soon as any socket listens there.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as gunicorn picks it for ``bind``
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT do not count
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"cannot serve on {host}:{port}: {exc.strerror}") from exc
