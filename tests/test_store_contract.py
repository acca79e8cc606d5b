"""The store's contract: what its callers rely on, written against the interface and parametrized by engine.

Every engine of ``ranker.store`` must pass these: SQLite, and PostgreSQL on a throwaway cluster (tests/postgres.py).
They use the real database; each test opens a fresh one, through the engine-neutral
:func:`ranker.store.open_database`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ranker.core.settings import Settings
from ranker.store import decision_row, learning, log, open_database, outbox, transaction
from ranker.store import jobs as store_jobs

ENGINES = ["sqlite", "postgresql"]
T0, T1, T2 = "2030-01-01T00:00:00.000000Z", "2030-01-01T00:00:01.000000Z", "2030-01-01T00:00:02.000000Z"


class Opened:
    """A fresh database: the service's Store (group commit) and a connection of its own, as the trainer has."""

    def __init__(self, url: str | None, folder: Path):
        self.database = open_database(Settings(data_dir=folder, database_url=url))
        self.database.migrate()
        self.store = self.database.store()
        self.conn = self.database.connect()

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(params=ENGINES)
def db(request, tmp_path) -> Iterator[Opened]:
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_cluster").database()
    opened = Opened(url, tmp_path)
    yield opened
    opened.close()


def decision(event_id: str, at: str = T0, loop: str = "cards") -> dict:
    return {
        "loop": loop,
        "event_id": event_id,
        "created_at": at,
        "record": '{"c":{}}',
        "action_ids": json.dumps(["a", "b"]),
        "reward_action_id": "a",
        "probability": 0.5,
        "explanation": "{}",
        "model_version": "0",
        "policy": "default",
        "learning_mode": "Online",
        "deferred": 0,
        "activated_at": None,
    }


def test_an_event_id_is_logged_once_per_loop_and_rewards_need_its_decision(db):
    assert db.store.record_decision(decision("e1"))
    assert not db.store.record_decision(decision("e1"))  # the API's 409
    assert db.store.record_decision(decision("e1", loop="other"))  # ids are per loop
    assert db.store.add_reward("cards", "e1", 1.0, T1)
    assert not db.store.add_reward("cards", "nope", 1.0, T1)  # the API's 404
    assert db.store.counts() == {"decisions": 2, "rewards": 1}


TRICKY_TEXT = ["it's", "back\\slash", "E'\\x41'", "$$ dollar $$", "naïve – 日本 🙂", "%s %(x)s ?", "", "NULL", "a\nb\t"]
TRICKY_NUMBERS = [0.1, 1e-05, -0.25, 1 / 3, 5e-324, 1.7976931348623157e308, 1e16]


def test_decisions_written_at_once_keep_every_character_and_number_exactly(db):
    """Concurrent writes share a commit (the batch's values written into one statement on PostgreSQL)."""
    rows = []
    for n, (text, number) in enumerate(zip(TRICKY_TEXT * 2, TRICKY_NUMBERS * 3, strict=False)):
        row = decision(f"t{n}-{text}")
        row.update(record=json.dumps({"c": {"x": text}}), reward_action_id=text, probability=number)
        row.update(explanation=text, model_version=None, deferred=n % 2)
        rows.append(row)
    rows.append(dict(rows[0]))  # the same event id twice: one goes in
    with ThreadPoolExecutor(8) as pool:
        went_in = list(pool.map(db.store.record_decision, rows))
    assert sum(went_in) == len(rows) - 1
    for row in rows:
        stored = db.store.decision("cards", row["event_id"])
        assert {k: stored[k] for k in row} == row


