"""HTTP shell of signals: ``POST /v1/logs`` (OTLP/HTTP) and ``/entities/{type}/{id}``, at the server root.

OTLP answers in its own shapes (``ExportLogsServiceResponse``, ``google.rpc.Status``) in the request's
encoding; the entities API answers in the API's error shape (:class:`ranker.core.errors.ApiError`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from ..core.errors import ApiError, StoreUnavailable
from ..server.api import api_key, json_body, json_response, path_id
from ..store import parse_time
from ..store.signals import OutOfOrder
from . import otlp
from .service import Signals, UnknownEntityType

bp = Blueprint("signals", __name__)


def signals() -> Signals:
    return current_app.extensions["ranker"].signals


def authorize() -> None:
    current_app.extensions["ranker"].authenticate(api_key(), signals=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


# -- OTLP/HTTP logs --------------------------------------------------------------------------------


@bp.post("/v1/logs")
def export_logs() -> Response:
    content_type = request.mimetype
    answer_type = otlp.JSON if content_type == otlp.JSON else otlp.PROTOBUF
    try:
        authorize()
        if content_type not in (otlp.PROTOBUF, otlp.JSON):
            raise otlp.OtlpError(415, "send application/x-protobuf or application/json")
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        try:
            raw = request.get_data(cache=False)
        except HTTPException as exc:  # a Content-Length over the limit
            message = f"the body is larger than {limit} bytes" if exc.code == 413 else exc.description or exc.name
            raise otlp.OtlpError(exc.code or 400, message) from None
        if request.content_length is None and len(raw) >= limit and request.environ["wsgi.input"].read(1):
            raise otlp.OtlpError(413, f"the body is larger than {limit} bytes")
        data = otlp.decompress(raw, request.headers.get("Content-Encoding", ""), limit)
        logs = otlp.parse(data, content_type)
        result = signals().ingest(logs, utcnow())
    except ApiError as exc:
        return _status(answer_type, exc.status, exc.message)
    except otlp.OtlpError as exc:
        return _status(answer_type, exc.status, exc.message)
    except StoreUnavailable as exc:  # retryable for OTLP senders; nothing of the batch was kept
        current_app.logger.error("signals not stored: %s", exc)
        return _status(answer_type, 503, f"the events could not be committed: {exc}")
    body = otlp.response(answer_type, result.rejected, result.message)
    return Response(body, 200, mimetype=answer_type)


def _status(content_type: str, status: int, message: str) -> Response:
    return Response(otlp.status(content_type, status, message), status, mimetype=content_type)


# -- entities ---------------------------------------------------------------------------------------


def _entity_call(call, *args):
    try:
        return call(*args)
    except UnknownEntityType as exc:
        raise ApiError(404, "ResourceNotFound", str(exc), target="type") from None
    except OutOfOrder as exc:
        raise ApiError(409, "Conflict", str(exc), target="at") from None
    except ValueError as exc:
        raise ApiError(400, "InvalidEntity", str(exc)) from None


def _at() -> datetime | None:
    """``?at=``: a point-in-time read (GET), or the time a change happened (PUT, PATCH: importing history)."""
    if "at" not in request.args:
        return None
    try:
        return parse_time(request.args["at"])
    except ValueError:
        raise ApiError(400, "InvalidEntity", "at must be an ISO 8601 time", target="at") from None


def _attributes_body():
    body = json_body()
    if not isinstance(body, dict) or set(body) != {"attributes"}:
        raise ApiError(400, "InvalidEntity", 'the body is {"attributes": {...}}')
    return body["attributes"]


@bp.put("/entities/<entity>/<id:entity_id>")
def put_entity(entity: str, entity_id: str) -> Response:
    authorize()
    entity_id = path_id(entity_id, "InvalidEntity", "entityId")
    view = _entity_call(signals().put, entity, entity_id, _attributes_body(), utcnow(), _at())
    return json_response(view, 200)


@bp.patch("/entities/<entity>/<id:entity_id>")
def patch_entity(entity: str, entity_id: str) -> Response:
    authorize()
    entity_id = path_id(entity_id, "InvalidEntity", "entityId")
    view = _entity_call(signals().patch, entity, entity_id, _attributes_body(), utcnow(), _at())
    return json_response(view, 200)


@bp.get("/entities/<entity>/<id:entity_id>")
def get_entity(entity: str, entity_id: str) -> Response:
    authorize()
    entity_id = path_id(entity_id, "InvalidEntity", "entityId")
    view = _entity_call(signals().view, entity, entity_id, utcnow(), _at())
    if view is None:
        raise ApiError(404, "ResourceNotFound", f"no {entity} {entity_id!r}")
    return json_response(view, 200)


@bp.delete("/entities/<entity>/<id:entity_id>")
def delete_entity(entity: str, entity_id: str) -> Response:
    authorize()
    entity_id = path_id(entity_id, "InvalidEntity", "entityId")
    if not _entity_call(signals().delete, entity, entity_id):
        raise ApiError(404, "ResourceNotFound", f"no {entity} {entity_id!r}")
    return Response(status=204)
