"""The triage report: what flagging and reviewing achieved, and the churn nobody saw coming.

- ``flagged``: items and accounts flagged, items by state;
- ``decisions``: approval rate (approved / decided), time from flag to decision (median and mean hours),
  dismissals by reason;
- ``outcomes``: among items whose renewal outcome is recorded, the renewal rate of the approved (acted on)
  and of the dismissed ones;
- ``months``: per month of renewal date, the accounts that churned (outcome in ``triage.churned``, renewal
  date passed, the outcome set after the renewal was judged, as :func:`ranker.triage.flagging.record_outcomes`
  takes it), how many of them were flagged for that renewal, and the *surprise churn*: churned, never flagged.
  Months before triage started show the churn it had to catch.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

from ..core.durations import parse_duration
from ..store import parse_time, timestamp
from ..store import triage as store_triage
from ..store.sqlite import Store
from .definitions import TriageSettings
from .flagging import judged_at, renewal_day


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def report(store: Store, settings: TriageSettings, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    rows = store_triage.report_rows(store)
    states = Counter(r["state"] for r in rows)
    decided = [r for r in rows if r["decided_at"] is not None]
    hours = [(parse_time(r["decided_at"]) - parse_time(r["created_at"])).total_seconds() / 3600 for r in decided]
    churned = set(settings.churned)

    def renewal_rate(state: str) -> dict[str, Any]:
        known = [r for r in rows if r["state"] == state and r["outcome"] is not None]
        renewed = sum(r["outcome"] not in churned for r in known)
        return {"with_outcome": len(known), "renewed": renewed, "renewal_rate": _rate(renewed, len(known))}

    flagged = {(r["account"], r["renewal_date"]) for r in rows}
    months: dict[str, dict[str, int]] = defaultdict(lambda: {"churned": 0, "flagged": 0, "surprise": 0})
    today = now.astimezone(UTC).date()
    horizon = parse_duration(settings.horizon)
    for entity in store_triage.renewals(store, settings.entity, settings.renewal_date, settings.outcome):
        day = renewal_day(entity["renewal"])
        if day is None or day > today or entity["outcome"] not in churned or entity["outcome_at"] is None:
            continue
        if parse_time(entity["outcome_at"]) < judged_at(day, horizon):
            continue  # set before this renewal was judged: an earlier renewal's outcome
        month = months[day.strftime("%Y-%m")]
        month["churned"] += 1
        if (entity["id"], day.isoformat()) in flagged:
            month["flagged"] += 1
        else:
            month["surprise"] += 1
    return {
        "at": timestamp(now),
        "flagged": {
            "items": len(rows),
            "accounts": len({r["account"] for r in rows}),
            "pending": states["pending"],
            "approved": states["approved"],
            "dismissed": states["dismissed"],
        },
        "decisions": {
            "decided": len(decided),
            "approval_rate": _rate(states["approved"], len(decided)),
            "median_hours_to_decision": round(statistics.median(hours), 2) if hours else None,
            "mean_hours_to_decision": round(statistics.fmean(hours), 2) if hours else None,
            "dismissed_by_reason": dict(Counter(r["dismiss_reason"] for r in rows if r["state"] == "dismissed")),
        },
        "outcomes": {"acted": renewal_rate("approved"), "dismissed": renewal_rate("dismissed")},
        "months": [{"month": m, **months[m]} for m in sorted(months)],
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _hours(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} h"


def table(data: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    flagged, decisions, outcomes = data["flagged"], data["decisions"], data["outcomes"]
    median, mean = decisions["median_hours_to_decision"], decisions["mean_hours_to_decision"]
    lines = [
        f"Triage report at {data['at']}",
        "",
        f"  flagged            {flagged['items']} items, {flagged['accounts']} accounts "
        f"({flagged['pending']} pending, {flagged['approved']} approved, {flagged['dismissed']} dismissed)",
        f"  approval rate      {_percent(decisions['approval_rate'])} of {decisions['decided']} decided",
        f"  time to decision   median {_hours(median)}, mean {_hours(mean)}",
    ]
    if decisions["dismissed_by_reason"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(decisions["dismissed_by_reason"].items()))
        lines.append(f"  dismissed for      {reasons}")
    lines += ["", "  renewal rate       with outcome   renewed   rate"]
    for name, label in (("acted", "flagged, acted"), ("dismissed", "flagged, dismissed")):
        o = outcomes[name]
        lines.append(f"  {label:<18} {o['with_outcome']:>12}   {o['renewed']:>7}   {_percent(o['renewal_rate']):>7}")
    lines += ["", "  month      churned   flagged   surprise churn"]
    for m in data["months"]:
        lines.append(f"  {m['month']}  {m['churned']:>8}  {m['flagged']:>8}  {m['surprise']:>15}")
    if not data["months"]:
        lines.append("  (no churned renewals yet)")
    return "\n".join(lines)
