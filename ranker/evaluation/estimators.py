"""Off-policy estimators over one logged-data contract, and a runner that applies several of them.

Notation, for n logged events i = 1..n with context x_i, logged action a_i and reward r_i:
μ_i = μ(a_i|x_i) the logging policy's probability of the logged action, π_i = π(a_i|x_i) the target policy's
probability of the same action, w_i = π_i / μ_i the importance weight, r̂_π,i = Σ_a π(a|x_i) r̂(x_i, a) the reward
model's expected reward of the target policy on context x_i, and r̂_i = r̂(x_i, a_i) the model's prediction for
the logged action.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from ranker.evaluation.intervals import Interval, cressie_read_interval, gaussian_interval

__all__ = [
    "DM",
    "DR",
    "IPS",
    "SNIPS",
    "CressieRead",
    "Estimator",
    "LoggedData",
    "evaluate",
    "weight_bound",
]


def _vector(name: str, values: npt.ArrayLike) -> np.ndarray:
    array = np.array(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a one-dimensional array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class LoggedData:
    """Logged bandit events, one entry per event, as read-only float arrays of equal length n ≥ 1.

    - ``reward``: r_i, the observed reward (finite).
    - ``logged_probability``: μ_i = μ(a_i|x_i), the logging policy's probability of the logged action, in (0, 1].
    - ``target_probability``: π_i = π(a_i|x_i), the target policy's probability of the logged action, in [0, 1].
    - ``reward_model_target`` (optional, for DM and DR): r̂_π,i = Σ_a π(a|x_i) r̂(x_i, a), the reward model's
      expected reward of the target policy on the event's context.
    - ``reward_model_logged`` (optional, for DR): r̂_i = r̂(x_i, a_i), the reward model's prediction for the
      logged action.

    Inputs are copied; a :class:`ValueError` names the first field that breaks the contract.
    """

    reward: np.ndarray
    logged_probability: np.ndarray
    target_probability: np.ndarray
    reward_model_target: np.ndarray | None = None
    reward_model_logged: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrays = {
            "reward": self.reward,
            "logged_probability": self.logged_probability,
            "target_probability": self.target_probability,
            "reward_model_target": self.reward_model_target,
            "reward_model_logged": self.reward_model_logged,
        }
        n = None
        for name, values in arrays.items():
            if values is None:
                continue
            array = _vector(name, values)
            if n is None:
                n = array.size
            elif array.size != n:
                raise ValueError(f"{name} has {array.size} entries, reward has {n}")
            object.__setattr__(self, name, array)
        if n == 0:
            raise ValueError("at least one logged event is needed")
        if np.any(self.logged_probability <= 0) or np.any(self.logged_probability > 1):
            raise ValueError("logged_probability must be in (0, 1]")
        if np.any(self.target_probability < 0) or np.any(self.target_probability > 1):
            raise ValueError("target_probability must be in [0, 1]")

    @property
    def n(self) -> int:
        """Number of logged events."""
        return int(self.reward.size)

    @cached_property
    def weights(self) -> np.ndarray:
        """Importance weights w_i = π_i / μ_i."""
        weights = self.target_probability / self.logged_probability
        weights.setflags(write=False)
        return weights

    def subset(self, mask: np.ndarray) -> LoggedData:
        """The events where ``mask`` (a boolean array over the events) holds, every field kept."""
        optional = {
            name: getattr(self, name)[mask]
            for name in ("reward_model_target", "reward_model_logged")
            if getattr(self, name) is not None
        }
        return LoggedData(
            reward=self.reward[mask],
            logged_probability=self.logged_probability[mask],
            target_probability=self.target_probability[mask],
            **optional,
        )


class Estimator(ABC):
    """An estimator of the target policy's expected reward V(π) = E_x Σ_a π(a|x) E[r | x, a]."""

    name: ClassVar[str]

    @abstractmethod
    def estimate(self, data: LoggedData) -> float:
        """Point estimate of V(π)."""

    def gaussian_interval(self, data: LoggedData, alpha: float = 0.05) -> Interval | None:
        """Normal-approximation ``1 - alpha`` interval, or ``None`` when this estimator has none."""
        return None


@dataclass(frozen=True)
class IPS(Estimator):
    """Inverse propensity scoring (Horvitz–Thompson): ``V̂ = (1/n) Σ_i w_i r_i``.

    Unbiased when μ > 0 wherever π > 0. Source: Dudík, Langford, Li, "Doubly Robust Policy Evaluation and
    Learning" (ICML 2011), eq. (1). Gaussian interval over the terms ``w_i r_i``.
    """

    name: ClassVar[str] = "ips"

    def estimate(self, data: LoggedData) -> float:
        return float(np.mean(data.weights * data.reward))

    def gaussian_interval(self, data: LoggedData, alpha: float = 0.05) -> Interval | None:
        return gaussian_interval(data.weights * data.reward, alpha)


