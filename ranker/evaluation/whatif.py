"""Rule what-ifs (``ranker evaluate --rules new-rules.toml``): what would the policies earn under other rules?

The logged decisions of a single-slot source are replayed through the new rules (entitlements, availability,
priority factors, discovery floors; :mod:`ranker.core.rules`), on top of each replayed policy:

1. The policy's PMF over the event's eligible actions: a VW candidate's as replayed (it is scored without
   priority rules already), Baseline's and Random's; for Online, the logged PMF with the old rules' priority
   factors divided out (from the decision's explanation; a DSJSON file does not keep them, so its PMF is
   taken as logged). Old discovery floors cannot be divided out: they stay in Online's PMF.
2. The new rules decide again, on the logged context at the decision's time, which actions may be offered:
   the ones eligible in the log, and those the old rules excluded (read from the decision's explanation, so
   only for a loop's log; actions the caller excluded in the request stay excluded). An action the old rules
   excluded is not in the record, so its features are unknown: rules select it by id only. Conditions with
   ``fresh_within`` fail (signal times are not logged).
3. A newly admitted action has no score of the policy's: it gets the mean probability of the eligible ones
   (the policy is taken as indifferent about it). The new priority factors multiply, the PMF is renormalised,
   and the new discovery floors raise the matched actions while their share of the replayed decisions is
   below ``max_share`` (:func:`ranker.serving.discovery.floor`).

An action the old rules excluded, or one the logging policy gave probability 0, was never shown: the log says
nothing about its reward. For each policy the report gives the **unsupported share** ū (the new policy's mean
probability mass on such actions), the IPS estimate of the supported part S = mean(π_new(a_i)/μ_i · r_i), and
bounds that assume the worst and the best reward there: ``[S + ū·r_min, S + ū·r_max]``. The 95% interval
holds whatever the unsupported actions earn: per event, the never-shown mass u(x) joins the new policy's
weight, ``w' = π_new(a_i)/μ_i + u(x_i)`` (a weight with mean one, bounded by ``1 / min μ``), carrying the reward
``r' = (w r + u c)/w'`` with c = r_min (worst) or r_max (best), within the reward range; V_c = E[w' r'], so its
lower end is the Cressie-Read interval's lower end with c = r_min, its upper end the upper end with c = r_max
(each the end of a two-sided 95% interval: together at least 95%, the worst and best cases bracketing the
truth).
"""

from __future__ import annotations

import json
import math
import tomllib
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ranker.core import rules
from ranker.evaluation.estimators import weight_bound
from ranker.evaluation.intervals import cressie_read_interval
from ranker.evaluation.report import Report
from ranker.evaluation.sources import DsjsonFile, Event, LoopLog, source_is_multislot
from ranker.serving import discovery
from ranker.serving.engine import reweight
from ranker.store import open_database

__all__ = ["joined_interval", "load_rules", "what_if"]

_CALLER = "excludedActions"  # the reason of an action the request itself excluded


