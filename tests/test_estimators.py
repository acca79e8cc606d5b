"""Off-policy estimators and their confidence intervals (``ranker.evaluation``).

Formulas are checked against independent computations (exact rational arithmetic in plain loops, and the
Cressie-Read bounds against a direct solution of the quadratic program they close), invariants with
hypothesis, and the 95% intervals' coverage on simulated logs whose true value is known.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranker.evaluation import (
    DM,
    DR,
    IPS,
    SNIPS,
    CressieRead,
    LoggedData,
    cressie_read_interval,
    evaluate,
    f_one_isf,
    gaussian_interval,
    normal_quantile,
    weight_bound,
)

REWARD = [1.0, 0.0, -1.0, 0.5, 0.0, 1.0, -0.25]
LOGGED = [0.5, 0.25, 0.8, 0.1, 1.0, 0.2, 0.4]
TARGET = [1.0, 0.0, 0.5, 0.3, 1.0, 0.6, 0.25]
MODEL_TARGET = [0.7, -0.2, 0.1, 0.4, 0.0, 0.9, -0.5]
MODEL_LOGGED = [0.6, 0.1, -0.3, 0.2, 0.1, 0.8, 0.0]
NO_EVENTS = {field: [] for field in ("reward", "logged_probability", "target_probability")} | {
    "reward_model_target": None,
    "reward_model_logged": None,
}


def fixed_data(**overrides) -> LoggedData:
    fields = dict(
        reward=REWARD,
        logged_probability=LOGGED,
        target_probability=TARGET,
        reward_model_target=MODEL_TARGET,
        reward_model_logged=MODEL_LOGGED,
    )
    fields.update(overrides)
    return LoggedData(**fields)


def exact(values: list[float]) -> list[Fraction]:
    return [Fraction(v) for v in values]


def loop_sample_variance(terms: list[float]) -> float:
    mean = sum(terms) / len(terms)
    return sum((t - mean) ** 2 for t in terms) / (len(terms) - 1)


# --- point estimates against exact arithmetic ------------------------------------------------------------------


def test_ips_is_the_mean_of_weighted_rewards() -> None:
    total = sum(t / p * r for r, p, t in zip(exact(REWARD), exact(LOGGED), exact(TARGET), strict=True))
    assert IPS().estimate(fixed_data()) == pytest.approx(float(total / len(REWARD)), rel=1e-14)


def test_snips_is_the_weight_normalized_mean() -> None:
    numerator = sum(t / p * r for r, p, t in zip(exact(REWARD), exact(LOGGED), exact(TARGET), strict=True))
    denominator = sum(t / p for p, t in zip(exact(LOGGED), exact(TARGET), strict=True))
    assert SNIPS().estimate(fixed_data()) == pytest.approx(float(numerator / denominator), rel=1e-14)


def test_dm_is_the_mean_model_prediction_under_the_target() -> None:
    assert DM().estimate(fixed_data()) == pytest.approx(float(sum(exact(MODEL_TARGET)) / len(MODEL_TARGET)))


def test_dr_is_dm_plus_weighted_model_residuals() -> None:
    total = Fraction(0)
    for r, p, t, predicted_target, predicted_logged in zip(
        exact(REWARD), exact(LOGGED), exact(TARGET), exact(MODEL_TARGET), exact(MODEL_LOGGED), strict=True
    ):
        total += predicted_target + t / p * (r - predicted_logged)
    assert DR().estimate(fixed_data()) == pytest.approx(float(total / len(REWARD)), rel=1e-14)


def test_dr_reduces_to_ips_with_a_zero_model_and_to_dm_when_the_target_never_agrees() -> None:
    zeros = [0.0] * len(REWARD)
    assert DR().estimate(fixed_data(reward_model_target=zeros, reward_model_logged=zeros)) == pytest.approx(
        IPS().estimate(fixed_data())
    )
    never = fixed_data(target_probability=zeros)
    assert DR().estimate(never) == pytest.approx(DM().estimate(never))


def test_cressie_read_estimate_matches_reference_cases() -> None:
    # VowpalWabbit/estimators test_bandits_cressieread.py: one event, p_log 0.3, r 1, p_pred 0.6 -> 1.0
    single = LoggedData(reward=[1.0], logged_probability=[0.3], target_probability=[0.6])
    assert CressieRead().estimate(single) == pytest.approx(1.0)
    constant = LoggedData(reward=[-0.5] * 10, logged_probability=[0.5] * 10, target_probability=[0.2, 0.8] * 5)
    assert CressieRead(w_max=2.0).estimate(constant) == pytest.approx(-0.5)


def test_cressie_read_estimate_stays_in_the_reward_range() -> None:
    # weights 8 and 4 leave no mass for the fake point; the unclipped Euclidean-likelihood value is 4/3
    data = LoggedData(reward=[0.0, 1.0], logged_probability=[0.125, 0.25], target_probability=[1.0, 1.0])
    assert CressieRead(r_min=0.0, r_max=1.0).estimate(data) == 1.0
    lower, upper = cressie_read_interval(data.weights, data.reward, alpha=0.01, r_min=0.0, r_max=1.0, w_max=20.0)
    assert lower <= 1.0 == upper


def test_weights_are_target_over_logged_and_data_is_read_only() -> None:
    reward = np.array(REWARD)
    data = fixed_data(reward=reward)
    assert data.n == len(REWARD)
    assert data.weights.tolist() == pytest.approx([t / p for p, t in zip(LOGGED, TARGET, strict=True)])
    reward[0] = 99.0
    assert data.reward[0] == 1.0
    with pytest.raises(ValueError):
        data.weights[0] = 3.0
    with pytest.raises(ValueError):
        data.reward[0] = 3.0


# --- Gaussian intervals ----------------------------------------------------------------------------------------


def test_gaussian_intervals_match_loop_variances() -> None:
    data = fixed_data()
    n = len(REWARD)
    z = 1.959963984540054
    weights = [t / p for p, t in zip(LOGGED, TARGET, strict=True)]

    ips_terms = [w * r for w, r in zip(weights, REWARD, strict=True)]
    ips_mean = sum(ips_terms) / n
    half = z * math.sqrt(loop_sample_variance(ips_terms) / n)
    assert IPS().gaussian_interval(data) == pytest.approx((ips_mean - half, ips_mean + half))

    # delta method for the ratio sum(w r) / sum(w): variance sum(w² (r - V)²) / ((n - 1) · mean(w)²) / n
    snips = sum(ips_terms) / sum(weights)
    mean_w = sum(weights) / n
    ratio_variance = sum(w * w * (r - snips) ** 2 for w, r in zip(weights, REWARD, strict=True)) / (n - 1)
    half = z * math.sqrt(ratio_variance / mean_w**2 / n)
    assert SNIPS().gaussian_interval(data) == pytest.approx((snips - half, snips + half))

    dr_terms = [mt + w * (r - ml) for w, r, mt, ml in zip(weights, REWARD, MODEL_TARGET, MODEL_LOGGED, strict=True)]
    dr_mean = sum(dr_terms) / n
    half = z * math.sqrt(loop_sample_variance(dr_terms) / n)
    assert DR().gaussian_interval(data) == pytest.approx((dr_mean - half, dr_mean + half))

    assert DM().gaussian_interval(data) is None
    assert gaussian_interval([0.3]) is None


# --- quantiles -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.2])
def test_f_one_quantile_matches_closed_forms(alpha: float) -> None:
    # F(1, 1) is a squared Cauchy variable; F(1, 2) has P(F > f) = 1 - sqrt(f / (2 + f))
    assert f_one_isf(alpha, 1) == pytest.approx(math.tan(math.pi * (0.5 - alpha / 2)) ** 2, rel=1e-10)
    assert f_one_isf(alpha, 2) == pytest.approx(2 * (1 - alpha) ** 2 / (1 - (1 - alpha) ** 2), rel=1e-10)
    # the chi-squared(1) limit
    assert f_one_isf(alpha, 5e6) == pytest.approx(normal_quantile(1 - alpha / 2) ** 2, rel=1e-5)
    assert f_one_isf(alpha, 5e7) == pytest.approx(normal_quantile(1 - alpha / 2) ** 2, rel=1e-12)


def test_f_one_quantile_matches_tables() -> None:
    # Student t quantiles t_10(0.975) and t_30(0.995), squared
    assert f_one_isf(0.05, 10) == pytest.approx(2.228138851986274**2, rel=1e-10)
    assert f_one_isf(0.01, 30) == pytest.approx(2.7499956535672254**2, rel=1e-10)
    assert normal_quantile(0.975) == pytest.approx(1.959963984540054, rel=1e-12)


def test_f_one_quantile_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for dfd in (1, 3, 17, 99, 100, 101, 250, 1_000, 12_345, 1e5, 1e6, 9e6):
        for alpha in (0.001, 0.05, 0.1, 0.5):
            assert f_one_isf(alpha, dfd) == pytest.approx(stats.f.isf(alpha, 1, dfd), rel=1e-9)


# --- Cressie-Read interval ------------------------------------------------------------------------------------


def projected_bound(w: np.ndarray, r: np.ndarray, fake_w: float, fake_r: float, budget: float) -> float | None:
    """min Σ q·w·r over Σq = 1, Σq·w = 1, Σ(m·q − 1)² ≤ budget, by projecting onto the affine constraints."""
    weights, rewards = np.append(w, fake_w), np.append(r, fake_r)
    m = weights.size
    if np.ptp(weights) == 0:
        return None
    constraints = np.vstack([np.ones(m), weights])
    gram = constraints @ constraints.T
    # t = m·q − 1 satisfies Σt = 0 and Σt·w = m − Σw; t0 is the shortest such t, free moves are orthogonal to it
    t0 = constraints.T @ np.linalg.solve(gram, np.array([0.0, m - weights.sum()]))
    room = budget - t0 @ t0
    if room < 0:
        return None
    gradient = weights * rewards / m
    free = gradient - constraints.T @ np.linalg.solve(gram, constraints @ gradient)
    t = t0 - math.sqrt(room) * free / np.linalg.norm(free)
    return float((1 + t) / m @ (weights * rewards))


def smallest_statistic(w: np.ndarray, fake_w: float) -> float:
    weights = np.append(w, fake_w)
    m = weights.size
    constraints = np.vstack([np.ones(m), weights])
    t0 = constraints.T @ np.linalg.solve(constraints @ constraints.T, np.array([0.0, m - weights.sum()]))
    return float(t0 @ t0)


@pytest.mark.parametrize("seed", range(12))
def test_cressie_read_interval_solves_its_quadratic_program(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    w = rng.choice([0.0, 0.5, 1.0, 2.5, 6.0], size=n) * rng.uniform(0.8, 1.2, size=n)
    r = rng.uniform(-1, 1, size=n)
    w_min, w_max, alpha = 0.0, 8.0, [0.05, 0.1, 0.01][seed % 3]
    budget = smallest_statistic(w, w_max if w.sum() < n else w_min) + f_one_isf(alpha, n)
    lower = [projected_bound(w, r, fake, -1.0, budget) for fake in (w_min, w_max)]
    upper = [projected_bound(w, -r, fake, -1.0, budget) for fake in (w_min, w_max)]
    expected = (
        max(-1.0, min(v for v in lower if v is not None)),
        min(1.0, -min(v for v in upper if v is not None)),
    )
    interval = cressie_read_interval(w, r, alpha=alpha, r_min=-1, r_max=1, w_min=w_min, w_max=w_max)
    assert interval == pytest.approx(expected, abs=1e-9)


def test_cressie_read_interval_with_unbounded_weights_is_the_limit_of_bounded_ones() -> None:
    data = fixed_data()
    unbounded = cressie_read_interval(data.weights, data.reward)
    assert unbounded[0] > -1.0
    assert cressie_read_interval(data.weights, data.reward, w_max=100.0)[0] < unbounded[0] - 0.01
    assert cressie_read_interval(data.weights, data.reward, w_max=1e8) == pytest.approx(unbounded, abs=1e-6)
    assert cressie_read_interval(data.weights, data.reward, w_max=1e12) == pytest.approx(unbounded, abs=1e-9)


def test_cressie_read_interval_covers_a_constant_reward() -> None:
    for value in (-1.0, 0.0, 0.25, 1.0):
        interval = cressie_read_interval([1.0] * 10, [value] * 10)
        assert interval[0] <= value <= interval[1]


def test_cressie_read_interval_tightens_with_data_and_with_alpha() -> None:
    def halves(n: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = np.arange(n) % 2 == 0
        return np.where(chosen, 0.4, 1.6), np.where(chosen, 1.0, 0.0)

    small = cressie_read_interval(*halves(100), r_min=0, r_max=1, w_max=2.0)
    large = cressie_read_interval(*halves(10_000), r_min=0, r_max=1, w_max=2.0)
    assert small[0] < large[0] <= 0.2 <= large[1] < small[1]
    assert large[1] - large[0] < 0.04
    widths = [np.subtract(*cressie_read_interval(*halves(1_000), alpha=a)[::-1]) for a in (0.01, 0.05, 0.1, 0.3)]
    assert widths == sorted(widths, reverse=True)


# --- invariants ------------------------------------------------------------------------------------------------

probability = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
logged_probability = st.floats(min_value=0.001, max_value=1.0, allow_nan=False)
reward = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)
events = st.lists(st.tuples(reward, logged_probability, probability), min_size=1, max_size=60)


def as_data(rows: list[tuple[float, float, float]]) -> LoggedData:
    rewards, logged, target = zip(*rows, strict=True)
    return LoggedData(reward=rewards, logged_probability=logged, target_probability=target)


@given(events)
def test_snips_lies_within_the_reward_range(rows: list[tuple[float, float, float]]) -> None:
    data = as_data(rows)
    value = SNIPS().estimate(data)
    if np.all(data.weights == 0):
        assert math.isnan(value)
    else:
        assert float(np.min(data.reward)) <= value <= float(np.max(data.reward))


@given(st.lists(st.tuples(reward, logged_probability), min_size=1, max_size=60))
def test_ips_of_the_logging_policy_on_its_own_logs_is_the_mean_reward(rows: list[tuple[float, float]]) -> None:
    rewards, logged = zip(*rows, strict=True)
    data = LoggedData(reward=rewards, logged_probability=logged, target_probability=logged)
    assert IPS().estimate(data) == float(np.mean(rewards))
    assert SNIPS().estimate(data) == pytest.approx(float(np.mean(rewards)), abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(min_value=0.05, max_value=1.0), min_size=2, max_size=8),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_weights_of_a_uniform_target_average_one(preferences: list[float], seed: int) -> None:
    logging = np.array(preferences) / np.sum(preferences)
    k, n = logging.size, 20_000
    actions = np.random.default_rng(seed).choice(k, size=n, p=logging)
    data = LoggedData(reward=np.zeros(n), logged_probability=logging[actions], target_probability=np.full(n, 1 / k))
    # E[w] = Σ_a μ(a) · (1/k)/μ(a) = 1 and Var[w] = Σ_a (1/k)²/μ(a) − 1; allow five standard errors
    spread = math.sqrt(max(0.0, float(np.sum(1 / (k * k * logging))) - 1))
    assert abs(float(np.mean(data.weights)) - 1.0) <= 5 * spread / math.sqrt(n) + 1e-12


@given(events, st.sampled_from([0.01, 0.05, 0.2]), st.sampled_from([20.0, 1000.0, math.inf]))
def test_cressie_read_interval_contains_its_estimate_and_stays_in_range(
    rows: list[tuple[float, float, float]], alpha: float, w_max: float
) -> None:
    data = as_data(rows)
    lower, upper = cressie_read_interval(data.weights, data.reward, alpha=alpha, w_max=w_max)
    estimate = CressieRead(w_max=w_max).estimate(data)
    assert -1.0 <= lower <= upper <= 1.0
    assert lower - 1e-9 <= estimate <= upper + 1e-9


@given(events, st.floats(min_value=-3.0, max_value=3.0))
def test_cressie_read_interval_moves_with_a_reward_shift(rows: list[tuple[float, float, float]], shift: float) -> None:
    data = as_data(rows)
    lower, upper = cressie_read_interval(data.weights, data.reward, w_max=1000.0)
    shifted = cressie_read_interval(data.weights, data.reward + shift, r_min=shift - 1, r_max=shift + 1, w_max=1000.0)
    assert shifted == pytest.approx((lower + shift, upper + shift), abs=1e-6)


# --- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reward": [1.0, 0.0]}, "logged_probability has 7 entries, reward has 2"),
        ({"reward": [[1.0] * 7]}, "reward must be a one-dimensional array"),
        ({"reward": [math.nan] + REWARD[1:]}, "reward must be finite"),
        ({"reward": [math.inf] + REWARD[1:]}, "reward must be finite"),
        (NO_EVENTS, "at least one logged event"),
        ({"logged_probability": [0.0] + LOGGED[1:]}, r"logged_probability must be in \(0, 1\]"),
        ({"logged_probability": [1.5] + LOGGED[1:]}, r"logged_probability must be in \(0, 1\]"),
        ({"logged_probability": [-0.2] + LOGGED[1:]}, r"logged_probability must be in \(0, 1\]"),
        ({"logged_probability": [math.nan] + LOGGED[1:]}, "logged_probability must be finite"),
        ({"target_probability": [1.01] + TARGET[1:]}, r"target_probability must be in \[0, 1\]"),
        ({"target_probability": [-0.01] + TARGET[1:]}, r"target_probability must be in \[0, 1\]"),
        ({"target_probability": ["high"] + TARGET[1:]}, "could not convert"),
        ({"reward_model_target": MODEL_TARGET[:3]}, "reward_model_target has 3 entries"),
        ({"reward_model_logged": [math.nan] * 7}, "reward_model_logged must be finite"),
    ],
)
def test_logged_data_rejects_bad_input(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fixed_data(**overrides)


def test_model_based_estimators_need_the_model() -> None:
    bare = LoggedData(reward=REWARD, logged_probability=LOGGED, target_probability=TARGET)
    with pytest.raises(ValueError, match="DM needs reward_model_target"):
        DM().estimate(bare)
    with pytest.raises(ValueError, match="DR needs"):
        DR().estimate(fixed_data(reward_model_logged=None))


@pytest.mark.parametrize(
    ("weights", "rewards", "options", "message"),
    [
        ([1.0, 2.0], [0.0, 1.5], {}, r"rewards must lie in \[r_min, r_max\]"),
        ([1.0, 2.0], [0.0, -0.5], {"r_min": 0.0}, r"rewards must lie in \[r_min, r_max\]"),
        ([1.0, 2.0], [0.0, 1.0], {"r_min": 1.0, "r_max": 1.0}, "need finite r_min < r_max"),
        ([1.0, -2.0], [0.0, 1.0], {}, "importance weights must be finite and non-negative"),
        ([1.0, math.nan], [0.0, 1.0], {}, "importance weights must be finite and non-negative"),
        ([1.0], [0.0, 1.0], {}, "differ in length"),
        ([], [], {}, "at least one event"),
        ([1.0, 2.0], [0.0, 1.0], {"alpha": 0.0}, r"alpha must be in \(0, 1\)"),
        ([1.0, 2.0], [0.0, 1.0], {"alpha": 1.0}, r"alpha must be in \(0, 1\)"),
        ([1.0, 2.0], [0.0, 1.0], {"w_max": 1.0}, "0 <= w_min < 1 < w_max"),
        ([1.0, 2.0], [0.0, 1.0], {"w_min": 1.0}, "0 <= w_min < 1 < w_max"),
    ],
)
def test_cressie_read_interval_rejects_bad_input(weights, rewards, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        cressie_read_interval(weights, rewards, **options)


def test_estimator_and_runner_options_are_validated() -> None:
    with pytest.raises(ValueError, match="0 <= w_min < 1 < w_max"):
        CressieRead(w_max=0.5)
    with pytest.raises(ValueError, match="estimator names must be unique"):
        evaluate(fixed_data(), [IPS(), IPS()])
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        gaussian_interval([0.1, 0.2], alpha=1.5)


# --- runner ----------------------------------------------------------------------------------------------------


def test_evaluate_applies_every_estimator_with_the_cressie_read_interval_first() -> None:
    data = fixed_data()
    table = evaluate(data, alpha=0.1, w_max=50.0)
    assert list(table) == ["ips", "snips", "cressie_read", "dm", "dr"]
    interval = cressie_read_interval(data.weights, data.reward, alpha=0.1, w_max=50.0)
    for estimator in (IPS(), SNIPS(), CressieRead(w_max=50.0), DM(), DR()):
        row = table[estimator.name]
        assert row["n"] == 7
        assert row["estimate"] == estimator.estimate(data)
        assert row["interval"] == interval
        assert row["interval_method"] == "cressie_read"
        assert row["gaussian_interval"] == estimator.gaussian_interval(data, 0.1)
    assert table["dm"]["gaussian_interval"] is None
    assert json.loads(json.dumps(table))["dr"]["interval"] == list(interval)

    bare = LoggedData(reward=REWARD, logged_probability=LOGGED, target_probability=TARGET)
    assert list(evaluate(bare)) == ["ips", "snips", "cressie_read"]


def test_evaluate_reports_an_undefined_snips_as_none() -> None:
    data = LoggedData(reward=[1.0, 0.0, 1.0], logged_probability=[0.5] * 3, target_probability=[0.0] * 3)
    row = evaluate(data, [SNIPS()], r_min=0.0)["snips"]
    assert row["estimate"] is None
    assert row["gaussian_interval"] is None
    assert row["interval"][0] == 0.0


# --- coverage on simulated logs --------------------------------------------------------------------------------

ACTIONS, CONTEXTS, EPSILON = 4, 10, 0.2


def simulated_world(truth: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epsilon-greedy logging, a deterministic target that agrees with it on 3 of 10 contexts, and Bernoulli
    reward probabilities scaled so that the target's value is exactly ``truth``."""
    rng = np.random.default_rng(20240615)
    greedy = rng.integers(0, ACTIONS, size=CONTEXTS)
    target_action = np.where(np.arange(CONTEXTS) < 3, greedy, (greedy + 1 + np.arange(CONTEXTS) % 3) % ACTIONS)
    logging = np.full((CONTEXTS, ACTIONS), EPSILON / ACTIONS)
    logging[np.arange(CONTEXTS), greedy] += 1 - EPSILON
    target = np.zeros((CONTEXTS, ACTIONS))
    target[np.arange(CONTEXTS), target_action] = 1.0
    click = rng.uniform(0.1, 1.0, size=(CONTEXTS, ACTIONS))
    click *= truth / np.mean(np.sum(target * click, axis=1))
    assert np.all(click <= 1)
    return logging, target, click