@dataclass(frozen=True)
class SNIPS(Estimator):
    """Self-normalized IPS: ``V̂ = Σ_i w_i r_i / Σ_i w_i``.

    A weighted mean of the rewards, so it stays within their range; slightly biased, usually much lower
    variance than IPS. Source: Swaminathan, Joachims, "The Self-Normalized Estimator for Counterfactual Learning"
    (NeurIPS 2015). Undefined (``nan``) when every weight is 0, i.e. the target never takes a logged action.

    The Gaussian interval uses the delta method for the ratio: the terms ``V̂ + w_i (r_i − V̂) / w̄`` with
    ``w̄ = (1/n) Σ w_i`` have mean V̂ and sample variance equal to the linearized variance of the ratio.
    """

    name: ClassVar[str] = "snips"

    def estimate(self, data: LoggedData) -> float:
        w = data.weights
        total = float(np.sum(w))
        if total == 0.0:
            return math.nan
        value = float(np.sum(w * data.reward)) / total
        # a weighted mean lies within the rewards it averages; clip what rounding pushes past them
        seen = data.reward[w > 0]
        return min(float(np.max(seen)), max(float(np.min(seen)), value))

    def gaussian_interval(self, data: LoggedData, alpha: float = 0.05) -> Interval | None:
        value = self.estimate(data)
        if math.isnan(value):
            return None
        w = data.weights
        return gaussian_interval(value + w * (data.reward - value) / np.mean(w), alpha)


@dataclass(frozen=True)
class DM(Estimator):
    """Direct method: ``V̂ = (1/n) Σ_i r̂_π,i`` with ``r̂_π,i = Σ_a π(a|x_i) r̂(x_i, a)``.

    Uses only the reward model (``LoggedData.reward_model_target``), not the observed rewards; biased whenever
    the model is. Source: Dudík, Langford, Li 2011, section 2 ("direct method"). No interval is offered: the
    spread of the predictions says nothing about the model's error, which dominates DM's.
    """

    name: ClassVar[str] = "dm"

    def estimate(self, data: LoggedData) -> float:
        if data.reward_model_target is None:
            raise ValueError("DM needs reward_model_target")
        return float(np.mean(data.reward_model_target))


@dataclass(frozen=True)
class DR(Estimator):
    """Doubly robust: ``V̂ = (1/n) Σ_i [ r̂_π,i + w_i (r_i − r̂_i) ]``.

    DM corrected by importance-weighted residuals of the reward model on the logged actions; unbiased when the
    propensities are right, whatever the model, and low-variance when the model is good. Source: Dudík, Langford,
    Li 2011, eq. (2). Needs ``reward_model_target`` and ``reward_model_logged``. Gaussian interval over the
    per-event terms in brackets.
    """

    name: ClassVar[str] = "dr"

    def terms(self, data: LoggedData) -> np.ndarray:
        """Per-event DR terms ``r̂_π,i + w_i (r_i − r̂_i)``."""
        if data.reward_model_target is None or data.reward_model_logged is None:
            raise ValueError("DR needs reward_model_target and reward_model_logged")
        return data.reward_model_target + data.weights * (data.reward - data.reward_model_logged)

    def estimate(self, data: LoggedData) -> float:
        return float(np.mean(self.terms(data)))

    def gaussian_interval(self, data: LoggedData, alpha: float = 0.05) -> Interval | None:
        return gaussian_interval(self.terms(data), alpha)


