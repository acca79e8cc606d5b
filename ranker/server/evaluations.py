"""Personalizer's offline evaluations and feature importances: jobs over a loop's log, run in the background.

``PUT evaluations/{id}`` (or ``POST evaluations``) queues an evaluation of the loop's decisions made in
``[startTime, endTime)``: the given policies (VW arguments with ``--cb_explore_adf``, or ``--ccb_explore_adf``
for a multi-slot loop: the loop's kind, else 400 ``InvalidPolicyConfiguration``) are replayed over the log
with :func:`ranker.evaluation.replay.replay`, beside ``Online`` (what was served), ``Baseline`` (the first action)
and ``Random``. Each policy's ``expectedReward`` is the Cressie-Read estimate and its ``confidenceInterval`` the
95% Cressie-Read interval ``[lower, upper]``; ``summary.comparisons`` (an extension of Personalizer's shape)
lists, per reference (Online and Baseline), the policy's paired difference with it on the same events
(:func:`ranker.evaluation.compare.paired_difference`): ``difference``, ``confidenceInterval``, ``verdict``
(better, worse, not distinguishable) and ``moreEvents``; ``optimalPolicy`` prefers a policy distinguishably
better than Online, then the highest lower end. ``segmentBy`` (dotted paths of the logged context, with
``minSegmentEvents``) adds ``segments``, each policy's summary per segment value
(:mod:`ranker.evaluation.segments`); ``rules`` (a loop's rules, as JSON) adds ``rulesWhatIf``, the decisions
replayed through those rules (:mod:`ranker.evaluation.whatif`; single-slot loops only). With
``enablePolicyOptimization`` the job first runs
:func:`ranker.evaluation.search.search` over the same decisions for ``policy_optimization_seconds`` and replays
the best arguments it found as one more policy (``policySource`` ``OfflineExperimentation``, Personalizer's
name for it). ``POST configurations/applyFromEvaluation`` makes a policy of a finished evaluation (the
optimized one included) the loop's policy, exactly as ``PUT configurations/policy`` does.

For a multi-slot loop, ``content.value`` holds, as Personalizer's did, each policy's overall result (``slotId``
empty: every filled slot of every event pooled, the slots of one event taken as separate samples) followed by
one result per slot (``slotId`` the slot's id: the events that filled that slot), each with its own
``summary`` and ``timeseries``; ``optimalPolicy`` is chosen on the overall results. A single-slot loop's
results all have an empty ``slotId``. ``dr`` is null for a multi-slot loop (IPS, SNIPS and Cressie-Read only).

``PUT featureImportances/{id}`` queues a leave-one-namespace-out replay of the loop's policy: for each namespace
of the logged features (the context's, the actions' and a multi-slot loop's slots'), the policy is replayed
ignoring it (VW's ``--ignore``, which goes by the namespace's first character, so namespaces sharing one are
left out together). A namespace scores ``clip(100 (R - R_) / (R - R0), 0, 100)``, as ``ranker importance``
does: R the SNIPS estimate of the policy with every feature, R_ without the namespace, R0 uniform random (all
score 0 when R does not beat R0). Features sent flat, outside any namespace (VW's default namespace), are
scored with ``namespace`` ``""``: together (``featureName`` ``""``) and one by one, by replaying records
rewritten without them. Each action's ``id`` feature stays in every replay; ``notScored`` (an extension)
lists it, and anything else not scored on its own, with the reason.

Jobs are rows of ``jobs``, run by :mod:`ranker.evaluation.jobs` in the trainer process.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, request
from pydantic import ValidationError

from ..core.errors import ApiError
from ..core.schemas import (
    ID_RULE,
    ApplyFromEvaluationRequest,
    EvaluationRequest,
    EvaluationSubmission,
    JobRequest,
    is_id,
    validate,
)
from ..core.settings import POLICY_KINDS, Policy
from ..evaluation import jobs
from ..evaluation.candidates import BASELINE, ONLINE, RANDOM, Candidate
from ..evaluation.jobs import EVALUATION, IMPORTANCE, PENDING, SOURCES, SUCCEEDED
from ..logdata.export import log_time
from ..serving import administration, loopconfig
from ..serving.engine import is_multislot
from ..store import jobs as store_jobs
from .api import caller, json_body, json_response, path_id, service

log = logging.getLogger("ranker.evaluations")

bp = Blueprint("evaluations", __name__)


def _moment(body: dict[str, Any], name: str) -> datetime:
    value = body.get(name)
    if not isinstance(value, str):
        raise ApiError(400, "BadRequest", f"{name} is required: an ISO 8601 date and time", target=name)
    try:
        moment = datetime.fromisoformat(value.replace(" ", "T"))
    except ValueError:
        raise ApiError(400, "BadRequest", f"{name} is not an ISO 8601 date and time: {value!r}", target=name) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise ApiError(
            400, "BadRequest", f"{name} is outside the years 1-9999 in UTC: {value!r}", target=name
        ) from None
    return moment


def _job_id(value: Any, target: str) -> str:
    """An id from the body, checked with the one id rule (ids from the path go through ``path_id``)."""
    if not is_id(value):
        raise ApiError(400, "BadRequest", ID_RULE, target=target)
    return value


def _definition(body: Any, kind: str, model: type[JobRequest]) -> dict[str, Any]:
    """The stored job definition: name, time range and, for an evaluation, the policies to replay, the segment
    paths and the rules of a what-if."""
    parsed = validate(model, body, "BadRequest")  # the types; the relations between fields are checked below
    name = body["name"]
    start, end = _moment(body, "startTime"), _moment(body, "endTime")
    if start >= end:
        raise ApiError(400, "BadRequest", "startTime must be before endTime", target="startTime")
    definition: dict[str, Any] = {"name": name, "startTime": log_time(start), "endTime": log_time(end)}
    if kind == EVALUATION:
        checked = []
        for i, policy in enumerate(body.get("policies") or []):
            try:
                policy = Policy.model_validate(policy)
                Candidate(policy.name, policy.arguments)
            except ValidationError as exc:
                error = exc.errors(include_url=False)[0]
                where = ".".join(str(part) for part in error["loc"])
                message = f"{where}: {error['msg']}" if where else error["msg"]
                raise ApiError(400, "InvalidPolicyConfiguration", message, target=f"policies[{i}]") from None
            except ValueError as exc:
                raise ApiError(400, "InvalidPolicyConfiguration", str(exc), target=f"policies[{i}]") from None
            if policy.name in SOURCES or policy.name in [p["name"] for p in checked]:
                raise ApiError(
                    400, "InvalidPolicyConfiguration", f"policy name {policy.name!r} is taken", target=f"policies[{i}]"
                )
            data_dir = service().settings.data_dir
            administration.check_vw(data_dir, policy.arguments, None, "InvalidPolicyConfiguration", f"policies[{i}]")
            checked.append(policy.model_dump())
        definition["policies"] = checked
        definition["enablePolicyOptimization"] = body.get("enablePolicyOptimization", False)
        if parsed.segmentBy:
            definition["segmentBy"] = parsed.segmentBy
            definition["minSegmentEvents"] = parsed.minSegmentEvents
        if parsed.rules is not None:
            definition["rules"] = body["rules"]  # as given (validated): Rules reads it again when the job runs
    return definition


def _create(kind: str, job_id: str | None, target: str) -> dict[str, Any]:
    """Queue a job; its id from the path, or (``job_id`` None) from the body's ``id`` or a new one."""
    loop = caller(admin=True)
    if job_id is not None:
        job_id = path_id(job_id, "BadRequest", target)
    body = json_body()
    if job_id is None:
        job_id = _job_id(body.get("id", str(uuid.uuid4())) if isinstance(body, dict) else None, target)
    model = JobRequest if kind == IMPORTANCE else EvaluationRequest if job_id is not None else EvaluationSubmission
    definition = _definition(body, kind, model)
    settings, policy, _ = administration.effective(service(), loop)
    multislot = is_multislot(policy.arguments)
    for i, candidate in enumerate(definition.get("policies", [])):
        if is_multislot(candidate["arguments"]) != multislot:
            which, option = POLICY_KINDS[multislot]
            raise ApiError(
                400,
                "InvalidPolicyConfiguration",
                f"this loop is {which}: the policies to evaluate must use {option}",
                target=f"policies[{i}]",
            )
    if multislot and "rules" in definition:
        raise ApiError(
            400, "BadRequest", "rule what-ifs replay single-slot decisions; this loop is multi-slot", target="rules"
        )
    definition["online"] = {
        "name": policy.name,
        "arguments": policy.arguments,
        "learning": loopconfig.learning_fingerprint(settings, policy)[0],
    }
    now = jobs.now()
    inserted = store_jobs.create(service().store, loop.name, kind, job_id, json.dumps(definition), PENDING, now)
    if not inserted:
        raise ApiError(409, "ResourceExists", f"{kind} {job_id!r} exists already; delete it first", target="id")
    return _body(kind, _row(loop.name, kind, job_id))