def test_a_batch_with_event_ids_logged_before_and_twice_in_it_learns_which_of_its_rows_went_in(db):
    """Decisions queued while the write turn is held go in together (one multi-row statement, redone row by row
    on SQLite when it ignored some): an event id logged before, and the second of a pair in the batch, are
    refused (the Rank's 409); every other row goes in, and the first of a pair is the one kept."""
    db.store.record_decision(decision("taken-1"))
    db.store.record_decision(decision("taken-2"))
    ids = ["new-1", "taken-1", "new-2", "new-2", "taken-2", "new-3", "new-1", "new-4"]
    rows = [{**decision(event_id), "explanation": f"attempt {n}"} for n, event_id in enumerate(ids)]
    # SQLite's writer waits for the turn before it takes what is queued; PostgreSQL's waits for it in its commit
    held = db.database.write_turn() if db.database.engine == "sqlite" else transaction(db.conn)
    with ThreadPoolExecutor(len(rows)) as pool:
        with held:
            futures = []
            for row in rows:
                futures.append(pool.submit(db.store.record_decision, row))
                time.sleep(0.05)  # queued in this order
        went_in = [future.result(timeout=30) for future in futures]
    assert went_in == [True, False, True, False, False, True, False, True]
    for event_id, attempt in (("new-1", 0), ("new-2", 2), ("new-3", 5), ("new-4", 7), ("taken-1", None)):
        stored = db.store.decision("cards", event_id)["explanation"]
        assert stored == ("{}" if attempt is None else f"attempt {attempt}")
    assert db.store.counts()["decisions"] == 6


def test_decisions_are_read_in_commit_order_with_their_rewards_in_the_order_received(db):
    for n in range(5):
        db.store.record_decision(decision(f"e{n}", at=T0))
    db.store.add_reward("cards", "e3", 0.5, T2)
    db.store.add_reward("cards", "e3", 1.0, T1)
    batches = list(log.decision_batches(db.conn, "cards", after_id=1, batch=2))
    ids = [row[0] for rows, _ in batches for row in rows]
    assert ids == [2, 3, 4, 5]
    rewards = {k: v for _, found in batches for k, v in found.items()}
    assert rewards == {4: [(1.0, T1, None), (0.5, T2, None)]}
    assert log.count_decisions(db.conn, "cards", start=T0, end=T1) == 5
    assert log.count_decisions(db.conn, "cards", start=T1) == 0


def test_an_import_writes_all_it_can_and_nothing_of_a_refused_row(db, tmp_path):
    db.store.record_decision(decision("taken"))
    fields = {"record": "{}", "reward_action_id": "a", "probability": 1.0, "explanation": "{}"}
    rows = [
        (number, decision_row(event_id, T0, ["a"], deferred=False, **fields), 1.0)
        for number, event_id in ((1, "new"), (2, "taken"))
    ]
    written, refused = log.import_decisions(db.conn, db.database, "cards", rows)
    assert written == 1 and refused == [(2, "EventId 'taken' is already in loop 'cards'")]
    assert db.store.counts() == {"decisions": 2, "rewards": 1}  # the refused row's reward is not kept either


def test_a_checkpoint_is_saved_only_over_the_one_it_started_from(db):
    state = learning.open_checkpoint(db.conn, "cards", "fingerprint", T0)
    assert state[:2] == ("fingerprint", 0)
    saved = {"fingerprint": "fingerprint", "generation": 0, "model": b"m1", "learned": 1, "skipped": 0}
    saved |= {"apprentice": "[]", "now": T1}
    assert learning.save_checkpoint(db.conn, "cards", from_id=0, last_id=7, **saved)
    assert not learning.save_checkpoint(db.conn, "cards", from_id=0, last_id=9, **saved)  # moved on since
    assert learning.model(db.conn, "cards") == b"m1" and learning.state(db.conn, "cards")["last_decision_id"] == 7
    # an import or reset raises the generation: a trainer that started before it can no longer save
    published = db.store.reset_learning("cards", "fingerprint", b"imported", lambda conn: "0000000001")
    assert published == "0000000001" and learning.generation(db.conn, "cards") == 1
    current = learning.state(db.conn, "cards")["last_decision_id"]
    assert not learning.save_checkpoint(db.conn, "cards", from_id=current, last_id=99, **saved)
    assert learning.model(db.conn, "cards") == b"imported"


def test_retention_deletes_only_old_decisions_already_learned(db):
    for n, at in enumerate((T0, T0, T2)):
        db.store.record_decision(decision(f"e{n}", at=at))
    db.store.add_reward("cards", "e0", 1.0, T1)
    assert learning.delete_older(db.conn, "cards", before=T1, through_id=1) == 1  # e1 is old but not learned
    assert [row[0] for rows, _ in log.decision_batches(db.conn, "cards") for row in rows] == [2, 3]
    assert db.store.counts()["rewards"] == 0


