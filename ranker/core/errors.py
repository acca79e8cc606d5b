"""The one error format: Personalizer's ``{"error": {"code", "message", "target"?, "details"?}}``."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered to the client with ``status`` and Personalizer's error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        target: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.target = target
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target is not None:
            error["target"] = self.target
        if self.details:
            error["details"] = self.details
        return {"error": error}


class StoreUnavailable(Exception):
    """The decision log could not commit; the request was not acknowledged."""
