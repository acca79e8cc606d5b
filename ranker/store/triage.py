"""The triage's storage: risk items, their transitions and the suppressed accounts. The only SQL of triage.

Tables (``ranker.store.migrations``): ``triage_items`` (one per account and renewal date: a renewal is never
flagged twice), ``triage_transitions`` (every change of an item's state, with who and when), and
``triage_suppressions`` (accounts not flagged until a time). A decision is one transaction: the item's state,
its transition and what the decision does elsewhere (the outbox message, the activation and reward of the
item's loop decision, a suppression), through the same functions the service's Activate and Reward use.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .decisions import activate, add_reward
from .outbox import enqueue
from .sqlite import Store

PENDING, APPROVED, DISMISSED = "pending", "approved", "dismissed"
STATES = (PENDING, APPROVED, DISMISSED)
SORTS = {
    "risk": "risk DESC, renewal_date ASC, id ASC",
    "value": "value IS NULL, value DESC, renewal_date ASC, id ASC",
    "renewal": "renewal_date ASC, risk DESC, id ASC",
    "newest": "id DESC",
}
_ITEM_COLUMNS = (
    "account, renewal_date, pattern_name, pattern, risk, value, evidence, loop, event_id, action_id, ranking, "
    "explanation, draft_subject, draft_body, drafted_by, draft_note, recipient, state, created_at"
)
_JSON_COLUMNS = ("pattern", "evidence", "ranking", "explanation")


class Decided(Exception):
    """The item was decided already (its state is :attr:`state`): an item is decided once."""

    def __init__(self, state: str):
        super().__init__(f"the item is {state} already")
        self.state = state


def _json_path(dotted: str) -> str:
    """SQLite's JSON path of a dotted attribute path (``contract.renewalDate`` -> ``$."contract"."renewalDate"``)."""
    return "$" + "".join('."' + part.replace('"', '""') + '"' for part in dotted.split("."))


# The renewals' read, per engine (the store's ``engine`` switches): SQLite's json_extract with JSON paths,
# PostgreSQL's jsonb path operators with the path as an array (``#>`` answers a JSON string or number as the
# same Python value json_extract does; ``times`` is keyed by whole dotted paths).
RENEWALS = {
    "sqlite": (
        "SELECT id, json_extract(attributes, :renewal) AS renewal, json_extract(attributes, :outcome) AS outcome, "
        "json_extract(times, :outcome_at) AS outcome_at, {value} AS value "
        "FROM signal_entities WHERE type = :type AND json_extract(attributes, :renewal) IS NOT NULL"
    ),
    "postgresql": (
        "SELECT id, CAST(attributes AS jsonb) #> :renewal AS renewal, "
        "CAST(attributes AS jsonb) #> :outcome AS outcome, "
        "CAST(times AS jsonb) ->> :outcome_at AS outcome_at, {value} AS value "
        "FROM signal_entities WHERE type = :type AND CAST(attributes AS jsonb) #>> :renewal IS NOT NULL"
    ),
}
_VALUE = {"sqlite": "json_extract(attributes, :value)", "postgresql": "CAST(attributes AS jsonb) #> :value"}


# -- what the triage pass reads ------------------------------------------------------------------------


def renewals(store: Store, entity: str, renewal: str, outcome: str, value: str | None = None) -> list[dict[str, Any]]:
    """Every entity of the type with a renewal date attribute: ``id``, ``renewal`` (as stored), ``outcome`` and
    ``outcome_at`` (the outcome attribute's update time), ``value`` (None without ``value``)."""
    engine = store.engine
    sql = RENEWALS[engine].format(value="NULL" if value is None else _VALUE[engine])
    if engine == "sqlite":
        path, flat = _json_path, lambda dotted: '$."' + dotted.replace('"', '""') + '"'
    else:
        path, flat = lambda dotted: dotted.split("."), lambda dotted: dotted
    params = {"renewal": path(renewal), "outcome": path(outcome), "outcome_at": flat(outcome), "type": entity}
    if value is not None:
        params["value"] = path(value)
    return store.read(sql, params)


def flagged(store: Store) -> set[tuple[str, str]]:
    """(account, renewal date) of every item."""
    return {(r["account"], r["renewal_date"]) for r in store.read("SELECT account, renewal_date FROM triage_items")}