def test_a_job_is_claimed_once_and_requeued_when_its_runner_stopped(db):
    assert store_jobs.create(db.store, "cards", "evaluation", "j1", "{}", "Pending", T0)
    assert not store_jobs.create(db.store, "cards", "evaluation", "j1", "{}", "Pending", T1)  # the API's 409
    assert store_jobs.create(db.store, "cards", "evaluation", "j2", "{}", "Pending", T1)
    claimed = store_jobs.claim_oldest(db.conn, "Pending", "Running", T2)
    assert claimed["id"] == "j1" and store_jobs.get(db.store, "cards", "evaluation", "j1")["status"] == "Running"
    assert store_jobs.claim_oldest(db.conn, "Pending", "Running", T2)["id"] == "j2"
    assert store_jobs.claim_oldest(db.conn, "Pending", "Running", T2) is None
    store_jobs.finish(db.conn, claimed, "Succeeded", '{"events": 1}', T2)
    assert store_jobs.requeue(db.conn, "Running", "Pending", T2) == 1  # j2, whose runner stopped
    assert [j["status"] for j in store_jobs.page(db.store, "cards", "evaluation", -1, 0)] == ["Succeeded", "Pending"]
    assert store_jobs.delete(db.store, "cards", "evaluation", "j1") and not store_jobs.get(
        db.store, "cards", "evaluation", "j1"
    )


def test_a_transaction_that_raises_leaves_nothing(db):
    db.store.record_decision(decision("kept"))
    with pytest.raises(RuntimeError), transaction(db.conn):
        db.conn.execute("DELETE FROM decisions")
        raise RuntimeError("stop")
    assert db.store.counts()["decisions"] == 1


def test_a_loops_api_configuration_round_trips(db):
    assert db.store.loop_config("cards") is None
    db.store.save_loop_config("cards", '{"explorationPercentage": 0.1}', None, T1)
    assert db.store.loop_config("cards") == {
        "service": '{"explorationPercentage": 0.1}',
        "policy": None,
        "updated_at": T1,
    }


def test_a_workers_look_gives_the_loops_configuration_and_model_stamp_as_they_are_read_apart(db):
    models = db.database.models
    assert db.store.look("cards", models) == (None, None)
    models.publish("cards", b"model 1")
    assert db.store.look("cards", models) == (None, models.stamp("cards"))
    db.store.save_loop_config("cards", None, '{"name": "p"}', T1)
    stamp = models.stamp("cards")
    assert db.store.look("cards", models) == (db.store.loop_config("cards"), stamp)
    models.publish("cards", b"model 2")
    config, newer = db.store.look("cards", models)
    assert newer == models.stamp("cards") != stamp and config["policy"] == '{"name": "p"}'
    assert db.store.look("other", models) == (None, None)


def test_an_outbox_message_is_kept_once_per_key_claimed_once_and_settled_only_from_sending(db):
    from ranker.store import outbox

    with transaction(db.conn):
        assert outbox.enqueue(db.conn, "k1", "triage:1", "a@x.example", "s", "b", T0)
        assert not outbox.enqueue(db.conn, "k1", "triage:1", "other@x.example", "s2", "b2", T0)
        assert outbox.enqueue(db.conn, "k2", "triage:2", "b@x.example", "s", "b", T1)
    assert [m["key"] for m in outbox.due(db.conn, T0, 10)] == ["k1"]  # k2 is not due before T1
    first = outbox.due(db.conn, T2, 10)
    assert [m["key"] for m in first] == ["k1", "k2"] and first[0]["recipient"] == "a@x.example"
    assert outbox.claim(db.conn, first[0]["id"], T2)
    assert not outbox.claim(db.conn, first[0]["id"], T2)  # a second sender does not get it
    assert [m["key"] for m in outbox.due(db.conn, T2, 10)] == ["k2"]  # sending: never due again by itself
    outbox.mark_sent(db.conn, first[0]["id"], T2)
    sent = outbox.get(db.store, "k1")
    assert (sent["state"], sent["attempts"], sent["sent_at"]) == ("sent", 1, T2)
    assert not outbox.resolve(db.conn, "k1", False, T2)  # a sent message is not sent again
    assert outbox.claim(db.conn, first[1]["id"], T2)
    outbox.mark_retry(db.conn, first[1]["id"], "refused", T2)
    assert outbox.get(db.store, "k2")["state"] == "pending" and outbox.get(db.store, "k2")["last_error"] == "refused"
    assert outbox.claim(db.conn, first[1]["id"], T2)
    outbox.mark_unknown(db.conn, first[1]["id"], "cut off")
    assert outbox.get(db.store, "k2")["state"] == "sending"
    assert outbox.resolve(db.conn, "k2", False, T2) and outbox.get(db.store, "k2")["state"] == "pending"
    assert outbox.counts(db.store) == {"sent": 1, "pending": 1}
    assert [m["key"] for m in outbox.listing(db.conn, None, 10)] == ["k2", "k1"]