@dataclass(frozen=True)
class CressieRead(Estimator):
    """Empirical-likelihood point estimate under the Cressie-Read power divergence with λ = −2.

    The data are augmented by one point of weight ``w_fake`` (``w_max`` when Σw < n, else ``w_min``); with means
    over the m = n + 1 points ``W = mean w`` and ``D = var w``, the reweighting
    ``q_i = (1 + (1 − W)(w_i − W)/D)/m`` is the one closest to uniform (in Σ (m q_i − 1)²) under which the
    weights average exactly one, and ``V̂ = Σ_i q_i w_i r_i + (1 − Σ_i q_i w_i)⁺ · mean(r)``, the last term giving
    the fake point's leftover mass the mean reward (with ``w_fake = ∞``: ``q_i = 1/n``). Sources: Karampatziakis,
    Langford, Mineiro, "Empirical Likelihood for Contextual Bandits" (NeurIPS 2020); closed form as in
    VowpalWabbit/estimators ``estimators/bandits/cressieread.py`` (``EstimatorImpl.get``, whose γ, β give the
    same q). The Euclidean likelihood lets some q_i go negative, so with few events and large weights the raw
    value can leave the reward range; it is clipped to ``[r_min, r_max]`` like
    :func:`~ranker.evaluation.intervals.cressie_read_interval`, which always contains it.
    """

    name: ClassVar[str] = "cressie_read"
    w_min: float = 0.0
    w_max: float = math.inf
    r_min: float = -1.0
    r_max: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.w_min < 1.0 < self.w_max):
            raise ValueError(f"importance weight bounds need 0 <= w_min < 1 < w_max, got [{self.w_min}, {self.w_max}]")
        if not (math.isfinite(self.r_min) and math.isfinite(self.r_max) and self.r_min < self.r_max):
            raise ValueError(f"need finite r_min < r_max, got [{self.r_min}, {self.r_max}]")

    def estimate(self, data: LoggedData) -> float:
        w, r = data.weights, data.reward
        if np.any(r < self.r_min) or np.any(r > self.r_max):
            raise ValueError(f"rewards must lie in [r_min, r_max] = [{self.r_min}, {self.r_max}]")
        n = data.n
        if float(np.sum(w)) < n:
            fake = max(self.w_max, float(np.max(w)))
        else:
            fake = min(self.w_min, float(np.min(w)))
        if fake == math.inf:
            q = np.full(n, 1.0 / n)
        else:
            v = np.append(w, fake)
            mean = float(np.mean(v))
            spread = float(np.mean((v - mean) ** 2))
            q = (1.0 + (1.0 - mean) * (w - mean) / spread) / (n + 1)
        missing = max(0.0, 1.0 - float(np.sum(q * w)))
        value = float(np.sum(q * w * r)) + missing * float(np.mean(r))
        return min(self.r_max, max(self.r_min, value))


def weight_bound(logged_probability: npt.ArrayLike) -> float:
    """The importance weight's known bound ``w_max = 1 / min μ_i`` over the logged probabilities given.

    A target probability is at most 1, so ``w = π/μ ≤ 1/μ``; over the events evaluated (for a multi-slot slot:
    the products of the logged probabilities used there) no weight exceeds ``1 / min μ``. The Cressie-Read
    interval with this bound instead of ``w_max = ∞`` is narrower with the same guarantee, as long as the events
    evaluated show the logging policy's smallest probability (epsilon-greedy or softmax logging does, many times
    over). Returns ``inf`` when every μ is 1 (no bound above 1 exists then: the interval needs ``w_max > 1``).
    """
    smallest = float(np.min(np.asarray(logged_probability, dtype=float)))
    if not 0.0 < smallest <= 1.0:
        raise ValueError("logged probabilities must be in (0, 1]")
    bound = 1.0 / smallest
    return bound if bound > 1.0 + 1e-12 else math.inf


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def evaluate(
    data: LoggedData,
    estimators: Sequence[Estimator] | None = None,
    *,
    alpha: float = 0.05,
    r_min: float = -1.0,
    r_max: float = 1.0,
    w_min: float = 0.0,
    w_max: float = math.inf,
) -> dict[str, dict[str, Any]]:
    """Apply several estimators to one :class:`LoggedData`; one row per estimator, keyed by its ``name``.

    Default estimators: IPS, SNIPS and CressieRead (with the same bounds), plus DM and DR when the data carry
    the reward model's predictions. Each row is::

        {"n": int, "estimate": float | None,
         "interval": (lo, hi), "interval_method": "cressie_read",
         "gaussian_interval": (lo, hi) | None}

    ``interval``, the primary one, is the ``1 - alpha`` Cressie-Read empirical-likelihood interval for the target
    policy's value (:func:`~ranker.evaluation.intervals.cressie_read_interval` with ``r_min``, ``r_max``,
    ``w_min``, ``w_max``). It depends on the weights and rewards only, so every row carries the same one.
    ``gaussian_interval`` is the estimator's own normal approximation, or ``None`` where it has none. An estimate
    that is undefined (SNIPS with all weights 0) is ``None``.
    """
    if estimators is None:
        estimators = [IPS(), SNIPS(), CressieRead(w_min=w_min, w_max=w_max, r_min=r_min, r_max=r_max)]
        if data.reward_model_target is not None:
            estimators.append(DM())
            if data.reward_model_logged is not None:
                estimators.append(DR())
    names = [estimator.name for estimator in estimators]
    if len(set(names)) != len(names):
        raise ValueError(f"estimator names must be unique, got {names}")
    interval = cressie_read_interval(
        data.weights, data.reward, alpha=alpha, r_min=r_min, r_max=r_max, w_min=w_min, w_max=w_max
    )
    return {
        estimator.name: {
            "n": data.n,
            "estimate": _finite_or_none(estimator.estimate(data)),
            "interval": interval,
            "interval_method": "cressie_read",
            "gaussian_interval": estimator.gaussian_interval(data, alpha),
        }
        for estimator in estimators
    }
