"""Personalizer's administration operations: service configuration, policy, model and logs.

They need the loop's admin key. A change to the policy or to the reward settings resets the model: the
trainer notices the new learning settings and retrains from the decisions still in the log, and a fresh
model is published at once so the workers stop serving the old one.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime

from flask import Blueprint, Response

from . import loopconfig, models, trainer, vwoptions
from .api import caller, json_body, json_response, request_bytes, service
from .engine import fresh_model, is_multislot
from .errors import ApiError
from .schemas import validate
from .service import Loop, timestamp
from .settings import POLICY_KINDS, Policy

bp = Blueprint("admin", __name__)


def effective(loop: Loop):
    return loopconfig.effective(service().settings, loop.name, service().stored_config(loop.name))


def stored(loop: Loop) -> tuple[dict, dict | None]:
    row = service().stored_config(loop.name)
    if row is None:
        return {}, None
    return json.loads(row["service"] or "{}"), json.loads(row["policy"]) if row["policy"] else None


def set_service(loop: Loop, changes: dict) -> None:
    """Change service configuration fields of the loop (as PUT configurations/service)."""
    _change_config(loop, lambda service, policy: ({**service, **changes}, policy))


def set_policy(loop: Loop, policy: dict | None) -> None:
    """Set the loop's policy, or None for the settings file's (as PUT / DELETE configurations/policy)."""
    _change_config(loop, lambda service, _: (service, policy))


def _change_config(loop: Loop, change) -> None:
    """Store the loop's API configuration; reset the model when what it learns with changed.

    Changes are serialised across processes (a lock file), so two at once cannot lose one. New learning
    arguments are first loaded by VW in a separate process: a configuration VW refuses is a 400 and is not
    stored.
    """
    with open(service().settings.data_dir / "config.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored_service, stored_policy = change(*stored(loop))
        row = {
            "service": json.dumps(stored_service) if stored_service else None,
            "policy": json.dumps(stored_policy) if stored_policy else None,
            "updated_at": timestamp(datetime.now(UTC)),
        }
        _, before = loopconfig.learning_fingerprint(*effective(loop)[:2])
        settings, policy, _ = loopconfig.effective(service().settings, loop.name, row)
        arguments, after = loopconfig.learning_fingerprint(settings, policy)
        if after != before:
            check_vw(arguments, None, "InvalidPolicyConfiguration")
        values = (loop.name, *row.values())
        service().store.write(lambda conn: conn.execute(loopconfig.UPSERT, values))
        if after != before:
            # Serve a fresh model now; the trainer sees the new fingerprint and retrains from the retained log.
            models.publish(service().settings.data_dir, loop.name, fresh_model(arguments))
    loop.checked_at = 0.0  # this worker applies it now; the others within REFRESH_SECONDS
    service().refresh(loop)


def _replace_model(loop: Loop, model: bytes, fingerprint: str) -> str:
    """Make ``model`` the loop's model: the trainer continues from it with the decisions logged from now on.

    The model is published inside the log's write turn, as the trainer publishes: a trainer that learned
    on from the previous model cannot publish it over this one (it finds the generation raised).
    """
    now = timestamp(datetime.now(UTC))
    data_dir = service().settings.data_dir  # reset() runs in the store's writer thread, outside the app
    published: list[str] = []

    def reset(conn) -> None:
        conn.execute(
            "INSERT INTO trainer_state (loop, settings, updated_at) VALUES (?, ?, ?) ON CONFLICT(loop) DO NOTHING",
            (loop.name, fingerprint, now),
        )
        conn.execute(
            "UPDATE trainer_state SET settings = ?, model = ?, learned = 0, skipped = 0, published_learned = 0, "
            "last_decision_id = (SELECT coalesce(max(id), 0) FROM decisions WHERE loop = ?), "
            "generation = generation + 1, updated_at = ? WHERE loop = ?",
            (fingerprint, model, loop.name, now, loop.name),
        )
        published.append(models.publish(data_dir, loop.name, model))

    service().store.write(reset)
    loop.checked_at = 0.0
    service().refresh(loop)
    return published[-1]


# -- configurations ---------------------------------------------------------------------------------


@bp.get("/configurations/service")
def get_service_configuration() -> Response:
    loop = caller(admin=True)
    settings, _, stamp = effective(loop)
    body = loopconfig.service_body(settings, stamp)
    rows = service().store.read("SELECT apprentice FROM trainer_state WHERE loop = ?", (loop.name,))
    metrics = trainer.apprentice_metrics(rows[0]["apprentice"] if rows else None)
    if metrics is not None:
        body["latestApprenticeModeMetrics"] = metrics
    return json_response(body, 200)


@bp.put("/configurations/service")
def update_service_configuration() -> Response:
    loop = caller(admin=True)
    settings, _, _ = effective(loop)
    changes = loopconfig.validated_service(settings, json_body())
    set_service(loop, changes)
    settings, _, stamp = effective(loop)
    return json_response(loopconfig.service_body(settings, stamp), 200)


@bp.get("/configurations/policy")
def get_policy() -> Response:
    loop = caller(admin=True)
    return json_response(effective(loop)[1].model_dump(), 200)


@bp.put("/configurations/policy")
def update_policy() -> Response:
    loop = caller(admin=True)
    policy = validate(Policy, json_body(), "InvalidPolicyConfiguration")
    set_policy(loop, policy.model_dump())
    return json_response(policy.model_dump(), 200)


@bp.delete("/configurations/policy")
def reset_policy() -> Response:
    """Back to the policy of the settings file."""
    loop = caller(admin=True)
    set_policy(loop, None)
    return json_response(effective(loop)[1].model_dump(), 200)


# -- model ------------------------------------------------------------------------------------------


@bp.get("/model")
def export_model() -> Response:
    """The model the workers serve: the last published version, or a fresh one before any."""
    loop = caller(admin=True)
    current = models.current(service().settings.data_dir, loop.name)
    data = current[1].read_bytes() if current else fresh_model(loop.arguments)
    return Response(data, 200, mimetype="application/octet-stream")


@bp.put("/model")
def import_model() -> Response:
    """Serve and continue learning from an uploaded VW model (refused unless VW loads it with the policy)."""
    loop = caller(admin=True)
    data = request_bytes()
    if not data:
        raise ApiError(400, "InvalidModelImportFormat", "the body is empty; send the VW model file")
    settings, policy, _ = effective(loop)
    arguments, fingerprint = loopconfig.learning_fingerprint(settings, policy)
    # VW takes options from a model's header as from its arguments: they are checked before any VW reads it.
    try:
        header = vwoptions.check_model(data)
    except ValueError as exc:
        raise ApiError(400, "InvalidModelImportFormat", f"not a model this loop can load: {exc}") from None
    # VW loads a single-slot model with multi-slot arguments (and the reverse) without a word.
    if ("--ccb_explore_adf" in header.options) != is_multislot(arguments):
        which, _ = POLICY_KINDS[is_multislot(arguments)]
        raise ApiError(400, "InvalidModelImportFormat", f"not a {which} model, and this loop's policy is {which}")
    check_vw(arguments, data, "InvalidModelImportFormat")
    _replace_model(loop, data, fingerprint)
    return Response(status=204)


@bp.delete("/model")
def reset_model() -> Response:
    loop = caller(admin=True)
    settings, policy, _ = effective(loop)
    arguments, fingerprint = loopconfig.learning_fingerprint(settings, policy)
    _replace_model(loop, fresh_model(arguments), fingerprint)
    return Response(status=204)


@bp.get("/model/properties")
def get_model_properties() -> Response:
    loop = caller(admin=True)
    data_dir = service().settings.data_dir
    body = {}
    versions = models.versions(data_dir, loop.name)
    if versions:
        first = models.loop_dir(data_dir, loop.name) / f"{versions[0]}.vw"
        last = models.loop_dir(data_dir, loop.name) / f"{versions[-1]}.vw"
        body = {"creationTime": _mtime(first), "lastModifiedTime": _mtime(last)}
    return json_response(body, 200)


def _mtime(path) -> str:
    return timestamp(datetime.fromtimestamp(os.stat(path).st_mtime, UTC))


# Run by check_vw in a process of its own: VW loads the arguments (and the model, then saves it again: a model
# VW read to its end comes back byte for byte, with the options the trainer loads a model with).
_PROBE = """
import sys, vowpalwabbit
arguments, model, saved = sys.argv[1:]
if not model:
    vowpalwabbit.Workspace(arguments + " --quiet -t").finish()
    sys.exit()
