"""The triage store's contract (``ranker.store.triage``), parametrized by engine as ``test_store_contract``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_store_contract import ENGINES, T0, T1, T2, Opened, decision

from ranker.store import outbox
from ranker.store import triage as store_triage


@pytest.fixture(params=ENGINES)
def db(request, tmp_path) -> Iterator[Opened]:
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_cluster").database()
    opened = Opened(url, tmp_path)
    yield opened
    opened.close()


def item(account: str, renewal: str = "2030-03-01", risk: float = 0.5, value: float | None = None, **extra) -> dict:
    return {
        "account": account,
        "renewal_date": renewal,
        "pattern_name": "p",
        "pattern": {"name": "p", "conditions": []},
        "risk": risk,
        "value": value,
        "evidence": {"matched": {"account.x": 1}},
        "loop": "cards",
        "event_id": f"e-{account}-{renewal}",
        "action_id": "a",
        "ranking": [{"id": "a", "probability": 1.0}],
        "explanation": {"rules": {}},
        "draft_subject": "s",
        "draft_body": "b",
        "drafted_by": "template",
        "draft_note": None,
        "recipient": "x@y.example",
        "created_at": T0,
        **extra,
    }


def test_an_account_gets_one_item_per_renewal(db):
    first = store_triage.add_items(db.store, [item("a"), item("b")], "triage")
    assert all(isinstance(i, int) for i in first)
    again = store_triage.add_items(db.store, [item("a", risk=0.9), item("a", "2031-03-01")], "triage")
    assert again[0] is None and isinstance(again[1], int)
    assert store_triage.flagged(db.store) == {("a", "2030-03-01"), ("b", "2030-03-01"), ("a", "2031-03-01")}
    kept = store_triage.item(db.store, first[0])
    assert kept["risk"] == 0.5 and kept["evidence"] == {"matched": {"account.x": 1}}  # the first item stays
    assert [(t["from_state"], t["to_state"], t["who"]) for t in kept["transitions"]] == [(None, "pending", "triage")]


def test_items_filter_sort_and_count(db):
    store_triage.add_items(
        db.store,
        [item("a", "2030-02-01", 0.2, 10), item("b", "2030-03-01", 0.9, None), item("c", "2030-04-01", 0.5, 30)],
        "triage",
    )
    accounts = lambda **kw: [r["account"] for r in store_triage.items(db.store, **kw)[0]]  # noqa: E731
    assert accounts(sort="risk") == ["b", "c", "a"]
    assert accounts(sort="value") == ["c", "a", "b"]  # no value last
    assert accounts(sort="renewal", top=1, skip=1) == ["b"]
    assert accounts(renewal_from="2030-02-02", renewal_to="2030-04-01") == ["b", "c"]
    assert store_triage.items(db.store, state="approved")[1] == 0 and store_triage.items(db.store)[1] == 3


def test_approval_is_one_transaction_and_happens_once(db):
    db.store.record_decision({**decision("e-a-2030-03-01"), "deferred": 1})
    (item_id,) = store_triage.add_items(db.store, [item("a")], "triage")
    decide = dict(who="review:1", at=T1, subject="S", body="B", recipient="r@x.example", reward=1.0, edited=False)
    store_triage.approve(db.store, item_id, **decide)
    assert outbox.get(db.store, f"triage:{item_id}")["subject"] == "S"
    assert db.store.decision("cards", "e-a-2030-03-01")["activated_at"] == T1
    assert [r["value"] for r in db.store.rewards("cards", "e-a-2030-03-01")] == [1.0]
    with pytest.raises(store_triage.Decided):
        store_triage.approve(db.store, item_id, **decide)
    with pytest.raises(store_triage.Decided):
        store_triage.dismiss(db.store, item_id, who="r", at=T2, reason="x", text=None, reward=0, suppress_until=None)
    with pytest.raises(LookupError):
        store_triage.approve(db.store, item_id + 1, **decide)
    assert len(db.store.rewards("cards", "e-a-2030-03-01")) == 1


def test_a_dismissal_suppresses_until_its_time(db):
    (item_id,) = store_triage.add_items(db.store, [item("a")], "triage")
    store_triage.dismiss(db.store, item_id, who="r", at=T0, reason="merger", text="t", reward=0.0, suppress_until=T2)
    assert store_triage.suppressed(db.store, T1) == {"a": T2}
    assert store_triage.suppressed(db.store, T2) == {}
    found = store_triage.item(db.store, item_id)
    assert (found["state"], found["dismiss_reason"], found["dismiss_text"]) == ("dismissed", "merger", "t")
    assert found["transitions"][-1]["detail"]["learned"] is False  # its decision is not in the log


def test_an_outcome_is_recorded_once(db):
    (item_id,) = store_triage.add_items(db.store, [item("a", "2030-01-01")], "triage")
    assert [r["id"] for r in store_triage.awaiting_outcome(db.store, T1)] == [item_id]
    assert store_triage.record_outcomes(db.store, [(item_id, "churned", T1)], "triage", T1) == 1
    assert store_triage.record_outcomes(db.store, [(item_id, "renewed", T2)], "triage", T2) == 0
    assert store_triage.awaiting_outcome(db.store, T2) == []
    assert store_triage.item(db.store, item_id)["outcome"] == "churned"


def test_renewals_read_the_renewal_outcome_and_value_attributes(db):
    from ranker.store.signals import SignalStore

    signals = SignalStore(db.store)
    contracts = {
        "a": (
            {"contract": {"renewalDate": "2030-03-01", "outcome": "churned", "value": 1200.5}},
            {"contract.outcome": T1},
        ),
        "b": ({"plan": "team"}, {"plan": T1}),  # no renewal date: not a renewal
        "c": ({"contract": {"renewalDate": "2030-04-01"}}, {"contract.renewalDate": T1}),
    }
    for account, (attributes, times) in contracts.items():
        signals.upsert_entity("account", account, lambda _a, _t, c=(attributes, times): c, T1)
    found = store_triage.renewals(db.store, "account", "contract.renewalDate", "contract.outcome", "contract.value")
    assert sorted(found, key=lambda r: r["id"]) == [
        {"id": "a", "renewal": "2030-03-01", "outcome": "churned", "outcome_at": T1, "value": 1200.5},
        {"id": "c", "renewal": "2030-04-01", "outcome": None, "outcome_at": None, "value": None},
    ]
    assert {r["value"] for r in store_triage.renewals(db.store, "account", "contract.renewalDate", "x")} == {None}


def test_the_review_queue_reads_entity_fields_and_decisions_since(db):
    from ranker.store import review
    from ranker.store.signals import SignalStore

    signals = SignalStore(db.store)
    for account, attributes in (("a", {"name": "Acme", "segment": {"tier": "enterprise"}, "seats": 40}), ("b", {})):
        signals.upsert_entity("account", account, lambda _a, _t, a=attributes: (a, {}), T0)
    paths = {"name": "name", "tier": "segment.tier", "seats": "seats"}
    assert review.entity_fields(db.store, "account", ["a", "b", "zz"], paths) == {
        "a": {"name": "Acme", "tier": "enterprise", "seats": 40},
        "b": {"name": None, "tier": None, "seats": None},
    }
    assert review.entity_fields(db.store, "account", [], paths) == {}
    (item_id,) = store_triage.add_items(db.store, [item("a")], "triage")
    assert review.decided_since(db.store, T0) == 0
    store_triage.dismiss(db.store, item_id, who="r", at=T1, reason="x", text=None, reward=0.0, suppress_until=None)
    assert (review.decided_since(db.store, T1), review.decided_since(db.store, T2)) == (1, 0)
