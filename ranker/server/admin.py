"""Personalizer's administration operations over HTTP: service configuration, policy, model and logs.

They need the loop's admin key. Each is a thin shell over :mod:`ranker.serving.administration`, where the
operations and their rules live (the CLI uses the same functions).
"""

from __future__ import annotations

from flask import Blueprint, Response

from ..core.schemas import validate
from ..core.settings import Policy
from ..serving import administration, loopconfig
from .api import caller, json_body, json_response, request_bytes, service

bp = Blueprint("admin", __name__)


# -- configurations ---------------------------------------------------------------------------------


@bp.get("/configurations/service")
def get_service_configuration() -> Response:
    loop = caller(admin=True)
    return json_response(administration.service_configuration(service(), loop), 200)


@bp.put("/configurations/service")
def update_service_configuration() -> Response:
    loop = caller(admin=True)
    settings, _, _ = administration.effective(service(), loop)
    changes = loopconfig.validated_service(settings, json_body())
    administration.set_service(service(), loop, changes)
    settings, _, stamp = administration.effective(service(), loop)
    return json_response(loopconfig.service_body(settings, stamp), 200)


@bp.get("/configurations/policy")
def get_policy() -> Response:
    loop = caller(admin=True)
    return json_response(administration.effective(service(), loop)[1].model_dump(), 200)


@bp.put("/configurations/policy")
def update_policy() -> Response:
    loop = caller(admin=True)
    policy = validate(Policy, json_body(), "InvalidPolicyConfiguration")
    administration.set_policy(service(), loop, policy.model_dump())
    return json_response(policy.model_dump(), 200)


@bp.delete("/configurations/policy")
def reset_policy() -> Response:
    """Back to the policy of the settings file."""
    loop = caller(admin=True)
    administration.set_policy(service(), loop, None)
    return json_response(administration.effective(service(), loop)[1].model_dump(), 200)


# -- model ------------------------------------------------------------------------------------------


@bp.get("/model")
def export_model() -> Response:
    loop = caller(admin=True)
    return Response(administration.export_model(service(), loop), 200, mimetype="application/octet-stream")


@bp.put("/model")
def import_model() -> Response:
    loop = caller(admin=True)
    administration.import_model(service(), loop, request_bytes())
    return Response(status=204)


@bp.delete("/model")
def reset_model() -> Response:
    loop = caller(admin=True)
    administration.reset_model(service(), loop)
    return Response(status=204)


@bp.get("/model/properties")
def get_model_properties() -> Response:
    loop = caller(admin=True)
    return json_response(administration.model_properties(service(), loop), 200)


# -- logs -------------------------------------------------------------------------------------------


@bp.get("/logs/properties")
def get_log_properties() -> Response:
    loop = caller(admin=True)
    return json_response(administration.log_properties(service(), loop), 200)


@bp.delete("/logs")
def delete_logs() -> Response:
    loop = caller(admin=True)
    administration.delete_logs(service(), loop)
    return Response(status=204)
