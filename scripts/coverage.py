"""Coverage and width of 95% intervals for a target policy's value, on synthetic logs whose truth is known.

Each setting is a world of contexts and actions with Bernoulli rewards, an epsilon-greedy logging policy and a
deterministic target policy that disagrees with the logging's greedy choice on most contexts; the reward
probabilities are scaled so that the target's value is exactly the setting's truth. Every replication draws a
fresh log of ``n`` events and computes, for the target:

- ``CR w_max=inf``: the Cressie-Read empirical-likelihood interval without a weight bound (what the replay
  used before the bound);
- ``CR w_max=1/min p``: the same with the bound a replay takes from the data, ``1 / min logged probability``
  (:func:`ranker.evaluation.weight_bound`);
- ``Gaussian IPS`` and ``Gaussian SNIPS``: the estimators' normal approximations;
- ``bootstrap IPS`` and ``bootstrap SNIPS``: percentile bootstrap (``--resamples`` resamples of the events).

It prints, per setting and method, the share of replications whose interval contains the truth (coverage,
nominal 0.95) and the intervals' mean width, then checks the target: Cressie-Read with the bound covers at least
0.94 in every setting and is the narrowest of the methods that do. Numpy only; the worlds are drawn for all
replications at once, the bootstrap resamples are drawn per replication as one array.

``--ablation`` takes the bounded Cressie-Read interval apart. Its closed form (the Euclidean-likelihood profile
on the sample plus one unseen point at an extreme weight with the extreme reward, threshold G* + F⁻¹(1, n)) is
re-derived here with switches, checked against :func:`ranker.evaluation.cressie_read_interval` on every log,
and each part is changed alone: the χ²₁ quantile for F(1, n), each fake weight's own G*, the fake point at
``w_max`` only, one fake point (on G*'s side), no fake point. The rows are added below the default ones (the
target check stays on the default rows). ``--log-el LOGS`` adds the log form (λ = 0, Owen's empirical
likelihood: same fake points and threshold, each end by bisection on the dual; about a second per interval at
n = 5000) over the first LOGS logs. Then, for each setting at ``--sizes`` events, the bounded interval, the
interval without the fake point and the SNIPS bootstrap, with the width ratio Cressie-Read / bootstrap.

Example: python scripts/coverage.py --replications 500
Example: python scripts/coverage.py --replications 500 --ablation --sizes 500,2000,10000
Example: python scripts/coverage.py --replications 200 --ablation --log-el 200
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np

from ranker.evaluation import IPS, SNIPS, LoggedData, cressie_read_interval, f_one_isf, normal_quantile, weight_bound

TARGET_COVERAGE = 0.94


@dataclass(frozen=True)
class Setting:
    name: str
    truth: float  # the target policy's value
    events: int
    actions: int
    epsilon: float  # the logging policy's exploration: each action has at least epsilon / actions
    contexts: int = 10
    agree: int = 3  # contexts on which the target takes the logging policy's greedy action


SETTINGS = [
    Setting("moderate reward", truth=0.35, events=500, actions=4, epsilon=0.2),
    Setting("rare reward", truth=0.015, events=2000, actions=4, epsilon=0.2),
    Setting("heavy weights", truth=0.3, events=5000, actions=10, epsilon=0.1),
]
METHODS = ["CR w_max=inf", "CR w_max=1/min p", "Gaussian IPS", "Gaussian SNIPS", "bootstrap IPS", "bootstrap SNIPS"]


def world(setting: Setting, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logging, target, click): per context, the logging and target policies' probabilities of each action and
    each action's reward probability, scaled so that the target's value is ``setting.truth``."""
    c, k = setting.contexts, setting.actions
    greedy = rng.integers(0, k, size=c)
    offset = 1 + np.arange(c) % (k - 1)
    target_action = np.where(np.arange(c) < setting.agree, greedy, (greedy + offset) % k)
    logging = np.full((c, k), setting.epsilon / k)
    logging[np.arange(c), greedy] += 1 - setting.epsilon
    target = np.zeros((c, k))
    target[np.arange(c), target_action] = 1.0
    click = rng.uniform(0.1, 1.0, size=(c, k))
    click *= setting.truth / np.mean(np.sum(target * click, axis=1))
    if np.any(click > 1):
        raise ValueError(f"{setting.name}: the truth {setting.truth} needs reward probabilities above 1")
    return logging, target, click


