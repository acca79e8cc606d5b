"""OpenAPI description of the signals endpoints, for :func:`ranker.server.openapi.openapi`."""

from __future__ import annotations

from typing import Any

from ..core.schemas import ID_PATTERN, ID_RULE, MAX_ID

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
_OTLP = {
    "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
    "application/json": {"schema": {"type": "object"}},
}
_ENTITY_PARAMETERS = [
    {"name": "entity", "in": "path", "required": True, "schema": {"type": "string", "enum": ["account", "user"]}},
    {
        "name": "entityId",
        "in": "path",
        "required": True,
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID,
            "pattern": ID_PATTERN,
            "description": ID_RULE,
        },
    },
]
AT = {"type": "string", "format": "date-time", "description": "A point-in-time read: values as of this time."}
_ATTRIBUTES = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["attributes"],
                "additionalProperties": False,
                "properties": {
                    "attributes": {
                        "$ref": "#/components/schemas/FeatureObject0",
                        "description": "Features as Rank reads them; names without '.'; at most 64 KiB of JSON; in "
                        "a PATCH, null removes a value.",
                    }
                },
            }
        }
    },
}


def _entity(name: str, summary: str, status: int, body: bool = False, query: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": name,
        "summary": summary + " Needs a signals or admin key.",
        "parameters": _ENTITY_PARAMETERS
        + (
            [{"name": "at", "in": "query", "required": False, "schema": {"type": "string", "format": "date-time"}}]
            if query or body
            else []
        ),
        "responses": {
            str(status): {"description": "Done."},
            **{str(s): {"description": d, **_ERROR} for s, d in ((400, "Invalid."), (401, "No key."), (403, "Role."))},
            "404": {"description": "No such entity type or entity.", **_ERROR},
        },
    }
    if body:
        operation["requestBody"] = _ATTRIBUTES
        operation["parameters"][-1]["description"] = (
            "The time the change happened (importing history); changes so dated must come in time order."
        )
        operation["responses"]["409"] = {"description": "?at= before the entity's latest change.", **_ERROR}
        operation["responses"]["413"] = {"description": "Larger than max_body_bytes.", **_ERROR}
        operation["responses"]["415"] = {"description": "Not sent as application/json.", **_ERROR}
    return operation


def signals_paths() -> dict[str, Any]:
    statuses = {
        "200": {
            "description": "ExportLogsServiceResponse (partialSuccess when records were refused).",
            "content": _OTLP,
        },
        **{
            str(s): {"description": d + " A google.rpc.Status in the request's encoding.", "content": _OTLP}
            for s, d in (
                (400, "Malformed request."),
                (401, "Missing or unknown key."),
                (403, "Not a signals or admin key."),
                (413, "Larger than max_body_bytes once decompressed."),
                (415, "Unsupported content type or encoding."),
            )
        },
    }
    return {
        "/v1/logs": {
            "post": {
                "operationId": "exportLogs",
                "summary": "OTLP/HTTP logs: events of accounts and users. Needs a signals or admin key.",
                "requestBody": {"required": True, "content": _OTLP},
                "responses": statuses,
            }
        },
        "/entities/{entity}/{entityId}": {
            "get": _entity("getEntity", "Attributes and computed features, now or as of ?at=.", 200, query=True),
            "put": _entity("replaceEntity", "Replace the entity's attributes.", 200, body=True),
            "patch": _entity("patchEntity", "Merge a JSON merge patch into the attributes.", 200, body=True),
            "delete": _entity("deleteEntity", "Forget the entity: attributes, history, events.", 204),
        },
    }
