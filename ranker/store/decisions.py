"""The decision log's operations: record a decision, rewards and activations, reads of one decision, counts,
the loop's configuration set through the API, resets and deletions, the id ranges and exposures the trainer,
metrics and discovery read. Written once over an engine's group commit (``write``) and reads (``read``):
:class:`DecisionLog` is the part of :class:`ranker.store.sqlite.Store` (and of the PostgreSQL store, which
derives from it) that does not depend on the engine.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

_ascii_string = json.encoder.encode_basestring_ascii  # what json.dumps writes for a string (json's C function)


def timestamp(moment: datetime) -> str:
    """A time as the log writes it: ISO 8601 in UTC with microseconds, sorting as text in time order."""
    if moment.year < 1000:  # strftime writes fewer digits for such a year; the f-string below would not
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # the same text as that strftime, at under half its cost (on every Rank and Reward)
    m = moment
    return f"{m.year}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}.{m.microsecond:06d}Z"


def parse_time(text: str) -> datetime:
    """A time read from the log (or an import); without a zone it is UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def decision_row(
    event_id: str,
    created_at: str,
    action_ids: list[str],
    *,
    deferred: bool,
    model_version: str | None = None,
    policy: str | None = None,
    learning_mode: str = "Online",
    **fields: Any,
) -> dict[str, Any]:
    """A row of the decision log (its loop aside), as Rank and an import write it: what every decision logs,
    and ``fields`` (its record, choice, probability, explanation; ``explored`` or ``slots`` where Rank knows
    them). An imported decision was served by no model or policy of ranker's, and is Online's."""
    return {
        "event_id": event_id,
        "created_at": created_at,
        "action_ids": "[" + ", ".join(map(_ascii_string, action_ids)) + "]",  # json.dumps(action_ids), a third the cost
        "model_version": model_version,
        "policy": policy,
        "learning_mode": learning_mode,
        "deferred": int(deferred),
        "activated_at": None,
        **fields,
    }


# A loop's configuration set through the API (ranker.serving.loopconfig combines it with the settings file).
LOOP_CONFIG_SELECT = "SELECT service, policy, updated_at FROM loop_config WHERE loop = ?"
LOOP_CONFIG_UPSERT = (
    "INSERT INTO loop_config (loop, service, policy, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(loop) DO UPDATE SET service = excluded.service, policy = excluded.policy, "
    "updated_at = excluded.updated_at"
)


# How many of a loop's multi-slot decisions from a time on gave each action a slot (``slots`` is a JSON array of
# {"id", "rewardActionId", "probability"}); the engines spell JSON arrays differently.
SLOT_EXPOSURES = {
    "sqlite": "SELECT json_extract(j.value, '$.rewardActionId') AS action, count(*) AS n "
    "FROM decisions d, json_each(d.slots) j WHERE d.loop = ? AND d.created_at >= ? AND d.slots IS NOT NULL "
    "GROUP BY action",
    "postgresql": "SELECT j.value ->> 'rewardActionId' AS action, count(*) AS n "
    "FROM decisions d, jsonb_array_elements(CAST(d.slots AS jsonb)) j WHERE d.loop = ? AND d.created_at >= ? "
    "AND d.slots IS NOT NULL GROUP BY action",
}


def loop_config_row(conn: sqlite3.Connection, loop: str) -> tuple | None:
    """The loop's ``(service, policy, updated_at)`` set through the API, read on an open connection."""
    return conn.execute(LOOP_CONFIG_SELECT, (loop,)).fetchone()


def save_loop_config(conn: sqlite3.Connection, loop: str, service: str | None, policy: str | None, at: str) -> None:
    conn.execute(LOOP_CONFIG_UPSERT, (loop, service, policy, at))


def add_reward(conn: sqlite3.Connection, loop: str, event_id: str, value: float, at: str) -> bool:
    """:meth:`Store.add_reward` inside the caller's transaction (e.g. a triage approval that also activates)."""
    sql = (
        "INSERT INTO rewards (decision_id, value, received_at) "
        "SELECT id, ?, ? FROM decisions WHERE loop = ? AND event_id = ? AND slots IS NULL"
    )
    return conn.execute(sql, (value, at, loop, event_id)).rowcount == 1


def activate(conn: sqlite3.Connection, loop: str, event_id: str, at: str) -> bool:
    """:meth:`Store.activate` inside the caller's transaction."""
    sql = "UPDATE decisions SET activated_at = coalesce(activated_at, ?) WHERE loop = ? AND event_id = ?"
    return conn.execute(sql, (at, loop, event_id)).rowcount == 1


