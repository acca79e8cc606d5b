"""Apprentice mode's learning: imitate the served baseline, and graduate to Online once a replay shows the
model beats it (``apprenticeGraduationEvents``).

The trainer (:mod:`ranker.learning.trainer`) learns each Apprentice decision with :func:`imitate` and asks
:func:`graduate` at most every minute.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import datetime

import vowpalwabbit

from ..core import dsjson, vwcalls
from ..core.settings import Settings
from ..evaluation.search import graduation
from ..evaluation.sources import LoopLog
from ..serving.engine import pmf_of, slot_scores_of
from ..store import learning, loop_config_row, timestamp

log = logging.getLogger("ranker.trainer")


def imitate(ws: vowpalwabbit.Workspace, record: str) -> bool:
    """Apprentice: learn that the served baseline earns 1 and the model's other choice, if any, 0.

    Returns whether the model already chose the baseline before learning from this decision. A
    multi-slot decision is imitated slot by slot: each slot's served baseline (its ``_a[0]``) earns 1 and,
    when the model's chain of greedy choices differs anywhere, a second example labels those choices (1
    where they are the baseline, else 0).
    """
    if dsjson.is_multislot(record):
        baselines = dsjson.logged_actions(record)
        greedy = [max(scores, key=lambda m: (scores[m], -m)) for scores in slot_scores_of(ws, record)]
        vwcalls.learn(ws, dsjson.with_slot_labels(record, [(b, 1.0) for b in baselines]))
        if greedy != baselines and len(greedy) == len(baselines) == len(set(greedy)):
            vwcalls.learn(
                ws,
                dsjson.with_slot_labels(record, [(g, float(g == b)) for g, b in zip(greedy, baselines, strict=True)]),
            )
        return greedy == baselines
    baseline = dsjson.head(record)["a"][0] - 1
    greedy = _greedy(ws, record)
    vwcalls.learn(ws, dsjson.with_label(record, baseline, 1.0))
    if greedy != baseline:
        vwcalls.learn(ws, dsjson.with_label(record, greedy, 0.0))
    return greedy == baseline


def graduate(
    conn: sqlite3.Connection, settings: Settings, loop: str, arguments: str, needed: int, now: datetime
) -> None:
    """Switch the loop from Apprentice to Online when a replay over at least ``needed`` logged events puts the
    model's lower confidence bound above the baseline's estimate. The switch is stored as the API would store
    it (``loop_config``), so workers apply it within 0.1 s, and recorded with its evidence in ``mode_switches``."""
    evidence = graduation(LoopLog(settings, loop, now=now), arguments, needed)
    if not evidence["graduate"]:
        log.info("loop %s: stays in Apprentice mode: %s", loop, evidence["reason"])
        return
    row = loop_config_row(conn, loop)
    service = {**json.loads((row and row[0]) or "{}"), "learningMode": "Online"}
    learning.switch_mode(
        conn,
        loop,
        service=json.dumps(service),
        policy=row and row[1],
        at=timestamp(now),
        from_mode="Apprentice",
        to_mode="Online",
        evidence=json.dumps(evidence),
    )
    log.warning("loop %s: switched from Apprentice to Online: %s", loop, json.dumps(evidence))


def _greedy(ws: vowpalwabbit.Workspace, record: str) -> int:
    """The action the workspace would choose without exploring: the most probable one, first on ties."""
    pmf = pmf_of(ws, record)
    return max(range(len(pmf)), key=lambda i: (pmf[i], -i))
