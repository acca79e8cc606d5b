"""Sign-in and sign-out of the review pages (see :mod:`ranker.web.base` for the sessions)."""

from __future__ import annotations

import json
from datetime import timedelta

from flask import Blueprint, Response, redirect, request, url_for

from ..core.errors import ApiError
from ..core.settings import hash_key
from ..store import review as review_store
from ..store import timestamp
from . import base

bp = Blueprint("review_auth", __name__, static_folder="static", template_folder="templates")
base.install(bp)


@bp.app_template_filter("pretty_json")
def pretty_json(value: object) -> str:
    """JSON for reading, as text (the template escapes it, unlike ``tojson``, which writes \\u003c for ``<``)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _next() -> str:
    """Where to go after signing in: a review page, never another site."""
    target = request.values.get("next", "")
    if target.startswith("/review/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("review_queue.queue")


def _role(key: str) -> str:
    """``admin`` or ``review`` for a key that may use the review pages; 401/403 otherwise."""
    svc = base.service()
    try:
        svc.authenticate(key, admin=True)
        return "admin"
    except ApiError as exc:
        if exc.status != 403:
            raise
    svc.authenticate(key, review=True)
    return "review"


@bp.get("/sign-in")
def sign_in() -> Response:
    """The sign-in form, also to someone signed in (signing in again makes a new session and ends theirs)."""
    return _form(200, None)


def _form(status: int, message: str | None) -> Response:
    pre = request.cookies.get(base.SIGN_IN_COOKIE) or base.new_session_id()
    response = base.render(
        "review/sign_in.html",
        status=status,
        csrf=base.token("sign-in", pre),
        next=_next(),
        message=message,
        keyed=base.service().settings.auth,
        session=None,  # the page's only form is sign-in's, even for someone signed in
    )
    base.set_cookie(response, base.SIGN_IN_COOKIE, pre, base.SIGN_IN_COOKIE_SECONDS)
    return response


@bp.post("/sign-in")
def sign_in_post() -> Response:
    pre = request.cookies.get(base.SIGN_IN_COOKIE)
    if not pre:
        return _form(403, "Your browser did not send the sign-in cookie: allow cookies for this site and try again.")
    base.check_csrf(base.token("sign-in", pre))
    key = request.form.get("key", "").strip()
    try:
        role = _role(key)
        loop = base.service().authenticate(key, review=True)
    except ApiError as exc:
        message = (
            "This key may not use the review pages: sign in with a review or admin key."
            if exc.status == 403
            else "Unknown key."
        )
        return _form(exc.status, message)
    # A new session id, always: a session id the browser held before (planted or not) is never promoted.
    session_id = base.new_session_id()
    moment = base.now()
    old = request.cookies.get(base.SESSION_COOKIE)
    review_store.create_session(
        base.service().store,
        base.digest(session_id),
        loop.name,
        role,
        hash_key(key),
        timestamp(moment),
        timestamp(moment + timedelta(seconds=base.lifetime_seconds())),
        base.digest(old) if old else None,
    )
    response = redirect(_next(), 303)
    base.set_cookie(response, base.SESSION_COOKIE, session_id, base.lifetime_seconds())
    base.clear_cookie(response, base.SIGN_IN_COOKIE)
    return response


@bp.post("/sign-out")
@base.signed_in
def sign_out() -> Response:
    review_store.end_session(base.service().store, base.digest(request.cookies[base.SESSION_COOKIE]))
    response = redirect(url_for("review_auth.sign_in"), 303)
    base.clear_cookie(response, base.SESSION_COOKIE)
    return response
