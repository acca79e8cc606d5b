"""Discovery budget: a probability floor for actions the loop has rarely shown, against the feedback-loop trap.

A rule of kind ``discovery`` gives each matched eligible action at least ``min_probability`` while the
action was chosen in less than ``max_share`` of the loop's decisions over the rule's ``window``. The floor
is mixed into the final distribution (after the model and the priority factors, before the draw), so the
probability logged is the one the action was drawn with and offline evaluation stays unbiased.

The shares come from the decision log, read by each worker at most every ``discovery_refresh_seconds`` per
loop and window (one grouped query), never on every Rank.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

from .rules import Verdict
from .settings import parse_duration
from .store import Store, timestamp


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
        self._cache: dict[tuple[str, float], tuple[float, dict[str, float]]] = {}
        self._lock = threading.Lock()

    def shares(self, loop: str, window: str, now: datetime) -> dict[str, float]:
        seconds = parse_duration(window).total_seconds()
        key = (loop, seconds)
        found = self._cache.get(key)
        clock = time.monotonic()
        if found is not None and clock - found[0] < self.refresh_seconds:
            return found[1]
        with self._lock:  # one reader refreshes; the others wait for it rather than query too
            found = self._cache.get(key)
            if found is not None and time.monotonic() - found[0] < self.refresh_seconds:
                return found[1]
            total, counts = self.store.exposures(loop, timestamp(now - timedelta(seconds=seconds)))
            shares = {action: n / total for action, n in counts.items()} if total else {}
            self._cache[key] = (time.monotonic(), shares)
            return shares

    def clear(self) -> None:
        self._cache.clear()


def floors(
    exposures: Exposures, loop: str, verdict: Verdict, ids: list[str], now: datetime
) -> tuple[dict[int, float], dict[int, dict[str, Any]]]:
    """For the eligible actions (``ids`` in eligible order) that a discovery rule matched: their floors, and per
    action the rule that set it ``{"rule", "floor", "share"}``. A rule counts while the action's share of the
    rule's window is below its ``max_share``; the highest floor wins."""
    out: dict[int, float] = {}
    why: dict[int, dict[str, Any]] = {}
    for position, found in verdict.discovery.items():
        for rule in found:
            share = exposures.shares(loop, rule.window, now).get(ids[position], 0.0)
            if share < rule.max_share and rule.min_probability > out.get(position, 0.0):
                out[position] = rule.min_probability
                why[position] = {"rule": rule.name, "floor": rule.min_probability, "share": share}
    return out, why
