"""The service learns multi-slot: Rank and Reward of three slots over HTTP, the trainer learning VW CCB.

A short run of ``scripts/simulate_multislot.py`` against a real ``ranker serve`` (about 45 s): 3,000 events of
the simulated B2B dashboard at 100 events/s, three slots (hero, side, footer) filled from 20 modules, where
a module is clicked with probability relevance × position factor (1.0, 0.6, 0.3). Choosing uniformly earns
about 0.14 per slot.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from ranker.serving.engine import Engine

SCRIPT = Path(__file__).parent.parent / "scripts" / "simulate_multislot.py"
EVENTS = 3000


def _simulation():
    spec = importlib.util.spec_from_file_location("simulate_multislot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_multislot_service_learns_close_to_in_process_vw():
    sim = _simulation()
    run = sim.compare(EVENTS, seed=1, threads=4, rate=100)

    rewards = run.service.rewards.slots
    assert not np.isnan(rewards).any() and run.service.violations == 0
    # The script fills the slots as the service does: the decisions replayed with the model that served them
    # (the untrained one and the last published ones) get the same modules with the same probabilities.
    replayed, differ = run.replayed
    assert replayed >= 100 and differ == 0, run.replayed

    last_third = slice(2 * EVENTS // 3, None)
    service = run.service.rewards.per_event[last_third].mean()
    in_process = run.in_process.per_event[last_third].mean()
    random = run.random.per_event[last_third].mean()
    assert service >= random + 0.06, (service, random, in_process)
    assert service >= 0.85 * in_process, (service, random, in_process)
    # Position effects learned: the hero slot earns most, the footer least.
    hero, side, footer = rewards[last_third].mean(axis=0)
    assert hero > side > footer, (hero, side, footer)

    versions = run.served["versions"]
    assert set(versions[:50]) == {"0"}
    assert len(set(versions) - {"0"}) >= 5


def test_in_process_predictions_are_the_served_engines(tmp_path):
    """The script's in-process learner (a ``--dsjson`` workspace that learns) predicts each slot as the
    service's ``Engine`` (``--json``, predict-only) does with the same model, so the two fill slots alike."""
    sim = _simulation()
    settings = sim.b2b.load_config(sim.config_toml())
    loop = settings.loops[sim.LOOP]
    arguments = sim.vw_arguments(settings.policy(sim.LOOP).arguments, loop.exploration_percentage)
    stream = sim.make_stream(700, seed=2, loop_rules=loop.rules)
    learner = sim.Learner(arguments)
    served, fresh = None, Engine(arguments)
    try:
        for event in stream[:500]:
            filling = sim.fill_slots(event, loop.action_id_feature, learner.predict_slots)
            values = [event.reward(k, sim.MODULES[c].id) for k, c in enumerate(filling.chosen) if c is not None]
            learner.learn(sim.dsjson.labeled_slots(filling.record, values))
        learner.ws.save(str(tmp_path / "model.vw"))
        served = Engine(arguments, str(tmp_path / "model.vw"), "1")
        fillings = [
            [
                sim.fill_slots(e, loop.action_id_feature, predict)
                for predict in (learner.predict_slots, served.predict_slots, fresh.predict_slots)
            ]
            for e in stream[500:]
        ]
    finally:
        learner.close()
        fresh.close()
        if served is not None:
            served.close()
    assert all(a.record == b.record and a.probabilities == b.probabilities for a, b, _ in fillings)
    # and the model learned: it does not fill the slots as the untrained one does
    assert sum(a.record != c.record for a, _, c in fillings) >= 100
