"""The paired difference of two policies' values ("is it better?") on simulated logs whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranker.evaluation import LoggedData, cressie_read_interval, weight_bound
from ranker.evaluation.compare import BETTER, UNDECIDED, WORSE, describe, paired_difference

ACTIONS, CONTEXTS, EPSILON = 4, 10, 0.2


class World:
    """Epsilon-greedy logging over 4 actions and 10 contexts, Bernoulli rewards, and two deterministic targets:
    ``first`` (the greedy action on 3 contexts, another one elsewhere) and ``second`` (a third action)."""

    def __init__(self, scale: float, seed: int = 11, equal: bool = False, lift: float = 0.0):
        rng = np.random.default_rng(seed)
        greedy = rng.integers(0, ACTIONS, size=CONTEXTS)
        self.logging = np.full((CONTEXTS, ACTIONS), EPSILON / ACTIONS)
        self.logging[np.arange(CONTEXTS), greedy] += 1 - EPSILON
        first = np.where(np.arange(CONTEXTS) < 3, greedy, (greedy + 1) % ACTIONS)
        second = (greedy + 2) % ACTIONS
        self.first, self.second = np.zeros((CONTEXTS, ACTIONS)), np.zeros((CONTEXTS, ACTIONS))
        self.first[np.arange(CONTEXTS), first] = 1.0
        self.second[np.arange(CONTEXTS), second] = 1.0
        self.click = rng.uniform(0.1, 1.0, size=(CONTEXTS, ACTIONS)) * scale
        if equal:  # both targets' actions are clicked alike: their values are equal
            self.click[np.arange(CONTEXTS), second] = self.click[np.arange(CONTEXTS), first]
        self.click[np.arange(CONTEXTS), first] = np.minimum(1.0, self.click[np.arange(CONTEXTS), first] + lift)
        self.rng = rng

    def value(self, policy: np.ndarray) -> float:
        return float(np.mean(np.sum(policy * self.click, axis=1)))

    def log(self, n: int) -> dict[str, LoggedData]:
        """One log of n events, as each policy's LoggedData: first, second and Online (the logging policy)."""
        contexts = self.rng.integers(0, CONTEXTS, size=n)
        actions = (self.rng.uniform(size=(n, 1)) > np.cumsum(self.logging[contexts], axis=1)).sum(axis=1)
        actions = np.minimum(actions, ACTIONS - 1)
        reward = (self.rng.uniform(size=n) < self.click[contexts, actions]).astype(float)
        mu = self.logging[contexts, actions]
        return {
            name: LoggedData(reward=reward, logged_probability=mu, target_probability=policy[contexts, actions])
            for name, policy in (("first", self.first), ("second", self.second), ("Online", self.logging))
        }


def replicate(world: World, n: int, replications: int, candidate: str, reference: str) -> dict[str, float]:
    reference_policy = {"first": world.first, "second": world.second, "Online": world.logging}
    truth = world.value(reference_policy[candidate]) - world.value(reference_policy[reference])
    hits, width, separate = 0, 0.0, 0.0
    verdicts = {BETTER: 0, WORSE: 0, UNDECIDED: 0}
    for _ in range(replications):
        data = world.log(n)
        result = paired_difference(data[candidate], data[reference], r_min=0.0, r_max=1.0)
        lower, upper = result["interval"]
        hits += lower <= truth <= upper
        width += (upper - lower) / replications
        verdicts[result["verdict"]] += 1
        # two separate intervals at 97.5% each (valid for the difference by the union bound): the unpaired way
        bound = weight_bound(data[candidate].logged_probability)
        one, two = (
            cressie_read_interval(d.weights, d.reward, alpha=0.025, r_min=0.0, r_max=1.0, w_max=bound)
            for d in (data[candidate], data[reference])
        )
        separate += ((one[1] - two[0]) - (one[0] - two[1])) / replications
    return {
        "truth": truth,
        "coverage": hits / replications,
        "width": width,
        "separate_width": separate,
        **{verdict: count / replications for verdict, count in verdicts.items()},
    }