ws = vowpalwabbit.Workspace(arguments + " --quiet --preserve_performance_counters -i " + model)
ws.save(saved)
ws.finish()
if open(saved, "rb").read() != open(model, "rb").read():
    sys.exit("VW " + vowpalwabbit.__version__ + " does not read the file to its end: it is cut short, has bytes "
             "after the model, or was written by another VW version")
"""


def check_vw(arguments: str, model: bytes | None, code: str, target: str | None = None) -> None:
    """Have VW load these arguments (and model) in a separate process: VW may abort on what it cannot
    read, which must not take a worker down. A refusal is a 400 with ``code`` (and ``target``).

    A model's header options must have passed :func:`ranker.vwoptions.check_model` before: VW acts on them.
    """
    with tempfile.TemporaryDirectory(dir=service().settings.data_dir) as folder:
        path = os.path.join(folder, "import.vw")
        if model is not None:
            with open(path, "wb") as file:
                file.write(model)
        argv = [sys.executable, "-c", _PROBE, arguments, path if model is not None else "", path + ".saved"]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise ApiError(400, code, "VW did not load it within 60 s", target) from exc
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["VW could not load it"])[-1]
        what = "a model this loop's policy can load" if model is not None else "arguments VW accepts"
        raise ApiError(400, code, f"not {what}: {reason}", target)


# -- logs -------------------------------------------------------------------------------------------


@bp.get("/logs/properties")
def get_log_properties() -> Response:
    loop = caller(admin=True)
    row = service().store.read(
        "SELECT min(created_at) AS first, max(created_at) AS last FROM decisions WHERE loop = ?", (loop.name,)
    )[0]
    date_range = {} if row["first"] is None else {"from": row["first"], "to": row["last"]}
    return json_response({"dateRange": date_range}, 200)


@bp.delete("/logs")
def delete_logs() -> Response:
    """Delete the loop's decisions and rewards; the model stays (ids are never reused, so learning goes on)."""
    loop = caller(admin=True)

    def delete(conn) -> None:
        conn.execute("DELETE FROM rewards WHERE decision_id IN (SELECT id FROM decisions WHERE loop = ?)", (loop.name,))
        conn.execute("DELETE FROM decisions WHERE loop = ?", (loop.name,))

    service().store.write(delete)
    return Response(status=204)
