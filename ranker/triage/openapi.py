"""OpenAPI description of the triage endpoints, for :func:`ranker.server.openapi.openapi`."""

from __future__ import annotations

from typing import Any

from ..core.schemas import ID_PATTERN, ID_RULE, MAX_ID
from .api import ApproveRequest, DismissRequest, ItemsQuery

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
_ANY = {"content": {"application/json": {"schema": {"type": "object"}}}}
_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID, "pattern": ID_PATTERN, "description": ID_RULE}
_KEYS = " Needs a review or admin key of triage.loop."


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Invalid request; the body says what and where.",
        401: "Missing or unknown key.",
        403: "Not a review or admin key of the triage loop.",
        404: "No such item or pattern.",
        409: "The item was decided already.",
        413: "The body is larger than max_body_bytes.",
        415: "The body is not application/json.",
        503: "The decision log could not commit; nothing was written.",
    }
    return {str(s): {"description": text[s], **_ERROR} for s in statuses}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {**_ID, "description": description}}


def _query() -> list[dict[str, Any]]:
    schema = ItemsQuery.model_json_schema()
    out = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        if "anyOf" in prop:  # optional: the non-null alternative
            prop.update(next(p for p in prop.pop("anyOf") if p.get("type") != "null"))
        prop.pop("title", None)
        out.append({"name": name, "in": "query", "required": False, "schema": prop})
    return out


def _body(name: str, required: bool) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def triage_schemas() -> dict[str, Any]:
    return {model.__name__: model.model_json_schema() for model in (ApproveRequest, DismissRequest)}


def triage_paths() -> dict[str, Any]:
    item = _path("itemId", "The item's id (a number).")
    decision = {"200": {"description": "The item, decided.", **_ANY}, **_errors(400, 401, 403, 404, 409, 413, 415, 503)}
    pattern = _path("name", "The pattern's name.")
    switch = {"200": {"description": "The pattern.", **_ANY}, **_errors(400, 401, 403, 404, 503)}
    return {
        "/triage/items": {
            "get": {
                "operationId": "listTriageItems",
                "summary": "Risk items: filtered by state, loop and renewal window, sorted, paged." + _KEYS,
                "parameters": _query(),
                "responses": {"200": {"description": "{items, count}.", **_ANY}, **_errors(400, 401, 403)},
            }
        },
        "/triage/items/{itemId}": {
            "get": {
                "operationId": "getTriageItem",
                "summary": "A risk item with its evidence, ranking, draft and transitions." + _KEYS,
                "parameters": [item],
                "responses": {"200": {"description": "The item.", **_ANY}, **_errors(401, 403, 404)},
            }
        },
        "/triage/items/{itemId}/approve": {
            "post": {
                "operationId": "approveTriageItem",
                "summary": "Approve the draft, or the edited text: outbox, activation and reward in one "
                "transaction." + _KEYS,
                "parameters": [item],
                "requestBody": _body("ApproveRequest", False),
                "responses": decision,
            }
        },
        "/triage/items/{itemId}/dismiss": {
            "post": {
                "operationId": "dismissTriageItem",
                "summary": "Dismiss the item with a reason of triage.dismiss_reasons (a suppressing one suppresses "
                "the account)." + _KEYS,
                "parameters": [item],
                "requestBody": _body("DismissRequest", True),
                "responses": decision,
            }
        },
        "/triage/report": {
            "get": {
                "operationId": "triageReport",
                "summary": "Flagged accounts, approval rate, time to decision, renewal rates, surprise churn per "
                "month." + _KEYS,
                "responses": {"200": {"description": "The report.", **_ANY}, **_errors(401, 403)},
            }
        },
        "/triage/patterns": {
            "get": {
                "operationId": "listTriagePatterns",
                "summary": "Risk patterns, hand-written and mined, with their figures and whether enabled." + _KEYS,
                "responses": {"200": {"description": "{patterns}.", **_ANY}, **_errors(401, 403)},
            }
        },
        "/triage/patterns/{name}/enable": {
            "post": {
                "operationId": "enableTriagePattern",
                "summary": "Flag accounts with this pattern again." + _KEYS,
                "parameters": [pattern],
                "responses": switch,
            }
        },
        "/triage/patterns/{name}/disable": {
            "post": {
                "operationId": "disableTriagePattern",
                "summary": "Stop flagging accounts with this pattern." + _KEYS,
                "parameters": [pattern],
                "responses": switch,
            }
        },
    }