def _row(loop: str, kind: str, job_id: str) -> dict[str, Any]:
    row = store_jobs.get(service().store, loop, kind, job_id)
    if row is None:
        raise ApiError(404, "ResourceNotFound", f"no {kind} with id {job_id!r} in this loop", target="id")
    return row


def _body(kind: str, row: dict[str, Any], full: bool = True) -> dict[str, Any]:
    """Personalizer's evaluation or feature importance object of a job row."""
    definition = json.loads(row["request"])
    result = json.loads(row["result"]) if row["result"] else {}
    body: dict[str, Any] = {
        "id": row["id"],
        "name": definition["name"],
        "startTime": definition["startTime"],
        "endTime": definition["endTime"],
        "creationTime": row["created_at"],
        "status": row["status"],
    }
    if kind == EVALUATION:
        body["evaluationType"] = "Manual"
    if not full:
        return body
    if "error" in result:
        body["description"] = result["error"]
    elif kind == EVALUATION:
        body["enablePolicyOptimization"] = definition.get("enablePolicyOptimization", False)
        for name in ("segmentBy", "rules"):
            if name in definition:
                body[name] = definition[name]
        body["policies"] = definition["policies"] + (
            [result["optimizedPolicy"]] if result.get("optimizedPolicy") else []
        )
        if result:
            body["description"] = f"{result['events']} events replayed"
            body["events"] = result["events"]
            body["skipped"] = result["skipped"]
            body["optimalPolicy"] = result["optimalPolicy"]
            body["content"] = result["content"]
            for name in ("segments", "minSegmentEvents", "rulesWhatIf"):
                if name in result:
                    body[name] = result[name]
    elif result:
        body["description"] = f"{result['events']} events replayed"
        body["featureScores"] = result["featureScores"]
        body["notScored"] = result.get("notScored", [])
    return body


