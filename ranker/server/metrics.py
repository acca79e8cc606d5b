"""Prometheus metrics at ``GET /metrics``: the API's requests, latencies and errors, and each loop's learning.

Request metrics are counted by the worker that answers, in Flask request hooks (:meth:`Metrics.install`):

- ``ranker_requests_total{loop, operation, status}`` and ``ranker_request_duration_seconds{loop, operation}``
  for the Personalizer operations (every route under ``/personalizer/``; ``operation`` is the view's name:
  ``rank``, ``reward``, ``activate``, ``update_policy``, ...);
- ``ranker_errors_total{loop, operation, code}`` for every 4xx and 5xx answer of the app, by its
  Personalizer error code (``x-ms-error-code``); ``operation`` is the view's name (``metrics``, ...), empty
  when no route matched.

``loop`` is the loop of the request's key (``flask.g.loop``, set when the key is checked), empty when no key
was accepted. Every label takes its values from the configuration and the code, never from the request, so
the number of series stays bounded.

Under gunicorn the workers share these counts through prometheus_client's multiprocess mode: each worker
writes memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``, a folder the gunicorn master names and empties
before it forks (``ranker/server/gunicorn_config.py``), and a scrape, whichever worker answers it, adds up the files
of all the server's workers, exited ones included, so a worker killed and replaced loses no counts.
prometheus_client chooses its mode when it is first imported, so the variable must be set before that;
:class:`Metrics` refuses to start when the variable and the mode disagree. Without the variable
(``create_app`` in tests and scripts) each app counts in its own registry, in memory.

The learning state is read from the decision log and the model store when scraped (:class:`LearningState`),
so it needs no state shared between processes and every worker reports the same values.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from ..core.errors import StoreUnavailable
from ..logdata.join import RewardJoin
from ..serving import loopconfig
from ..serving.service import Service
from .api import api_key

log = logging.getLogger("ranker")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# From a Rank on a warm worker (under a millisecond) to a commit stuck behind a busy disk; slower: +Inf.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
API_PATH = "/personalizer/"


class Metrics:
    """The request metrics of one app, its hooks, and the ``/metrics`` view."""

    def __init__(self, service: Service):
        self.service = service
        shared = values.ValueClass is not values.MutexValue
        if shared != (MULTIPROC_ENV in os.environ):
            change = "unset after" if shared else "set after"
            raise RuntimeError(
                f"{MULTIPROC_ENV} was {change} prometheus_client was imported: the workers would not share their "
                "metrics. Set it before anything imports prometheus_client (gunicorn: in the master, before forking)."
            )
        if shared:
            # The files of all processes hold the counts; a scrape reads them, with nothing registered.
            os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)
            own: CollectorRegistry | None = None
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry)
        else:
            own = self.registry = CollectorRegistry()
        self.requests = Counter(
            "ranker_requests",
            "Personalizer API requests answered, by loop, operation and HTTP status.",
            ["loop", "operation", "status"],
            registry=own,
        )
        self.duration = Histogram(
            "ranker_request_duration_seconds",
            "Time to answer a Personalizer API request, from routing to the response, by loop and operation.",
            ["loop", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.errors = Counter(
            "ranker_errors",
            "Error answers (4xx, 5xx), by loop, operation and Personalizer error code.",
            ["loop", "operation", "code"],
            registry=own,
        )
        self.registry.register(LearningState(service))
        # Label lookups cost microseconds; these caches make the per-request cost a dict lookup.
        self._operations: dict[str | None, tuple[str, bool]] = {}
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._error_series: dict[tuple[str, str, str], Any] = {}

    def install(self, app: Flask) -> None:
        """Count every request of ``app`` and serve ``GET /metrics``; call before any other request hook."""
        app.before_request(self.started)
        app.after_request(self.finished)
        app.add_url_rule("/metrics", "metrics", self.view, methods=["GET"])

    # -- request hooks ----------------------------------------------------------------------------

    @staticmethod
    def started() -> None:
        g.metrics_started = perf_counter()

    def finished(self, response: Response) -> Response:
        # Every answer passes here, errors included: the app's error handlers turn each exception into one.
        # Each use of Flask's context proxies costs about a microsecond: resolve them once.
        req, ctx = request._get_current_object(), g._get_current_object()
        endpoint = req.endpoint
        found = self._operations.get(endpoint)
        if found is None:
            rule = req.url_rule
            operation = "" if endpoint is None else endpoint.rpartition(".")[2]
            found = self._operations[endpoint] = (operation, rule is not None and rule.rule.startswith(API_PATH))
        operation, api = found
        loop = ctx.get("loop", "")
        status = response.status_code
        if api:
            key = (loop, operation, status)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (
                    self.requests.labels(loop, operation, str(status)),
                    self.duration.labels(loop, operation),
                )
            series[0].inc()
            started = ctx.get("metrics_started")
            if started is not None:  # None only when a request hook failed before ours ran
                series[1].observe(perf_counter() - started)
        if status >= 400:
            error = (loop, operation, response.headers.get("x-ms-error-code", ""))
            counter = self._error_series.get(error)
            if counter is None:
                counter = self._error_series[error] = self.errors.labels(*error)
            counter.inc()
        return response

    # -- GET /metrics -------------------------------------------------------------------------------

    def view(self) -> Response:
        """The metrics in Prometheus' text format (OpenMetrics when asked); an admin key when keys are configured."""
        if self.service.settings.auth:
            self.service.authenticate(api_key(), admin=True)
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encoder(self.registry), 200, content_type=content_type)