_INSERTS: dict[tuple[str, ...], tuple[str, str]] = {}  # a decision's columns -> its INSERT (head, statement)


class DecisionLog:
    """What Rank, Reward, Activate, the admin API, the trainer and metrics ask of the decision log; an engine's
    store provides ``write(fn, insert=None)`` and ``read(sql, params)``."""

    def record_decision(self, row: dict[str, Any]) -> bool:
        """Insert a decision; False when the loop already has this event id."""
        columns = tuple(row)
        statement = _INSERTS.get(columns)
        if statement is None:
            head = f"INSERT OR IGNORE INTO decisions ({', '.join(row)}) VALUES "
            statement = _INSERTS[columns] = (head, head + "(" + ", ".join("?" * len(row)) + ")")
        head, sql = statement
        values = tuple(row.values())
        return self.write(lambda conn: conn.execute(sql, values).rowcount == 1, insert=(head, values))

    def add_reward(self, loop: str, event_id: str, value: float, at: str) -> bool:
        """Keep a reward for a logged single-slot decision; False when the loop has no such event (or it is
        multi-slot: its rewards name their slots, :meth:`add_slot_rewards`)."""
        return self.write(lambda conn: add_reward(conn, loop, event_id, value, at))

    def add_slot_rewards(self, loop: str, event_id: str, values: list[tuple[str, float]], at: str) -> None:
        """Keep the rewards of a multi-slot decision's slots, all or none.

        Raises ``LookupError`` when the loop has no such event, ``ValueError`` naming what is wrong when the
        decision is single-slot or a slot id is not one of its slots.
        """

        def insert(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT id, slots FROM decisions WHERE loop = ? AND event_id = ?", (loop, event_id))
            found = row.fetchone()
            if found is None:
                raise LookupError(event_id)
            decision_id, slots = found
            if slots is None:
                raise ValueError("the event was ranked by the single-slot API; reward it there")
            known = {slot["id"] for slot in json.loads(slots)}
            unknown = [slot_id for slot_id, _ in values if slot_id not in known]
            if unknown:
                raise ValueError(f"the event has no slot {unknown[0]!r}")
            conn.executemany(
                "INSERT INTO rewards (decision_id, value, received_at, slot_id) VALUES (?, ?, ?, ?)",
                [(decision_id, value, at, slot_id) for slot_id, value in values],
            )

        self.write(insert)

    def activate(self, loop: str, event_id: str, at: str) -> bool:
        """Mark a decision activated (the first activation counts); False when there is no such event."""
        return self.write(lambda conn: activate(conn, loop, event_id, at))

    def decision(self, loop: str, event_id: str) -> dict[str, Any] | None:
        rows = self.read("SELECT * FROM decisions WHERE loop = ? AND event_id = ?", (loop, event_id))
        return rows[0] if rows else None

    def rewards(self, loop: str, event_id: str) -> list[dict[str, Any]]:
        return self.read(
            "SELECT r.value, r.received_at FROM rewards r JOIN decisions d ON d.id = r.decision_id "
            "WHERE d.loop = ? AND d.event_id = ? ORDER BY r.id",
            (loop, event_id),
        )

    def counts(self) -> dict[str, int]:
        row = self.read(
            "SELECT (SELECT count(*) FROM decisions) AS decisions, (SELECT count(*) FROM rewards) AS rewards"
        )[0]
        return dict(row)

    # -- a loop's configuration and learning state ---------------------------------------------

    def loop_config(self, loop: str) -> dict[str, Any] | None:
        """The loop's configuration set through the API: ``{"service", "policy", "updated_at"}``, or None."""
        rows = self.read(LOOP_CONFIG_SELECT, (loop,))
        return rows[0] if rows else None

    def look(self, loop: str, models: Any) -> tuple[dict[str, Any] | None, Any]:
        """What a serving worker looks at for changes (every 0.1 s): the loop's configuration set through the
        API (:meth:`loop_config`) and the stamp of its model pointer (``models.stamp``)."""
        return self.loop_config(loop), models.stamp(loop)

    def save_loop_config(self, loop: str, service: str | None, policy: str | None, updated_at: str) -> None:
        """Store the loop's configuration set through the API (JSON texts; None for none)."""
        self.write(lambda conn: save_loop_config(conn, loop, service, policy, updated_at))

    def apprentice_window(self, loop: str) -> str | None:
        """The trainer's stored Apprentice window of the loop (JSON), or None."""
        rows = self.read("SELECT apprentice FROM trainer_state WHERE loop = ?", (loop,))
        return rows[0]["apprentice"] if rows else None

    def reset_learning(
        self, loop: str, fingerprint: str, model: bytes, publish: Callable[[sqlite3.Connection], str]
    ) -> str:
        """Make ``model`` the trainer's starting point for the decisions logged from now on, and ``publish(conn)``
        it in the same write turn and transaction (a trainer that learned on from the previous model then finds
        the generation raised and cannot publish over it). Returns what ``publish`` returned."""
        now = timestamp(datetime.now(UTC))
        published: list[str] = []

        def reset(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO trainer_state (loop, settings, updated_at) VALUES (?, ?, ?) ON CONFLICT(loop) DO NOTHING",
                (loop, fingerprint, now),
            )
            conn.execute(
                "UPDATE trainer_state SET settings = ?, model = ?, learned = 0, skipped = 0, published_learned = 0, "
                "last_decision_id = (SELECT coalesce(max(id), 0) FROM decisions WHERE loop = ?), "
                "generation = generation + 1, updated_at = ? WHERE loop = ?",
                (fingerprint, model, loop, now, loop),
            )
            published.append(publish(conn))

        self.write(reset)
        return published[-1]

    def log_range(self, loop: str) -> tuple[str | None, str | None]:
        """The times of the loop's first and last logged decisions (None, None when there is none)."""
        row = self.read(
            "SELECT min(created_at) AS first, max(created_at) AS last FROM decisions WHERE loop = ?", (loop,)
        )
        return row[0]["first"], row[0]["last"]

    def delete_log(self, loop: str) -> None:
        """Delete the loop's decisions and their rewards."""

        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM rewards WHERE decision_id IN (SELECT id FROM decisions WHERE loop = ?)", (loop,))
            conn.execute("DELETE FROM decisions WHERE loop = ?", (loop,))

        self.write(delete)

    # -- counts for the metrics ------------------------------------------------------------------

    def ping(self) -> None:
        """A read of the log (StoreUnavailable when it cannot be read)."""
        self.read("SELECT 1")

    def learning_counts(self) -> dict[str, dict[str, Any]]:
        """Per loop the trainer has state for: ``{"last_decision_id", "learned", "skipped"}``."""
        rows = self.read("SELECT loop, last_decision_id, learned, skipped FROM trainer_state")
        return {row["loop"]: row for row in rows}

    def id_range(self, loop: str) -> tuple[int | None, int | None]:
        """The loop's first and last decision ids (None, None when it has none)."""
        row = self.read(
            "SELECT (SELECT min(id) FROM decisions WHERE loop = :loop) AS first, "
            "(SELECT max(id) FROM decisions WHERE loop = :loop) AS last",
            {"loop": loop},
        )[0]
        return row["first"], row["last"]

    def count_ids(self, loop: str, after_id: int, through_id: int) -> int:
        """How many of the loop's decisions have ``after_id < id <= through_id``."""
        sql = "SELECT count(*) AS n FROM decisions WHERE loop = ? AND id > ? AND id <= ?"
        return self.read(sql, (loop, after_id, through_id))[0]["n"]

    def next_decision_time(self, loop: str, after_id: int) -> str | None:
        """When the loop's first decision after ``after_id`` was made, or None."""
        sql = "SELECT created_at FROM decisions WHERE loop = ? AND id > ? ORDER BY id LIMIT 1"
        rows = self.read(sql, (loop, after_id))
        return rows[0]["created_at"] if rows else None

    # -- explanations and discovery -----------------------------------------------------------

    def exposures(self, loop: str, since: str, multislot: bool = False) -> tuple[int, dict[str, int]]:
        """The loop's decisions from ``since`` on: how many, and how many chose each action; ``multislot``:
        also the multi-slot decisions that gave it a slot (a decision gives an action one slot at most)."""
        rows = self.read(
            "SELECT reward_action_id AS action, count(*) AS n FROM decisions "
            "WHERE loop = ? AND created_at >= ? GROUP BY reward_action_id",
            (loop, since),
        )
        counts = {r["action"]: r["n"] for r in rows if r["action"] is not None}
        if multislot:
            for r in self.read(SLOT_EXPOSURES[self.engine], (loop, since)):
                if r["action"] is not None:
                    counts[r["action"]] = counts.get(r["action"], 0) + r["n"]
        return sum(r["n"] for r in rows), counts

    def event_rewards(self, loop: str, event_id: str) -> list[dict[str, Any]]:
        """Every reward of a decision, in the order received, with its slot (null for a single-slot decision)."""
        return self.read(
            "SELECT r.value, r.received_at, r.slot_id FROM rewards r JOIN decisions d ON d.id = r.decision_id "
            "WHERE d.loop = ? AND d.event_id = ? ORDER BY r.id",
            (loop, event_id),
        )
