"""Simulate VW's news-personalization contextual bandit and compare policies.

Reproduces the Vowpal Wabbit tutorial "Simulating content personalization with
contextual bandits": two users (Tom, Anna) visit in the morning or afternoon
and are shown one of seven articles. Tom clicks politics in the morning and
music in the afternoon; Anna clicks sports in the morning and politics in the
afternoon. A click costs -1, anything else 0. Every event is sent to VW as a
DSJSON record built by ``ranker.core.dsjson``, exactly as the service logs it.

For each policy the script prints the click-through rate (mean reward) per
window of events and over the last window, averaged over ``--seeds`` runs.

Example:
    python scripts/simulate_news.py --events 5000 --window 1000 --seeds 5
"""

from __future__ import annotations

import argparse

import numpy as np
import vowpalwabbit

from ranker.core import dsjson

USERS = ("Tom", "Anna")
TIMES = ("morning", "afternoon")
ARTICLES = ("politics", "sports", "music", "food", "finance", "health", "camping")
LIKES = {
    ("Tom", "morning"): "politics",
    ("Tom", "afternoon"): "music",
    ("Anna", "morning"): "sports",
    ("Anna", "afternoon"): "politics",
}
DEFAULT_POLICIES = (
    "--cb_explore_adf --epsilon 0.2 --power_t 0 -l 0.001 --cb_type mtr -q ::",
    "--cb_explore_adf --epsilon 0.2 --cb_type mtr -q ::",
)


def context(user: str, time_of_day: str) -> str:
    """The record's ``c`` object, built by the service's own record builder."""
    articles = [(a, {"Action": {"article": a}}) for a in ARTICLES]
    return dsjson.context_json({"User": {"user": user, "time_of_day": time_of_day}}, articles, id_feature=False)


def learn_line(ctx: str, pmf: list[float], chosen: int, reward: float) -> str:
    """The decision record as the service logs it, with the CB label the trainer adds."""
    order = [chosen] + [i for i in range(len(ARTICLES)) if i != chosen]
    return dsjson.labeled(dsjson.decision_line("sim", "", ctx, order, pmf), reward)


def simulate(policy: str, events: int, seed: int) -> np.ndarray:
    """Run one online simulation and return the per-event rewards (1 = click)."""
    rng = np.random.default_rng(seed)
    ws = vowpalwabbit.Workspace(f"{policy} --dsjson --quiet")
    rewards = np.zeros(events)
    try:
        for t in range(events):
            user = USERS[rng.integers(len(USERS))]
            time_of_day = TIMES[rng.integers(len(TIMES))]
            ctx = context(user, time_of_day)

            ex = ws.parse(dsjson.predict_line(ctx, len(ARTICLES)))
            pmf = np.asarray(ws.predict(ex), dtype=float)
            ws.finish_example(ex)

            chosen = int(rng.choice(len(ARTICLES), p=pmf / pmf.sum()))
            reward = float(ARTICLES[chosen] == LIKES[(user, time_of_day)])
            rewards[t] = reward

            ex = ws.parse(learn_line(ctx, pmf.tolist(), chosen, reward))
            ws.learn(ex)
            ws.finish_example(ex)
    finally:
        ws.finish()
    return rewards


def window_ctr(rewards: np.ndarray, window: int) -> list[float]:
    """Mean reward of each consecutive window (the last one may be shorter)."""
    starts = range(0, len(rewards), window)
    return [float(rewards[i : i + window].mean()) for i in starts]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--policy",
        action="append",
        help="VW arguments for a policy (repeatable; default: compare two baselines)",
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="runs averaged per policy")
    args = parser.parse_args()

    policies = args.policy or list(DEFAULT_POLICIES)
    seeds = range(args.seed, args.seed + args.seeds)
    starts = range(0, args.events, args.window)
    header = [f"{i + 1}-{min(i + args.window, args.events)}" for i in starts]

    print(f"events={args.events} window={args.window} seeds={list(seeds)}")
    print("  ".join(f"{h:>11}" for h in [*header, "last"]) + "  policy")
    for policy in policies:
        runs = [simulate(policy, args.events, s) for s in seeds]
        windows = np.mean([window_ctr(r, args.window) for r in runs], axis=0)
        last = np.mean([r[-args.window :].mean() for r in runs])
        print("  ".join(f"{v:>11.3f}" for v in [*windows, last]) + f"  {policy}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
