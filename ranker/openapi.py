"""OpenAPI 3.1 description of the HTTP API, with request schemas taken from the pydantic models."""

from __future__ import annotations

from functools import cache
from typing import Any

from . import __version__
from .schemas import (
    MultiSlotRankRequest,
    MultiSlotRankResponse,
    MultiSlotRewardRequest,
    RankRequest,
    RankResponse,
    RewardRequest,
)
from .signals.openapi import signals_paths

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "target": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
                "innerError": {"type": "object"},
            },
        }
    },
}

PREFIXES = ["/personalizer/v1.0", "/personalizer/v1.1-preview.3", "/personalizer"]


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Invalid request; the body says what and where.",
        401: "Missing or unknown key.",
        403: "The key's role does not allow this operation.",
        404: "No such event in the key's loop.",
        409: "The event id was already ranked in this loop.",
        413: "The body is larger than max_body_bytes.",
        415: "The body is not application/json.",
        503: "The decision log could not commit; nothing was acknowledged.",
    }
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    return {str(s): {"description": text[s], **ref} for s in statuses}


def _body(name: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
    }


def _operations(prefix: str) -> dict[str, Any]:
    event = {
        "name": "eventId",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "maxLength": 256},
    }
    version = (
        []
        if prefix.endswith(("v1.0", "preview.3"))
        else [{"name": "api-version", "in": "query", "required": False, "schema": {"type": "string"}}]
    )
    tag = prefix.rsplit("/", 1)[-1]
    paths: dict[str, Any] = {}
    for base, name, what in (("", "", ""), ("/multislot", "MultiSlot", " (multi-slot)")):
        paths[f"{prefix}{base}/rank"] = {
            "post": {
                "operationId": f"rank{name}[{tag}]",
                "summary": "Fill the slots with actions for a context; log the decision."
                if name
                else "Rank actions for a context; log the decision.",
                "parameters": version,
                "requestBody": _body(f"{name}RankRequest"),
                "responses": {
                    "201": {
                        "description": "The decision, committed to the log.",
                        "content": {
                            "application/json": {"schema": {"$ref": f"#/components/schemas/{name}RankResponse"}}
                        },
                    },
                    **_errors(400, 401, 409, 413, 415, 503),
                },
            }
        }
        paths[f"{prefix}{base}/events/{{eventId}}/reward"] = {
            "post": {
                "operationId": f"reward{name}[{tag}]",
                "summary": f"Report a reward for an event{what}; every reward is kept.",
                "parameters": [event, *version],
                "requestBody": _body(f"{name}RewardRequest"),
                "responses": {
                    "204": {"description": "Reward committed."},
                    **_errors(400, 401, 404, 413, 415, 503),
                },
            }
        }
        paths[f"{prefix}{base}/events/{{eventId}}/activate"] = {
            "post": {
                "operationId": f"activate{name}[{tag}]",
                "summary": f"Activate an event{what} ranked with deferActivation.",
                "parameters": [event, *version],
                "responses": {"204": {"description": "Activation committed."}, **_errors(400, 401, 404, 503)},
            }
        }
    return paths


ADMIN = [
    ("/configurations/service", "get", "getServiceConfiguration", "The loop's service configuration.", 200),
    ("/configurations/service", "put", "updateServiceConfiguration", "Change the service configuration.", 200),
    ("/configurations/policy", "get", "getPolicy", "The loop's learning policy.", 200),
    ("/configurations/policy", "put", "updatePolicy", "Change the policy; the model retrains from the log.", 200),
    ("/configurations/policy", "delete", "resetPolicy", "Back to the settings file's policy.", 200),
    ("/model", "get", "exportModel", "The served VW model (application/octet-stream).", 200),
    ("/model", "put", "importModel", "Serve and learn on from an uploaded VW model.", 204),
    ("/model", "delete", "resetModel", "Start again from a fresh model.", 204),
    ("/model/properties", "get", "getModelProperties", "creationTime and lastModifiedTime.", 200),
    ("/logs/properties", "get", "getLogProperties", "Date range of the loop's decisions.", 200),
    ("/logs", "delete", "deleteLogs", "Delete the loop's decisions and rewards.", 204),
    ("/evaluations", "get", "listEvaluations", "The loop's offline evaluations.", 200),
    ("/evaluations", "post", "submitEvaluation", "Queue an offline evaluation (id in the body or new).", 201),
    ("/evaluations/{evaluationId}", "put", "createEvaluation", "Queue an offline evaluation of the log.", 200),
    ("/evaluations/{evaluationId}", "get", "getEvaluation", "Status and, when done, each policy's estimate.", 200),
    ("/evaluations/{evaluationId}", "delete", "deleteEvaluation", "Delete an evaluation.", 204),
    ("/configurations/applyFromEvaluation", "post", "applyFromEvaluation", "Set a policy of an evaluation.", 204),
    ("/featureImportances", "get", "listFeatureImportances", "The loop's feature importances.", 200),
    ("/featureImportances/{featureImportanceId}", "put", "createFeatureImportance", "Queue a feature importance.", 200),
    ("/featureImportances/{featureImportanceId}", "get", "getFeatureImportance", "Status and namespace scores.", 200),
    ("/featureImportances/{featureImportanceId}", "delete", "deleteFeatureImportance", "Delete one.", 204),
]


def _admin_operations(prefix: str) -> dict[str, Any]:
    tag = prefix.rsplit("/", 1)[-1]
    paths: dict[str, Any] = {}
    for path, method, name, summary, status in ADMIN:
        operation = {
            "operationId": f"{name}[{tag}]",
            "summary": summary + " Needs an admin key.",
            "responses": {str(status): {"description": "Done."}, **_errors(400, 401, 403, 503)},
        }
        if method in ("put", "post"):
            kind = "application/octet-stream" if path == "/model" else "application/json"
            operation["requestBody"] = {"required": True, "content": {kind: {"schema": {}}}}
        paths.setdefault(prefix + path, {})[method] = operation
    return paths


@cache
def openapi() -> dict[str, Any]:
    schemas: dict[str, Any] = {"ErrorResponse": ERROR}
    for model in (
        RankRequest,
        RankResponse,
        RewardRequest,
        MultiSlotRankRequest,
        MultiSlotRankResponse,
        MultiSlotRewardRequest,
    ):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    paths: dict[str, Any] = {}
    for prefix in PREFIXES:
        paths.update(_operations(prefix))
        paths.update(_admin_operations(prefix))
    paths.update(signals_paths())
    paths["/healthz"] = {"get": {"operationId": "healthz", "responses": {"200": {"description": "Serving."}}}}
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics of the server and its loops. Needs an admin key when loops have keys.",
            "responses": {
                "200": {
                    "description": "Prometheus text format (OpenMetrics when the Accept header asks for it).",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_errors(401, 403),
            },
        }
    }
    security = [{"key": []}, {"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "ranker", "version": __version__},
        "security": security,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "key": {"type": "apiKey", "in": "header", "name": "Ocp-Apim-Subscription-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "paths": paths,
    }