def _list(kind: str) -> Response:
    loop = caller(admin=True)
    text = {name: request.args.get(name, default) for name, default in (("skip", "0"), ("top", "-1"))}
    if not all(re.fullmatch(r"-?[0-9]+", value) for value in text.values()):  # int() also takes ' 1', '+1', '1_0'
        raise ApiError(400, "BadRequest", "top and skip are integers")
    skip, top = int(text["skip"]), int(text["top"])
    if not 0 <= skip <= 2**62 or not -1 <= top <= 2**62:
        raise ApiError(
            400,
            "BadRequest",
            "skip is 0 to 2^62 and top -1 to 2^62",
            target="skip" if skip < 0 or skip > 2**62 else "top",
        )
    rows = store_jobs.page(service().store, loop.name, kind, top, skip)
    return json_response({"value": [_body(kind, row, full=False) for row in rows]}, 200)


def _delete(kind: str, job_id: str, target: str) -> Response:
    loop = caller(admin=True)
    job_id = path_id(job_id, "BadRequest", target)
    deleted = store_jobs.delete(service().store, loop.name, kind, job_id)
    if not deleted:
        raise ApiError(404, "ResourceNotFound", f"no {kind} with id {job_id!r} in this loop", target="id")
    return Response(status=204)


# -- evaluations ------------------------------------------------------------------------------------


