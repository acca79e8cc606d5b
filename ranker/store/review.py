"""What the review pages keep and read: their sessions and CSRF secret (tables ``review_sessions`` and
``review_secret``), and the loop view's reads of the decision log (recent decisions, reward over time, the
latest evaluation)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from .sqlite import Store

SECRET_BYTES = 32


def secret(store: Store) -> bytes:
    """The secret that signs the review forms' CSRF tokens, made once (by whichever process asks first) and
    kept in the database, so every worker and every restart uses the same one."""
    rows = store.read("SELECT secret FROM review_secret WHERE id = 1")
    if rows:
        return rows[0]["secret"]
    made = secrets.token_bytes(SECRET_BYTES)
    store.write(lambda conn: conn.execute("INSERT OR IGNORE INTO review_secret (id, secret) VALUES (1, ?)", (made,)))
    return store.read("SELECT secret FROM review_secret WHERE id = 1")[0]["secret"]


def create_session(
    store: Store, id_sha256: str, loop: str, role: str, key_sha256: str, at: str, expires_at: str, ended: str | None
) -> None:
    """Keep a new session, ending the session ``ended`` (the browser's previous one, if any) and the expired
    ones in the same transaction."""

    def create(conn) -> None:
        if ended is not None:
            conn.execute("DELETE FROM review_sessions WHERE id_sha256 = ?", (ended,))
        conn.execute("DELETE FROM review_sessions WHERE expires_at <= ?", (at,))
        conn.execute(
            "INSERT INTO review_sessions (id_sha256, loop, role, key_sha256, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (id_sha256, loop, role, key_sha256, at, expires_at),
        )

    store.write(create)


def session(store: Store, id_sha256: str, now: str) -> dict[str, Any] | None:
    """The session with this id, unless it has expired."""
    rows = store.read("SELECT * FROM review_sessions WHERE id_sha256 = ? AND expires_at > ?", (id_sha256, now))
    return rows[0] if rows else None


def end_session(store: Store, id_sha256: str) -> None:
    store.write(lambda conn: conn.execute("DELETE FROM review_sessions WHERE id_sha256 = ?", (id_sha256,)))


def recent_event_ids(store: Store, loop: str, limit: int) -> list[str]:
    """The loop's most recent decisions' event ids, newest first."""
    sql = "SELECT event_id FROM decisions WHERE loop = ? ORDER BY id DESC LIMIT ?"
    return [row["event_id"] for row in store.read(sql, (loop, limit))]


def reward_series(store: Store, loop: str, since: str, width: int, default_reward: float) -> list[dict[str, Any]]:
    """Per period (the first ``width`` characters of the decision time: 10 a day, 13 an hour) since ``since``:
    decisions, how many got a reward, and the mean reward with ``default_reward`` for those without one (what
    the loop learns). A decision's several rewards count as their average."""
    sql = (
        "SELECT period, count(*) AS decisions, count(reward) AS rewarded, avg(coalesce(reward, ?)) AS mean "
        "FROM (SELECT substr(d.created_at, 1, ?) AS period, "
        "(SELECT avg(value) FROM rewards r WHERE r.decision_id = d.id) AS reward "
        "FROM decisions d WHERE d.loop = ? AND d.created_at >= ?) AS per_decision GROUP BY period ORDER BY period"
    )
    return store.read(sql, (default_reward, width, loop, since))


def latest_job(store: Store, loop: str, kind: str) -> dict[str, Any] | None:
    """The loop's most recently created job of a kind (e.g. its latest evaluation)."""
    sql = "SELECT * FROM jobs WHERE loop = ? AND kind = ? ORDER BY created_at DESC, id DESC LIMIT 1"
    rows = store.read(sql, (loop, kind))
    return rows[0] if rows else None


def decided_since(store: Store, since: str) -> int:
    """Triage items decided (approved or dismissed) at or after ``since``: the queue's "decided today"."""
    return store.read("SELECT count(*) AS n FROM triage_items WHERE decided_at >= ?", (since,))[0]["n"]


# The attributes at dotted paths of many entities, per engine (the store's ``engine`` switches): SQLite's
# json_extract with a JSON path and the ids from json_each; PostgreSQL's #> with the path as an array (a JSON
# string or number comes back as the Python value json_extract gives) and the ids as an array.
ENTITY_FIELDS = {
    "sqlite": (
        "json_extract(attributes, ?)",
        "SELECT id, {columns} FROM signal_entities WHERE type = ? AND id IN (SELECT value FROM json_each(?))",
    ),
    "postgresql": (
        "CAST(attributes AS jsonb) #> ?",
        "SELECT id, {columns} FROM signal_entities WHERE type = ? AND id = ANY(?)",
    ),
}


def entity_fields(store: Store, entity: str, ids: list[str], paths: dict[str, str]) -> dict[str, dict[str, Any]]:
    """For each entity id, the attributes at ``paths`` (``{name: dotted path}``): e.g. the queue's account names
    and segments, in one read."""
    if not ids:
        return {}
    names = list(paths)
    column, sql = ENTITY_FIELDS[store.engine]
    columns = ", ".join(f"{column} AS c{i}" for i in range(len(names)))
    if store.engine == "sqlite":
        json_paths: list[Any] = [
            "$" + "".join('."' + part.replace('"', '""') + '"' for part in paths[n].split(".")) for n in names
        ]
        params = (*json_paths, entity, json.dumps(ids))
    else:
        params = (*[paths[n].split(".") for n in names], entity, list(ids))
    rows = store.read(sql.format(columns=columns), params)
    return {row["id"]: {name: row[f"c{i}"] for i, name in enumerate(names)} for row in rows}