def test_review_sessions_expire_end_and_share_one_secret(db):
    from ranker.store import review

    secret = review.secret(db.store)
    assert len(secret) == 32 and review.secret(db.store) == secret
    review.create_session(db.store, "s1", "cards", "review", "h" * 64, T0, T1, None)
    assert review.session(db.store, "s1", T0)["role"] == "review"
    assert review.session(db.store, "s1", T1) is None  # expired
    review.create_session(db.store, "s2", "cards", "admin", "h" * 64, T0, T2, None)
    review.create_session(db.store, "s3", "cards", "admin", "h" * 64, T1, T2, "s2")  # ends s2, and s1 (expired)
    assert review.session(db.store, "s2", T0) is None and review.session(db.store, "s3", T1) is not None
    review.end_session(db.store, "s3")
    assert review.session(db.store, "s3", T1) is None


def test_the_loop_view_reads_recent_decisions_and_reward_per_period(db):
    from ranker.store import review

    for event_id, at in (("e1", T0), ("e2", T1), ("e3", "2030-01-02T00:00:00.000000Z")):
        assert db.store.record_decision(decision(event_id, at))
    db.store.add_reward("cards", "e1", 1.0, T1)
    db.store.add_reward("cards", "e1", 0.5, T1)  # several rewards count as their average
    assert review.recent_event_ids(db.store, "cards", 2) == ["e3", "e2"]
    series = review.reward_series(db.store, "cards", T0, 10, 0.25)
    assert series == [
        {"period": "2030-01-01", "decisions": 2, "rewarded": 1, "mean": (0.75 + 0.25) / 2},
        {"period": "2030-01-02", "decisions": 1, "rewarded": 0, "mean": 0.25},
    ]


def test_point_in_time_reads_of_many_entities_see_only_what_was_there(db):
    """Attributes as of a time (the latest change at or before it), bucket totals by age segment of the days
    before a day, and raw events in a range: each want answered by its index, in one call."""
    from ranker.store.signals import OutOfOrder, SignalStore

    signals = SignalStore(db.store)
    put = lambda attributes, times: lambda _a, _t: (attributes, times)  # noqa: E731
    signals.upsert_entity("account", "a1", put({"plan": "team"}, {"plan": T0}), T0, in_order=True)
    signals.upsert_entity("account", "a1", put({"plan": "pro"}, {"plan": T2}), T2, in_order=True)
    with pytest.raises(OutOfOrder):
        signals.upsert_entity("account", "a1", put({"plan": "x"}, {"plan": T1}), T1, in_order=True)
    found = signals.attributes_as_of("account", [("a1", T1), ("a1", T2), ("a1", "2029-12-31"), ("zz", T2)])
    assert {i: json.loads(a) for i, (a, _) in found.items()} == {0: {"plan": "team"}, 1: {"plan": "pro"}}
    assert [row["updated_at"] for row in signals.history("account", ["a1"])] == [T0, T2]
    day = 20_000
    rows = [  # (type, id, feature, day, count, total, low, high, newest, last value)
        ("account", "a1", "calls", day - age, 2, 4.0, 1.0, 3.0, (day - age) * 86_400 * 10**9, None)
        for age in (0, 1, 5, 29, 30, 59, 60, 90)
    ]
    event = (b"k" * 16, day * 86_400 * 10**9, "api.call", "a1", None, "{}")
    assert signals.record_events([event], lambda _rows: (rows, [("account", "a1", "apis", day - 3, '"x"')])) == 1
    totals, distinct, raw = signals.window_totals("account", [("a1", day), ("a2", day)], [30, 60, 90], ["calls"])
    by_segment = {segment: (count, total, low, high) for _, _, segment, count, total, low, high, _ in totals}
    # ages 1, 5, 29 | 30, 59 | 60: the want's own day (age 0) and age 90 are outside
    assert by_segment == {0: (6, 12.0, 1.0, 3.0), 1: (4, 8.0, 1.0, 3.0), 2: (2, 4.0, 1.0, 3.0)}
    assert distinct == [(0, "apis", 0, '"x"')]
    assert sorted(row[2] for row in raw) == [day - 60, day - 59, day - 30, day - 29, day - 5, day - 1]
    ns = day * 86_400 * 10**9
    assert [row[0] for row in signals.events_between("account", [("a1", ns, ns), ("a1", ns + 1, ns + 9)])] == [0]


