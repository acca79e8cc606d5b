"""gunicorn settings for ``ranker serve``, read from ranker's settings (file, RANKER_* variables)."""

from __future__ import annotations

import logging

from ranker.settings import LOOPBACK, load_settings
from ranker.store import migrate

_settings = load_settings()

wsgi_app = "ranker.app:create_app()"
bind = f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"
workers = _settings.workers
# Threads let concurrent requests of one worker share a group commit of the decision log.
worker_class = "gthread"
threads = _settings.threads
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
    applied = migrate(_settings.database_path)
    log = logging.getLogger("gunicorn.error")
    if applied:
        log.info("decision log %s: applied migrations %s", _settings.database_path, ", ".join(applied))
    if not _settings.auth:
        log.warning(
            "AUTH IS OFF: no loop has keys, every request goes to loop %r; serving on loopback only",
            _settings.default_loop,
        )
    log.info("loops: %s; decision log: %s", ", ".join(_settings.loops), _settings.database_path)