@pytest.mark.parametrize(
    ("case", "scale", "n", "candidate", "reference"),
    [
        ("moderate reward, against Online", 0.8, 500, "first", "Online"),
        ("rare reward, against Online", 0.03, 2000, "first", "Online"),
        ("moderate reward, two candidates", 0.8, 1000, "first", "second"),
        ("many events, against Online", 0.8, 5000, "first", "Online"),
    ],
)
def test_the_paired_interval_covers_the_true_difference(case, scale, n, candidate, reference, record_property):
    observed = replicate(World(scale), n, 300, candidate, reference)
    record_property("paired", observed)
    print(f"\n{case} (n={n}, 300 replications): {observed}")
    assert observed["coverage"] >= 0.93
    if n == 5000:
        # with plenty of events the pairing pays: narrower than two separate intervals
        assert observed["width"] < 0.85 * observed["separate_width"]


def test_a_clearly_better_candidate_is_called_better_and_equal_ones_not_distinguishable():
    better = replicate(World(0.5, lift=0.4), 2000, 200, "first", "Online")
    assert better["truth"] > 0.1 and better[BETTER] >= 0.9 and better[WORSE] == 0
    worse = replicate(World(0.5, lift=0.4), 2000, 100, "Online", "first")
    assert worse[WORSE] >= 0.9 and worse[BETTER] == 0
    equal = replicate(World(0.5, equal=True), 2000, 300, "first", "second")
    assert equal["truth"] == 0.0 and equal[UNDECIDED] >= 0.93


def test_more_events_would_settle_an_undecided_difference_at_its_effect():
    world = World(0.5, lift=0.15, seed=5)
    settled = 0
    undecided = 0
    for _ in range(40):
        data = world.log(300)
        result = paired_difference(data["first"], data["Online"], r_min=0.0, r_max=1.0)
        if result["verdict"] != UNDECIDED or result["estimate"] <= 0:
            continue
        undecided += 1
        # the same events repeated until there are n + more_events: the same effect, seen on more events
        copies = math.ceil((300 + result["more_events"]) / 300)
        more = {
            name: LoggedData(
                reward=np.tile(d.reward, copies),
                logged_probability=np.tile(d.logged_probability, copies),
                target_probability=np.tile(d.target_probability, copies),
            )
            for name, d in data.items()
        }
        again = paired_difference(more["first"], more["Online"], r_min=0.0, r_max=1.0)
        settled += again["verdict"] == BETTER
        fewer = max(1, copies - 2)  # well short of it: still open
        if fewer < copies - 1:
            less = paired_difference(
                *(
                    LoggedData(
                        reward=np.tile(d.reward, fewer),
                        logged_probability=np.tile(d.logged_probability, fewer),
                        target_probability=np.tile(d.target_probability, fewer),
                    )
                    for d in (data["first"], data["Online"])
                ),
                r_min=0.0,
                r_max=1.0,
            )
            assert less["interval"][1] - less["interval"][0] > again["interval"][1] - again["interval"][0]
    assert undecided >= 10
    assert settled >= 0.8 * undecided


rows = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.5, 1.0]),
        st.sampled_from([0.05, 0.2, 0.5, 1.0]),
        st.sampled_from([0.0, 0.3, 1.0]),
        st.sampled_from([0.0, 0.6, 1.0]),
    ),
    min_size=2,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(rows)
def test_the_difference_is_antisymmetric_contains_its_estimate_and_stays_in_range(events) -> None:
    reward, mu, first, second = (np.array(column) for column in zip(*events, strict=True))
    one = LoggedData(reward=reward, logged_probability=mu, target_probability=first)
    two = LoggedData(reward=reward, logged_probability=mu, target_probability=second)
    forward = paired_difference(one, two, r_min=0.0, r_max=1.0)
    backward = paired_difference(two, one, r_min=0.0, r_max=1.0)
    lower, upper = forward["interval"]
    assert -1.0 <= lower <= forward["estimate"] <= upper <= 1.0
    assert backward["interval"] == pytest.approx([-upper, -lower], abs=1e-9)
    assert backward["estimate"] == pytest.approx(-forward["estimate"], abs=1e-9)
    assert {forward["verdict"], backward["verdict"]} in ({BETTER, WORSE}, {UNDECIDED})


def test_the_verdict_in_words_and_bad_input():
    world = World(0.5, lift=0.4)
    data = world.log(2000)
    result = paired_difference(data["first"], data["Online"], r_min=0.0, r_max=1.0)
    assert result["verdict"] == BETTER and result["more_events"] == 0
    assert describe(result).endswith("better") and describe(None) == "-"
    undecided = {**result, "verdict": UNDECIDED, "more_events": 1234}
    assert describe(undecided).endswith("not distinguishable (~1,234 more events)")
    other = world.log(2000)
    with pytest.raises(ValueError, match="same events"):
        paired_difference(data["first"], other["Online"])
