"""The ``[review]`` settings: the review pages' sessions."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..durations import parse_duration


class ReviewSettings(BaseModel):
    """``[review]``: sign-in sessions of the review pages."""

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

    @field_validator("session_lifetime")
    @classmethod
    def _lifetime(cls, value: str) -> str:
        if parse_duration(value) < timedelta(minutes=1):
            raise ValueError("review.session_lifetime must be at least a minute")
        return value
