"""The ``[signals]`` settings: where entity ids sit in OpenTelemetry attributes, retention, and the feature
definitions, which are data (``[[signals.features]]``), checked when the settings load."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from ..core.durations import parse_duration
from ..core.rules import Condition

ENTITY_TYPES = ("account", "user")
EntityType = Literal["account", "user"]

# Aggregates over the events of a window, and over an entity attribute holding a date.
EVENT_AGGREGATES = ("count", "sum", "min", "max", "distinct", "last", "days_since_last", "change")
ATTRIBUTE_AGGREGATES = ("days_until", "days_since")
AGGREGATES = EVENT_AGGREGATES + ATTRIBUTE_AGGREGATES
NEEDS_FIELD = {"sum", "min", "max", "distinct", "last", "days_until", "days_since"}
_WINDOW = re.compile(r"^P(\d+)([DW])$")


def window_days(text: str) -> int:
    """A window in whole days: ``P30D`` or ``P4W`` (feature values move in UTC day buckets)."""
    match = _WINDOW.match(text)
    if not match:
        parse_duration(text)  # a duration, but not whole days: say so below
        raise ValueError(f"window {text!r} must be whole days or weeks, such as P30D or P4W")
    days = int(match.group(1)) * (7 if match.group(2) == "W" else 1)
    if days < 1:
        raise ValueError(f"window {text!r} must be at least one day")
    return days


class Feature(BaseModel):
    """One feature of an entity type, computed from its events (or from one of its attributes)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$", description="Name in the entity's namespace.")
    entity: EntityType
    event: str | None = Field(None, min_length=1, max_length=256, description="Event name the feature reads.")
    where: list[Condition] = Field(default_factory=list, description="Conditions on the event's attributes.")
    aggregate: Literal[
        "count", "sum", "min", "max", "distinct", "last", "days_since_last", "change", "days_until", "days_since"
    ]
    field: str | None = Field(None, min_length=1, description="Event attribute (or entity attribute) it reads.")
    window: str | None = Field(None, description="Whole days or weeks (P30D, P4W); default: the retention.")
    _days: int | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _known_aggregate(cls, data: Any) -> Any:
        # named here, so the settings check says which definition is wrong, not only its position
        if isinstance(data, dict) and "aggregate" in data and data["aggregate"] not in AGGREGATES:
            known = ", ".join(AGGREGATES)
            raise ValueError(f"feature {data.get('name')!r}: unknown aggregate {data['aggregate']!r}; one of {known}")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Feature:
        where = f"feature {self.name!r}"
        if self.aggregate in NEEDS_FIELD and self.field is None:
            raise ValueError(f"{where}: aggregate {self.aggregate!r} needs field")
        if self.aggregate in ATTRIBUTE_AGGREGATES:
            if self.event is not None or self.window is not None or self.where:
                raise ValueError(f"{where}: {self.aggregate!r} reads an entity attribute: no event, where or window")
            return self
        if self.event is None:
            raise ValueError(f"{where}: aggregate {self.aggregate!r} needs event")
        if self.aggregate in ("count", "change", "days_since_last") and self.field is not None:
            raise ValueError(f"{where}: aggregate {self.aggregate!r} takes no field")
        if self.aggregate == "change" and self.window is None:
            raise ValueError(f"{where}: aggregate 'change' needs a window")
        if any(c.fresh_within is not None for c in self.where):
            raise ValueError(f"{where}: fresh_within is for rules, not for event conditions")
        if self.window is not None:
            try:
                self._days = window_days(self.window)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        return self

    @property
    def from_events(self) -> bool:
        return self.aggregate not in ATTRIBUTE_AGGREGATES

    def days(self, retention_days: int) -> int:
        """Days of events the value reads (the window, twice for ``change``; else the retention)."""
        # read from the private dict directly: pydantic's attribute lookup of a private attribute costs more
        # than the rest of this, and Rank-time enrichment calls it per feature
        days = self.__pydantic_private__["_days"]
        if days is None:
            return retention_days
        return 2 * days if self.aggregate == "change" else days


class SignalSettings(BaseModel):
    """``[signals]``: ingestion of OpenTelemetry events, entity attributes and feature definitions."""

    model_config = ConfigDict(extra="forbid")
    account_attribute: str = Field(
        "account.id", min_length=1, description="Attribute holding a log record's account id (record, then resource)."
    )
    user_attribute: str = Field(
        "user.id", min_length=1, description="Attribute holding a log record's user id (record, then resource)."
    )
    retention_days: int = Field(
        400, ge=1, le=3650, description="Days raw events are kept (and accepted back in time) for rebuilds."
    )
    max_attributes: int = Field(
        128, ge=1, le=10_000, description="Most attributes of a log record (and of its resource); more: refused."
    )
    cache_entities: int = Field(
        10_000, ge=0, description="Entities whose computed features each worker keeps between Ranks (0: none)."
    )
    recheck_seconds: float = Field(
        0.5,
        ge=0,
        le=1,
        description="How long a worker serves an entity's cached values before it reads the entity's version "
        "again (0: at every Rank); a change made through another process shows within this time, one made "
        "through the same worker at once.",
    )
    features: list[Feature] = Field(default_factory=list, description="Feature definitions ([[signals.features]]).")

    @model_validator(mode="after")
    def _features(self) -> SignalSettings:
        seen = set()
        for feature in self.features:
            if (feature.entity, feature.name) in seen:
                raise ValueError(f"feature {feature.name!r} of {feature.entity} is defined twice")
            seen.add((feature.entity, feature.name))
            if feature.from_events and feature.days(self.retention_days) > self.retention_days:
                raise ValueError(f"feature {feature.name!r} reads more days than retention_days keeps")
        return self

    @property
    def attributes(self) -> dict[str, str]:
        """Entity type -> the attribute holding its id."""
        return {"account": self.account_attribute, "user": self.user_attribute}

    def of(self, entity: str) -> list[Feature]:
        return [f for f in self.features if f.entity == entity]