def test_a_batch_of_events_counts_each_record_once_however_it_is_split_into_statements(db):
    """A batch goes in through multi-row statements of several sizes: duplicates inside it and redelivered
    records count once, in the number returned, the event rows and the buckets."""
    from collections import Counter

    from ranker.store.signals import SignalStore

    signals = SignalStore(db.store)
    day = 20_000

    def event(i: int) -> tuple:
        return (i.to_bytes(16, "big"), day * 86_400 * 10**9 + i, "api.call", f"a{i % 7}", f"u{i % 11}", "{}")

    def fold(rows):
        per_account = Counter(row[3] for row in rows)
        newest = day * 86_400 * 10**9
        return [("account", a, "calls", day, n, 0.0, None, None, newest, None) for a, n in per_account.items()], []

    assert signals.record_events([event(i) for i in range(297)] + [event(2), event(1), event(0)], fold) == 297
    assert signals.record_events([event(i) for i in range(290, 310)], fold) == 13  # 7 of them seen before
    assert signals.counts()["events"] == 310
    for account in ("a0", "a3"):
        (row,), _ = signals.buckets("account", account, day)
        assert row[2] == sum(1 for i in range(310) if f"a{i % 7}" == account)
    assert signals.versions([("account", "a3"), ("user", "u5")]) == {("account", "a3"): 2, ("user", "u5"): 2}


def test_events_and_buckets_keep_every_character_and_number_exactly(db):
    """A batch's rows go into one statement as literals on PostgreSQL: ids, names, attributes, the identity's
    bytes, bucket numbers and last values read back as they were sent."""
    from ranker.store.signals import SignalStore

    signals = SignalStore(db.store)
    day = 20_000
    ns = day * 86_400 * 10**9
    events = [
        (bytes([n, 0, 39, 92, 255]) * 4, ns + n, text or "e", text, f"u-{text}", json.dumps({"x": text, "n": number}))
        for n, (text, number) in enumerate(zip(TRICKY_TEXT, TRICKY_NUMBERS * 2, strict=False))
    ]

    def fold(rows):
        buckets = [
            ("account", row[3], "f", day, 1, number, number, -number, row[1], row[5])
            for row, number in zip(rows, TRICKY_NUMBERS * 2, strict=False)
        ]
        return buckets, [("account", row[3], "d", day, row[5]) for row in rows]

    assert signals.record_events(events, fold) == len(events)
    assert signals.record_events(events[:3], fold) == 0  # the identities' bytes match what was stored
    for event, number in zip(events, TRICKY_NUMBERS * 2, strict=False):
        assert signals.events("account", event[3], ns, ns + 99) == [event]
        rows, distinct = signals.buckets("account", event[3], day)
        assert rows == [("f", day, 1, number, number, -number, event[1], event[5])]
        assert distinct == [("d", day, event[5])]


