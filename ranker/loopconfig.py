"""A loop's effective configuration: the settings file, overridden by what the API stored.

``PUT configurations/service`` and ``PUT configurations/policy`` store their bodies in the table
``loop_config``; workers and the trainer read it (workers at most every 0.1 s) and combine it with the
loop's settings from the file here, in one place.
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from .schemas import validate
from .settings import _DURATION, LoopSettings, Policy, Settings

# The service configuration fields the API shows and may change (Personalizer's names).
SERVICE_FIELDS = (
    "rewardWaitTime",
    "defaultReward",
    "rewardAggregation",
    "explorationPercentage",
    "modelExportFrequency",
    "logRetentionDays",
    "learningMode",
)
# The syntax of an ISO 8601 duration, in a pattern both Python and ECMA-262 (JSON Schema) read
DURATION_PATTERN = re.sub(r"\(\?P<\w+>", "(?:", _DURATION.pattern)


def _service_configuration() -> type[BaseModel]:
    """Personalizer's ServiceConfiguration: the changeable fields of LoopSettings, with their types and bounds
    and no coercion ("0.5" is not a number); other fields are accepted and ignored."""
    fields: dict[str, Any] = {}
    for field in LoopSettings.model_fields.values():
        if field.alias in SERVICE_FIELDS:
            extra = {"pattern": DURATION_PATTERN} if field.annotation is str else None
            kind = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
            fields[field.alias] = (kind, Field(field.default, description=field.description, json_schema_extra=extra))
    config = ConfigDict(strict=True, extra="allow")
    return create_model("ServiceConfiguration", __config__=config, **fields)


ServiceConfiguration = _service_configuration()

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
    validate(ServiceConfiguration, body, "InvalidServiceConfiguration")
    changes = {name: body[name] for name in SERVICE_FIELDS if name in body}
    validate(LoopSettings, {**loop_settings.model_dump(by_alias=True), **changes}, "InvalidServiceConfiguration")
    return changes