def logs(setting: Setting, replications: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(reward, logged probability, target probability), each replications × events."""
    logging, target, click = world(setting, rng)
    shape = (replications, setting.events)
    contexts = rng.integers(0, setting.contexts, size=shape)
    cumulative = np.cumsum(logging, axis=1)[contexts]  # replications × events × actions
    actions = (rng.uniform(size=shape)[..., None] > cumulative).sum(axis=2)
    actions = np.minimum(actions, setting.actions - 1)  # a uniform draw at the cumulative sum's rounding
    reward = (rng.uniform(size=shape) < click[contexts, actions]).astype(float)
    return reward, logging[contexts, actions], target[contexts, actions]


def bootstrap(weights: np.ndarray, reward: np.ndarray, resamples: int, rng: np.random.Generator) -> dict:
    """Percentile bootstrap 95% intervals of IPS and SNIPS."""
    n = weights.size
    picks = rng.integers(0, n, size=(resamples, n))
    w = weights[picks]
    weighted = np.sum(w * reward[picks], axis=1)
    total = np.sum(w, axis=1)
    ips = weighted / n
    snips = np.divide(weighted, total, out=np.zeros_like(weighted), where=total > 0)
    return {
        "bootstrap IPS": tuple(np.quantile(ips, [0.025, 0.975])),
        "bootstrap SNIPS": tuple(np.quantile(snips, [0.025, 0.975])),
    }


@dataclass(frozen=True)
class Variant:
    """One change to the bounded Cressie-Read interval; the defaults are the reference form."""

    fakes: str = "both"  # fake weights tried for each bound: "both" (w_min, w_max), "w_max", "side" (G*'s), "none"
    g_star: str = "reference"  # "reference": G* of the fake on the side pulling mean w to 1; "own": each fake's
    quantile: str = "F"  # "F": F(1, n) as the reference; "chi2": its limit χ²₁


ABLATION = {
    "CR bound, χ²₁ for F(1,n)": Variant(quantile="chi2"),
    "CR bound, each fake's own G*": Variant(g_star="own"),
    "CR bound, fake at w_max only": Variant(fakes="w_max"),
    "CR bound, one fake (G*'s side)": Variant(fakes="side"),
    "CR bound, no fake point": Variant(fakes="none"),
    "CR bound, no fake point, χ²₁": Variant(fakes="none", quantile="chi2"),
}


def variant_interval(
    w: np.ndarray, r: np.ndarray, w_max: float, variant: Variant, r_min: float = 0.0, r_max: float = 1.0
) -> tuple[float, float]:
    """The Cressie-Read (λ = −2) interval's closed form with one part changed (``w_max`` finite).

    On m points (the sample, plus the fake one when there is one) with weights v and signed rewards u, the
    smallest Σ q·u over Σq = 1, Σ q·v = 1, Σ (m q − 1)² ≤ T is ``x − √(s² (T − G)/m)``: x the regression
    (control-variate) estimate ``mean u + (1 − mean v)·cov(v, u)/var v``, s² the residual variance of u on v,
    G = m (1 − mean v)²/var v the statistic's own minimum. The reference takes T = G*(fake on the side pulling
    mean w to 1) + F⁻¹(1, n), the fakes (w_min, extreme reward) and (w_max, extreme reward), and the smaller
    candidate; the variant changes one of these.
    """
    n = w.size
    w_min = min(0.0, float(np.min(w)))
    w_max = max(w_max, float(np.max(w)))
    side = w_max if float(np.sum(w)) < n else w_min
    delta = f_one_isf(0.05, n) if variant.quantile == "F" else normal_quantile(0.975) ** 2
    fakes = {"both": [w_min, w_max], "w_max": [w_max], "side": [side], "none": [None]}[variant.fakes]

    def smallest(v: np.ndarray) -> float:
        return v.size * (1.0 - float(np.mean(v))) ** 2 / float(np.var(v))

    g_star = smallest(w if variant.fakes == "none" else np.append(w, side))
    bounds = []
    for bound_reward, sign in ((r_min, 1.0), (r_max, -1.0)):
        candidates = []
        for fake in fakes:
            v = w if fake is None else np.append(w, fake)
            u = sign * (w * r if fake is None else np.append(w * r, fake * bound_reward))
            dv, du = v - np.mean(v), u - np.mean(u)
            spread = float(np.mean(dv * dv))
            if not spread > 0.0:
                continue
            slope = float(np.mean(dv * du)) / spread
            x = float(np.mean(u)) + (1.0 - float(np.mean(v))) * slope
            residual = float(np.mean((du - slope * dv) ** 2))
            room = (g_star if variant.g_star == "reference" else smallest(v)) + delta - smallest(v)
            if room >= 0.0:
                candidates.append(x - math.sqrt(residual * room / v.size))
        bound = sign * min(candidates) if candidates else bound_reward
        bounds.append(min(r_max, max(r_min, bound)))
    return bounds[0], bounds[1]


def _log_star(z: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Owen's pseudo-logarithm (log below 1/m continued by its quadratic) and its first two derivatives: the EL
    dual becomes smooth and concave everywhere, and equals the log form wherever the solution is interior."""
    eps = 1.0 / m
    inside = z >= eps
    t = z / eps
    value = np.where(inside, np.log(np.maximum(z, eps)), math.log(eps) - 1.5 + 2.0 * t - 0.5 * t * t)
    first = np.where(inside, 1.0 / np.maximum(z, eps), (2.0 - t) / eps)
    second = np.where(inside, -1.0 / np.maximum(z, eps) ** 2, -1.0 / eps**2)
    return value, first, second


