"""HTTP shell of the triage, at the server root: ``/triage/items`` (list, read, approve, dismiss),
``/triage/report`` and ``/triage/patterns`` (list, enable, disable).

Keys: a key of ``triage.loop`` with the ``review`` or ``admin`` role (a review key can do nothing else). Each
decision is stored with who made it: the key's role and the first 12 hex digits of its SHA-256 (``review:
3f2a...``), or ``anonymous`` when the server has no keys. Bodies and queries are pydantic models; every
failure is a 4xx in the one error shape.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Literal

from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..core.errors import ApiError
from ..core.schemas import parse_json, validate
from ..core.settings import hash_key
from ..server.api import api_key, json_body, json_response, path_id, request_bytes
from ..serving.service import Service
from . import items, patterns
from .report import report

bp = Blueprint("triage", __name__)

TEXT = 100_000


class ItemsQuery(BaseModel):
    """The query of ``GET /triage/items``."""

    model_config = ConfigDict(extra="forbid")
    state: Literal["pending", "approved", "dismissed"] | None = Field(None, description="Only items in this state.")
    loop: str | None = Field(None, max_length=256, description="Only items ranked in this loop.")
    renewal_from: date | None = Field(None, description="Only renewals on or after this date (YYYY-MM-DD).")
    renewal_to: date | None = Field(None, description="Only renewals on or before this date (YYYY-MM-DD).")
    sort: Literal["risk", "value", "renewal", "newest"] = Field(
        "risk",
        description="risk: the pattern's churn rate, highest first; value: the account's contract value, "
        "highest first; renewal: soonest renewal first; newest: last flagged first.",
    )
    top: int = Field(50, ge=1, le=items.MAX_PAGE, description="Items per page.")
    skip: int = Field(0, ge=0, le=10**9, description="Items skipped before the page.")

    @field_validator("renewal_from", "renewal_to", mode="before")
    @classmethod
    def _calendar_date(cls, value: object) -> object:
        # pydantic would read a number ("0") as seconds since 1970: a date here is YYYY-MM-DD and nothing else
        if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError("a date is YYYY-MM-DD")
        return value


class ApproveRequest(BaseModel):
    """``POST /triage/items/{id}/approve``: the draft as it is, or edited (an edit rewards ``approve_edited``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    subject: str | None = Field(None, min_length=1, max_length=1000, description="The edited subject.")
    body: str | None = Field(None, min_length=1, max_length=TEXT, description="The edited body.")
    recipient: str | None = Field(
        None, min_length=1, max_length=320, description="Send to this address instead of the account's."
    )


class DismissRequest(BaseModel):
    """``POST /triage/items/{id}/dismiss``: a reason (an id of ``triage.dismiss_reasons``) and free text."""

    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str = Field(min_length=1, max_length=64, description="One of the settings' dismiss reasons.")
    text: str | None = Field(None, max_length=TEXT, description="Why, in the reviewer's words.")


def service() -> Service:
    return current_app.extensions["ranker"]


def reviewer() -> str:
    """Authorize a review or admin key of the triage loop; who it is, for the transitions."""
    svc = service()
    key = api_key()
    loop = svc.authenticate(key, review=True)
    if not svc.settings.auth:
        return "anonymous"
    if loop.name != svc.settings.triage.loop:
        raise ApiError(403, "OperationNotAllowed", f"triage needs a key of the loop {svc.settings.triage.loop!r}")
    digest = hash_key(key)
    role = next(k.role for k in svc.settings.loops[loop.name].keys if k.sha256 == digest)
    return f"{role}:{digest[:12]}"


def _item_id(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise ApiError(404, "ResourceNotFound", f"no triage item {value!r}")
    return int(value)


def _body(model: type[BaseModel]) -> BaseModel:
    """The JSON body as ``model``; an empty body is ``{}`` (approve the draft as it is)."""
    raw = request_bytes()
    if not raw.strip():
        return validate(model, {}, "InvalidArgument")
    if request.mimetype != "application/json":
        raise ApiError(415, "UnsupportedMediaType", "send the body as application/json")
    return validate(model, parse_json(raw), "InvalidArgument")


@bp.get("/triage/items")
def list_items() -> Response:
    reviewer()
    args = request.args.to_dict(flat=False)
    repeated = next((name for name, values in args.items() if len(values) > 1), None)
    if repeated:
        raise ApiError(400, "InvalidArgument", f"{repeated} is given twice", target=repeated)
    query = validate(ItemsQuery, {k: v[0] for k, v in args.items()}, "InvalidArgument")
    page = items.list_items(
        service().store,
        state=query.state,
        loop=query.loop,
        renewal_from=query.renewal_from and query.renewal_from.isoformat(),
        renewal_to=query.renewal_to and query.renewal_to.isoformat(),
        sort=query.sort,
        top=query.top,
        skip=query.skip,
    )
    return json_response(page, 200)


@bp.get("/triage/items/<item_id>")
def get_item(item_id: str) -> Response:
    reviewer()
    return json_response(items.get_item(service().store, _item_id(item_id)), 200)


@bp.post("/triage/items/<item_id>/approve")
def approve(item_id: str) -> Response:
    who = reviewer()
    number = _item_id(item_id)
    body = _body(ApproveRequest)
    svc = service()
    found = items.approve(svc.store, svc.settings.triage, number, who, body.subject, body.body, body.recipient)
    return json_response(found, 200)


@bp.post("/triage/items/<item_id>/dismiss")
def dismiss(item_id: str) -> Response:
    who = reviewer()
    number = _item_id(item_id)
    body = validate(DismissRequest, json_body(), "InvalidArgument")
    svc = service()
    return json_response(items.dismiss(svc.store, svc.settings.triage, number, who, body.reason, body.text), 200)


@bp.get("/triage/report")
def get_report() -> Response:
    reviewer()
    svc = service()
    return json_response(report(svc.store, svc.settings.triage), 200)


@bp.get("/triage/patterns")
def list_patterns() -> Response:
    reviewer()
    svc = service()
    return json_response({"patterns": [p.to_dict() for p in patterns.all_patterns(svc.store, svc.settings)]}, 200)


def _switch(name: str, enabled: bool) -> Response:
    reviewer()
    name = path_id(name, "InvalidArgument", "name")
    svc = service()
    try:
        pattern = patterns.set_enabled(svc.store, svc.settings, name, enabled)
    except patterns.UnknownPattern as exc:
        raise ApiError(404, "ResourceNotFound", str(exc), target="name") from None
    return json_response(pattern.to_dict(), 200)


@bp.post("/triage/patterns/<name>/enable")
def enable_pattern(name: str) -> Response:
    return _switch(name, True)


@bp.post("/triage/patterns/<name>/disable")
def disable_pattern(name: str) -> Response:
    return _switch(name, False)
