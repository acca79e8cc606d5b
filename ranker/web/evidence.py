"""The evidence an item page draws: an account's signal history per week (from the signals store's per-day
buckets, up to the moment the item was flagged) and the matched values' history the triage pass kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup

from ..serving.service import Service
from ..signals.definitions import Feature
from ..triage.patterns import describe
from .charts import line_chart

WEEKS = 26
CHARTED = ("count", "sum", "min", "max")
MOST = 5
DAY = 86400


def _what(feature: Feature) -> str:
    events = f"{feature.event} events" + (f" where {describe(feature.where)}" if feature.where else "")
    return {
        "count": events,
        "sum": f"sum of {feature.field} over {events}",
        "min": f"lowest {feature.field} of {events}",
        "max": f"highest {feature.field} of {events}",
    }[feature.aggregate]


def _signature(feature: Feature) -> tuple[str, str]:
    return feature.event or "", json.dumps([c.model_dump(exclude_none=True) for c in feature.where], sort_keys=True)


def weekly_charts(service: Service, entity: str, entity_id: str, end: datetime, paths: list[str]) -> list[Markup]:
    """Charts of the account's events per week over the :data:`WEEKS` weeks to ``end``: the features behind the
    matched ``paths`` first (those reading the same events), then others, :data:`MOST` at most."""
    features = [f for f in service.settings.signals.features if f.entity == entity and f.event]
    named = {path.rsplit(".", 1)[-1] for path in paths}
    related = {_signature(f) for f in features if f.name in named}
    seen, unique = set(), []
    for feature in features:
        key = (*_signature(feature), feature.aggregate, feature.field)
        if feature.aggregate in CHARTED and key not in seen:
            seen.add(key)
            unique.append(feature)
    # what the pattern read first; then one chart for each other kind of event (a field's values, such as a
    # ticket's sentiment, before a count); then the rest, in the settings' order
    chosen = [f for f in unique if f.name in named or _signature(f) in related]
    covered = {f.event for f in chosen}
    for feature in sorted(unique, key=lambda f: f.aggregate == "count"):
        if feature.event not in covered:
            covered.add(feature.event)
            chosen.append(feature)
    chosen += [f for f in unique if f not in chosen]
    chosen = chosen[:MOST]
    if not chosen:
        return []
    last_day = int(end.timestamp()) // DAY
    first_day = last_day - WEEKS * 7 + 1
    rows, _ = service.signals.store.buckets(entity, entity_id, first_day)
    by_feature: dict[str, list[tuple]] = {}
    for row in rows:
        if row[1] <= last_day:
            by_feature.setdefault(row[0], []).append(row)
    charts = []
    for feature in chosen:
        weeks: list[Any] = [None] * WEEKS
        for _, day, count, total, low, high, *_ in by_feature.get(feature.name, []):
            k = (day - first_day) // 7
            value = {"count": count, "sum": total, "min": low, "max": high}[feature.aggregate]
            if value is None:
                continue
            current = weeks[k]
            if feature.aggregate in ("count", "sum"):
                weeks[k] = (current or 0) + value
            elif feature.aggregate == "min":
                weeks[k] = value if current is None else min(current, value)
            else:
                weeks[k] = value if current is None else max(current, value)
        if feature.aggregate in ("count", "sum"):
            weeks = [0 if v is None else v for v in weeks]
        labels = [
            (datetime.fromtimestamp((first_day + 7 * k) * DAY, UTC).date().isoformat(), weeks[k]) for k in range(WEEKS)
        ]
        title = f"{feature.name}: {_what(feature)}, per week, {WEEKS} weeks to {end.date().isoformat()}"
        charts.append(line_chart(title, labels, bars=feature.aggregate in ("count", "sum")))
    return charts


def matched_charts(history: dict[str, list[dict[str, Any]]]) -> list[Markup]:
    """The triage pass's history of each matched value (numbers only), oldest first."""
    charts = []
    for path, points in sorted(history.items()):
        series = [(p["at"][:10], p["value"] if isinstance(p["value"], int | float) else None) for p in points]
        if any(v is not None for _, v in series) and not all(isinstance(p["value"], bool) for p in points):
            charts.append(line_chart(f"{path} before flagging", series))
    return charts


def as_of(item: dict[str, Any]) -> datetime:
    text = (item.get("evidence") or {}).get("as_of") or item["created_at"]
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