def log_statistic(g: np.ndarray, stop: float = math.inf) -> float:
    """−2 log of the empirical likelihood ratio of E[g] = 0 (g: m × d), by its dual max_λ Σ log*(1 + g·λ).

    Newton's ascent only climbs, so once past ``stop`` the statistic is known to exceed it (``inf`` is returned:
    where 0 is outside the points' hull the dual has no maximum)."""
    m, d = g.shape
    lam = np.zeros(d)
    value = 0.0
    for _ in range(100):
        _, first, second = _log_star(1.0 + g @ lam, m)
        gradient = g.T @ first
        step = np.linalg.lstsq((g * second[:, None]).T @ g, -gradient, rcond=None)[0]
        scale = 1.0
        while True:
            candidate = float(np.sum(_log_star(1.0 + g @ (lam + scale * step), m)[0]))
            if candidate >= value or scale < 1e-10:
                break
            scale /= 2.0
        lam, change, value = lam + scale * step, candidate - value, candidate
        if 2.0 * value > stop:
            return math.inf
        if change < 1e-12 * max(1.0, abs(value)):
            break
    return 2.0 * value


def log_interval(
    w: np.ndarray, r: np.ndarray, w_max: float, r_min: float = 0.0, r_max: float = 1.0
) -> tuple[float, float]:
    """The same interval with the log form (Cressie-Read λ = 0, Owen's empirical likelihood) for λ = −2: the same
    fake points, T = G*(fake on the side pulling mean w to 1) + F⁻¹(1, n); each end found by bisection."""
    n = w.size
    w_min = min(0.0, float(np.min(w)))
    w_max = max(w_max, float(np.max(w)))
    side = w_max if float(np.sum(w)) < n else w_min
    threshold = log_statistic((np.append(w, side) - 1.0)[:, None]) + f_one_isf(0.05, n)
    bounds = []
    for bound_reward, sign in ((r_min, 1.0), (r_max, -1.0)):
        candidates = []
        for fake in (w_min, w_max):
            v, u = np.append(w, fake), sign * np.append(w * r, fake * bound_reward)
            if log_statistic((v - 1.0)[:, None]) > threshold:
                continue

            def statistic(theta: float, v: np.ndarray = v, u: np.ndarray = u) -> float:
                return log_statistic(np.column_stack([v - 1.0, u - theta]), stop=threshold)

            # the smallest statistic is at the constrained maximum-likelihood value; bisect towards the far end
            inside, outside = _centre(v, u), sign * bound_reward
            if statistic(outside) <= threshold:
                candidates.append(outside)
                continue
            for _ in range(24):  # to 6e-8 of the reward range
                middle = 0.5 * (inside + outside)
                inside, outside = (middle, outside) if statistic(middle) <= threshold else (inside, middle)
            candidates.append(inside)
        bound = sign * min(candidates) if candidates else bound_reward
        bounds.append(min(r_max, max(r_min, bound)))
    return bounds[0], bounds[1]


