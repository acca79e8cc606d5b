"""The triage queue and its items: the pages a Customer Success manager decides risk items on.

Reads and decisions go through the triage library (:mod:`ranker.triage.items`), the same calls as the JSON API,
so a decision here is the API's decision: one transaction that records who and when, activates and rewards the
item's loop decision, puts an approved text in the outbox, and suppresses the account for a suppressing
dismissal. After a decision the next pending item (in the queue's order and filters) opens.
"""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any
from urllib.parse import parse_qsl, urlencode

from flask import Blueprint, Response, redirect, request, url_for

from ..core.errors import ApiError
from ..store import review as review_store
from ..store import timestamp
from ..triage import items
from ..triage.patterns import Pattern, describe
from . import base
from .evidence import as_of, matched_charts, weekly_charts

bp = Blueprint("review_queue", __name__)
base.install(bp)

FILTERS = ("sort", "loop", "segment", "renewal_from", "renewal_to")
SHOWN = 200  # rows of the queue page


def _who() -> str:
    """Who decides, as the JSON API records it: the key's role and the first 12 hex digits of its SHA-256."""
    found = base.current_session()
    if not base.service().settings.auth:
        return "anonymous"
    return f"{found['role']}:{found['key_sha256'][:12]}"


def _filters(source: Any) -> dict[str, str]:
    """The queue's filters from a query (or a form's ``back`` query): checked, empty ones left out."""
    found = {name: (source.get(name) or "").strip() for name in FILTERS}
    if found["sort"] and found["sort"] not in items.SORTS:
        raise ApiError(400, "BadRequest", f"sort must be one of {', '.join(items.SORTS)}")
    for name in ("renewal_from", "renewal_to"):
        if found[name]:
            try:
                date.fromisoformat(found[name])
            except ValueError:
                raise ApiError(400, "BadRequest", f"{name} must be a date, YYYY-MM-DD") from None
    if found["loop"] and found["loop"] not in base.service().settings.loops:
        raise ApiError(400, "BadRequest", f"no loop {found['loop']!r}")
    return {name: value for name, value in found.items() if value}