@bp.put("/evaluations/<id:evaluation_id>")
def create_evaluation(evaluation_id: str) -> Response:
    return json_response(_create(EVALUATION, evaluation_id, "evaluationId"), 200)


@bp.post("/evaluations")
def submit_evaluation() -> Response:
    """The same, with the id in the body (or a new one): 201 with the evaluation and its Location."""
    created = _create(EVALUATION, None, "id")
    response = json_response(created, 201)
    response.headers["Location"] = f"{request.path}/{quote(created['id'], safe='')}"
    return response


@bp.get("/evaluations/<id:evaluation_id>")
def get_evaluation(evaluation_id: str) -> Response:
    loop = caller(admin=True)
    evaluation_id = path_id(evaluation_id, "BadRequest", "evaluationId")
    return json_response(_body(EVALUATION, _row(loop.name, EVALUATION, evaluation_id)), 200)


@bp.get("/evaluations")
def list_evaluations() -> Response:
    return _list(EVALUATION)


@bp.delete("/evaluations/<id:evaluation_id>")
def delete_evaluation(evaluation_id: str) -> Response:
    return _delete(EVALUATION, evaluation_id, "evaluationId")


@bp.post("/configurations/applyFromEvaluation")
def apply_from_evaluation() -> Response:
    """Make a policy of a finished evaluation the loop's policy (as ``PUT configurations/policy``)."""
    loop = caller(admin=True)
    body = json_body()
    validate(ApplyFromEvaluationRequest, body, "BadRequest")
    evaluation_id = body["evaluationId"]
    name = body["policyName"]
    row = _row(loop.name, EVALUATION, evaluation_id)
    if row["status"] != SUCCEEDED:
        raise ApiError(409, "Conflict", f"evaluation {evaluation_id!r} is {row['status']}, not Succeeded")
    definition = json.loads(row["request"])
    policies = {p["name"]: p for p in definition["policies"]}
    optimized = json.loads(row["result"] or "{}").get("optimizedPolicy")
    if optimized:
        policies[optimized["name"]] = optimized
    if name == ONLINE:
        policies[name] = {"name": definition["online"]["name"], "arguments": definition["online"]["arguments"]}
    if name in (BASELINE, RANDOM):
        raise ApiError(
            400, "InvalidPolicyConfiguration", f"{name} is a reference, not a VW policy", target="policyName"
        )
    if name not in policies:
        raise ApiError(
            404, "ResourceNotFound", f"no policy {name!r} in evaluation {evaluation_id!r}", target="policyName"
        )
    policy = validate(Policy, policies[name], "InvalidPolicyConfiguration")
    administration.set_policy(service(), loop, policy.model_dump())
    return Response(status=204)


# -- feature importances ----------------------------------------------------------------------------


@bp.put("/featureImportances/<id:feature_importance_id>")
def create_feature_importance(feature_importance_id: str) -> Response:
    return json_response(_create(IMPORTANCE, feature_importance_id, "featureImportanceId"), 200)


@bp.get("/featureImportances/<id:feature_importance_id>")
def get_feature_importance(feature_importance_id: str) -> Response:
    loop = caller(admin=True)
    feature_importance_id = path_id(feature_importance_id, "BadRequest", "featureImportanceId")
    return json_response(_body(IMPORTANCE, _row(loop.name, IMPORTANCE, feature_importance_id)), 200)


@bp.get("/featureImportances")
def list_feature_importances() -> Response:
    return _list(IMPORTANCE)


@bp.delete("/featureImportances/<id:feature_importance_id>")
def delete_feature_importance(feature_importance_id: str) -> Response:
    return _delete(IMPORTANCE, feature_importance_id, "featureImportanceId")
