"""The ``[outbox]`` settings: how approved messages are delivered. Secrets never sit here: the SMTP password
and the webhook's signing secret are read from the environment when a message is sent."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SMTP_PASSWORD_VARIABLE = "RANKER_OUTBOX_SMTP_PASSWORD"
WEBHOOK_SECRET_VARIABLE = "RANKER_OUTBOX_WEBHOOK_SECRET"


class OutboxSettings(BaseModel):
    """``[outbox]``: delivery of approved messages (unset ``delivery``: they wait in the outbox for copying)."""

    model_config = ConfigDict(extra="forbid")
    delivery: Literal["smtp", "webhook"] | None = Field(
        None, description="How messages are delivered: smtp or webhook; unset: they wait in the outbox."
    )
    from_address: str | None = Field(None, max_length=320, description="The From address of emails (smtp).")
    smtp_host: str = Field("localhost", min_length=1, description="SMTP server's host.")
    smtp_port: int = Field(25, ge=1, le=65535, description="SMTP server's port (587 with STARTTLS, usually).")
    smtp_starttls: bool = Field(False, description="Upgrade the SMTP connection with STARTTLS (certificate checked).")
    smtp_username: str | None = Field(
        None, description=f"SMTP login name; its password comes only from the environment ({SMTP_PASSWORD_VARIABLE})."
    )
    webhook_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="URL POSTed each message as JSON (webhook); signed with HMAC-SHA256 when "
        f"{WEBHOOK_SECRET_VARIABLE} is set.",
    )
    timeout: float = Field(30.0, gt=0, le=600, description="Seconds a connection or an answer may take.")
    max_attempts: int = Field(5, ge=1, le=100, description="Attempts per message before it is marked failed.")
    backoff: float = Field(
        30.0, gt=0, le=86400, description="Seconds before the second attempt; each later wait doubles."
    )
    interval: float = Field(5.0, gt=0, le=3600, description="Seconds between the trainer process's outbox runs.")

    @model_validator(mode="after")
    def _complete(self) -> OutboxSettings:
        if self.delivery == "smtp" and not self.from_address:
            raise ValueError("outbox.from_address is needed to deliver by smtp")
        if self.delivery == "webhook" and not self.webhook_url:
            raise ValueError("outbox.webhook_url is needed to deliver by webhook")
        return self