def _pending(filters: dict[str, str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Pending items under the filters, in the queue's order, each with its account's name and segment; and the
    segments seen (for the filter's choices)."""
    svc = base.service()
    page = items.list_items(
        svc.store,
        state="pending",
        loop=filters.get("loop"),
        renewal_from=filters.get("renewal_from"),
        renewal_to=filters.get("renewal_to"),
        sort=filters.get("sort", "risk"),
        top=items.MAX_PAGE,
    )
    review = svc.settings.review
    accounts = review_store.entity_fields(
        svc.store,
        svc.settings.triage.entity,
        [row["account"] for row in page["items"]],
        {"name": review.account_name, "segment": review.segment},
    )
    rows = []
    for row in page["items"]:
        account = accounts.get(row["account"], {})
        rows.append({**row, "account_name": account.get("name"), "segment": account.get("segment")})
    segments = sorted({str(r["segment"]) for r in rows if r["segment"] is not None})
    if filters.get("segment"):
        rows = [r for r in rows if str(r["segment"]) == filters["segment"]]
    return rows, segments


def _pattern_words(pattern: dict[str, Any]) -> str:
    try:
        return describe(Pattern.from_dict(pattern).conditions)
    except (KeyError, TypeError, ValueError):
        return ""


@bp.get("/")
@base.signed_in
def queue() -> Response:
    base.check_triage_access()
    svc = base.service()
    filters = _filters(request.args)
    rows, segments = _pending(filters)
    midnight = datetime.combine(base.now().date(), time.min, base.now().tzinfo)
    return base.render(
        "review/queue.html",
        rows=rows[:SHOWN],
        shown=min(len(rows), SHOWN),
        matching=len(rows),
        waiting=items.list_items(svc.store, state="pending", top=1)["count"],
        decided_today=review_store.decided_since(svc.store, timestamp(midnight)),
        filters=filters,
        back=urlencode(filters),
        segments=segments,
        loops=list(svc.settings.loops),
        sorts=items.SORTS,
        words=_pattern_words,
        notice=_notice(),
    )


def _notice() -> str | None:
    done, previous = request.args.get("done"), request.args.get("previous", "")
    if done in ("approved", "dismissed") and previous.isdigit():
        return f"Item {previous} {done}."
    return None


@bp.get("/items/<int:item_id>")
@base.signed_in
def item(item_id: int) -> Response:
    base.check_triage_access()
    return _item_page(item_id, _filters(request.args))


def _item_page(item_id: int, filters: dict[str, str], status: int = 200, **edits: Any) -> Response:
    svc = base.service()
    found = items.get_item(svc.store, item_id)
    review = svc.settings.review
    account = review_store.entity_fields(
        svc.store,
        svc.settings.triage.entity,
        [found["account"]],
        {"name": review.account_name, "segment": review.segment},
    ).get(found["account"], {})
    evidence = found.get("evidence") or {}
    moment = as_of(found)
    explanation = found.get("explanation") or {}
    rules = explanation.get("rules") or {}
    why = {
        "rules": rules,
        "excluded": rules.get("excluded", {}),
        "explored": explanation.get("explored"),
        "inferenceExplanation": explanation.get("inferenceExplanation"),
    }
    return base.render(
        "review/item.html",
        status=status,
        item=found,
        account=account,
        pattern=found.get("pattern") or {},
        words=_pattern_words(found.get("pattern") or {}),
        matched=evidence.get("matched") or {},
        weekly=weekly_charts(
            svc, svc.settings.triage.entity, found["account"], moment, list(evidence.get("matched") or {})
        ),
        history=matched_charts(evidence.get("history") or {}),
        why=why,
        reasons=svc.settings.triage.dismiss_reasons,
        back=urlencode(filters),
        notice=_notice(),
        subject=edits.get("subject", found.get("draft_subject") or ""),
        body=edits.get("body", found.get("draft_body") or ""),
        recipient=edits.get("recipient", found.get("recipient") or ""),
        message=edits.get("message"),
    )


def _after(item_id: int, done: str) -> Response:
    """The next pending item under the queue's filters, or the queue when none is left."""
    try:
        filters = _filters(_back())
    except ApiError:  # the decision is made; filters someone tampered with only lose the queue's order
        filters = {}
    rows, _ = _pending(filters)
    query = {**filters, "done": done, "previous": str(item_id)}
    if rows:
        return redirect(url_for("review_queue.item", item_id=rows[0]["id"]) + "?" + urlencode(query), 303)
    return redirect(url_for("review_queue.queue") + "?" + urlencode(query), 303)


def _back() -> dict[str, str]:
    return dict(parse_qsl(request.form.get("back", "")))


def _text(name: str) -> str:
    return request.form.get(name, "").replace("\r\n", "\n")  # browsers send a textarea's lines with CRLF


@bp.post("/items/<int:item_id>/approve")
@base.signed_in
def approve(item_id: int) -> Response:
    base.check_triage_access()
    svc = base.service()
    found = items.get_item(svc.store, item_id)
    action = request.form.get("action")
    if action not in ("approve", "edited"):
        raise ApiError(400, "BadRequest", "action must be approve or edited")
    subject, body = _text("subject").strip(), _text("body")
    recipient = request.form.get("recipient", "").strip() or None
    if action == "approve":
        if (subject, body) != ((found.get("draft_subject") or "").strip(), found.get("draft_body") or ""):
            message = "You changed the draft: choose “Approve with my edits” to send your text, or reload the page."
            return _item_page(
                item_id, _filters(_back()), 400, subject=subject, body=body, recipient=recipient or "", message=message
            )
        items.approve(svc.store, svc.settings.triage, item_id, _who(), recipient=recipient)
    else:
        if not subject or not body.strip():
            return _item_page(
                item_id,
                _filters(_back()),
                400,
                subject=subject,
                body=body,
                recipient=recipient or "",
                message="The subject and the text may not be empty.",
            )
        items.approve(svc.store, svc.settings.triage, item_id, _who(), subject=subject, body=body, recipient=recipient)
    return _after(item_id, "approved")


@bp.post("/items/<int:item_id>/dismiss")
@base.signed_in
def dismiss(item_id: int) -> Response:
    base.check_triage_access()
    svc = base.service()
    text = _text("text").strip() or None
    items.dismiss(svc.store, svc.settings.triage, item_id, _who(), request.form.get("reason", ""), text)
    return _after(item_id, "dismissed")