def suppressed(store: Store, at: str) -> dict[str, str]:
    """Accounts suppressed after ``at``, with the time their suppression ends."""
    rows = store.read("SELECT account, until FROM triage_suppressions WHERE until > ?", (at,))
    return {r["account"]: r["until"] for r in rows}


def awaiting_outcome(store: Store, at: str) -> list[dict[str, Any]]:
    """Items whose renewal date is before ``at`` and whose outcome is not recorded yet."""
    return store.read(
        "SELECT id, account, renewal_date, state, created_at FROM triage_items "
        "WHERE outcome IS NULL AND renewal_date <= ? ORDER BY id",
        (at,),
    )


# -- writes of the triage pass -------------------------------------------------------------------------


def add_items(store: Store, rows: list[dict[str, Any]], who: str) -> list[int | None]:
    """Insert new pending items (one transaction), each with its first transition; per row its id, or None
    when the account was flagged for that renewal already (that item is left as it is)."""
    columns = _ITEM_COLUMNS.split(", ")
    sql = f"INSERT OR IGNORE INTO triage_items ({_ITEM_COLUMNS}) VALUES ({', '.join('?' * len(columns))})"
    values = []
    for row in rows:
        row = {**row, "state": PENDING}
        values.append(tuple(json.dumps(row[c]) if c in _JSON_COLUMNS else row[c] for c in columns))

    def run(conn: sqlite3.Connection) -> list[int | None]:
        ids: list[int | None] = []
        for row, params in zip(rows, values, strict=True):
            cursor = conn.execute(sql, params)
            if cursor.rowcount != 1:
                ids.append(None)
                continue
            ids.append(cursor.lastrowid)
            _transition(conn, cursor.lastrowid, row["created_at"], who, None, PENDING, {"pattern": row["pattern_name"]})
        return ids

    return store.write(run)


def record_outcomes(store: Store, outcomes: list[tuple[int, str, str]], who: str, at: str) -> int:
    """Record ``(item id, outcome, outcome time)`` on items that have none yet; how many were recorded."""

    def run(conn: sqlite3.Connection) -> int:
        done = 0
        for item_id, outcome, outcome_at in outcomes:
            cursor = conn.execute(
                "UPDATE triage_items SET outcome = ?, outcome_at = ? WHERE id = ? AND outcome IS NULL RETURNING state",
                (outcome, outcome_at, item_id),
            )
            found = cursor.fetchone()
            if found is not None:
                done += 1
                _transition(conn, item_id, at, who, found[0], found[0], {"outcome": outcome, "outcome_at": outcome_at})
        return done

    return store.write(run)


# -- reads of the review --------------------------------------------------------------------------------


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for column in _JSON_COLUMNS:
        if row.get(column) is not None:
            row[column] = json.loads(row[column])
    return row


