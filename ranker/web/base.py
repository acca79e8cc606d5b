"""What every review page shares: the signed-in session, CSRF tokens, rendering and the HTML error page.

Sessions live on the server (:mod:`ranker.store.review`): the browser holds a random id in an HttpOnly,
SameSite=Strict cookie (Secure when the request came over HTTPS, as the proxy says with ``review.proxy_hops``),
and the database its SHA-256, the key's loop and role, and when it expires. Signing in always makes a new id
(a session id planted before sign-in is never promoted); signing out deletes the row. Every form carries a
CSRF token, an HMAC of the session id under a secret kept in the database (the same in every worker, across
restarts); the sign-in form's token is bound the same way to a pre-sign-in cookie.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, g, redirect, render_template, request, url_for

from ..core.durations import parse_duration
from ..core.errors import ApiError, StoreUnavailable
from ..serving.service import Service
from ..store import review as review_store
from ..store import timestamp

SESSION_COOKIE = "ranker_review_session"
SIGN_IN_COOKIE = "ranker_review_sign_in"
COOKIE_PATH = "/review"
SIGN_IN_COOKIE_SECONDS = 3600
HEADERS = {
    # Everything comes from ranker itself: no CDN, no inline script; frames and foreign form targets refused.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def service() -> Service:
    return current_app.extensions["ranker"]


def now() -> datetime:
    return datetime.now(UTC)


def digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def token(purpose: str, value: str) -> str:
    """A CSRF token: HMAC-SHA256 of ``purpose:value`` under the database's review secret."""
    secret = review_store.secret(service().store)
    return hmac.new(secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=COOKIE_PATH, secure=request.is_secure, httponly=True, samesite="Strict"
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, secure=request.is_secure, httponly=True, samesite="Strict")


def lifetime_seconds() -> int:
    return int(parse_duration(service().settings.review.session_lifetime).total_seconds())


def _key_still_valid(row: dict[str, Any]) -> bool:
    settings = service().settings
    if not settings.auth:
        return True
    loop = settings.loops.get(row["loop"])
    return loop is not None and any(k.sha256 == row["key_sha256"] and k.role == row["role"] for k in loop.keys)


def current_session() -> dict[str, Any] | None:
    """The signed-in session of this request (with its CSRF token), or None."""
    if "review_session" in g:
        return g.review_session
    found = None
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        row = review_store.session(service().store, digest(session_id), timestamp(now()))
        if row is not None and _key_still_valid(row):
            found = {**row, "csrf": token("session", session_id)}
    g.review_session = found
    return found


def check_csrf(expected: str) -> None:
    sent = request.form.get("csrf", "")
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ApiError(403, "InvalidCsrfToken", "the form is stale or was not sent by this site; reload the page")


def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
    """A page for a signed-in reviewer: otherwise GET goes to sign-in and anything else is refused (401); a
    POST must carry the session's CSRF token (403)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        found = current_session()
        if found is None:
            if request.method == "GET":
                return redirect(url_for("review_auth.sign_in", next=request.full_path.rstrip("?")), 303)
            raise ApiError(401, "Unauthorized", "sign in first")
        if request.method == "POST":
            check_csrf(found["csrf"])
        return view(*args, **kwargs)

    return wrapper


def visible_loops() -> list[str]:
    """The loops the signed-in key may look at: its own (every loop when the server has no keys)."""
    settings = service().settings
    found = current_session()
    if not settings.auth:
        return list(settings.loops)
    return [found["loop"]] if found else []


def check_triage_access() -> None:
    """The triage items and the outbox they fill are for keys of ``triage.loop`` (any key without auth), as in
    the JSON API."""
    settings = service().settings
    found = current_session()
    if settings.auth and found["loop"] != settings.triage.loop:
        raise ApiError(403, "OperationNotAllowed", f"this page needs a key of the loop {settings.triage.loop!r}")


def render(template: str, status: int = 200, **context: Any) -> Response:
    context.setdefault("session", current_session())
    return Response(render_template(template, **context), status=status)


def error_page(exc: ApiError) -> Response:
    return render("review/error.html", status=exc.status, error=exc)


def install(bp: Blueprint) -> None:
    """The review pages' error page and security headers on a blueprint."""
    bp.register_error_handler(ApiError, error_page)
    bp.register_error_handler(StoreUnavailable, lambda exc: error_page(ApiError(503, "StoreUnavailable", str(exc))))

    @bp.after_request
    def headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def new_session_id() -> str:
    return secrets.token_urlsafe(32)
