"""The triage pass: flag the accounts at risk before their renewal, rank each one's next best action, draft
the email; and record the outcomes of renewals that have passed.

One pass (:func:`run_pass`, run by the trainer on ``triage.schedule`` and by ``ranker triage run``):

1. Outcomes: an item whose renewal date has passed gets the account's outcome (``triage.outcome``) once it is
   known, with the time the outcome was set. An outcome set before the risk was judged (renewal date minus
   ``triage.horizon``) belongs to an earlier renewal and is not taken.
2. Flagging: the accounts whose renewal date (``triage.renewal_date``) falls within ``triage.horizon`` from
   today, not suppressed and not flagged for that renewal already, whose values now (attributes and
   features, :func:`ranker.triage.values.values_at`) match an enabled pattern. The first matching pattern
   (hand-written ones first, then mined ones best first) becomes the item's; the evidence keeps the values
   that matched, the other patterns that matched, and the matched values' history (the same values as of
   earlier moments, every sixth of the horizon back).
3. For each, a Rank in ``triage.loop`` through the service, in process, as the HTTP handler calls it: deferred
   activation, the playbook's actions as candidates, the context the account (its id when the loop enriches
   it, ``entities``; else its values) and the pattern under ``risk``; the loop's rules apply and the answer's
   explanation is kept whether or not the loop turns explanations on. Then the chosen action's draft
   (:mod:`ranker.triage.drafting`). Ranks and drafts run on a few threads, so their commits share group
   commits and drafter calls overlap.
4. The new items are inserted in one transaction; an account flagged for the same renewal meanwhile (another
   pass) keeps its item, and the extra decision is never activated, so it is never learned.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from ..core.durations import parse_duration
from ..core.errors import ApiError
from ..core.rules import MISSING, lookup
from ..core.schemas import RankRequest
from ..serving.service import Service
from ..store import parse_time, timestamp
from ..store import triage as store_triage
from .drafting import context_of, draft
from .patterns import Pattern, enabled_patterns
from .values import namespace, values_at, values_at_many

log = logging.getLogger("ranker.triage")

WHO = "triage"  # the transitions the pass makes
HISTORY_POINTS = 7  # moments of the evidence's history: now and every sixth of the horizon back
WORKERS = 8  # threads ranking and drafting


def renewal_day(value: Any) -> date | None:
    """A renewal date attribute as a date (``2027-01-15`` or an ISO 8601 time); None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        return parse_time(value).astimezone(UTC).date()
    except ValueError:
        return None


def judged_at(renewal: date, horizon: timedelta) -> datetime:
    """When a renewal's risk is judged: its date minus the horizon. An outcome set before then is an earlier
    renewal's."""
    return datetime.combine(renewal, datetime.min.time(), UTC) - horizon


def pattern_summary(pattern: Pattern) -> dict[str, Any]:
    """The pattern as an item keeps it: name, conditions, description and its figures."""
    return pattern.to_dict()


def run_pass(service: Service, now: datetime | None = None, workers: int = WORKERS) -> dict[str, Any]:
    """One triage pass at ``now``; returns what it did: ``renewals`` (accounts with a renewal date), ``due``
    (renewing within the horizon), ``suppressed``, ``already`` (flagged for that renewal before), ``matched``,
    ``flagged`` (new items), ``outcomes`` (recorded), ``errors`` (accounts whose Rank failed, with why),
    ``items`` (the new items' ids) and ``seconds``."""
    started = time.monotonic()
    now = now or datetime.now(UTC)
    triage = service.settings.triage
    if triage.playbook and triage.loop not in service.loops:
        raise ValueError(f"triage.loop {triage.loop!r} is not a loop of the settings")
    with service.database.triage_turn():  # one pass at a time on this database, whichever node runs it
        rows = store_triage.renewals(service.store, triage.entity, triage.renewal_date, triage.outcome, triage.value)
        report: dict[str, Any] = {"at": timestamp(now), "renewals": len(rows)}
        report["outcomes"] = record_outcomes(service, rows, now)
        report.update(_flag(service, rows, now, workers))
    report["seconds"] = round(time.monotonic() - started, 3)
    log.info("triage pass: %s", {k: v for k, v in report.items() if k not in ("items", "errors")})
    return report


def record_outcomes(service: Service, rows: list[dict[str, Any]], now: datetime) -> int:
    """Record the known outcomes of items whose renewal has passed; how many were recorded."""
    triage = service.settings.triage
    horizon = parse_duration(triage.horizon)
    by_account = {row["id"]: row for row in rows}
    found = []
    for waiting in store_triage.awaiting_outcome(service.store, timestamp(now)):
        row = by_account.get(waiting["account"])
        if row is None or row["outcome"] is None or row["outcome_at"] is None:
            continue
        judged = judged_at(date.fromisoformat(waiting["renewal_date"]), horizon)
        if parse_time(row["outcome_at"]) < min(judged, parse_time(waiting["created_at"])):
            continue  # set before the risk was judged: an earlier renewal's
        found.append((waiting["id"], str(row["outcome"]), row["outcome_at"]))
    return store_triage.record_outcomes(service.store, found, WHO, timestamp(now)) if found else 0


