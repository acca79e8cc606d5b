"""A loop's effective configuration: the settings file, overridden by what the API stored.

``PUT configurations/service`` and ``PUT configurations/policy`` store their bodies in the table
``loop_config``; workers and the trainer read it (workers at most every 0.1 s) and combine it with the
loop's settings from the file here, in one place.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .errors import ApiError
from .schemas import validate
from .settings import LoopSettings, Policy, Settings

# The service configuration fields the API shows and may change (Personalizer's names).
SERVICE_FIELDS = (
    "rewardWaitTime",
    "defaultReward",
    "rewardAggregation",
    "explorationPercentage",
    "modelExportFrequency",
    "logRetentionDays",
    "learningMode",
    "isInferenceExplainabilityEnabled",
)
SELECT = "SELECT service, policy, updated_at FROM loop_config WHERE loop = ?"
UPSERT = (
    "INSERT INTO loop_config (loop, service, policy, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(loop) DO UPDATE SET service = excluded.service, policy = excluded.policy, "
    "updated_at = excluded.updated_at"
)


def effective(settings: Settings, loop: str, row: tuple | dict | None) -> tuple[LoopSettings, Policy, str | None]:
    """(loop settings, policy, stamp) from the settings file and a ``loop_config`` row (or None)."""
    loop_settings, policy, stamp = settings.loops[loop], None, None
    if row is not None:
        service, stored_policy, stamp = row.values() if isinstance(row, dict) else row
        if service:
            merged = {**loop_settings.model_dump(by_alias=True), **json.loads(service)}
            loop_settings = LoopSettings.model_validate(merged)
        if stored_policy:
            policy = Policy.model_validate_json(stored_policy)
    return loop_settings, policy or settings.policy(loop), stamp


def read(conn: sqlite3.Connection, settings: Settings, loop: str) -> tuple[LoopSettings, Policy, str | None]:
    return effective(settings, loop, conn.execute(SELECT, (loop,)).fetchone())


def service_body(loop_settings: LoopSettings, stamp: str | None) -> dict[str, Any]:
    """Personalizer's ServiceConfiguration for a loop."""
    body = {name: value for name, value in loop_settings.model_dump(by_alias=True).items() if name in SERVICE_FIELDS}
    body.update({"modelRetrainDays": 0, "isAutoOptimizationEnabled": False, "logMirrorEnabled": False})
    if stamp is not None:
        body["lastConfigurationEditDate"] = stamp
    return body


def validated_service(loop_settings: LoopSettings, body: Any) -> dict[str, Any]:
    """The changeable fields of a ServiceConfiguration body, checked against the loop's settings model.

    Fields Personalizer had and this service does not use (log mirroring, auto-optimization,
    modelRetrainDays, lastConfigurationEditDate) are accepted and ignored, so an unchanged client round-trips.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidServiceConfiguration", "the body must be a ServiceConfiguration object")
    changes = {name: body[name] for name in SERVICE_FIELDS if name in body}
    validate(LoopSettings, {**loop_settings.model_dump(by_alias=True), **changes}, "InvalidServiceConfiguration")
    return changes