class LearningState:
    """Per loop, read from the decision log and the model store at each scrape (a prometheus_client collector).

    - ``ranker_events_logged``: the loop's decisions in the log (one per Rank; retention and
      ``DELETE logs`` remove them);
    - ``ranker_events_learned_total``, ``ranker_events_skipped_total``: decisions the trainer has learned
      from, and joined but not learned (no eligible action, LoggingOnly, deferred and never activated), as of
      its last checkpoint; both restart from 0 when the model is reset;
    - ``ranker_trainer_lag_seconds``: how long the next decision the trainer will handle (the first after
      its checkpoint, in commit order) has been learnable, i.e. since ``created_at + rewardWaitTime`` plus the
      trainer's commit grace; 0 when that decision is not learnable yet or there is none;
    - ``ranker_model_version``: the model version published for the workers (``models/<loop>/CURRENT``),
      0 before the first.
    """

    def __init__(self, service: Service):
        self.service = service
        self._counted: dict[str, tuple[int, int, int]] = {}  # loop: (first id, last id, decisions) when last read

    def collect(self) -> Iterator[Metric]:
        settings, store = self.service.settings, self.service.store
        version = GaugeMetricFamily(
            "ranker_model_version", "Model version published for the workers (0: none yet).", labels=["loop"]
        )
        for name in settings.loops:
            served = self.service.models.served(name)
            version.add_metric([name], int(served) if served else 0)
        yield version
        logged = GaugeMetricFamily("ranker_events_logged", "Decisions (Rank events) in the log.", labels=["loop"])
        learned = CounterMetricFamily(
            "ranker_events_learned", "Decisions the trainer learned from, as of its last checkpoint.", labels=["loop"]
        )
        skipped = CounterMetricFamily(
            "ranker_events_skipped",
            "Decisions the trainer joined and did not learn from, as of its last checkpoint.",
            labels=["loop"],
        )
        lag = GaugeMetricFamily(
            "ranker_trainer_lag_seconds",
            "How long the next decision the trainer will handle has been learnable (0: none is).",
            labels=["loop"],
        )
        try:
            states = store.learning_counts()
            now = datetime.now(UTC)
            for name in settings.loops:
                state = states.get(name) or {"last_decision_id": 0, "learned": 0, "skipped": 0}
                logged.add_metric([name], self._logged(name))
                learned.add_metric([name], state["learned"])
                skipped.add_metric([name], state["skipped"])
                lag.add_metric([name], self._lag(name, state["last_decision_id"], now))
        except StoreUnavailable as exc:
            log.warning("metrics: the learning state is left out: %s", exc)
            return
        yield from (logged, learned, skipped, lag)

    def _logged(self, loop: str) -> int:
        """The loop's decisions in the log, counting only those added since this process last counted.

        A full count reads the whole index, about 0.1 s per million decisions, while holding the store's read
        connection that requests use too. Ids only grow and are never reused, and deletions take the oldest
        decisions (retention, ``DELETE logs``), which moves the first id: then everything is counted again.
        """
        store = self.service.store
        first, last = store.id_range(loop)
        if first is None:
            self._counted.pop(loop, None)
            return 0
        known = self._counted.get(loop)
        since, count = (known[1], known[2]) if known and known[0] == first and known[1] <= last else (0, 0)
        count += store.count_ids(loop, since, last)
        self._counted[loop] = (first, last, count)
        return count

    def _lag(self, loop: str, last_id: int, now: datetime) -> float:
        store = self.service.store
        created_at = store.next_decision_time(loop, last_id)
        if created_at is None:
            return 0.0
        loop_settings, _, _ = loopconfig.effective(self.service.settings, loop, store.loop_config(loop))
        # learnable since the moment the due rule reached its time
        return max(
            0.0, (RewardJoin.of(loop_settings).due_before(now) - datetime.fromisoformat(created_at)).total_seconds()
        )


# -- the shared folder under gunicorn ---------------------------------------------------------------


def prepare_multiprocess_dir(path: str | os.PathLike | None = None) -> Path:
    """Empty the metrics folder of a starting server (default: ``PROMETHEUS_MULTIPROC_DIR``) and delete the
    folders beside it of servers no longer running, each named by its gunicorn master's pid.

    gunicorn's master calls it before forking the workers (``on_starting``): counts start from 0 with the
    server, while each server on one data folder keeps its own.
    """
    folder = Path(path if path is not None else os.environ[MULTIPROC_ENV])
    if folder.parent.is_dir():
        for other in folder.parent.iterdir():
            if other != folder and other.name.isdigit() and not _running(int(other.name)):
                shutil.rmtree(other, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def worker_exited(pid: int) -> None:
    """Bookkeeping when a worker exits (gunicorn's ``child_exit``): its counts stay, its live gauges go."""
    mark_process_dead(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
