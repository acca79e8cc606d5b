"""The join of decisions with their rewards, shared by the trainer, ``ranker export`` and the replay."""

from __future__ import annotations

import sqlite3
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from ..core import dsjson
from ..core.settings import LoopSettings, parse_duration
from ..store import log, parse_time

COMMIT_GRACE = 1.0  # seconds a reward stamped inside its window may take to be committed
BATCH = 1000  # decisions read per query

AGGREGATIONS = ("earliest", "sum", "average", "min", "max", "median")


def aggregate(values: list[float], how: str) -> float:
    """Combine the rewards of one decision, given in the order they were received.

    earliest: the first received; sum: their total, clamped to [-1, 1] (the range of a single reward,
    of defaultReward and of Apprentice's labels, so every learned cost stays on one bounded scale, as
    offline estimators assume); average: their mean; min, max; median: the middle value, or the mean of
    the two middle values for an even count.
    """
    if not values:
        raise ValueError("no rewards to aggregate")
    if how == "earliest":
        return values[0]
    if how == "sum":
        return max(-1.0, min(1.0, sum(values)))
    if how == "average":
        return sum(values) / len(values)
    if how == "min":
        return min(values)
    if how == "max":
        return max(values)
    if how == "median":
        return statistics.median(values)
    raise ValueError(f"unknown reward aggregation {how!r}")


class Outcome(NamedTuple):
    """What one logged decision (with an eligible action) is to learning and evaluation."""

    reward: float  # its rewards within the window, aggregated; defaultReward when none arrived
    shown: bool  # not deferred, or activated within the window: a real event, its reward observed
    learn: bool  # the trainer learns it: shown, and not logged in LoggingOnly mode
    # multi-slot: each filled slot's reward, in the record's ``_outcomes`` order, found as ``reward`` is for a
    # single slot; ``reward`` is then their mean. None for a single-slot decision.
    slots: tuple[float, ...] | None = None
    # why the record cannot be read (a bad copy or a manual edit of the log): then nothing is learned from it
    malformed: str | None = None


@dataclass(frozen=True)
class RewardJoin:
    """How a loop's decisions meet their rewards: the one join of the trainer, ``ranker export`` and the replay.

    A reward counts when it is received within ``wait`` (rewardWaitTime) of the decision; the rewards that
    count are combined by ``aggregation`` (:func:`aggregate`), and ``default_reward`` stands in when none did.
    A deferred decision is shown only if it was activated within the same window; one that was not never
    reached the user, so it is neither learned nor evaluated.
    """

    wait: timedelta
    default_reward: float
    aggregation: str

    @classmethod
    def of(cls, settings: LoopSettings) -> RewardJoin:
        return cls(parse_duration(settings.reward_wait_time), settings.default_reward, settings.reward_aggregation)

    def due_before(self, now: datetime, grace: timedelta = timedelta(seconds=COMMIT_GRACE)) -> datetime:
        """The due rule: at ``now``, a decision made at or before this moment is due (its window has closed, and
        ``grace`` more seconds for a reward received inside the window to be committed), one made after is not."""
        return now - self.wait - grace

    def outcome(
        self,
        created_at: str,
        record: str | None,
        deferred: int,
        activated_at: str | None,
        mode: str,
        rewards: list[tuple[float, str, str | None]] | None,
    ) -> Outcome | None:
        """The decision's :class:`Outcome` from its log row and its ``(value, received_at, slot_id)`` rewards
        in the order received; None when no action was eligible (``record`` is null), which is nothing to
        learn. A multi-slot decision's slots are joined one by one, each with its own rewards."""
        if record is None:
            return None
        deadline = parse_time(created_at) + self.wait
        shown = not deferred or (activated_at is not None and parse_time(activated_at) <= deadline)
        counted = [(value, slot) for value, at, slot in rewards or () if parse_time(at) <= deadline]
        learn = shown and mode != "LoggingOnly"
        if not dsjson.is_multislot(record):
            return Outcome(self._combine([value for value, _ in counted]), shown, learn)
        try:
            outcomes = dsjson.split_multislot(record)[1]["_outcomes"]
            slots = tuple(
                self._combine([value for value, slot in counted if slot == outcome["_id"]]) for outcome in outcomes
            )
            reward = sum(slots) / len(slots)
        except (ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
            problem = f"its slots cannot be read ({type(exc).__name__}: {exc})"
            return Outcome(self.default_reward, shown, False, (), problem)
        return Outcome(reward, shown, learn, slots)

    def _combine(self, values: list[float]) -> float:
        return aggregate(values, self.aggregation) if values else self.default_reward


class Joined(NamedTuple):
    """A logged decision with its :class:`Outcome` (None when no action was eligible)."""

    id: int
    created_at: str
    record: str | None
    learning_mode: str
    outcome: Outcome | None


def joined(
    conn: sqlite3.Connection,
    loop: str,
    join: RewardJoin,
    *,
    after_id: int = 0,
    through_id: int | None = None,
    start: str | None = None,
    end: str | None = None,
    batch: int = BATCH,
) -> Iterator[Joined]:
    """The loop's decisions with ``after_id < id <= through_id`` and ``start <= created_at < end`` (timestamps
    in the log's format), in id order, each joined with its rewards by ``join``; read ``batch`` at a time."""
    for rows, rewards in log.decision_batches(
        conn, loop, after_id=after_id, through_id=through_id, start=start, end=end, batch=batch
    ):
        for decision_id, created_at, record, deferred, activated_at, mode in rows:
            outcome = join.outcome(created_at, record, deferred, activated_at, mode, rewards.get(decision_id))
            yield Joined(decision_id, created_at, record, mode, outcome)
