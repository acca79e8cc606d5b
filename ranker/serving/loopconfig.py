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

from ..core.durations import _DURATION, parse_duration
from ..core.schemas import validate
from ..core.settings import LoopSettings, Policy, Settings
from ..store import loop_config_row
from .engine import vw_arguments

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


def learning_fingerprint(settings: LoopSettings, policy: Policy) -> tuple[str, str]:
    """(VW arguments, fingerprint) of what the model learns with; a change resets the model."""
    arguments = vw_arguments(policy.arguments, settings.exploration_percentage)
    fingerprint = json.dumps(
        {
            "arguments": arguments,
            "rewardWaitTime": parse_duration(settings.reward_wait_time).total_seconds(),
            "rewardAggregation": settings.reward_aggregation,
            "defaultReward": settings.default_reward,
        },
        sort_keys=True,
    )
    return arguments, fingerprint


def apprentice_metrics(stored: str | None) -> dict[str, Any] | None:
    """Personalizer's ``latestApprenticeModeMetrics`` from a checkpoint's Apprentice window.

    Over the most recent Apprentice decisions learned (the trainer keeps APPRENTICE_WINDOW): how many, the reward the
    baseline earned (``sumOfRewards``), how many the model would have chosen the same way
    (``numberOfImitatedEvents``) and the reward on those (``sumOfImitatedRewards``).
    """
    events = json.loads(stored or "[]")
    if not events:
        return None
    window = {
        "numberOfEvents": len(events),
        "sumOfRewards": sum(reward for _, _, reward in events),
        "numberOfImitatedEvents": sum(1 for _, matched, _ in events if matched),
        "sumOfImitatedRewards": sum(reward for _, matched, reward in events if matched),
    }
    return {"startTime": events[0][0], "lastProcessedEventTime": events[-1][0], **window, "lastBatchMetrics": window}


def read(conn: sqlite3.Connection, settings: Settings, loop: str) -> tuple[LoopSettings, Policy, str | None]:
    return effective(settings, loop, loop_config_row(conn, loop))


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
