"""Multi-slot Rank's filling, made cheaper without changing what it decides or logs.

It parses a request's context and actions once for all its slots (``SlotPredictor``): the slots it fills, the
probabilities it logs and the record are those of predicting each slot from its own line, with the earlier
slots pinned to their actions, as VW's CCB reads it (real VW, fresh and trained models). Its record is the text
``dsjson.multislot_line`` writes, byte for byte, and each slot's outcome orders the actions by probability."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import vowpalwabbit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranker.core import dsjson
from ranker.serving.engine import Engine
from ranker.serving.slots import Slots, choose_slots, record_line

ARGUMENTS = "--ccb_explore_adf --cb_type mtr -q :: --epsilon 0.2"  # the multislot policy's VW arguments
ACTIONS = [
    (f"action-{i}", {"kind": kind, "team": team, "effort": i % 4, "impact": round(0.1 * i, 1)})
    for i, (kind, team) in enumerate(
        [("meeting", "cs"), ("guide", "support"), ("training", "edu"), ("offer", "sales"), ("upsell", "sales")] * 2
    )
]
CONTEXT = {"account": {"plan": "enterprise", "seats": 240}, "usage": {"nps": 41, "role": "admin"}}


def c_json(rng: random.Random, n: int) -> str:
    context = {**CONTEXT, "usage": {**CONTEXT["usage"], "nps": rng.randint(0, 100)}}
    return dsjson.context_json(context, rng.sample(ACTIONS, n), rng.random() < 0.5)


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, Engine]:
    """A fresh model and one trained on rewarded multi-slot records of 1–3 slots (so VW has seen several)."""
    rng = random.Random(7)
    ws = vowpalwabbit.Workspace(f"{ARGUMENTS} --dsjson --quiet")
    for _ in range(200):
        n, filled = rng.randint(3, 10), rng.randint(1, 3)
        actions = rng.sample(range(n), filled)
        slots = [{"_id": f"s{k}", "position": k, "_inc": list(range(n))} for k in range(filled)]
        outcomes = [
            {"_id": f"s{k}", "_a": [a], "_p": [0.5], "_label_cost": -rng.random()} for k, a in enumerate(actions)
        ]
        line = dsjson.multislot_line("e", "t", dsjson.with_slots(c_json(rng, n), slots), outcomes, [0] * filled)
        examples = ws.parse(line)
        ws.learn(examples)
        ws.finish_example(examples)
    path = Path(tmp_path_factory.mktemp("model")) / "trained.vw"
    ws.save(str(path))
    ws.finish()
    return {"fresh": Engine(ARGUMENTS), "trained": Engine(ARGUMENTS, str(path), "1")}


slot_features = st.fixed_dictionaries(
    {},
    optional={
        "position": st.integers(1, 5),
        "placement": st.fixed_dictionaries({"size": st.sampled_from(["small", "large"])}),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 10),
    features=st.lists(slot_features, min_size=1, max_size=5),
    data=st.data(),
)
def test_one_parse_fills_the_slots_as_a_line_per_slot_does(engines, seed, n, features, data):
    rng = random.Random(seed)
    c = c_json(rng, n)
    slots = []
    for k, slot in enumerate(features):
        allowed = sorted(data.draw(st.sets(st.integers(0, n - 1)), label=f"slot {k} allowed"))
        factors = [data.draw(st.sampled_from([1.0, 1.0, 3.0, 0.5])) for _ in allowed]
        baseline = rng.choice(allowed) if allowed and rng.random() < 0.8 else None
        slots.append((f"slot-{k}", slot, list(zip(allowed, factors, strict=True)), baseline))
    entries = [{"_id": slot_id, **slot_features} for slot_id, slot_features, _, _ in slots]
    for engine in engines.values():
        for event in (f"e{seed}", f"e{seed}-2"):
            by_line = choose_slots(event, c, slots, engine.predict_slots)
            predictor = engine.slot_predictor(c, entries)
            try:
                once = choose_slots(event, c, slots, None, scores=predictor.scores)
            finally:
                predictor.close()
            assert once == by_line


def test_a_line_vw_cannot_read_lets_go_of_the_workspace(engines):
    engine = engines["fresh"]
    with pytest.raises((RuntimeError, ValueError)):
        engine.slot_predictor('{"_multi":[{"a":1}],"x":', [{"_id": "s"}])
    assert not engine.lock.locked()
    c = dsjson.context_json(CONTEXT, ACTIONS[:3], True)
    predictor = engine.slot_predictor(c, [{"_id": "s"}])
    assert engine.lock.locked()
    predictor.close()
    assert not engine.lock.locked()


texts = st.text(st.characters(codec=None), max_size=8)  # lone surrogates and control characters too
probabilities = st.one_of(
    st.floats(0, 1),  # subnormal and tiny ones are written 1e-05 by json
    st.floats(1e-4, 1),
    st.sampled_from([0.0, -0.0, 1.0, 0.049999989569187164, 0.8100000023841858, 1e-4, 9.99e-5]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=300, deadline=None)
@given(
    event_id=texts,
    outcomes=st.lists(
        st.tuples(texts, st.lists(st.tuples(st.integers(0, 60), probabilities), min_size=1, max_size=20)),
        max_size=4,
    ),
    features=st.dictionaries(st.text(max_size=5), st.one_of(st.floats(), st.integers(), texts), max_size=3),
)
def test_the_record_is_the_text_multislot_line_writes(event_id, outcomes, features):
    filling = Slots(
        slots=[{"_id": slot_id, **features, "_inc": [a for a, _ in pairs]} for slot_id, pairs in outcomes],
        outcomes=[{"_id": i, "_a": [a for a, _ in pairs], "_p": [p for _, p in pairs]} for i, pairs in outcomes],
        baselines=[pairs[0][0] for _, pairs in outcomes],
    )
    c = dsjson.context_json(CONTEXT, ACTIONS[:3], True)
    stamp = "2026-12-03T17:30:00.123456Z"
    slots = dsjson.with_slots(c, filling.slots)
    expected = dsjson.multislot_line(event_id, stamp, slots, filling.outcomes, filling.baselines)
    assert record_line(event_id, stamp, c, filling) == expected


@settings(max_examples=100, deadline=None)
@given(factors=st.lists(st.sampled_from([1.0, 2.0, 0.5, 3.0]), min_size=1, max_size=12), seed=st.integers(0, 999))
def test_each_outcome_orders_the_actions_by_probability_ties_in_candidate_order(factors, seed):
    n = len(factors)
    allowed = list(zip(range(n), factors, strict=True))
    flat = [{i: 1.0 / n for i in range(n)}]  # a model with no preference: the factors alone set the order
    filling = choose_slots(f"e{seed}", "{}", [("s", {}, allowed, None)], lambda line: flat)
    (outcome,) = filling.outcomes
    p = dict(zip(outcome["_a"], outcome["_p"], strict=True))
    rest = outcome["_a"][1:]
    assert rest == sorted(rest, key=lambda m: (-p[m], m))