def _centre(v: np.ndarray, u: np.ndarray) -> float:
    """Σ q·u at the q maximizing Σ log q under Σq = 1, Σ q·v = 1 (q_i = 1/(m(1 + λ(v_i − 1))), λ by bisection)."""
    m = v.size
    g = v - 1.0
    low = -1.0 / float(np.max(g)) if np.max(g) > 0 else -1e12
    high = -1.0 / float(np.min(g)) if np.min(g) < 0 else 1e12
    for _ in range(200):
        lam = 0.5 * (low + high)
        if float(np.sum(g / (1.0 + lam * g))) > 0:
            low = lam
        else:
            high = lam
    q = 1.0 / (m * (1.0 + lam * g))
    return float(np.sum(q * u) / np.sum(q))


LOG_FORM = "CR bound, log form (λ = 0)"


def run(
    setting: Setting, replications: int, resamples: int, seed: int, ablation: bool = False, log_logs: int = 0
) -> dict[str, tuple[float, float]]:
    """{method: (coverage, mean width)} over ``replications`` logs of ``setting`` (with ``ablation``, also the
    variants' rows and "re-derivation error", the largest difference between the reference variant and
    :func:`cressie_read_interval`; with ``log_logs``, the log form's row over the first ``log_logs`` logs)."""
    rng = np.random.default_rng(seed)
    rewards, logged, targets = logs(setting, replications, rng)
    methods = METHODS + (list(ABLATION) if ablation else [])
    hits = dict.fromkeys(methods, 0)
    widths = dict.fromkeys(methods, 0.0)
    error = 0.0
    log_hits, log_width = 0, 0.0
    for index, (reward, mu, pi) in enumerate(zip(rewards, logged, targets, strict=True)):
        data = LoggedData(reward=reward, logged_probability=mu, target_probability=pi)
        intervals = {
            "CR w_max=inf": cressie_read_interval(data.weights, reward, r_min=0.0, r_max=1.0, w_max=math.inf),
            "CR w_max=1/min p": cressie_read_interval(
                data.weights, reward, r_min=0.0, r_max=1.0, w_max=weight_bound(mu)
            ),
            "Gaussian IPS": IPS().gaussian_interval(data),
            "Gaussian SNIPS": SNIPS().gaussian_interval(data),
            **bootstrap(data.weights, reward, resamples, rng),
        }
        if ablation:
            w_max = weight_bound(mu)
            reference = variant_interval(data.weights, reward, w_max, Variant())
            error = max(error, *np.abs(np.subtract(reference, intervals["CR w_max=1/min p"])))
            for name, variant in ABLATION.items():
                intervals[name] = variant_interval(data.weights, reward, w_max, variant)
            if index < log_logs:
                lower, upper = log_interval(data.weights, reward, w_max)
                log_hits += lower <= setting.truth <= upper
                log_width += upper - lower
        for method, interval in intervals.items():
            if interval is None:  # SNIPS with no weight: no interval, not covered
                continue
            lower, upper = interval
            hits[method] += lower <= setting.truth <= upper
            widths[method] += upper - lower
    result = {method: (hits[method] / replications, widths[method] / replications) for method in methods}
    if ablation:
        result["re-derivation error"] = (error, 0.0)
    if ablation and log_logs:
        result[LOG_FORM] = (log_hits / min(log_logs, replications), log_width / min(log_logs, replications))
    return result


SWEEP = ["CR w_max=1/min p", "CR bound, no fake point", "bootstrap SNIPS"]