def coverage(truth: float, n: int, replications: int, signed: bool = False) -> dict[str, float]:
    """Share of replications whose 95% interval covers the truth, per method, and (``width_*``) mean widths of
    the Cressie-Read interval with the weight bound of the data (``1 / min μ``, what a replay uses) and without."""
    logging, target, click = simulated_world(truth)
    w_max = float(np.max(target / logging))
    r_min = -1.0 if signed else 0.0
    true_value = 2 * truth - 1 if signed else truth
    rng = np.random.default_rng(7)
    hits = {"cressie_read": 0, "cressie_read_data_bound": 0, "cressie_read_unbounded": 0}
    hits |= {"gaussian_ips": 0, "gaussian_snips": 0}
    widths = {"width_data_bound": 0.0, "width_unbounded": 0.0}
    for _ in range(replications):
        contexts = rng.integers(0, CONTEXTS, size=n)
        actions = (rng.uniform(size=(n, 1)) > np.cumsum(logging[contexts], axis=1)).sum(axis=1)
        clicked = rng.uniform(size=n) < click[contexts, actions]
        data = LoggedData(
            reward=np.where(clicked, 1.0, r_min),
            logged_probability=logging[contexts, actions],
            target_probability=target[contexts, actions],
        )
        lower, upper = cressie_read_interval(data.weights, data.reward, r_min=r_min, r_max=1.0, w_max=w_max)
        hits["cressie_read"] += lower <= true_value <= upper
        for name, bound in (("data_bound", weight_bound(data.logged_probability)), ("unbounded", math.inf)):
            lower, upper = cressie_read_interval(data.weights, data.reward, r_min=r_min, r_max=1.0, w_max=bound)
            hits[f"cressie_read_{name}"] += lower <= true_value <= upper
            widths[f"width_{name}"] += (upper - lower) / replications
        for name, estimator in (("gaussian_ips", IPS()), ("gaussian_snips", SNIPS())):
            interval = estimator.gaussian_interval(data)
            hits[name] += interval is not None and interval[0] <= true_value <= interval[1]
    return {name: count / replications for name, count in hits.items()} | widths


