"""The outbox page: messages approved and waiting, being sent, sent or failed. Without an ``[outbox]`` delivery
they wait here for copying; a message left ``sending`` by a sender that stopped needs a person's check."""

from __future__ import annotations

from flask import Blueprint, Response, redirect, request, url_for

from ..core.errors import ApiError
from ..store import outbox as outbox_store
from ..store import timestamp
from . import base

bp = Blueprint("review_outbox", __name__)
base.install(bp)

STATES = ("pending", "sending", "failed", "sent")


@bp.get("/outbox")
@base.signed_in
def outbox() -> Response:
    base.check_triage_access()
    svc = base.service()
    state = request.args.get("state") or None
    if state is not None and state not in STATES:
        raise ApiError(400, "BadRequest", f"state must be one of {', '.join(STATES)}")
    messages = outbox_store.page(svc.store, state, top=100)
    return base.render(
        "review/outbox.html",
        messages=messages,
        counts=outbox_store.counts(svc.store),
        state=state,
        states=STATES,
        delivery=svc.settings.outbox.delivery,
    )


@bp.post("/outbox/resolve")
@base.signed_in
def resolve() -> Response:
    """A person's check of a message left sending (or failed): it arrived, or send it again."""
    base.check_triage_access()
    key, answer = request.form.get("key", ""), request.form.get("answer", "")
    if answer not in ("sent", "again"):
        raise ApiError(400, "BadRequest", "answer must be sent or again")
    at = timestamp(base.now())
    done = base.service().store.write(lambda conn: outbox_store.resolve(conn, key, answer == "sent", at))
    if not done:
        raise ApiError(409, "Conflict", f"message {key!r} is not waiting for a check")
    return redirect(url_for("review_outbox.outbox"), 303)
