"""The loop view: for every loop, what it decided lately and why, its reward over time, and its latest
evaluation: the "is it working" page. Reads through the decision lookup (:func:`ranker.server.events.lookup`)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, request

from ..core.errors import ApiError
from ..evaluation.jobs import EVALUATION
from ..server.events import lookup
from ..serving.loopconfig import effective
from ..store import review as review_store
from ..store import timestamp
from . import base
from .charts import line_chart

bp = Blueprint("review_loops", __name__)
base.install(bp)

RECENT = 20
PERIODS = {"day": (10, timedelta(days=30), "the last 30 days"), "hour": (13, timedelta(hours=48), "the last 48 hours")}


def _loop(name: str) -> str:
    if name not in base.visible_loops():
        raise ApiError(404, "ResourceNotFound", f"no loop {name!r} for this key")
    return name


@bp.get("/loops")
@base.signed_in
def loops() -> Response:
    return base.render("review/loops.html", loops=base.visible_loops())


def _evaluation(loop: str) -> dict[str, Any] | None:
    row = review_store.latest_job(base.service().store, loop, EVALUATION)
    if row is None:
        return None
    definition = json.loads(row["request"])
    result = json.loads(row["result"]) if row["result"] else {}
    policies = [
        {
            "name": v["name"],
            "source": v["policySource"],
            "slot": v["slotId"],
            "reward": v["summary"]["expectedReward"],
            "interval": v["summary"]["confidenceInterval"],
            "events": v["summary"]["events"],
        }
        for v in result.get("content", {}).get("value", [])
    ]
    return {
        "id": row["id"],
        "name": definition.get("name", row["id"]),
        "status": row["status"],
        "created": row["created_at"],
        "start": definition.get("startTime"),
        "end": definition.get("endTime"),
        "events": result.get("events"),
        "optimal": result.get("optimalPolicy"),
        "error": result.get("error"),
        "policies": policies,
    }


def _periods(start: datetime, end: datetime, by: str) -> list[str]:
    """Every day (or hour) from ``start`` to ``end``, as the log's times begin with it."""
    step = timedelta(days=1) if by == "day" else timedelta(hours=1)
    width = PERIODS[by][0]
    moment = (
        start.replace(minute=0, second=0, microsecond=0)
        if by == "hour"
        else start.replace(hour=0, minute=0, second=0, microsecond=0)
    )
    out = []
    while moment <= end:
        out.append(timestamp(moment)[:width])
        moment += step
    return out


@bp.get("/loops/<name>")
@base.signed_in
def loop_view(name: str) -> Response:
    loop = _loop(name)
    svc = base.service()
    by = request.args.get("by", "day")
    if by not in PERIODS:
        raise ApiError(400, "BadRequest", "by must be day or hour")
    width, span, spoken = PERIODS[by]
    settings, _, _ = effective(svc.settings, loop, svc.store.loop_config(loop))
    since = timestamp(base.now() - span)
    series = review_store.reward_series(svc.store, loop, since, width, settings.default_reward)
    decisions = [
        body
        for event_id in review_store.recent_event_ids(svc.store, loop, RECENT)
        if (body := lookup(svc.store, svc.settings, loop, event_id, False)) is not None
    ]
    found = {r["period"]: r for r in series}
    periods = _periods(base.now() - span, base.now(), by)
    means = [(p, found[p]["mean"] if p in found else None) for p in periods]
    low = min([0.0, *(v for _, v in means if v is not None)])
    high = max([1.0, *(v for _, v in means if v is not None)])
    chart = line_chart(f"Mean reward per {by} in loop {loop}, {spoken}", means, low, high)
    volume = line_chart(
        f"Decisions per {by}", [(p, float(found[p]["decisions"]) if p in found else 0.0) for p in periods], bars=True
    )
    return base.render(
        "review/loop.html",
        loop_name=loop,
        by=by,
        spoken=spoken,
        series=series,
        chart=chart,
        volume=volume,
        decisions=decisions,
        evaluation=_evaluation(loop),
        default_reward=settings.default_reward,
        mode=settings.learning_mode,
    )


@bp.get("/loops/<name>/events/<path:event_id>")
@base.signed_in
def event_view(name: str, event_id: str) -> Response:
    loop = _loop(name)
    svc = base.service()
    body = lookup(svc.store, svc.settings, loop, event_id, True)
    if body is None:
        raise ApiError(404, "ResourceNotFound", f"no decision with event id {event_id!r} in loop {loop!r}")
    return base.render("review/event.html", loop_name=loop, decision=body)
