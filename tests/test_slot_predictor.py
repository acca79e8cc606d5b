"""Multi-slot Rank parses a request's context and actions once for all its slots (``SlotPredictor``): the slots
it fills, the probabilities it logs and the record are those of predicting each slot from its own line, with
the earlier slots pinned to their actions, as VW's CCB reads it. Real VW, fresh and trained models."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import vowpalwabbit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranker.core import dsjson
from ranker.serving.engine import Engine
from ranker.serving.slots import choose_slots

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
