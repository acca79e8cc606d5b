"""Rank-time enrichment: the stored attributes and current feature values of the entities a context names.

A loop's ``entities`` setting says where each entity id sits in the context (``{account = "account.id"}``);
the entity's values are merged into the object holding the id, what the caller sent winning. The merged
context is what the rules test, what VW sees and what the decision record logs.

Cost on the Rank path: the entity's version (raised by every change its values depend on: a new event, an
attribute update, a rebuild), read in one indexed query for the entities of the request, and only when this
worker has not read it within ``signals.recheck_seconds`` (at most 1 s); and, only when the version moved or a
UTC day boundary passed (windows move by days), a read of its attributes and buckets. Feature values then come
from the worker's cache. Any SQL on the Rank path costs tens of microseconds, most of it because SQLite drops a
connection's page cache whenever another connection committed, which the decision log does at every Rank.

What a Rank can miss: a change made through another worker or process in the last ``recheck_seconds``. A change
made through this worker (ingestion, PUT/PATCH/DELETE of an entity, an import, a rebuild) drops the versions it
touched, so this worker's next Rank reads them again; a version read while such a change was being made is not
kept.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ..core.rules import lookup
from ..store import parse_time
from ..store.signals import SignalStore
from .definitions import SignalSettings
from .entities import leaves
from .features import DAY_NS, compute


class Enricher:
    def __init__(self, store: SignalStore, settings: SignalSettings):
        self.store = store
        self.settings = settings
        self.features = {entity: settings.of(entity) for entity in ("account", "user")}
        days = [f.days(settings.retention_days) for f in settings.features if f.from_events]
        self.days = max(days, default=0)
        self._cache: dict[tuple[str, str], tuple[int, int, dict[str, Any], dict[str, float]]] = {}
        # versions as read (None: unknown entity) and the monotonic time their read began
        self._checked: dict[tuple[str, str], tuple[int | None, float]] = {}
        self._changes = 0  # changes made through this worker so far (see versions)
        self._lock = threading.Lock()

    def versions(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int | None]:
        """The entities' versions (None: unknown): those this worker read within ``recheck_seconds`` as read,
        the others in one query."""
        recheck = self.settings.recheck_seconds
        since = time.monotonic() - recheck
        versions: dict[tuple[str, str], int | None] = {}
        unread = []
        for key in keys:
            checked = self._checked.get(key)
            if checked is not None and checked[1] > since:
                versions[key] = checked[0]
            else:
                unread.append(key)
        if not unread:
            return versions
        started, changes = time.monotonic(), self._changes
        read = self.store.versions(unread)
        fresh = {key: read.get(key) for key in unread}
        versions.update(fresh)
        if recheck and self.settings.cache_entities:
            with self._lock:
                if self._changes == changes:  # else a change through this worker may have come after the read
                    if len(self._checked) + len(fresh) > self.settings.cache_entities:
                        self._checked.clear()
                    for key, version in fresh.items():
                        self._checked[key] = (version, started)
        return versions

    def changed(self, keys: Iterable[tuple[str, str]] | None = None) -> None:
        """Entities just changed through this worker (every entity when None): the next Rank naming one reads
        its version again. Call it once the change is committed (or failed)."""
        with self._lock:
            self._changes += 1
            if keys is None:
                self._checked.clear()
            else:
                for key in keys:
                    self._checked.pop(key, None)

    def values(self, entity: str, entity_id: str, version: int, now_ns: int, row: dict[str, Any] | None = None):
        """(values, times) of an entity at ``version``: attributes and features, and the epoch seconds of the
        newest signal behind each (by dotted path within the entity). ``row``: its attributes and times, when
        the caller read them already."""
        day = now_ns // DAY_NS
        key = (entity, entity_id)
        cached = self._cache.get(key)
        if cached is not None and cached[0] == version and cached[1] == day:
            return cached[2], cached[3]
        row = row or self.store.entity(entity, entity_id) or {"attributes": "{}", "times": "{}", "version": version}
        attributes = json.loads(row["attributes"])
        times = {path: parse_time(t).timestamp() for path, t in json.loads(row["times"]).items()}
        buckets, distinct = self.store.buckets(entity, entity_id, day - self.days + 1) if self.days else ([], [])
        features, feature_times = compute(
            self.features[entity], self.settings.retention_days, buckets, distinct, attributes, times, now_ns
        )
        values = {**attributes, **features}
        times.update(feature_times)
        if self.settings.cache_entities and row["version"] == version:
            with self._lock:
                if len(self._cache) >= self.settings.cache_entities:
                    self._cache.clear()
                self._cache[key] = (version, day, values, times)
        return values, times

    def enrich(
        self, entities: dict[str, str], context: dict[str, Any], now: datetime, with_times: bool = True
    ) -> tuple[dict[str, Any], dict[str, float] | None]:
        """The context with the named entities' values merged in, and (``with_times``) the signal times of the
        paths added, for the rules' ``fresh_within``; the context itself when it names no known entity."""
        wanted = []
        for entity, path in entities.items():
            entity_id = lookup(context, path)
            if type(entity_id) is str:
                wanted.append((entity, entity_id, path.rpartition(".")[0]))
        if not wanted:
            return context, None
        versions = self.versions([(e, i) for e, i, _ in wanted])
        if not any(version is not None for version in versions.values()):
            return context, None
        now_s = now.timestamp()
        now_ns = int(now_s * 1e9)
        signal_times: dict[str, float] = {}
        for entity, entity_id, namespace in wanted:
            version = versions.get((entity, entity_id))
            if version is None:
                continue
            values, times = self.values(entity, entity_id, version, now_ns)
            sent = lookup(context, namespace)
            context = _put(context, namespace.split("."), _merge(values, sent))
            if with_times:
                signal_times.update({f"{namespace}.{path}": t for path, t in times.items()})
                signal_times.update({f"{namespace}.{path}": now_s for path in leaves(sent)})  # the caller's: now
        return context, signal_times if with_times else None


def _merge(stored: dict[str, Any], sent: dict[str, Any]) -> dict[str, Any]:
    """``sent`` over ``stored``, object by object (the caller's values win)."""
    out = dict(stored)
    for key, value in sent.items():
        base = out.get(key)
        out[key] = _merge(base, value) if isinstance(value, dict) and isinstance(base, dict) else value
    return out


def _put(obj: dict[str, Any], path: list[str], value: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` with ``value`` at ``path`` (the objects along it copied, nothing else)."""
    out = dict(obj)
    out[path[0]] = value if len(path) == 1 else _put(obj[path[0]], path[1:], value)
    return out