def test_ingestion_by_several_writers_at_once_counts_each_record_once(db, caplog):
    """Two stores (two workers' writers) ingest overlapping batches at once, among entity changes and a
    deletion (which wait for ingestion on PostgreSQL, where it commits without the write turn): every record
    counts once, in the numbers returned, the event rows and the buckets, and no writer fails."""
    from collections import Counter

    from ranker.store.signals import SignalStore

    stores = [SignalStore(db.store), SignalStore(db.database.store(create=False))]
    day = 20_000
    ns = day * 86_400 * 10**9

    def event(i: int) -> tuple:
        return (i.to_bytes(8, "big"), ns + i, "api.call", f"a{i % 13}", f"u{i % 17}", "{}")

    def fold(rows):
        per_account = Counter(row[3] for row in rows)
        return [("account", a, "calls", day, n, 0.0, None, None, ns, None) for a, n in per_account.items()], []

    def ingest(n: int) -> int:
        first = (n * 150) % 1000  # each batch overlaps the one before it by half
        return stores[n % 2].record_events(
            [event(i % 1000) for i in range(first, first + 300)][:: 1 if n % 3 else -1], fold
        )

    def change(n: int) -> bool:
        put = lambda _a, _t: ({"n": n}, {"n": T0})  # noqa: E731
        return stores[n % 2].upsert_entity("account", f"a{n % 13}", put, T0)[2]

    with ThreadPoolExecutor(6) as pool:
        new = pool.map(ingest, range(24))
        changed = list(pool.map(change, range(12)))
        assert stores[1].delete_entity("user", "u-none") is False
        new = sum(new)
    assert changed[0] and new == 1000 == signals_count(stores[0])
    for account in ("a0", "a7"):
        (row,), _ = stores[1].buckets("account", account, day)
        assert row[2] == sum(1 for i in range(1000) if f"a{i % 13}" == account)
    assert "deadlock" not in caplog.text  # rows are locked in one order: no writer waits on another in a cycle


def test_a_rebuild_and_a_prune_among_ingestions_leave_buckets_that_fold_the_stored_events(db):
    """A rebuild (and a prune) while other writers ingest: afterwards every bucket counts exactly the stored
    events of its account, none twice, none missed (on PostgreSQL ingestion commits without the write turn)."""
    from collections import Counter

    from ranker.store.signals import SignalStore

    stores = [SignalStore(db.store), SignalStore(db.database.store(create=False))]
    day = 20_000
    ns = day * 86_400 * 10**9

    def fold(rows):
        per_account = Counter(row[3] for row in rows)
        return [("account", a, "calls", day, n, 0.0, None, None, ns, None) for a, n in per_account.items()], []

    def ingest(n: int) -> int:  # each batch's accounts are new: its bucket rows are inserted, not updated
        rows = [((n * 200 + i).to_bytes(8, "big"), ns + i, "api.call", f"a{n}.{i % 7}", None, "{}") for i in range(200)]
        return stores[n % 2].record_events(rows, fold)

    with ThreadPoolExecutor(4) as pool:
        ingested = pool.map(ingest, range(24))
        rebuilt = [pool.submit(stores[n % 2].rebuild, fold) for n in range(6)]
        pruned = pool.submit(stores[1].prune, ns - 1, day - 1, "1970-01-01T00:00:00Z")
        assert sum(ingested) == 4800 and all(f.result() <= 4800 for f in rebuilt) and pruned.result()["events"] == 0
    assert signals_count(stores[0]) == 4800
    for n in range(24):
        for a in range(7):
            (row,), _ = stores[n % 2].buckets("account", f"a{n}.{a}", day)
            assert row[2] == sum(1 for i in range(200) if i % 7 == a), (n, a)


def signals_count(signals) -> int:
    return signals.counts()["events"]


def test_mined_patterns_are_replaced_as_a_set_and_switches_stay(db):
    from ranker.store import patterns

    patterns.replace_mined(db.store, "account", [("m-1", '{"n": 1}'), ("m-2", '{"n": 2}')], T0)
    patterns.switch(db.store, "m-2", False, T1)
    patterns.replace_mined(db.store, "account", [("m-2", '{"n": 3}')], T2)
    assert [(r["name"], r["pattern"]) for r in patterns.mined(db.store, "account")] == [("m-2", '{"n": 3}')]
    assert patterns.mined(db.store, "user") == []
    assert patterns.switches(db.store) == {"m-2": False}


