"""Confidence intervals for off-policy estimates: Gaussian, and the Cressie-Read empirical-likelihood interval.

Everything here works on plain arrays (importance weights ``w``, rewards ``r``, or per-event terms) so that a
replay can call it without building a :class:`~ranker.evaluation.estimators.LoggedData`. Only numpy and the
standard library are used; the one distribution quantile the Cressie-Read interval needs (F with 1 and n
degrees of freedom) is computed here from the regularized incomplete beta function.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

__all__ = [
    "cressie_read_interval",
    "f_one_isf",
    "gaussian_interval",
    "normal_quantile",
]

Interval = tuple[float, float]


def _check_alpha(alpha: float) -> None:
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def normal_quantile(p: float) -> float:
    """The standard normal quantile Φ⁻¹(p), for 0 < p < 1."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    return NormalDist().inv_cdf(p)


def gaussian_interval(terms: npt.ArrayLike, alpha: float = 0.05) -> Interval | None:
    """Two-sided ``1 - alpha`` normal-approximation interval for the mean of per-event terms.

    ``mean(terms) ± z_{1-alpha/2} · s / √n`` with ``s`` the sample standard deviation (divisor n − 1), as in
    VowpalWabbit/estimators ``bandits/gaussian.py``. The caller chooses the terms: ``w·r`` for IPS, the
    linearized (delta-method) terms for SNIPS, the doubly robust terms for DR. Returns ``None`` for n < 2, where
    no variance can be estimated. The interval is not clipped to the reward range.
    """
    _check_alpha(alpha)
    values = np.asarray(terms, dtype=float)
    if values.ndim != 1:
        raise ValueError("terms must be a one-dimensional array")
    if not np.all(np.isfinite(values)):
        raise ValueError("terms must be finite")
    n = values.size
    if n < 2:
        return None
    mean = float(np.mean(values))
    half_width = normal_quantile(1.0 - alpha / 2.0) * float(np.std(values, ddof=1)) / math.sqrt(n)
    return (mean - half_width, mean + half_width)


# --- F(1, n) quantile -------------------------------------------------------------------------------------------


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (DLMF 8.17.22), evaluated by the modified Lentz method."""
    tiny = 1e-300
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 100_000):
        # even step d_{2m}
        numerator = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        result *= d * c
        # odd step d_{2m+1}
        numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        result *= step
        if abs(step - 1.0) < 1e-15:
            return result
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def _stirling(z: float) -> float:
    """The correction terms of Stirling's series for ln Γ(z), z ≥ 100 (truncation error below 1e-19)."""
    return 1.0 / (12.0 * z) - 1.0 / (360.0 * z**3) + 1.0 / (1260.0 * z**5)


def _log_beta(a: float, b: float) -> float:
    """ln B(a, b) = ln Γ(a) + ln Γ(b) − ln Γ(a + b)."""
    small, big = min(a, b), max(a, b)
    if big < 100.0:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    # ln Γ(big + small) − ln Γ(big) by Stirling's series: lgamma differences of numbers near 1e6 would lose
    # about 1e-10 to cancellation, which the F quantile amplifies
    ratio = (
        (big - 0.5) * math.log1p(small / big)
        + small * math.log(big + small)
        - small
        + _stirling(big + small)
        - _stirling(big)
    )
    return math.lgamma(small) - ratio


def _log(x: float, one_minus_x: float) -> float:
    return math.log1p(-one_minus_x) if x > 0.5 else math.log(x)


def _regularized_beta(a: float, b: float, x: float, one_minus_x: float) -> float:
    """I_x(a, b); ``one_minus_x`` is passed separately so that x close to 1 keeps its precision."""
    if x <= 0.0:
        return 0.0
    if one_minus_x <= 0.0:
        return 1.0
    log_front = a * _log(x, one_minus_x) + b * _log(one_minus_x, x) - _log_beta(a, b)
    # the continued fraction converges fast only below the mean; use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, one_minus_x) / b


def _f_one_sf(f: float, dfd: float) -> float:
    """P(F > f) for F ~ F(1, dfd): I_{dfd/(dfd+f)}(dfd/2, 1/2)."""
    return _regularized_beta(dfd / 2.0, 0.5, dfd / (dfd + f), f / (dfd + f))


