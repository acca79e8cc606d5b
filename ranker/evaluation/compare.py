"""Is it better? The paired difference of two policies' values on the same logged events, with its interval.

For two target policies π₁ (the candidate) and π₂ (the reference, e.g. Online) evaluated on the same events,
with weights w₁ = π₁/μ and w₂ = π₂/μ, the difference of their values is ``Δ = V(π₁) − V(π₂) = E_μ[(w₁ − w₂) r]``.
It is computed as the value of one policy under a transformed reward, so that the Cressie-Read
empirical-likelihood interval applies to it unchanged:

- the even mixture π̄ = (π₁ + π₂)/2 is a policy; its weight ``w̄ = (w₁ + w₂)/2`` has E_μ[w̄] = 1 and is bounded
  by ``(w₁,max + w₂,max)/2``, where a policy's bound is ``w_max = 1 / min μ`` (a target probability is at most
  1) or 1 for the logging policy itself (Online, whose weight is 1 on every event: seen as all weights 1);
- the reward ``g = r (w₁ − w₂)/(w₁ + w₂)`` (0 where w₁ + w₂ = 0) is a function of the logged event, bounded
  by ``|g| ≤ B = max(|r_min|, |r_max|)``;
- ``E_μ[w̄ g] = E_μ[(w₁ − w₂) r] / 2 = Δ / 2``.

So ``Δ̂ = 2 · CressieRead(w̄, g)`` and its ``1 − alpha`` interval is twice the Cressie-Read interval of
(w̄, g) with rewards in [−B, B] (clipped to ±(r_max − r_min), the range of a difference of two values)
(:func:`~ranker.evaluation.intervals.cressie_read_interval`, Karampatziakis, Langford, Mineiro, "Empirical
Likelihood for Contextual Bandits", NeurIPS 2020): the paper's guarantee holds for
any bounded reward and any weight with mean one, and both policies are scored on the same events, so what the
two share (the same contexts, the same lucky rewards) cancels in g instead of widening two separate intervals.
This identity is elementary; its coverage on simulations with known truth is checked in tests/test_compare.py.

The verdict: ``better`` when the interval lies above 0, ``worse`` when below, else ``not distinguishable``.
``more_events`` estimates how many more events would likely settle it at the observed effect: the half-width
on the side of 0 shrinks like 1/√n, so ``n · (half-width / |Δ̂|)² − n`` (None when Δ̂ is 0: no effect to settle;
0 when settled).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ranker.evaluation.estimators import CressieRead, LoggedData, weight_bound
from ranker.evaluation.intervals import cressie_read_interval

__all__ = ["BETTER", "UNDECIDED", "WORSE", "compare", "describe", "paired_difference"]

BETTER, WORSE, UNDECIDED = "better", "worse", "not distinguishable"


def paired_difference(
    candidate: LoggedData,
    reference: LoggedData,
    *,
    alpha: float = 0.05,
    r_min: float = -1.0,
    r_max: float = 1.0,
    w_max: float | None = None,
) -> dict[str, Any]:
    """The candidate's value minus the reference's on the same events (see the module docstring)::

        {"estimate": Δ̂, "interval": [lo, hi], "verdict": "better" | "worse" | "not distinguishable",
         "more_events": int | None, "ips": mean((w₁ − w₂) r), "n": n, "method": "paired_cressie_read"}

    Both must hold the same events (rewards and logged probabilities); ``w_max`` defaults to
    ``1 / min μ`` (:func:`~ranker.evaluation.weight_bound`)."""
    if candidate.n != reference.n or not (
        np.array_equal(candidate.reward, reference.reward)
        and np.array_equal(candidate.logged_probability, reference.logged_probability)
    ):
        raise ValueError("a paired difference needs both policies evaluated on the same events")
    if w_max is None:
        w_max = weight_bound(candidate.logged_probability)
    w1, w2 = candidate.weights, reference.weights
    # w̄ ≤ (w_max + w_max)/2, and where a policy is the logging one (Online, weight 1) its weight is known
    bounds = [1.0 if np.array_equal(w, np.ones_like(w)) else w_max for w in (w1, w2)]
    mixture_max = (bounds[0] + bounds[1]) / 2
    total = w1 + w2
    g = np.divide(candidate.reward * (w1 - w2), total, out=np.zeros_like(total), where=total > 0)
    bound = max(abs(r_min), abs(r_max))
    g = np.clip(g, -bound, bound)  # |g| ≤ |r| ≤ bound; rounding only
    mixture = LoggedData(
        reward=g,
        logged_probability=candidate.logged_probability,
        target_probability=(candidate.target_probability + reference.target_probability) / 2,
    )
    if not mixture_max > 1:  # both policies are the logging one
        mixture_max = math.inf
    lower, upper = cressie_read_interval(mixture.weights, g, alpha=alpha, r_min=-bound, r_max=bound, w_max=mixture_max)
    estimate = 2 * CressieRead(w_max=mixture_max, r_min=-bound, r_max=bound).estimate(mixture)
    # a difference of two values in [r_min, r_max] lies within ± their spread
    spread = r_max - r_min
    lower, upper = (min(spread, max(-spread, 2 * end)) for end in (lower, upper))
    estimate = min(upper, max(lower, estimate))
    if lower > 0:
        verdict, more = BETTER, 0
    elif upper < 0:
        verdict, more = WORSE, 0
    else:
        verdict = UNDECIDED
        half = estimate - lower if estimate > 0 else upper - estimate
        more = None if estimate == 0 else max(1, math.ceil(candidate.n * ((half / abs(estimate)) ** 2 - 1)))
    return {
        "estimate": estimate,
        "interval": [lower, upper],
        "verdict": verdict,
        "more_events": more,
        "ips": float(np.mean((w1 - w2) * candidate.reward)),
        "n": candidate.n,
        "method": "paired_cressie_read",
    }


def compare(
    data: Mapping[str, LoggedData],
    references: Sequence[str],
    *,
    alpha: float = 0.05,
    r_min: float = -1.0,
    r_max: float = 1.0,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{policy: {reference: paired_difference(policy, reference)}}`` for every policy of ``data`` and every
    reference in ``data`` other than itself (the policies' data hold the same events)."""
    present = [name for name in dict.fromkeys(references) if name in data]
    return {
        name: {
            reference: paired_difference(values, data[reference], alpha=alpha, r_min=r_min, r_max=r_max)
            for reference in present
            if reference != name
        }
        for name, values in data.items()
    }


def describe(difference: dict[str, Any] | None) -> str:
    """A table cell: ``+0.0123 [-0.0040, +0.0290] not distinguishable (~1,200 more events)``; ``-`` for none."""
    if difference is None:
        return "-"
    lower, upper = difference["interval"]
    text = f"{difference['estimate']:+.4f} [{lower:+.4f}, {upper:+.4f}] {difference['verdict']}"
    if difference["verdict"] == UNDECIDED:
        more = difference["more_events"]
        text += " (no effect seen)" if more is None else f" (~{more:,} more events)"
    return text