def test_published_models_have_growing_versions_a_current_pointer_and_are_pruned(db):
    models = db.database.models
    assert models.current("cards") is None and models.stamp("cards") is None
    published = [models.publish("cards", f"model {n}".encode()) for n in range(6)]
    assert published == sorted(published) and len(set(published)) == 6
    version, path = models.current("cards")
    assert version == published[-1] == models.served("cards") and path.read_bytes() == b"model 5"
    stamp = models.stamp("cards")
    assert models.prune("cards", keep=2, also_keep={published[0]}) == published[1:4]
    assert models.versions("cards") == [published[0], *published[4:]]
    assert models.path("cards", published[1]) is None and models.path("cards", published[0]).read_bytes() == b"model 0"
    # numbering goes on after a prune; the pointer moves and its stamp changes
    newer = models.publish("cards", b"model 6")
    assert newer > published[-1] and models.current("cards")[0] == newer and models.stamp("cards") != stamp
    assert models.current("other") is None


def test_decisions_become_visible_in_id_order_whatever_commits_first(db):
    """The trainer reads ``id > last`` and checkpoints "everything up to this id": no id may become visible after
    a larger one was seen. Two stores (two workers, or nodes), two threads each, write while a reader follows."""
    other = db.database.store()
    stop, known, late = threading.Event(), set(), []

    def write(store, prefix: str) -> None:
        n = 0
        while not stop.is_set():
            store.record_decision(decision(f"{prefix}{n}"))
            n += 1

    def follow() -> None:
        conn = db.database.connect()
        try:
            while not stop.is_set():
                after = max(0, max(known, default=0) - 500)  # a late id would be among the recent ones
                ids = {row[0] for rows, _ in log.decision_batches(conn, "cards", after_id=after) for row in rows}
                highest = max(known, default=0)
                late.extend(i for i in ids - known if i < highest)
                known.update(ids)
        finally:
            conn.close()

    stores = (db.store, other, db.store, other)
    threads = [threading.Thread(target=write, args=(store, f"w{k}-")) for k, store in enumerate(stores)]
    threads.append(threading.Thread(target=follow))
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert len(known) > 50 and late == []


def test_an_outbox_message_is_enqueued_once_per_key_inside_the_callers_transaction(db):
    with transaction(db.conn):
        assert outbox.enqueue(db.conn, "triage:1", "triage:1", "csm@example.com", "Renewal", "Hello", T0)
        assert not outbox.enqueue(db.conn, "triage:1", "triage:1", "other@example.com", "Again", "Hi", T1)
    with pytest.raises(RuntimeError), transaction(db.conn):
        outbox.enqueue(db.conn, "triage:2", "triage:2", "csm@example.com", "Renewal", "Hello", T0)
        raise RuntimeError("the approval failed")
    assert outbox.get(db.store, "triage:1")["recipient"] == "csm@example.com"
    assert outbox.get(db.store, "triage:2") is None
    assert [m["key"] for m in outbox.page(db.store, state="pending")] == ["triage:1"]


def test_exposures_count_the_decisions_that_showed_each_action_single_and_multi_slot(db):
    db.store.record_decision(decision("s1", at=T0))  # chose a
    db.store.record_decision(decision("s2", at=T1))  # chose a, within the window
    slots = [{"id": "hero", "rewardActionId": "b", "probability": 0.5}]
    slots += [{"id": "side", "rewardActionId": "a", "probability": 0.5}, {"id": "foot", "rewardActionId": None}]
    db.store.record_decision({**decision("m1", at=T2), "reward_action_id": None, "slots": json.dumps(slots)})
    assert db.store.exposures("cards", T1) == (2, {"a": 1})  # single-slot only: the multi-slot row counts, unread
    assert db.store.exposures("cards", T1, multislot=True) == (2, {"a": 2, "b": 1})
    assert db.store.exposures("other", T0, multislot=True) == (0, {})