def _flag(service: Service, rows: list[dict[str, Any]], now: datetime, workers: int) -> dict[str, Any]:
    settings, triage = service.settings, service.settings.triage
    today, last = now.astimezone(UTC).date(), (now + parse_duration(triage.horizon)).astimezone(UTC).date()
    due = []
    for row in rows:
        day = renewal_day(row["renewal"])
        if day is not None and today <= day <= last:
            due.append((row, day.isoformat()))
    already = store_triage.flagged(service.store)
    suppressed = store_triage.suppressed(service.store, timestamp(now))
    report = {"due": len(due), "suppressed": 0, "already": 0, "matched": 0, "flagged": 0, "errors": [], "items": []}
    candidates = []
    for row, day in due:
        if (row["id"], day) in already:
            report["already"] += 1
        elif row["id"] in suppressed:
            report["suppressed"] += 1
        else:
            candidates.append((row, day))
    patterns = enabled_patterns(service.store, settings)
    if not candidates or not patterns:
        return report
    signal_store = service.signals.store
    values = values_at(signal_store, settings, [row["id"] for row, _ in candidates], now)
    where = ".".join(namespace(settings))
    matches = []
    for row, day in candidates:
        account_values = values.get(row["id"])
        if account_values is None:
            continue
        hits = [(p, m) for p in patterns if (m := p.matched(account_values, None, now)) is not None]
        if hits:
            matches.append((row, day, account_values, hits))
    report["matched"] = len(matches)
    if not matches:
        return report
    history = _history(service, settings, matches, now)
    loop = service.loops.get(triage.loop)
    explaining = None
    if triage.playbook and loop is not None:
        service.refresh(loop)
        # The answer's explanation whatever the loop's setting: a copy of the loop in hand, explaining.
        explaining = replace(
            loop,
            settings=loop.settings.model_copy(update={"is_inference_explainability_enabled": True}),
            checked_at=time.monotonic() + 3600,  # this copy never looks for new configuration or models
        )
    enriches = loop is not None and triage.entity in loop.settings.entities
    no_rank = {"eventId": None, "rewardActionId": None, "ranking": []}

    def one(match) -> dict[str, Any] | str:
        row, day, account_values, hits = match
        pattern, matched = hits[0]
        account = lookup(account_values, where)
        account = account if isinstance(account, dict) else {}
        summary = pattern_summary(pattern)
        risk = {"pattern": pattern.name}
        for name in ("churn_rate", "lift"):
            if isinstance(summary.get(name), int | float):
                risk[name] = summary[name]
        context = _put({}, where.split("."), {"id": row["id"]}) if enriches else dict(account_values)
        answer = no_rank  # no playbook: the item is flagged with its evidence, nothing to rank
        if explaining is not None:
            try:
                request = RankRequest.model_validate(
                    {
                        "contextFeatures": [context, {"risk": risk}],
                        "actions": [
                            {"id": a.id, "features": [a.features] if a.features else []} for a in triage.playbook
                        ],
                        "deferActivation": True,
                    }
                )
                answer = service.rank(explaining, request, now)
            except (ValidationError, ApiError) as exc:
                return f"{row['id']}: the Rank failed: {getattr(exc, 'message', exc)}"
        chosen = next((a for a in triage.playbook if a.id == answer["rewardActionId"]), None)
        pattern_context = {**summary, "matched": matched}
        if chosen is None:
            written = None
        else:
            written = draft(chosen, context_of(chosen, account, pattern_context, triage), triage)
        recipient = lookup(account, triage.recipient)
        value = row["value"]
        return {
            "account": row["id"],
            "renewal_date": day,
            "pattern_name": pattern.name,
            "pattern": summary,
            "risk": float(summary.get("churn_rate") or 0.0),
            "value": value if type(value) in (int, float) else None,
            "evidence": {
                "as_of": timestamp(now),
                "matched": matched,
                "also_matched": [p.name for p, _ in hits[1:]],
                "history": history.get(row["id"], {}),
            },
            "loop": triage.loop,
            "event_id": answer["eventId"],
            "action_id": answer["rewardActionId"],
            "ranking": answer["ranking"],
            "explanation": {k: answer[k] for k in ("rules", "explored", "inferenceExplanation") if k in answer},
            "draft_subject": written and written.subject,
            "draft_body": written and written.body,
            "drafted_by": written.drafted_by if written else "none",
            "draft_note": written.note
            if written
            else ("no playbook action was eligible: no draft" if triage.playbook else "no playbook: no draft"),
            "recipient": recipient if isinstance(recipient, str) and recipient else None,
            "created_at": timestamp(now),
        }

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="ranker-triage") as pool:
        results = list(pool.map(one, matches))
    new = [r for r in results if isinstance(r, dict)]
    report["errors"] = [r for r in results if isinstance(r, str)]
    ids = store_triage.add_items(service.store, new, WHO) if new else []
    report["items"] = [i for i in ids if i is not None]
    report["flagged"] = len(report["items"])
    report["already"] += len(ids) - len(report["items"])
    return report


def _history(service: Service, settings, matches, now: datetime) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per matched account, per matched path: its value at each history moment, oldest first."""
    step = parse_duration(settings.triage.horizon) / (HISTORY_POINTS - 1)
    moments = [now - step * k for k in range(HISTORY_POINTS - 1, -1, -1)]
    wants = [(row["id"], moment) for row, _, _, _ in matches for moment in moments]
    found = values_at_many(service.signals.store, settings, wants)
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for k, (row, _, _, hits) in enumerate(matches):
        series: dict[str, list[dict[str, Any]]] = {}
        for path in {p for _, matched in hits for p in matched}:
            points = []
            for j, moment in enumerate(moments):
                values = found[k * len(moments) + j]
                value = MISSING if values is None else lookup(values, path)
                points.append({"at": timestamp(moment), "value": None if value is MISSING else value})
            series[path] = points
        out[row["id"]] = series
    return out


def _put(obj: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    out = dict(obj)
    out[path[0]] = value if len(path) == 1 else _put(obj.get(path[0], {}), path[1:], value)
    return out