def sweep(setting: Setting, replications: int, resamples: int, seed: int) -> dict[str, tuple[float, float]]:
    """{method: (coverage, mean width)} of the bounded interval, the same without its fake point and the SNIPS
    bootstrap, the logs drawn 50 replications at a time (a large log of ten actions would not fit at once)."""
    rng = np.random.default_rng(seed)
    hits = dict.fromkeys(SWEEP, 0)
    widths = dict.fromkeys(SWEEP, 0.0)
    for start in range(0, replications, 50):
        for reward, mu, pi in zip(*logs(setting, min(50, replications - start), rng), strict=True):
            weights, w_max = pi / mu, weight_bound(mu)
            intervals = {
                SWEEP[0]: cressie_read_interval(weights, reward, r_min=0.0, r_max=1.0, w_max=w_max),
                SWEEP[1]: variant_interval(weights, reward, w_max, Variant(fakes="none")),
                SWEEP[2]: bootstrap(weights, reward, resamples, rng)["bootstrap SNIPS"],
            }
            for method, (lower, upper) in intervals.items():
                hits[method] += lower <= setting.truth <= upper
                widths[method] += upper - lower
    return {method: (hits[method] / replications, widths[method] / replications) for method in SWEEP}


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replications", type=int, default=500, help="logs drawn per setting (default 500)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--ablation", action="store_true", help="add the Cressie-Read interval's ablation rows")
    parser.add_argument(
        "--log-el",
        type=int,
        default=0,
        metavar="LOGS",
        help="with --ablation: add the log form (Owen's empirical likelihood) over the first LOGS logs (slow)",
    )
    parser.add_argument(
        "--sizes", default="", help="with --ablation: comma-separated numbers of events for the width sweep"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    results = {
        s.name: run(s, args.replications, args.resamples, args.seed + i, args.ablation, args.log_el)
        for i, s in enumerate(SETTINGS)
    }
    print(f"95% intervals, {args.replications} replications per setting, coverage / mean width\n")
    header = ["method"] + [f"{s.name} (truth {s.truth}, n={s.events})" for s in SETTINGS]
    methods = (
        METHODS + (list(ABLATION) if args.ablation else []) + ([LOG_FORM] if args.ablation and args.log_el else [])
    )
    print_table(
        header,
        [
            [method] + [f"{results[s.name][method][0]:.3f} / {results[s.name][method][1]:.4f}" for s in SETTINGS]
            for method in methods
        ],
    )
    if args.ablation:
        error = max(results[s.name]["re-derivation error"][0] for s in SETTINGS)
        print(f"\nthe re-derived reference form differs from cressie_read_interval by at most {error:.1e}")

    ok = True
    for s in SETTINGS:
        result = results[s.name]
        covering = {m: result[m][1] for m in METHODS if result[m][0] >= TARGET_COVERAGE}
        bounded = "CR w_max=1/min p"
        narrowest = min(covering, key=covering.get) if covering else None
        if bounded not in covering:
            ok = False
            print(f"\n{s.name}: CR with the bound covers {result[bounded][0]:.3f} < {TARGET_COVERAGE}")
        elif narrowest != bounded:
            ok = False
            print(
                f"\n{s.name}: {narrowest} also covers >= {TARGET_COVERAGE} and is narrower "
                f"({covering[narrowest]:.4f} against {covering[bounded]:.4f})"
            )
    print(
        f"\ntarget (CR with the bound covers >= {TARGET_COVERAGE} everywhere and is the narrowest that does): "
        f"{'met' if ok else 'NOT met'}; {time.perf_counter() - started:.0f} s"
    )
    if args.ablation and args.sizes:
        sizes = [int(size) for size in args.sizes.split(",")]
        print(f"\nwidth against the number of events, {args.replications} replications, coverage / mean width\n")
        rows = []
        for i, s in enumerate(SETTINGS):
            for size in sizes:
                result = sweep(dataclasses.replace(s, events=size), args.replications, args.resamples, args.seed + i)
                ratio = result[SWEEP[0]][1] / result[SWEEP[2]][1]
                cells = [f"{result[m][0]:.3f} / {result[m][1]:.4f}" for m in SWEEP]
                rows.append([s.name, str(size), *cells, f"{ratio:.3f}"])
                print(f"  {s.name}, n={size}: {time.perf_counter() - started:.0f} s", flush=True)
        print()
        print_table(["setting", "n", *SWEEP, "CR bound / bootstrap width"], rows)


if __name__ == "__main__":
    main()
