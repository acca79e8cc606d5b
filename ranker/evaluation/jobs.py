"""Evaluation and feature-importance jobs: rows of ``jobs``, run one at a time by the trainer process.

:func:`run_pending` runs the oldest pending job (the trainer calls it between learning passes; any process
holding the settings can); :func:`requeue_interrupted` queues again what a stopped process left Running. What
the jobs compute, and how the HTTP API queues and reports them, is described in :mod:`ranker.server.evaluations`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import UTC, datetime
from typing import Any

from ranker.core.rules import Rules
from ranker.core.settings import Settings
from ranker.evaluation import whatif
from ranker.evaluation.compare import BETTER
from ranker.evaluation.importance import DEFAULT, importance, unscored
from ranker.evaluation.replay import BASELINE, BUILT_INS, ONLINE, RANDOM, Candidate, LoopLog, replay
from ranker.evaluation.search import search
from ranker.store import jobs as store_jobs
from ranker.store import open_database, timestamp

log = logging.getLogger("ranker.evaluations")

EVALUATION, IMPORTANCE = "evaluation", "featureImportance"
PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
TIMESERIES_POINTS = 20  # points of each policy's cumulative estimate in an evaluation's timeseries
SOURCES = {ONLINE: "Online", BASELINE: "Baseline", RANDOM: "Random"}
OPTIMIZED = "OfflineExperimentation"  # Personalizer's policySource of the policy its optimization found


def now() -> str:
    return timestamp(datetime.now(UTC))


def run_pending(settings: Settings, limit: int = 1, conn: sqlite3.Connection | None = None) -> int:
    """Run up to ``limit`` pending jobs, oldest first; return how many ran (succeeded or failed).

    ``conn`` is an open connection to the migrated database (the trainer's); without one, one is opened."""
    own = conn is None
    if conn is None:
        conn = open_database(settings).open_log()
    ran = 0
    try:
        while ran < limit:
            row = store_jobs.claim_oldest(conn, PENDING, RUNNING, now())
            if row is None:
                break
            ran += 1
            try:
                if row["loop"] not in settings.loops:
                    raise ValueError(f"loop {row['loop']!r} is not in the settings any more")
                definition = json.loads(row["request"])
                run = _evaluate if row["kind"] == EVALUATION else _importance
                status, result = SUCCEEDED, run(settings, row["loop"], definition)
            except Exception as exc:  # the job fails with its reason; the caller goes on
                log.warning("%s %s of loop %s failed: %s", row["kind"], row["id"], row["loop"], exc)
                status, result = FAILED, {"error": str(exc) or type(exc).__name__}
            store_jobs.finish(conn, row, status, json.dumps(result), now())
    finally:
        if own:
            conn.close()
    return ran


def requeue_interrupted(conn: sqlite3.Connection) -> int:
    """Queue again the jobs left Running by a process that stopped (the trainer calls it when it takes over)."""
    return store_jobs.requeue(conn, RUNNING, PENDING, now())


def _source(settings: Settings, loop: str, definition: dict[str, Any]) -> LoopLog:
    return LoopLog(settings, loop, definition["startTime"], definition["endTime"])


def _optimized(settings: Settings, source: LoopLog, definition: dict[str, Any]) -> dict[str, str]:
    """The best policy a search of VW arguments over the evaluation's decisions finds within
    ``policy_optimization_seconds`` (Personalizer's "optimized policy"), named apart from the custom ones."""
    found = search(source, settings.policy_optimization_seconds, current=definition["online"]["arguments"])
    taken = {p["name"] for p in definition["policies"]}
    name, suffix = found.best["name"], 1
    while name in taken:
        name, suffix = f"{found.best['name']}-{suffix}", suffix + 1
    return {"name": name, "arguments": found.best["arguments"]}


def _evaluate(settings: Settings, loop: str, definition: dict[str, Any]) -> dict[str, Any]:
    source = _source(settings, loop, definition)
    policies = list(definition["policies"])
    optimized = _optimized(settings, source, definition) if definition.get("enablePolicyOptimization") else None
    if optimized is not None:
        policies.append(optimized)
    custom = [Candidate(p["name"], p["arguments"]) for p in policies]
    by, minimum = definition.get("segmentBy", []), definition.get("minSegmentEvents", 100)
    report = replay(source, [*BUILT_INS, *custom], reference=BASELINE, by=by, min_segment_events=minimum)
    arguments = {p["name"]: p["arguments"] for p in policies}
    arguments[ONLINE] = definition["online"]["arguments"]
    sources = {**SOURCES, **({optimized["name"]: OPTIMIZED} if optimized else {})}
    checkpoints = report.cumulative["event"]
    step = max(1, len(checkpoints) // TIMESERIES_POINTS)
    picks = sorted({*range(step - 1, len(checkpoints), step), len(checkpoints) - 1})

    def result(name: str, slot_id: str, row: dict[str, Any], series: list[float | None]) -> dict[str, Any]:
        return {
            "name": name,
            "arguments": arguments.get(name, ""),
            "policySource": sources.get(name, "Custom"),
            "slotId": slot_id,
            "summary": _summary(row),
            "timeseries": {
                "data": [
                    {"timeStamp": report.cumulative["timestamp"][i], "expectedReward": series[i]}
                    for i in picks
                    if series[i] is not None  # a slot not filled yet
                ]
            },
        }

    value = [result(row["policy"], "", row, report.cumulative["ips"][row["policy"]]) for row in report.policies]
    if report.multislot:  # then each policy's result per slot, as Personalizer listed them
        for row in report.policies:
            name = row["policy"]
            for slot_id, slot_row in row["slots"].items():
                value.append(result(name, slot_id, slot_row, report.cumulative["slots"][slot_id]["ips"][name]))
    choices = [v for v in value if v["name"] not in (BASELINE, RANDOM) and not v["slotId"]]
    best = max(choices, key=_preference)
    extensions: dict[str, Any] = {}
    if by:
        extensions["segments"] = {
            path: [
                {
                    "segment": segment["segment"],
                    "events": segment["events"],
                    "samples": segment["samples"],
                    "policies": [{"name": row["policy"], "summary": _summary(row)} for row in segment["policies"]],
                }
                for segment in segments
            ]
            for path, segments in report.segments.items()
        }
        extensions["minSegmentEvents"] = minimum
    if "rules" in definition:
        extensions["rulesWhatIf"] = _what_if(whatif.what_if(source, report, Rules.model_validate(definition["rules"])))
    return {
        "events": report.events,
        "skipped": report.skipped,
        "optimalPolicy": best["name"],
        "optimizedPolicy": optimized,
        "content": {"startTime": definition["startTime"], "endTime": definition["endTime"], "value": value},
        **extensions,
    }


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """A replay row as Personalizer's result summary, with the paired comparisons (an extension)."""
    return {
        "expectedReward": row["cressie_read"] if row["cressie_read"] is not None else row["ips"],
        "confidenceInterval": row["interval"],
        "events": row["n"],
        "ips": row["ips"],
        "snips": row["snips"],
        "dr": row["dr"],
        "comparisons": [
            {
                "reference": reference,
                "difference": difference["estimate"],
                "confidenceInterval": difference["interval"],
                "verdict": difference["verdict"],
                "moreEvents": difference["more_events"],
            }
            for reference, difference in row["versus"].items()
        ],
    }


def _what_if(result: dict[str, Any]) -> dict[str, Any]:
    """A rule what-if (:func:`~ranker.evaluation.whatif.what_if`) in the API's words."""
    return {
        "events": result["events"],
        "excludedActionsKnown": result["excluded_known"],
        "policies": [
            {
                "name": row["policy"],
                "unsupportedShare": row["unsupported_share"],
                "supportedEstimate": row["supported_estimate"],
                "worst": row["worst"],
                "best": row["best"],
                "confidenceInterval": row["interval"],
            }
            for row in result["policies"]
        ],
    }


def _preference(value: dict[str, Any]) -> tuple[bool, float]:
    """Distinguishably better than Online first, then the higher lower end of the interval."""
    better = any(c["reference"] == ONLINE and c["verdict"] == BETTER for c in value["summary"]["comparisons"])
    return (better, value["summary"]["confidenceInterval"][0])


def _importance(settings: Settings, loop: str, definition: dict[str, Any]) -> dict[str, Any]:
    source = _source(settings, loop, definition)
    rows = importance(source, definition["online"]["learning"])
    if not rows:
        raise ValueError("no decision with features in the time range")
    scores = []
    for row in rows:  # the default namespace (features sent flat) is namespace "", as in VW
        if row["feature"] is None:
            names = ["" if name == DEFAULT else name for name in row["namespaces"]]
            scores += [{"namespace": name, "featureName": "", "score": round(row["score"], 1)} for name in names]
        else:
            name = "" if row["namespace"] == DEFAULT else row["namespace"]
            scores.append({"namespace": name, "featureName": row["feature"], "score": round(row["score"], 1)})
    not_scored = [
        {
            "namespace": "" if u["namespace"] == DEFAULT else u["namespace"],
            "featureName": u["feature"],
            "reason": u["reason"],
        }
        for u in unscored(source, rows)
    ]
    return {
        "events": max(row.get("events", 0) for row in rows),
        "featureScores": sorted(scores, key=lambda s: (-s["score"], s["namespace"], s["featureName"])),
        "notScored": not_scored,
    }