@lru_cache(maxsize=256)
def f_one_isf(alpha: float, dfd: float) -> float:
    """Upper ``alpha`` quantile of the F distribution with 1 and ``dfd`` degrees of freedom.

    Equals the square of Student's t quantile ``t_{dfd}(1 - alpha/2)``; this is the threshold
    VowpalWabbit/estimators uses for the empirical-likelihood statistic (``scipy.stats.f.isf(alpha, 1, n)``),
    a small-sample correction of the χ²₁ limit. Solved by bisection on log f. For ``dfd`` above 10⁷ the χ²₁
    limit ``z_{1-alpha/2}²`` is returned (relative difference below 10⁻⁶).
    """
    _check_alpha(alpha)
    if not dfd > 0:
        raise ValueError(f"dfd must be positive, got {dfd!r}")
    if dfd > 1e7:
        return normal_quantile(1.0 - alpha / 2.0) ** 2
    lo, hi = 1e-12, 1.0
    while _f_one_sf(hi, dfd) > alpha:
        lo, hi = hi, hi * 16.0
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if _f_one_sf(mid, dfd) > alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return math.sqrt(lo * hi)


# --- Cressie-Read (Euclidean likelihood) interval -------------------------------------------------------------


def _check_weighted_rewards(
    weights: npt.ArrayLike, rewards: npt.ArrayLike, r_min: float, r_max: float, w_min: float, w_max: float
) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(weights, dtype=float)
    r = np.asarray(rewards, dtype=float)
    if w.ndim != 1 or r.ndim != 1:
        raise ValueError("weights and rewards must be one-dimensional arrays")
    if w.size != r.size:
        raise ValueError(f"weights and rewards differ in length ({w.size} != {r.size})")
    if w.size == 0:
        raise ValueError("at least one event is needed")
    if not (np.all(np.isfinite(w)) and np.all(w >= 0)):
        raise ValueError("importance weights must be finite and non-negative")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite")
    if not (math.isfinite(r_min) and math.isfinite(r_max) and r_min < r_max):
        raise ValueError(f"need finite r_min < r_max, got [{r_min}, {r_max}]")
    if np.any(r < r_min) or np.any(r > r_max):
        raise ValueError(f"rewards must lie in [r_min, r_max] = [{r_min}, {r_max}]")
    if not (0.0 <= w_min < 1.0 < w_max):
        raise ValueError(f"importance weight bounds need 0 <= w_min < 1 < w_max, got [{w_min}, {w_max}]")
    return w, r


def _with_fake(values: np.ndarray, fake: float) -> np.ndarray:
    return np.append(values, fake)


def _smallest_statistic(w: np.ndarray, fake: float) -> float:
    """min Σ (m q_i − 1)² over Σq = 1, Σ q·w = 1 on the sample plus a point of weight ``fake``: m(1 − W)²/D."""
    n = float(w.size)
    if fake == math.inf:
        return 1.0 + 1.0 / n
    v = _with_fake(w, fake)
    mean = float(np.mean(v))
    spread = float(np.mean((v - mean) ** 2))
    return v.size * (1.0 - mean) ** 2 / spread


def _profile_terms(w: np.ndarray, r: np.ndarray, fake: float, bound_reward: float, sign: float) -> tuple[float, ...]:
    """(x, y, z without φ) of one bound for one fake weight; y ≤ 0 is minus a residual variance. Empty if D = 0."""
    n = float(w.size)
    if fake == math.inf:
        # limit w_fake → ∞: the data keep mass 1/n each and the fake point absorbs the rest
        excess = w * (bound_reward - r)
        x = sign * (bound_reward - float(np.mean(excess)))
        y = -n / (n + 1.0) * float(np.mean((excess - np.mean(excess)) ** 2))
        return x, y, 1.0 / (2.0 * n)
    v = _with_fake(w, fake)
    u = sign * _with_fake(w * r, fake * bound_reward)
    mean_v, mean_u = float(np.mean(v)), float(np.mean(u))
    dv, du = v - mean_v, u - mean_u
    spread = float(np.mean(dv * dv))
    if not spread > 0.0:
        return ()
    slope = float(np.mean(dv * du)) / spread
    x = mean_u + (1.0 - mean_v) * slope
    y = -float(np.mean((du - slope * dv) ** 2))
    return x, y, 0.5 * (1.0 - mean_v) ** 2 / spread


