"""A loop's administration as a library: configuration, policy, model and log, for the API and the CLI alike.

Each operation takes the :class:`~ranker.serving.service.Service` and the loop; the admin blueprint and ``ranker
evaluate --apply`` are thin shells over these functions. A change to the policy or to the reward settings resets
the model: the trainer notices the new learning settings and retrains from the decisions still in the log, and
a fresh model is published at once so the workers stop serving the old one. Refusals are :class:`ApiError`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core import vwoptions
from ..core.errors import ApiError
from ..core.settings import POLICY_KINDS, LoopSettings, Policy
from . import loopconfig
from .engine import fresh_model, is_multislot
from .service import Loop, Service, timestamp


def effective(service: Service, loop: Loop) -> tuple[LoopSettings, Policy, str | None]:
    """The loop's settings, policy and configuration stamp: the settings file overridden by the API's."""
    return loopconfig.effective(service.settings, loop.name, service.stored_config(loop.name))


def _stored(service: Service, loop: Loop) -> tuple[dict, dict | None]:
    row = service.stored_config(loop.name)
    if row is None:
        return {}, None
    return json.loads(row["service"] or "{}"), json.loads(row["policy"]) if row["policy"] else None


def service_configuration(service: Service, loop: Loop) -> dict[str, Any]:
    """Personalizer's ServiceConfiguration of the loop, with the Apprentice metrics once there are any."""
    settings, _, stamp = effective(service, loop)
    body = loopconfig.service_body(settings, stamp)
    metrics = loopconfig.apprentice_metrics(service.store.apprentice_window(loop.name))
    if metrics is not None:
        body["latestApprenticeModeMetrics"] = metrics
    return body


def set_service(service: Service, loop: Loop, changes: dict) -> None:
    """Change service configuration fields of the loop (as PUT configurations/service)."""
    _change_config(service, loop, lambda stored, policy: ({**stored, **changes}, policy))


def set_policy(service: Service, loop: Loop, policy: dict | None) -> None:
    """Set the loop's policy, or None for the settings file's (as PUT / DELETE configurations/policy)."""
    _change_config(service, loop, lambda stored, _: (stored, policy))


def _change_config(service: Service, loop: Loop, change) -> None:
    """Store the loop's API configuration; reset the model when what it learns with changed.

    Changes are serialised across processes and nodes (the database's ``config_turn``), so two at once cannot
    lose one. New learning arguments are first loaded by VW in a separate process: a configuration VW refuses
    is a 400 and is not stored.
    """
    with service.database.config_turn():
        stored_service, stored_policy = change(*_stored(service, loop))
        row = {
            "service": json.dumps(stored_service) if stored_service else None,
            "policy": json.dumps(stored_policy) if stored_policy else None,
            "updated_at": timestamp(datetime.now(UTC)),
        }
        _, before = loopconfig.learning_fingerprint(*effective(service, loop)[:2])
        settings, policy, _ = loopconfig.effective(service.settings, loop.name, row)
        arguments, after = loopconfig.learning_fingerprint(settings, policy)
        if after != before:
            check_vw(service.settings.data_dir, arguments, None, "InvalidPolicyConfiguration")
        service.store.save_loop_config(loop.name, row["service"], row["policy"], row["updated_at"])
        if after != before:
            # Serve a fresh model now; the trainer sees the new fingerprint and retrains from the retained log.
            service.models.publish(loop.name, fresh_model(arguments))
    service.refresh(loop, now=True)  # this worker applies it now; the others within REFRESH_SECONDS


def export_model(service: Service, loop: Loop) -> bytes:
    """The model the workers serve: the last published version, or a fresh one before any."""
    current = service.models.current(loop.name)
    return current[1].read_bytes() if current else fresh_model(loop.arguments)


def import_model(service: Service, loop: Loop, data: bytes) -> str:
    """Serve and continue learning from an uploaded VW model; refused (400 ``InvalidModelImportFormat``) unless
    its header holds only options a policy may use, it is of the loop's kind and VW loads it with the loop's
    policy and reads it to its end. Returns the published version."""
    if not data:
        raise ApiError(400, "InvalidModelImportFormat", "the body is empty; send the VW model file")
    settings, policy, _ = effective(service, loop)
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
    check_vw(service.settings.data_dir, arguments, data, "InvalidModelImportFormat")
    return _replace_model(service, loop, data, fingerprint)


def reset_model(service: Service, loop: Loop) -> str:
    """Serve a fresh model and continue learning from the decisions logged from now on."""
    settings, policy, _ = effective(service, loop)
    arguments, fingerprint = loopconfig.learning_fingerprint(settings, policy)
    return _replace_model(service, loop, fresh_model(arguments), fingerprint)


def _replace_model(service: Service, loop: Loop, model: bytes, fingerprint: str) -> str:
    """Make ``model`` the loop's model: the trainer continues from it with the decisions logged from now on.

    The model is published inside the log's write turn, as the trainer publishes: a trainer that learned
    on from the previous model cannot publish it over this one (it finds the generation raised).
    """
    version = service.store.reset_learning(  # publish() runs in the store's writer thread, in its transaction
        loop.name, fingerprint, model, lambda conn: service.models.publish(loop.name, model, conn)
    )
    service.refresh(loop, now=True)
    return version


def model_properties(service: Service, loop: Loop) -> dict[str, str]:
    """``creationTime`` and ``lastModifiedTime`` of the published model versions (empty before any)."""
    versions = service.models.versions(loop.name)
    if not versions:
        return {}
    first, last = (timestamp(service.models.created(loop.name, v)) for v in (versions[0], versions[-1]))
    return {"creationTime": first, "lastModifiedTime": last}


def log_properties(service: Service, loop: Loop) -> dict[str, Any]:
    first, last = service.store.log_range(loop.name)
    return {"dateRange": {} if first is None else {"from": first, "to": last}}


def delete_logs(service: Service, loop: Loop) -> None:
    """Delete the loop's decisions and rewards; the model stays (ids are never reused, so learning goes on)."""
    service.store.delete_log(loop.name)


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


def check_vw(data_dir: Path, arguments: str, model: bytes | None, code: str, target: str | None = None) -> None:
    """Have VW load these arguments (and model) in a separate process: VW may abort on what it cannot
    read, which must not take a worker down. A refusal is a 400 with ``code`` (and ``target``).

    A model's header options must have passed :func:`ranker.core.vwoptions.check_model` before: VW acts on them.
    """
    with tempfile.TemporaryDirectory(dir=data_dir) as folder:
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
