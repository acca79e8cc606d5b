"""OpenAPI 3.1 description of the HTTP API, with request schemas taken from the pydantic models."""

from __future__ import annotations

from functools import cache
from typing import Any

from .. import __version__
from ..core.schemas import (
    ID_PATTERN,
    ID_RULE,
    MAX_ID,
    ApplyFromEvaluationRequest,
    EvaluationRequest,
    EvaluationSubmission,
    JobRequest,
    MultiSlotRankRequest,
    MultiSlotRankResponse,
    MultiSlotRewardRequest,
    RankRequest,
    RankResponse,
    RewardRequest,
)
from ..core.settings import Policy
from ..serving.loopconfig import ServiceConfiguration
from ..signals.openapi import signals_paths
from ..triage.openapi import triage_paths, triage_schemas

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

ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID, "pattern": ID_PATTERN, "description": ID_RULE}
TEXT = {
    400: "Invalid request; the body says what and where.",
    401: "Missing or unknown key.",
    403: "The key's role does not allow this operation.",
    404: "No such event, evaluation or feature importance in the key's loop.",
    409: "The id is taken in this loop, or the evaluation has not succeeded (applyFromEvaluation).",
    413: "The body is larger than max_body_bytes.",
    415: "The body is not application/json.",
    503: "The decision log could not commit; nothing was acknowledged.",
}
ANY_JSON = {"content": {"application/json": {"schema": {"type": "object"}}}}


def _errors(*statuses: int) -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    return {str(s): {"description": TEXT[s], **ref} for s in statuses}