def cressie_read_interval(
    weights: npt.ArrayLike,
    rewards: npt.ArrayLike,
    *,
    alpha: float = 0.05,
    r_min: float = -1.0,
    r_max: float = 1.0,
    w_min: float = 0.0,
    w_max: float = math.inf,
    atol: float = 1e-9,
) -> Interval:
    """Two-sided ``1 - alpha`` empirical-likelihood interval for a target policy's value, Cressie-Read form.

    Sources: Karampatziakis, Langford, Mineiro, "Empirical Likelihood for Contextual Bandits" (NeurIPS 2020);
    Karampatziakis, Mineiro, Ramdas, "Off-policy Confidence Sequences" (ICML 2021). The closed form follows
    VowpalWabbit/estimators ``estimators/bandits/cressieread.py`` (``IntervalImpl.get``), for the Cressie-Read
    power divergence with λ = −2 (Euclidean likelihood), in which the profile problem is a quadratic program.

    The sample is augmented by one unobserved point carrying the extreme weight ``w_fake ∈ {w_min, w_max}`` and
    the extreme reward (``r_min`` for the lower bound, ``r_max`` for the upper), so m = n + 1 points. A
    reweighting q of these points is admissible when Σq = 1, Σ q·w = 1 (importance weights average one under
    the logging policy) and ``Σ (m·q_i − 1)² ≤ G* + F⁻¹_{1,n}(1 − alpha)``, where G* is the smallest value of
    that statistic over all such q, with the fake point at ``w_max`` if Σw < n and at ``w_min`` otherwise. The
    lower bound is the min over admissible q and both fake weights of Σ q·w·r, the upper bound the max; both are
    clipped to ``[r_min, r_max]``. With means over the m points, W = mean w, D = var w, C = cov(w, w·r):
    the bound is ``x − √(2·y·z)`` (for the upper one after negating r), where ``x = mean(w·r) + (1 − W)·C/D``,
    ``y = −var(w·r − (C/D)·w)`` (the residual variance of w·r regressed on w) and
    ``z = ((1 − W)²/D)/2 − (G* + F⁻¹)/(2m)``; ``w_fake = ∞`` uses the limit.

    The moments are centered (two-pass) rather than the reference's raw power sums, which lose everything to
    cancellation once ``w_fake²`` is large; the formulas are otherwise the reference's. The result depends only on
    the weights and rewards, not on a point estimator; it contains the Cressie-Read point estimate
    (:class:`~ranker.evaluation.estimators.CressieRead`). ``w_min``/``w_max`` should be the true bounds of the
    importance weight (0 and max π/μ), not the observed extremes; observed weights outside them widen them, as
    in the reference. When no bound is feasible (rounding only) the trivial bound ``r_min``/``r_max`` is returned
    (the reference returns ``r_min`` for both ends).

    Without the unobserved point this is the regression estimate ± √(F⁻¹ s²/n); the point at ``w_max`` with the
    extreme reward is all of the width beyond that, and what keeps the level where rewards at large weights are
    rare (``scripts/coverage.py --ablation``; docs/evaluation.md, "Where the width goes").
    """
    _check_alpha(alpha)
    w, r = _check_weighted_rewards(weights, rewards, r_min, r_max, w_min, w_max)
    w_min = min(w_min, float(np.min(w)))
    w_max = max(w_max, float(np.max(w)))
    n = float(w.size)

    # the fake point sits on the side that pulls the mean weight towards 1
    g_star = _smallest_statistic(w, w_max if float(np.sum(w)) < n else w_min)
    phi = (-g_star - f_one_isf(alpha, n)) / (2.0 * (n + 1.0))

    bounds: list[float] = []
    for bound_reward, sign in ((r_min, 1.0), (r_max, -1.0)):
        candidates: list[float] = []
        for fake in (w_min, w_max):
            terms = _profile_terms(w, r, fake, bound_reward, sign)
            if not terms:
                continue
            x, y, z = terms[0], terms[1], terms[2] + phi
            if math.isclose(y * z, 0.0, abs_tol=atol * atol):
                candidates.append(x - math.sqrt(2.0) * atol)
            elif z <= 0.0 and y * z >= 0.0:
                candidates.append(x - math.sqrt(2.0 * y * z))
        bound = sign * min(candidates) if candidates else bound_reward
        bounds.append(min(r_max, max(r_min, bound)))
    return (bounds[0], bounds[1])