def items(
    store: Store,
    *,
    state: str | None = None,
    loop: str | None = None,
    renewal_from: str | None = None,
    renewal_to: str | None = None,
    sort: str = "risk",
    top: int = 50,
    skip: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """A page of items matching the filters (renewal dates in ``[renewal_from, renewal_to]``), sorted by
    ``sort`` (one of :data:`SORTS`), and how many match in all."""
    where, params = [], []
    for clause, value in (
        ("state = ?", state),
        ("loop = ?", loop),
        ("renewal_date >= ?", renewal_from),
        ("renewal_date <= ?", renewal_to),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    condition = f"WHERE {' AND '.join(where)}" if where else ""
    total = store.read(f"SELECT count(*) AS n FROM triage_items {condition}", tuple(params))[0]["n"]
    rows = store.read(
        f"SELECT * FROM triage_items {condition} ORDER BY {SORTS[sort]} LIMIT ? OFFSET ?", (*params, top, skip)
    )
    return [_decode(row) for row in rows], total


def item(store: Store, item_id: int) -> dict[str, Any] | None:
    """An item with its transitions (oldest first), or None."""
    rows = store.read("SELECT * FROM triage_items WHERE id = ?", (item_id,))
    if not rows:
        return None
    found = _decode(rows[0])
    found["transitions"] = [
        {**t, "detail": json.loads(t["detail"]) if t["detail"] else None}
        for t in store.read(
            "SELECT at, who, from_state, to_state, detail FROM triage_transitions WHERE item_id = ? ORDER BY id",
            (item_id,),
        )
    ]
    return found


def report_rows(store: Store) -> list[dict[str, Any]]:
    """Per item what the report counts: account, renewal date, state, times, pattern, outcome."""
    return store.read(
        "SELECT id, account, renewal_date, pattern_name, state, created_at, decided_at, dismiss_reason, outcome, "
        "outcome_at FROM triage_items ORDER BY id"
    )


# -- decisions ------------------------------------------------------------------------------------------


def _transition(
    conn: sqlite3.Connection, item_id: int, at: str, who: str, from_state: str | None, to_state: str, detail: Any
) -> None:
    conn.execute(
        "INSERT INTO triage_transitions (item_id, at, who, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (item_id, at, who, from_state, to_state, None if detail is None else json.dumps(detail)),
    )


def _pending(conn: sqlite3.Connection, item_id: int) -> dict[str, Any]:
    found = conn.execute("SELECT state, loop, event_id, account FROM triage_items WHERE id = ?", (item_id,)).fetchone()
    if found is None:
        raise LookupError(f"no triage item {item_id}")
    state, loop, event_id, account = found
    if state != PENDING:
        raise Decided(state)
    return {"loop": loop, "event_id": event_id, "account": account}


def _teach(conn: sqlite3.Connection, row: dict[str, Any], reward: float, at: str) -> bool:
    """Activate the item's deferred decision and give it the reward, as POST events/{id}/activate and /reward
    do; False when the item has no decision (or it is gone from the log)."""
    if row["event_id"] is None:
        return False
    return activate(conn, row["loop"], row["event_id"], at) and add_reward(
        conn, row["loop"], row["event_id"], reward, at
    )


def approve(
    store: Store,
    item_id: int,
    *,
    who: str,
    at: str,
    subject: str,
    body: str,
    recipient: str,
    reward: float,
    edited: bool,
) -> None:
    """Approve a pending item in one transaction: its state and final text, the transition, the outbox
    message (key ``triage:<id>``), the activation and the reward of its decision. ``LookupError`` when there is
    no such item, :class:`Decided` when it was decided already; nothing is written then."""

    def run(conn: sqlite3.Connection) -> None:
        row = _pending(conn, item_id)
        conn.execute(
            "UPDATE triage_items SET state = ?, decided_by = ?, decided_at = ?, final_subject = ?, final_body = ?, "
            "recipient = ?, reward = ? WHERE id = ?",
            (APPROVED, who, at, subject, body, recipient, reward, item_id),
        )
        key = f"triage:{item_id}"
        if not enqueue(conn, key, key, recipient, subject, body, at):
            raise Decided("in the outbox")  # a message of this item exists: it was approved before
        learned = _teach(conn, row, reward, at)
        _transition(conn, item_id, at, who, PENDING, APPROVED, {"edited": edited, "reward": reward, "learned": learned})

    store.write(run)


def dismiss(
    store: Store,
    item_id: int,
    *,
    who: str,
    at: str,
    reason: str,
    text: str | None,
    reward: float,
    suppress_until: str | None,
) -> None:
    """Dismiss a pending item in one transaction: its state, reason and text, the transition, the activation
    and reward of its decision, and (``suppress_until``) the account's suppression. Errors as :func:`approve`."""

    def run(conn: sqlite3.Connection) -> None:
        row = _pending(conn, item_id)
        conn.execute(
            "UPDATE triage_items SET state = ?, decided_by = ?, decided_at = ?, dismiss_reason = ?, dismiss_text = ?, "
            "reward = ? WHERE id = ?",
            (DISMISSED, who, at, reason, text, reward, item_id),
        )
        learned = _teach(conn, row, reward, at)
        if suppress_until is not None:
            conn.execute(
                "INSERT INTO triage_suppressions (account, until, reason, item_id, created_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (account) DO UPDATE SET "
                "until = max(triage_suppressions.until, excluded.until), reason = excluded.reason, "
                "item_id = excluded.item_id, created_at = excluded.created_at",
                (row["account"], suppress_until, reason, item_id, at),
            )
        detail = {"reason": reason, "reward": reward, "learned": learned, "suppressed_until": suppress_until}
        _transition(conn, item_id, at, who, PENDING, DISMISSED, detail)

    store.write(run)
