"""Personalizer's Rank, Reward and Activate operations; mounted under every URL shape the SDKs use."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Blueprint, Response, current_app, g, request
from pydantic import BaseModel
from pydantic_core import to_json
from werkzeug.routing import PathConverter

from ..core.errors import ApiError
from ..core.schemas import (
    ID_RULE,
    MultiSlotRankRequest,
    MultiSlotRewardRequest,
    RankRequest,
    RewardRequest,
    is_id,
    parse_json,
    validate_json,
)
from ..serving.service import Loop, Service

bp = Blueprint("api", __name__)


def service() -> Service:
    return current_app.extensions["ranker"]


def api_key() -> str | None:
    """The key of the request: Ocp-Apim-Subscription-Key, else a bearer token. An empty subscription-key
    header counts as absent (a client or proxy that sends the header unset), so a bearer key beside it applies."""
    key = request.headers.get("Ocp-Apim-Subscription-Key", "").strip()
    if not key:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
    return key or None


def caller(admin: bool = False) -> Loop:
    current = service()
    loop = current.authenticate(api_key() if current.settings.auth else None, admin=admin)  # keys off: no header read
    g.loop = loop.name  # the request's loop, for its metrics (ranker.server.metrics)
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


def validated_body(model: type[BaseModel], code: str) -> Any:
    """The JSON body as ``model``: what :func:`json_body` then :func:`validate` give, errors included, in one
    pass where it can (:func:`ranker.core.schemas.validate_json`)."""
    if request.mimetype != "application/json":
        raise ApiError(415, "UnsupportedMediaType", "send the body as application/json")
    return validate_json(model, request_bytes(), code)


def json_response(body: Any, status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def answer(body: dict[str, Any]) -> Response:
    """A Rank's 201: its answer encoded compactly by pydantic's encoder (several times faster than json's)."""
    return Response(to_json(body), status=201, mimetype="application/json")


@bp.post("/rank")
def rank() -> Response:
    loop = caller()
    req = validated_body(RankRequest, "InvalidRankRequest")
    return answer(service().rank(loop, req))


class IdConverter(PathConverter):
    """An id in a path: ``path`` (the SDKs percent-encode '/' in ids and the server decodes it before routing)
    that also matches a newline, so an id holding one gets the 400 of :func:`path_id` instead of a routing 404,
    and leading slashes, so an id such as ``/lead`` is not redirected to ``lead``."""

    regex = r"(?s:/*[^/].*?)"


class EventIdConverter(IdConverter):
    """The id of ``GET events/{eventId}``: any id but one that ends in ``/reward`` or ``/activate``, so those paths
    are only the POST operations (the server decodes ``%2F`` before routing, so the two cannot be told apart; an
    event whose id ends so is read with ``ranker explain``)."""

    regex = r"(?s:/*[^/].*?)(?<!/reward)(?<!/activate)"


def path_id(value: str, code: str, target: str) -> str:
    """An id taken from the path, checked with the one id rule (:data:`ranker.core.schemas.Id`); 400 ``code``
    otherwise. werkzeug decodes percent-encoded bytes that are not UTF-8 to U+FFFD (so ``%FF%FE`` would name
    the event ``\ufffd\ufffd``): when one appears, the path as sent decides."""
    if not is_id(value):
        raise ApiError(400, code, ID_RULE, target=target)
    if "\ufffd" in value:
        environ = request.environ
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")  # gunicorn's and werkzeug's, as sent
        path = unquote_to_bytes(raw.split("?", 1)[0]) if raw else environ["PATH_INFO"].encode("latin-1")
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, code, "the path is not UTF-8 once percent-decoded", target=target) from None
    return value


@bp.post("/events/<id:event_id>/reward")
def reward(event_id: str) -> Response:
    loop = caller()
    event_id = path_id(event_id, "InvalidRewardRequest", "eventId")
    req = validated_body(RewardRequest, "InvalidRewardRequest")
    service().reward(loop, event_id, req.value)
    return Response(status=204)


@bp.post("/events/<id:event_id>/activate")
def activate(event_id: str) -> Response:
    loop = caller()
    event_id = path_id(event_id, "InvalidEventIdToActivate", "eventId")
    service().activate(loop, event_id)
    return Response(status=204)


@bp.post("/multislot/rank")
def rank_multislot() -> Response:
    loop = caller()
    req = validated_body(MultiSlotRankRequest, "InvalidRankRequest")
    return answer(service().rank_multislot(loop, req))


@bp.post("/multislot/events/<id:event_id>/reward")
def reward_multislot(event_id: str) -> Response:
    loop = caller()
    event_id = path_id(event_id, "InvalidRewardRequest", "eventId")
    req = validated_body(MultiSlotRewardRequest, "InvalidRewardRequest")
    service().reward_slots(loop, event_id, [(r.slotId, r.value) for r in req.reward])
    return Response(status=204)


@bp.post("/multislot/events/<id:event_id>/activate")
def activate_multislot(event_id: str) -> Response:
    loop = caller()
    event_id = path_id(event_id, "InvalidEventIdToActivate", "eventId")
    service().activate(loop, event_id, multislot=True)
    return Response(status=204)
