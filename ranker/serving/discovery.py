"""Discovery budget: a probability floor for actions the loop has rarely shown, against the feedback-loop trap.

A rule of kind ``discovery`` gives each matched eligible action at least ``min_probability`` while the
action was chosen in less than ``max_share`` of the loop's decisions over the rule's ``window``. The floor
is mixed into the final distribution (after the model and the priority factors, before the draw), so the
probability logged is the one the action was drawn with and offline evaluation stays unbiased.

A multi-slot Rank mixes each slot's floors into that slot's distribution over the actions left to it
(:func:`ranker.serving.slots.choose_slots`), and an action's share is that of the decisions that gave it a slot.

The shares come from the decision log, read by each worker at most every ``discovery_refresh_seconds`` per
loop and window (one grouped query), never on every Rank.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

from ..core.rules import Verdict
from ..core.settings import parse_duration
from ..store import Store, timestamp


def floor(pmf: list[float], floors: dict[int, float]) -> tuple[list[float], set[int]]:
    """``pmf`` with each action of ``floors`` (index -> floor) raised to at least its floor, the other actions
    scaled down in proportion; and the indices that were raised. Floors adding up to 1 or more share the
    whole mass in proportion to the floors."""
    raised: dict[int, float] = {}
    p = list(pmf)
    while True:
        below = {i: f for i, f in floors.items() if i not in raised and p[i] < f}
        if not below:
            return p, set(raised)
        raised.update(below)
        fixed = sum(raised.values())
        if fixed >= 1:
            return [raised.get(i, 0.0) / fixed for i in range(len(p))], set(raised)
        rest = sum(q for i, q in enumerate(pmf) if i not in raised)
        if rest <= 0:  # nothing else has mass: the floors share it all
            return [raised.get(i, 0.0) / fixed for i in range(len(p))], set(raised)
        scale = (1.0 - fixed) / rest
        p = [raised[i] if i in raised else q * scale for i, q in enumerate(pmf)]


class Exposures:
    """Per loop and window, the share of the loop's decisions that chose each action; cached per process."""

    def __init__(self, store: Store, refresh_seconds: float):
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._cache: dict[tuple[str, float, bool], tuple[float, dict[str, float]]] = {}
        self._lock = threading.Lock()
        self._refreshing: set[tuple[str, float, bool]] = set()  # keys a reader is refreshing now

    def shares(self, loop: str, window: str, now: datetime, multislot: bool = False) -> dict[str, float]:
        """Each action's share of the loop's decisions over ``window``; ``multislot``: the share of decisions
        that gave it a slot."""
        seconds = parse_duration(window).total_seconds()
        key = (loop, seconds, multislot)
        found = self._cache.get(key)
        clock = time.monotonic()
        if found is not None and clock - found[0] < self.refresh_seconds:
            return found[1]
        # One reader refreshes; meanwhile the others answer the shares in hand, or none before the first read (every
        # action under its share: the floors apply, and the logged probability is the one drawn). No lock is held
        # over the read: a request served in the poller may be parked there (ranker.server.inline_worker), and
        # another request of the same thread waiting for that lock would never let it resume.
        with self._lock:
            if key in self._refreshing:
                return {} if found is None else found[1]
            self._refreshing.add(key)
        try:
            total, counts = self.store.exposures(loop, timestamp(now - timedelta(seconds=seconds)), multislot)
        finally:
            with self._lock:
                self._refreshing.discard(key)
        shares = {action: n / total for action, n in counts.items()} if total else {}
        self._cache[key] = (time.monotonic(), shares)
        return shares

    def clear(self) -> None:
        self._cache.clear()


def floors(
    exposures: Exposures, loop: str, verdict: Verdict, ids: list[str], now: datetime, multislot: bool = False
) -> tuple[dict[int, float], dict[int, dict[str, Any]]]:
    """For the eligible actions (``ids`` in eligible order) that a discovery rule matched: their floors, and per
    action the rule that set it ``{"rule", "floor", "share"}``. A rule counts while the action's share of the
    rule's window is below its ``max_share`` (``multislot``: the share of decisions that gave it a slot); the
    highest floor wins."""
    out: dict[int, float] = {}
    why: dict[int, dict[str, Any]] = {}
    for position, found in verdict.discovery.items():
        for rule in found:
            share = exposures.shares(loop, rule.window, now, multislot).get(ids[position], 0.0)
            if share < rule.max_share and rule.min_probability > out.get(position, 0.0):
                out[position] = rule.min_probability
                why[position] = {"rule": rule.name, "floor": rule.min_probability, "share": share}
    return out, why


def slot_floors(
    exposures: Exposures, loop: str, verdicts: list[Verdict], ids: list[str], offered: list[int], now: datetime
) -> list[dict[int, dict[str, Any]]]:
    """Per slot of a multi-slot Rank (``verdicts``: the slots' rule verdicts; ``offered``: the request's action
    indices of the record's ``_multi``), the rule of each floor as :func:`floors` gives it
    (``{"rule", "floor", "share"}``), keyed by ``_multi`` index; empty when no discovery rule matched."""
    if not any(verdict.discovery for verdict in verdicts):
        return []
    at = {action: m for m, action in enumerate(offered)}
    out = []
    for verdict in verdicts:
        _, why = floors(exposures, loop, verdict, [ids[i] for i in verdict.eligible], now, multislot=True)
        out.append({at[verdict.eligible[p]]: w for p, w in why.items()})
    return out