def load_rules(path: str | Path) -> rules.Rules:
    """The rules of a TOML file: ``[[entitlements]]``, ``[[availability]]``, ``[[priority]]``,
    ``[[discovery]]`` at the top, or the same under ``[rules]`` (a loop's rules table, as in the settings)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read rules {path}: {exc}") from exc
    try:
        return rules.Rules.model_validate(data.get("rules", data))
    except ValueError as exc:
        raise ValueError(f"rules {path}: {exc}") from exc


def _explanations(source: LoopLog | DsjsonFile, event_ids: list[str]) -> Iterator[dict[str, Any] | None]:
    """Each event's explanation (``{"excluded", "reweighted"}``) from a loop's log; None for a file."""
    if not isinstance(source, LoopLog):
        yield from (None for _ in event_ids)
        return
    store = open_database(source.settings).store(create=False)
    for event_id in event_ids:
        row = store.decision(source.loop, event_id)
        yield json.loads(row["explanation"]) if row is not None else None


def _features(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if not key.startswith("_")}


def what_if(source: LoopLog | DsjsonFile, report: Report, new_rules: rules.Rules) -> dict[str, Any]:
    """Each policy of ``report`` (a single-slot :func:`~ranker.evaluation.replay.replay` of ``source``) under
    ``new_rules``: ``{"policies": [{"policy", "unsupported_share", "supported_estimate", "worst", "best",
    "interval", "w_max"}], "excluded_known": bool, "events": n}`` (see the module docstring)."""
    if source_is_multislot(source) or report.multislot:
        raise ValueError("rule what-ifs replay single-slot decisions; this source is multi-slot")
    if report.skipped.get("refused_by_vw"):
        raise ValueError("rule what-ifs need every event of the replay; VW refused some")
    events = [event for event in source.events() if type(event) is Event]
    if len(events) != report.events or report.starts is None:
        raise ValueError("the source changed since it was replayed")
    r_min, r_max = report.reward_range
    chosen_share: Counter[str] = Counter()  # each action's count of logged choices
    contexts, eligible_ids, features, times, event_ids = [], [], [], [], []
    for event in events:
        record = json.loads(event.line)
        event_ids.append(str(record.get("EventId", "")))
        c = record["c"]
        multi = c.get("_multi", [])
        contexts.append({key: value for key, value in c.items() if key not in ("_multi", "_slots")})
        ids = [str(entry.get("_id", entry.get("id", i))) for i, entry in enumerate(multi)]
        eligible_ids.append(ids)
        features.append([_features(entry) for entry in multi])
        times.append(datetime.fromisoformat(event.timestamp.replace("Z", "+00:00")))
        chosen_share[ids[event.chosen]] += 1
    shares = {action: count / len(events) for action, count in chosen_share.items()}
    explanations = _explanations(source, event_ids)

    logged = report.data  # per policy: reward, logged probability of the logged action, target probability
    chosen = np.array([event.chosen for event in events])
    mu = logged[next(iter(logged))].logged_probability
    reward = logged[next(iter(logged))].reward
    starts = report.starts
    new_target = {name: np.zeros(len(events)) for name in report.pmfs}
    unsupported = {name: np.zeros(len(events)) for name in report.pmfs}
    logged_pmf = report.pmfs.get("Online")
    excluded_known = isinstance(source, LoopLog)
    for i, explanation in enumerate(explanations):
        ids, k = eligible_ids[i], len(eligible_ids[i])
        old = explanation or {}
        reweighted, old_excluded = old.get("reweighted", {}), old.get("excluded", {})
        old_factors = np.array([math.prod(r["factor"] for r in reweighted.get(a, [])) for a in ids])
        excluded = [a for a, reasons in old_excluded.items() if _CALLER not in reasons]
        actions = [(a, f) for a, f in zip(ids, features[i], strict=True)] + [(a, {}) for a in excluded]
        verdict = rules.apply(new_rules, contexts[i], actions, set(), times[i])
        floors, _ = discovery.floors(_Shares(shares), "", verdict, [actions[j][0] for j in verdict.eligible], times[i])
        logged_row = logged_pmf[starts[i] : starts[i] + k] if logged_pmf is not None else None
        for name, flat in report.pmfs.items():
            base = np.array(flat[starts[i] : starts[i] + k], dtype=float)
            if name == "Online":
                base = base / old_factors
                base = base / base.sum() if base.sum() > 0 else np.full(k, 1.0 / k)
            mean = float(base.mean())
            pmf = [base[j] if j < k else mean for j in verdict.eligible]
            pmf = reweight(pmf, verdict.factors) if pmf else []
            if floors:
                pmf, _ = discovery.floor(pmf, floors)
            for position, j in enumerate(verdict.eligible):
                never_shown = j >= k or (logged_row is not None and logged_row[j] <= 0)
                if never_shown:
                    unsupported[name][i] += pmf[position]
                elif j == chosen[i]:
                    new_target[name][i] = pmf[position]
    w_max = weight_bound(mu)
    policies = []
    for name in report.pmfs:
        weights, mass = new_target[name] / mu, unsupported[name]
        share = float(np.mean(mass))
        supported = float(np.mean(weights * reward))
        lower, upper = joined_interval(weights, mass, reward, w_max, r_min, r_max)
        policies.append(
            {
                "policy": name,
                "unsupported_share": share,
                "supported_estimate": supported,
                "worst": supported + share * r_min,
                "best": supported + share * r_max,
                "interval": [lower, upper],
                "w_max": w_max if math.isfinite(w_max) else None,
            }
        )
    return {"events": len(events), "excluded_known": excluded_known, "policies": policies}


def joined_interval(
    weights: np.ndarray, never_shown: np.ndarray, reward: np.ndarray, w_max: float, r_min: float, r_max: float
) -> tuple[float, float]:
    """The 95% interval of a new policy's value whatever its ``never_shown`` mass per event earns: that mass
    joins each event's weight carrying ``r_min`` for the lower end and ``r_max`` for the upper (module
    docstring)."""
    joined = weights + never_shown
    ends = []
    for assumed, end in ((r_min, 0), (r_max, 1)):
        rewards = np.divide(
            weights * reward + never_shown * assumed, joined, out=np.full_like(joined, assumed), where=joined > 0
        )
        rewards = np.clip(rewards, r_min, r_max)  # a weighted mean of values in range; rounding only
        ends.append(cressie_read_interval(joined, rewards, r_min=r_min, r_max=r_max, w_max=w_max)[end])
    return ends[0], ends[1]


class _Shares:
    """:class:`ranker.serving.discovery.Exposures` over the replayed decisions: each action's share of them."""

    def __init__(self, shares: dict[str, float]):
        self._shares = shares

    def shares(self, loop: str, window: str, now: datetime) -> dict[str, float]:
        return self._shares


def table(result: dict[str, Any]) -> str:
    """The what-if's rows for the terminal."""
    lines = [("policy", "unsupported", "supported IPS", "worst .. best", "95% interval")]
    for row in result["policies"]:
        lo, hi = row["interval"]
        lines.append(
            (
                row["policy"],
                f"{row['unsupported_share']:.1%}",
                f"{row['supported_estimate']:.4f}",
                f"{row['worst']:.4f} .. {row['best']:.4f}",
                f"[{lo:.4f}, {hi:.4f}]",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )
    if not result["excluded_known"]:
        text += "\n(a DSJSON file does not keep the actions the old rules excluded: only the logged ones are replayed)"
    return text
