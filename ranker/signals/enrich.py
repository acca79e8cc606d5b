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

from ..store import parse_time
from ..store.signals import SignalStore
from .definitions import SignalSettings
from .entities import leaves
from .features import DAY_NS, compute

_EMPTY: dict[str, Any] = {}  # read only


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
        # loops' entity paths, split (see _paths)
        self._splits: dict[int, tuple[dict[str, str], list[tuple[str, str, tuple[str, ...], str]]]] = {}
        # the cached values' signal times with their paths under a namespace (see _prefixed)
        self._prefixes: dict[tuple[str, int], tuple[dict[str, float], dict[str, float]]] = {}
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
        for entity, namespace, parts, name in self._paths(entities):
            sent = _at(context, parts)
            if type(entity_id := sent.get(name)) is str:
                wanted.append((entity, entity_id, namespace, parts, sent))
        if not wanted:
            return context, None
        versions = self.versions([(e, i) for e, i, _, _, _ in wanted])
        if not any(version is not None for version in versions.values()):
            return context, None
        now_s = now.timestamp()
        now_ns = int(now_s * 1e9)
        named = context
        signal_times: dict[str, float] = {}
        for entity, entity_id, namespace, parts, sent in wanted:
            version = versions[(entity, entity_id)]
            if version is None:
                continue
            values, times = self.values(entity, entity_id, version, now_ns)
            if context is not named:  # an earlier entity's values may sit under this namespace too
                sent = _at(context, parts)
            context = _put(context, parts, _merge(values, sent))
            if with_times:
                signal_times.update(self._prefixed(namespace, times))
                signal_times.update({f"{namespace}.{path}": now_s for path in leaves(sent)})  # the caller's: now
        return context, signal_times if with_times else None

    def _paths(self, entities: dict[str, str]) -> list[tuple[str, str, tuple[str, ...], str]]:
        """A loop's ``entities`` as ``(entity, namespace, its names, the id's name)``, split once per loop."""
        kept = self._splits.get(id(entities))
        if kept is not None and kept[0] is entities:
            return kept[1]
        paths = []
        for entity, path in entities.items():
            namespace, _, name = path.rpartition(".")
            paths.append((entity, namespace, tuple(namespace.split(".")), name))
        with self._lock:
            if len(self._splits) > 1000:  # loops' settings replaced many times over
                self._splits.clear()
            self._splits[id(entities)] = (entities, paths)
        return paths

    def _prefixed(self, namespace: str, times: dict[str, float]) -> dict[str, float]:
        """``times`` with their paths under ``namespace``, kept with the cached values they belong to."""
        key = (namespace, id(times))
        kept = self._prefixes.get(key)
        if kept is not None and kept[0] is times:
            return kept[1]
        prefixed = {f"{namespace}.{path}": t for path, t in times.items()}
        with self._lock:
            if len(self._prefixes) >= max(2 * self.settings.cache_entities, 1):
                self._prefixes.clear()
            self._prefixes[key] = (times, prefixed)
        return prefixed


def _merge(stored: dict[str, Any], sent: dict[str, Any]) -> dict[str, Any]:
    """``sent`` over ``stored``, object by object (the caller's values win)."""
    out = stored.copy()
    for key, value in sent.items():
        if isinstance(value, dict):
            base = out.get(key)
            if isinstance(base, dict):
                value = _merge(base, value)
        out[key] = value
    return out


def _at(obj: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The object at ``names`` within ``obj``; an empty one where there is none."""
    for name in names:
        obj = obj.get(name)
        if not isinstance(obj, dict):
            return _EMPTY
    return obj


def _put(obj: dict[str, Any], path: tuple[str, ...], value: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` with ``value`` at ``path`` (the objects along it copied, nothing else)."""
    out = obj.copy()
    out[path[0]] = value if len(path) == 1 else _put(obj[path[0]], path[1:], value)
    return out
