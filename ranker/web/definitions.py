"""The ``[review]`` settings: the review pages' sessions."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..core.durations import parse_duration


class ReviewSettings(BaseModel):
    """``[review]``: sign-in sessions of the review pages, and what the queue shows of an account."""

    model_config = ConfigDict(extra="forbid")
    session_lifetime: str = Field(
        "PT8H", description="ISO 8601 duration a sign-in lasts; then the reviewer signs in again."
    )
    proxy_hops: int = Field(
        0,
        ge=0,
        le=8,
        description="Reverse proxies in front of ranker whose X-Forwarded-Proto and X-Forwarded-For are trusted "
        "(deploy/nginx.conf: 1): the session cookie is Secure when the browser's request came over HTTPS.",
    )

    account_name: str = Field(
        "name", min_length=1, description="Attribute of a triaged account holding its name, shown in the queue."
    )
    segment: str = Field(
        "segment", min_length=1, description="Attribute of a triaged account holding its segment (the queue's filter)."
    )

    @field_validator("session_lifetime")
    @classmethod
    def _lifetime(cls, value: str) -> str:
        if parse_duration(value) < timedelta(minutes=1):
            raise ValueError("review.session_lifetime must be at least a minute")
        return value