@pytest.mark.parametrize(
    ("case", "truth", "n", "signed"),
    [("moderate", 0.35, 500, False), ("moderate, rewards in {-1, 1}", 0.35, 500, True), ("rare", 0.015, 2000, False)],
)
def test_cressie_read_interval_covers_the_truth(case, truth, n, signed, record_property) -> None:
    observed = coverage(truth, n, replications=500, signed=signed)
    record_property("coverage", observed)
    print(f"\n95% interval coverage, {case} (truth {truth}, n={n}, 500 replications): {observed}")
    assert observed["cressie_read"] >= 0.93
    # the bound a replay takes from the data (1 / min logged probability) keeps the coverage, and narrows the
    # interval w_max = inf gives
    assert observed["cressie_read_data_bound"] >= 0.93
    assert observed["width_data_bound"] < observed["width_unbounded"]
    if case == "rare":
        # with a few dozen rewarded events the normal approximation is far too narrow
        assert observed["gaussian_ips"] < 0.9
        assert observed["gaussian_snips"] < 0.9
        assert observed["cressie_read"] > observed["gaussian_ips"] + 0.1
        # rare rewards are where the unbounded interval's upper end is widest (the fake point's mass at r_max)
        assert observed["width_data_bound"] < 0.75 * observed["width_unbounded"]


def test_the_weight_bound_is_one_over_the_smallest_logged_probability() -> None:
    assert weight_bound([0.5, 0.05, 0.9]) == pytest.approx(20.0)
    assert weight_bound([1.0, 1.0]) == math.inf  # no bound above 1: the interval needs w_max > 1
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        weight_bound([0.0, 0.5])
