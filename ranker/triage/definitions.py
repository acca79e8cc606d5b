"""The ``[triage]`` settings: where renewals and their outcomes sit in the entities' attributes, how patterns
are mined and flagged, the playbook of next best actions, the drafter, what a review decision teaches the
loop, and the dismissal reasons. Checked when the settings load.

A pattern is a conjunction of conditions in the rules' condition language (:class:`ranker.core.rules.Condition`),
tested on an account's *values* (:mod:`ranker.triage.values`): its attributes and its signal features as
of one moment, shaped as Rank-time enrichment adds them to a context, so paths read like the rules' paths
(``account.contract.plan``, ``account.reporting_api_trend``).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..core.durations import parse_duration
from ..core.rules import Condition

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def _duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


class PatternDefinition(BaseModel):
    """A risk pattern written by hand (``[[triage.patterns]]``): e.g. a CS leader's own
    ``fintech and reporting_api_trend <= -0.5``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=_NAME, description="Name of the pattern, unique among patterns.")
    when: list[Condition] = Field(min_length=1, max_length=8, description="Conditions that must all hold.")
    description: str | None = Field(None, max_length=1000, description="The pattern in words, for reviewers.")
    enabled: bool = Field(True, description="Whether triage flags accounts that match it.")


class PlaybookAction(BaseModel):
    """One next best action a CS manager may take, with its features for the loop and its email template."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=_NAME, description="The action's id in the loop's Rank.")
    features: dict[str, Any] = Field(default_factory=dict, description="The action's features (as in a Rank).")
    subject: str = Field(min_length=1, max_length=1000, description="Jinja2 template of the email's subject.")
    template: str = Field(min_length=1, max_length=100_000, description="Jinja2 template of the email's body.")


class Drafter(BaseModel):
    """An optional HTTP endpoint (e.g. a self-hosted language model) that writes the draft."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(
        None, description="POSTed the draft's context as JSON; answers {subject, body}. Unset: templates only."
    )
    timeout: float = Field(10.0, gt=0, le=300, description="Seconds to wait for the drafter before the template.")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/?#\s]+", value, re.IGNORECASE):
            raise ValueError(f"triage.drafter.url {value!r} must be an http:// or https:// URL")
        return value


class TriageRewards(BaseModel):
    """What a review decision teaches the loop: the reward of the item's decision."""

    model_config = ConfigDict(extra="forbid")
    approve: float = Field(1.0, ge=-1, le=1, description="Reward when the draft is approved as it is.")
    approve_edited: float = Field(0.5, ge=-1, le=1, description="Reward when it is approved with edits.")
    dismiss: float = Field(0.0, ge=-1, le=1, description="Reward when the item is dismissed.")


class DismissReason(BaseModel):
    """A reason a reviewer may give for dismissing an item; ``suppress`` keeps the account from being flagged
    again for that long (ISO 8601 duration)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=_NAME)
    label: str = Field(min_length=1, max_length=200)
    suppress: str | None = None

    _check = field_validator("suppress")(classmethod(lambda cls, v: _duration(v)))


def _default_reasons() -> list[DismissReason]:
    return [
        DismissReason(id="internal-merger", label="Internal merger", suppress="P90D"),
        DismissReason(id="already-in-contact", label="Already in contact", suppress="P30D"),
        DismissReason(id="wrong-action", label="Wrong action"),
        DismissReason(id="not-at-risk", label="Not at risk"),
        DismissReason(id="other", label="Other"),
    ]


class TriageSettings(BaseModel):
    """``[triage]``: the renewal-risk workflow (patterns → flagged accounts → next best action → draft)."""

    model_config = ConfigDict(extra="forbid")
    loop: str = Field(
        "cs-next-best-action", pattern=_NAME, description="Loop that ranks each risk item's next best action."
    )
    entity: str = Field("account", description="Entity type whose renewals are triaged.")
    renewal_date: str = Field(
        "contract.renewalDate", min_length=1, description="Attribute holding the entity's next renewal date."
    )
    outcome: str = Field(
        "contract.outcome", min_length=1, description="Attribute holding a renewal's outcome once known."
    )
    churned: list[str] = Field(
        default_factory=lambda: ["churned"], min_length=1, description="Outcome values that count as churn."
    )
    horizon: str = Field(
        "P90D", description="ISO 8601 duration: how long before a renewal its risk is judged and flagged."
    )
    min_support: int = Field(30, ge=1, description="Fewest past renewals a mined pattern must cover.")
    holdout: float = Field(
        0.3, ge=0, lt=1, description="Share of past renewals held out of mining to check each pattern's rate."
    )
    max_conditions: int = Field(3, ge=1, le=3, description="Most conditions in a mined pattern.")
    schedule: str | None = Field(
        "PT1H", description="ISO 8601 duration between the trainer's triage passes; unset: only `ranker triage run`."
    )
    patterns: list[PatternDefinition] = Field(
        default_factory=list, description="Patterns written by hand ([[triage.patterns]]), beside mined ones."
    )
    playbook: list[PlaybookAction] = Field(
        default_factory=list, description="The next best actions ([[triage.playbook]]) the loop ranks."
    )
    talking_points: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Talking points by product area (e.g. release notes), offered to the templates.",
    )
    drafter: Drafter = Field(default_factory=Drafter, description="Optional HTTP drafter ([triage.drafter]).")
    rewards: TriageRewards = Field(default_factory=TriageRewards, description="Rewards of review decisions.")
    dismiss_reasons: list[DismissReason] = Field(
        default_factory=_default_reasons, min_length=1, description="Reasons a reviewer may dismiss an item with."
    )
    recipient: str = Field(
        "contact.email", min_length=1, description="Attribute holding the address an approved item's email goes to."
    )
    value: str | None = Field(
        "contract.value", description="Attribute holding the account's contract value (items sort by it); unset: none."
    )

    @field_validator("horizon")
    @classmethod
    def _horizon(cls, value: str) -> str:
        if parse_duration(value).total_seconds() < 86400:
            raise ValueError("triage.horizon must be at least one day")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value).total_seconds() < 1:
            raise ValueError("triage.schedule must be at least 1 second")
        return value

    @model_validator(mode="after")
    def _unique(self) -> TriageSettings:
        for what, names in (
            ("pattern", [p.name for p in self.patterns]),
            ("playbook action", [a.id for a in self.playbook]),
            ("dismiss reason", [r.id for r in self.dismiss_reasons]),
        ):
            seen = set()
            for name in names:
                if name in seen:
                    raise ValueError(f"triage: {what} {name!r} is defined twice")
                seen.add(name)
        if not re.fullmatch(r"[a-z]+", self.entity):
            raise ValueError(f"triage.entity {self.entity!r} is not an entity type")
        return self
