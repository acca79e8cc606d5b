"""Personalizer's Rank, Reward and Activate operations; mounted under every URL shape the SDKs use."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from werkzeug.routing import PathConverter

from .errors import ApiError
from .schemas import MultiSlotRankRequest, MultiSlotRewardRequest, RankRequest, RewardRequest, parse_json, validate
from .service import Loop, Service

bp = Blueprint("api", __name__)


def service() -> Service:
    return current_app.extensions["ranker"]


def api_key() -> str | None:
    key = request.headers.get("Ocp-Apim-Subscription-Key")
    if key is None:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
    return key


def caller(admin: bool = False) -> Loop:
    loop = service().authenticate(api_key(), admin=admin)
    g.loop = loop.name  # the request's loop, for its metrics (ranker.metrics)
    return loop


def request_bytes() -> bytes:
    """The whole body, or 413 when it is larger than max_body_bytes."""
    data = request.get_data(cache=False)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    # werkzeug cuts a body without Content-Length (chunked) at the limit without saying it was longer
    if request.content_length is None and len(data) >= limit and request.environ["wsgi.input"].read(1):
        raise ApiError(413, "PayloadSizeExceeded", f"the body is larger than {limit} bytes")
    return data


def json_body() -> Any:
    if request.mimetype != "application/json":
        raise ApiError(415, "UnsupportedMediaType", "send the body as application/json")
    return parse_json(request_bytes())


def json_response(body: Any, status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


@bp.post("/rank")
def rank() -> Response:
    loop = caller()
    req = validate(RankRequest, json_body(), "InvalidRankRequest")
    return json_response(service().rank(loop, req), 201)


class EventIdConverter(PathConverter):
    """``path`` (the SDKs percent-encode '/' in event ids and the server decodes it before routing) that
    also matches a newline, so an event id holding one gets the 400 below instead of a routing 404, and
    leading slashes, so an id such as ``/lead`` is not redirected to the event ``lead``."""

    regex = r"(?s:/*[^/].*?)"


def checked_event_id(event_id: str, code: str) -> str:
    if len(event_id) > 256 or any(ord(ch) < 32 or ord(ch) == 127 for ch in event_id):
        raise ApiError(400, code, "an event id has 1-256 characters and no control characters", target="eventId")
    return event_id


@bp.post("/events/<event_id:event_id>/reward")
def reward(event_id: str) -> Response:
    loop = caller()
    event_id = checked_event_id(event_id, "InvalidRewardRequest")
    req = validate(RewardRequest, json_body(), "InvalidRewardRequest")
    service().reward(loop, event_id, req.value)
    return Response(status=204)


@bp.post("/events/<event_id:event_id>/activate")
def activate(event_id: str) -> Response:
    loop = caller()
    event_id = checked_event_id(event_id, "InvalidEventIdToActivate")
    service().activate(loop, event_id)
    return Response(status=204)


@bp.post("/multislot/rank")
def rank_multislot() -> Response:
    loop = caller()
    req = validate(MultiSlotRankRequest, json_body(), "InvalidRankRequest")
    return json_response(service().rank_multislot(loop, req), 201)


@bp.post("/multislot/events/<event_id:event_id>/reward")
def reward_multislot(event_id: str) -> Response:
    loop = caller()
    event_id = checked_event_id(event_id, "InvalidRewardRequest")
    req = validate(MultiSlotRewardRequest, json_body(), "InvalidRewardRequest")
    service().reward_slots(loop, event_id, [(r.slotId, r.value) for r in req.reward])
    return Response(status=204)


@bp.post("/multislot/events/<event_id:event_id>/activate")
def activate_multislot(event_id: str) -> Response:
    loop = caller()
    event_id = checked_event_id(event_id, "InvalidEventIdToActivate")
    service().activate(loop, event_id, multislot=True)
    return Response(status=204)
