"""Health, the OpenAPI description, and the null endpoint the Rank benchmark compares against."""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app

from ..core.schemas import parse_json
from .api import request_bytes
from .openapi import openapi

bp = Blueprint("meta", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """200 while the decision log is readable and still the file the worker opened; else StoreUnavailable (503
    with the one error body)."""
    service = current_app.extensions["ranker"]
    service.store.check()
    service.store.ping()
    body = {"status": "ok", "loops": sorted(service.loops), "auth": service.settings.auth}
    return Response(json.dumps(body), 200, mimetype="application/json")


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return Response(json.dumps(openapi()), 200, mimetype="application/json")


def null() -> Response:
    """Parse the JSON body and answer 201 with a small JSON object: the floor a Rank is measured against."""
    parse_json(request_bytes())
    return Response('{"eventId":"null"}', 201, mimetype="application/json")