def _body(name: str, media_type: str = "application/json") -> dict[str, Any]:
    return {"required": True, "content": {media_type: {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": ID}


def _link(operation_id: str, parameter: str, expression: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": {parameter: expression}}


def _operations(prefix: str) -> dict[str, Any]:
    version = (
        []
        if prefix.endswith(("v1.0", "preview.3"))
        else [{"name": "api-version", "in": "query", "required": False, "schema": {"type": "string"}}]
    )
    tag = prefix.rsplit("/", 1)[-1]
    paths: dict[str, Any] = {}
    for base, name, what in (("", "", ""), ("/multislot", "MultiSlot", " (multi-slot)")):
        event = _path_id("eventId")
        ranked = "$response.body#/eventId"
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
                        "links": {
                            "reward": _link(f"reward{name}[{tag}]", "eventId", ranked),
                            "activate": _link(f"activate{name}[{tag}]", "eventId", ranked),
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
    explain = {"name": "explain", "in": "query", "required": False, "schema": {"type": "boolean"}}
    paths[f"{prefix}/events/{{eventId}}"] = {
        "get": {
            "operationId": f"getEvent[{tag}]",
            "summary": "The decision as served: context, eligible and excluded actions with the rules' reasons, "
            "the chosen action, explored, rewards, activation; with explain=true the feature contributions.",
            "parameters": [event, explain, *version],
            "responses": {"200": {"description": "The decision."}, **_errors(400, 401, 404, 503)},
        }
    }
    return paths


# path, method, operationId, summary, success status, request body schema, error statuses
ADMIN: list[tuple[str, str, str, str, int, str | None, tuple[int, ...]]] = [
    ("/configurations/service", "get", "getServiceConfiguration", "The loop's service configuration.", 200, None, ()),
    (
        "/configurations/service",
        "put",
        "updateServiceConfiguration",
        "Change the service configuration; durations are 1 s to 3650 days.",
        200,
        "ServiceConfiguration",
        (400, 413, 415),
    ),
    ("/configurations/policy", "get", "getPolicy", "The loop's learning policy.", 200, None, ()),
    (
        "/configurations/policy",
        "put",
        "updatePolicy",
        "Change the policy (VW arguments with --cb_explore_adf or --ccb_explore_adf that VW loads, naming no "
        "file or port); the model retrains from the log.",
        200,
        "Policy",
        (400, 413, 415),
    ),
    ("/configurations/policy", "delete", "resetPolicy", "Back to the settings file's policy.", 200, None, ()),
    ("/model", "get", "exportModel", "The served VW model (application/octet-stream).", 200, None, ()),
    ("/model", "put", "importModel", "Serve and learn on from an uploaded VW model.", 204, "Model", (400, 413)),
    ("/model", "delete", "resetModel", "Start again from a fresh model.", 204, None, ()),
    ("/model/properties", "get", "getModelProperties", "creationTime and lastModifiedTime.", 200, None, ()),
    ("/logs/properties", "get", "getLogProperties", "Date range of the loop's decisions.", 200, None, ()),
    ("/logs", "delete", "deleteLogs", "Delete the loop's decisions and rewards.", 204, None, ()),
    ("/evaluations", "get", "listEvaluations", "The loop's offline evaluations.", 200, None, (400,)),
    (
        "/evaluations",
        "post",
        "submitEvaluation",
        "Queue an offline evaluation (id in the body or new).",
        201,
        "EvaluationSubmission",
        (400, 409, 413, 415),
    ),
    (
        "/evaluations/{evaluationId}",
        "put",
        "createEvaluation",
        "Queue an offline evaluation of the log.",
        200,
        "EvaluationRequest",
        (400, 409, 413, 415),
    ),
    (
        "/evaluations/{evaluationId}",
        "get",
        "getEvaluation",
        "Status and, when done, each policy's estimate, interval and paired comparisons with Online and Baseline; "
        "per segment (segmentBy) and under other rules (rulesWhatIf) when asked.",
        200,
        None,
        (400, 404),
    ),
    ("/evaluations/{evaluationId}", "delete", "deleteEvaluation", "Delete an evaluation.", 204, None, (400, 404)),
    (
        "/configurations/applyFromEvaluation",
        "post",
        "applyFromEvaluation",
        "Set a policy of a Succeeded evaluation as the loop's policy.",
        204,
        "ApplyFromEvaluationRequest",
        (400, 404, 409, 413, 415),
    ),
    ("/featureImportances", "get", "listFeatureImportances", "The loop's feature importances.", 200, None, (400,)),
    (
        "/featureImportances/{featureImportanceId}",
        "put",
        "createFeatureImportance",
        "Queue a feature importance.",
        200,
        "JobRequest",
        (400, 409, 413, 415),
    ),
    (
        "/featureImportances/{featureImportanceId}",
        "get",
        "getFeatureImportance",
        "Status, namespace and flat-feature scores, and what could not be scored.",
        200,
        None,
        (400, 404),
    ),
    (
        "/featureImportances/{featureImportanceId}",
        "delete",
        "deleteFeatureImportance",
        "Delete one.",
        204,
        None,
        (400, 404),
    ),
]
PAGING = [
    {"name": "skip", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0, "maximum": 2**62}},
    {"name": "top", "in": "query", "required": False, "schema": {"type": "integer", "minimum": -1, "maximum": 2**62}},
]


def _admin_operations(prefix: str) -> dict[str, Any]:
    tag = prefix.rsplit("/", 1)[-1]
    paths: dict[str, Any] = {}
    for path, method, name, summary, status, body, errors in ADMIN:
        success: dict[str, Any] = {"description": "Done."}
        if status != 204:
            success.update(ANY_JSON if path != "/model" else {"content": {"application/octet-stream": {}}})
        operation: dict[str, Any] = {
            "operationId": f"{name}[{tag}]",
            "summary": summary + " Needs an admin key.",
            "responses": {str(status): success, **_errors(*sorted({*errors, 401, 403, 503}))},
        }
        parameters = [_path_id(p) for p in ("evaluationId", "featureImportanceId") if f"{{{p}}}" in path]
        if path in ("/evaluations", "/featureImportances") and method == "get":
            parameters += PAGING
        if parameters:
            operation["parameters"] = parameters
        if body is not None:
            operation["requestBody"] = _body(
                body, "application/octet-stream" if body == "Model" else "application/json"
            )
        paths.setdefault(prefix + path, {})[method] = operation
    for kind, parameter in (("evaluations", "evaluationId"), ("featureImportances", "featureImportanceId")):
        item = paths[f"{prefix}/{kind}/{{{parameter}}}"]
        what = "Evaluation" if kind == "evaluations" else "FeatureImportance"
        created = {
            "get": _link(f"get{what}[{tag}]", parameter, f"$request.path.{parameter}"),
            "delete": _link(f"delete{what}[{tag}]", parameter, f"$request.path.{parameter}"),
        }
        item["put"]["responses"]["200"]["links"] = created
    submitted = paths[f"{prefix}/evaluations"]["post"]["responses"]["201"]
    submitted["links"] = {
        "get": _link(f"getEvaluation[{tag}]", "evaluationId", "$response.body#/id"),
        "delete": _link(f"deleteEvaluation[{tag}]", "evaluationId", "$response.body#/id"),
    }
    return paths


@cache
def openapi() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "ErrorResponse": ERROR,
        "Model": {"type": "string", "format": "binary", "description": "A VW model file."},
    }
    for model in (
        RankRequest,
        RankResponse,
        RewardRequest,
        MultiSlotRankRequest,
        MultiSlotRankResponse,
        MultiSlotRewardRequest,
        ServiceConfiguration,
        Policy,
        JobRequest,
        EvaluationRequest,
        EvaluationSubmission,
        ApplyFromEvaluationRequest,
    ):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    paths: dict[str, Any] = {}
    for prefix in PREFIXES:
        paths.update(_operations(prefix))
        paths.update(_admin_operations(prefix))
    paths.update(signals_paths())
    paths.update(triage_paths())
    schemas.update(triage_schemas())
    paths["/healthz"] = {
        "get": {
            "operationId": "healthz",
            "security": [],
            "responses": {
                "200": {"description": "Serving.", **ANY_JSON},
                "503": {
                    **_errors(503)["503"],
                    "description": "StoreUnavailable: the decision log cannot be read, or its file was deleted or "
                    "replaced while serving.",
                },
            },
        }
    }
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
