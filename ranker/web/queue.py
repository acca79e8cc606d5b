"""The triage queue and its items (filled in once the triage library is merged)."""

from __future__ import annotations

from flask import Blueprint, Response, redirect, url_for

from . import base

bp = Blueprint("review_queue", __name__)
base.install(bp)


@bp.get("/")
@base.signed_in
def queue() -> Response:
    return redirect(url_for("review_loops.loops"), 303)
