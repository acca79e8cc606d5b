"""Risk items as library calls: list, read, approve, dismiss. The JSON API (:mod:`ranker.triage.api`) and the
review pages are shells over these; they pass ``who`` (a key's role and fingerprint, or a reviewer's name).

An item is decided once: approve or dismiss a pending item; a second decision is a 409 ``ItemDecided``.
Approving puts the final text in the outbox, activates the item's deferred decision and rewards it
(``triage.rewards.approve``, or ``approve_edited`` when the text was changed); dismissing rewards it with
``triage.rewards.dismiss`` (activated too, so the loop learns which actions reviewers turn down) and, with a
reason that suppresses, keeps the account from being flagged again for that long. Each is one transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..core.durations import parse_duration
from ..core.errors import ApiError
from ..store import timestamp
from ..store import triage as store_triage
from ..store.sqlite import Store
from .definitions import TriageSettings

STATES = store_triage.STATES
SORTS = tuple(store_triage.SORTS)
MAX_PAGE = 500


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def list_items(
    store: Store,
    *,
    state: str | None = None,
    loop: str | None = None,
    renewal_from: str | None = None,
    renewal_to: str | None = None,
    sort: str = "risk",
    top: int = 50,
    skip: int = 0,
) -> dict[str, Any]:
    """``{"items": [...], "count": n}``: a page of items (``top`` at most :data:`MAX_PAGE`) and how many match.
    Renewal dates are ``YYYY-MM-DD``; the window includes both ends."""
    if state is not None and state not in STATES:
        raise ApiError(400, "InvalidArgument", f"state must be one of {', '.join(STATES)}", target="state")
    if sort not in SORTS:
        raise ApiError(400, "InvalidArgument", f"sort must be one of {', '.join(SORTS)}", target="sort")
    if not 1 <= top <= MAX_PAGE or skip < 0:
        raise ApiError(400, "InvalidArgument", f"top must be 1 to {MAX_PAGE}, skip 0 or more", target="top")
    rows, count = store_triage.items(
        store,
        state=state,
        loop=loop,
        renewal_from=renewal_from,
        renewal_to=renewal_to,
        sort=sort,
        top=top,
        skip=skip,
    )
    return {"items": rows, "count": count}


def get_item(store: Store, item_id: int) -> dict[str, Any]:
    """The item with its transitions; 404 when there is none."""
    found = store_triage.item(store, item_id)
    if found is None:
        raise ApiError(404, "ResourceNotFound", f"no triage item {item_id}")
    return found


def _decide(call, item_id: int) -> None:
    try:
        call()
    except LookupError:
        raise ApiError(404, "ResourceNotFound", f"no triage item {item_id}") from None
    except store_triage.Decided as exc:
        raise ApiError(409, "ItemDecided", f"triage item {item_id} was decided already ({exc.state})") from None


def approve(
    store: Store,
    settings: TriageSettings,
    item_id: int,
    who: str,
    subject: str | None = None,
    body: str | None = None,
    recipient: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Approve the item's draft, or the edited ``subject``/``body``, to ``recipient`` (default: the item's);
    returns the item. 404 no such item, 409 decided already, 400 no text or no recipient."""
    found = get_item(store, item_id)
    final_subject = found["draft_subject"] if subject is None else subject
    final_body = found["draft_body"] if body is None else body
    edited = (final_subject, final_body) != (found["draft_subject"], found["draft_body"])
    if found["state"] != store_triage.PENDING:
        raise ApiError(409, "ItemDecided", f"triage item {item_id} was decided already ({found['state']})")
    if not (final_subject or "").strip() or not (final_body or "").strip():
        raise ApiError(400, "InvalidArgument", "the item has no draft: send its subject and body", target="subject")
    to = recipient if recipient is not None else found["recipient"]
    if not to:
        raise ApiError(400, "InvalidArgument", "the account has no recipient address: send one", target="recipient")
    reward = settings.rewards.approve_edited if edited else settings.rewards.approve
    at = timestamp(_now(now))
    _decide(
        lambda: store_triage.approve(
            store,
            item_id,
            who=who,
            at=at,
            subject=final_subject,
            body=final_body,
            recipient=to,
            reward=reward,
            edited=edited,
        ),
        item_id,
    )
    return get_item(store, item_id)


def dismiss(
    store: Store,
    settings: TriageSettings,
    item_id: int,
    who: str,
    reason: str,
    text: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Dismiss the item with a reason (an id of ``triage.dismiss_reasons``) and free text; returns the item.
    A suppressing reason keeps the account from being flagged again until now + its duration."""
    reasons = {r.id: r for r in settings.dismiss_reasons}
    if reason not in reasons:
        raise ApiError(400, "InvalidArgument", f"reason must be one of {', '.join(reasons)}", target="reason")
    moment = _now(now)
    suppress = reasons[reason].suppress
    until = timestamp(moment + parse_duration(suppress)) if suppress else None
    _decide(
        lambda: store_triage.dismiss(
            store,
            item_id,
            who=who,
            at=timestamp(moment),
            reason=reason,
            text=text,
            reward=settings.rewards.dismiss,
            suppress_until=until,
        ),
        item_id,
    )
    return get_item(store, item_id)
