"""Which VW workspaces of a replay learn in which process, and which share one parse of each line.

Single-slot workspaces whose arguments differ only in learning options learn a line from one parse
(:func:`parse_group`); a ``--cb_adf`` reward model that learns what an epsilon-greedy policy's MTR regressor
learns is read from that policy's workspace (:func:`regressor`); :func:`spread` spreads the rest over the
processes by a cost model of a line's work (:func:`spread`), measured with ``scripts/bench_replay.py``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ranker.core import vwoptions
from ranker.evaluation.learners import Group
from ranker.serving.engine import OTHER_EXPLORATION, drop_options, is_multislot

# Options that change only how a workspace learns from a parsed example, not how VW parses and sets it up: single-
# slot workspaces whose arguments differ in nothing else can learn from one parse (see Learners). Checked with
# VW's outputs (tests/test_replay.py); exploration algorithms and --cb_type are not among them (--bag, --cover and
# another --cb_type after MTR change the example for the next workspace).
_LEARNING_OPTIONS = {"-l", "--learning_rate", "--power_t", "--epsilon", "--l2", "--initial_t"}


def parse_group(arguments: str) -> tuple[str, ...] | None:
    """What single-slot workspaces must share to learn from one parse of a line: their arguments without the
    learning options and their values, ``--cb_adf`` read as ``--cb_explore_adf`` (the reward model's reduction
    under the same cost estimator). None for a multi-slot workspace, which parses its own lines."""
    if is_multislot(arguments):
        return None
    key = drop_options(vwoptions.split(arguments), _LEARNING_OPTIONS)
    return tuple("--cb_explore_adf" if word == "--cb_adf" else word for word in key)


def parse_groups(arguments: Sequence[str]) -> list[list[int]]:
    """The indices of ``arguments``, grouped by :func:`parse_group` in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, args in enumerate(arguments):
        key = parse_group(args)
        groups.setdefault(("own", i) if key is None else key, []).append(i)
    return list(groups.values())


def regressor(arguments: str) -> tuple[str, ...] | None:
    """The regressor a single-slot workspace learns, when it is VW's MTR one (``--cb_type mtr``, VW's default)
    and nothing but epsilon-greedy exploration is put on it: a ``--cb_adf`` workspace's arguments, or an
    epsilon-greedy ``--cb_explore_adf`` policy's with ``--cb_adf`` in its place and without ``--epsilon``
    (exploration that does not change what is learned). Equal for a reward model and a policy, the policy's
    workspace reports the reward model's scores (:class:`~ranker.evaluation.learners.Learners`, which reads them
    as MTR's update leaves them; other cost estimators are not paired). Else None."""
    words = vwoptions.split(arguments)
    if "--cb_explore_adf" in words:
        if OTHER_EXPLORATION.intersection(words) or "--first_only" in words:
            return None
        words = ["--cb_adf" if word == "--cb_explore_adf" else word for word in drop_options(words, {"--epsilon"})]
    if "--cb_adf" not in words:
        return None
    cb_types = [value for name, value in zip(words, words[1:], strict=False) if name == "--cb_type"]
    cb_types += [word.partition("=")[2] for word in words if word.startswith("--cb_type=")]
    return tuple(words) if cb_types in ([], ["mtr"]) else None


def served_models(jobs: Sequence[str]) -> dict[int, int]:
    """The ``--cb_adf`` reward models among ``jobs`` whose scores a policy's workspace reports, as {model: policy}:
    a policy of the same :func:`regressor`, each at most one."""
    keys = [(regressor(arguments), "--cb_explore_adf" in vwoptions.split(arguments)) for arguments in jobs]
    policies: dict[tuple[str, ...], int] = {}
    for i, (key, policy) in enumerate(keys):
        if key is not None and policy:
            policies.setdefault(key, i)
    return {i: policies.pop(key) for i, (key, policy) in enumerate(keys) if not policy and key in policies}


# What a line costs, in units of one VW learn (-q ::, 10 actions; measured): VW's parse of it, this process's
# reading of it (the source, the built-ins' scan, the pipes), and a reward model's scores read from a policy.
_PARSE_COST, _READ_COST, _SERVED_COST = 1.45, 1.1, 0.5
# What each busy core adds to the first one: two processes that are both busy each slow down (scripts/
# bench_replay.py measures it: two busy cores did 1.46-2.07 times the work of one), so a spread that adds a parse
# to balance the processes can take longer than one process that parses once. 0.6 picks the spread that was
# faster in interleaved runs of the default evaluation on a quiet machine (docs/performance.md).
_CORE_GAIN = 0.6


def spread(jobs: Sequence[str], workers: int) -> list[list[int]]:
    """Which VW workspaces (indices into ``jobs``) learn in which process: this one first (it also reads the
    source), then up to ``workers`` - 1 others. A parse group (:func:`parse_group`) stays in one process, or is
    halved when that spreads the work better (each half then parses the lines, on a core of its own); a reward
    model stays with the policy that reports its scores (:func:`served_models`). The groups go largest first, each to
    the least loaded process. A spread takes as long as its most loaded process, or as all the work on the cores
    that share it (see ``_CORE_GAIN``); of two spreads as fast, the one with fewer parses."""
    served = served_models(jobs)
    # a group is a list of units: a workspace, with the reward models it reports for
    units = {i: [i] + [model for model, policy in served.items() if policy == i] for i in range(len(jobs))}

    def cost(group: list[list[int]]) -> float:
        return _PARSE_COST + sum(1 + _SERVED_COST * (len(unit) - 1) for unit in group)

    def assign(groups: list[list[list[int]]]) -> tuple[float, int, list[list[int]]]:
        shares: list[list[int]] = [[] for _ in range(max(1, workers))]
        loads = [_READ_COST] + [0.0] * (len(shares) - 1)
        for group in sorted(groups, key=cost, reverse=True):
            least = loads.index(min(loads))
            shares[least] += sorted(i for unit in group for i in unit)
            loads[least] += cost(group)
        busy = [load for load in loads if load]
        cores = 1 + _CORE_GAIN * (min(len(busy), os.cpu_count() or 1) - 1)
        used = [shares[0]] + [share for share in shares[1:] if share]
        return max(max(busy), sum(busy) / cores), len(groups), used

    groups = [[units[i] for i in group if i not in served] for group in parse_groups(jobs)]
    best = assign(groups)
    while 0 < len(groups) < workers and max(map(len, groups)) > 1:
        largest = max(groups, key=len)
        half = (len(largest) + 1) // 2
        groups = [group for group in groups if group is not largest] + [largest[:half], largest[half:]]
        best = min(best, assign(groups), key=lambda option: option[:2])
    return best[2]


def learner_groups(jobs: Sequence[str], share: Sequence[int]) -> tuple[list[Group], list[int]]:
    """The parse groups of the workspaces ``share`` (indices into ``jobs``) for :class:`Learners`, and those
    indices in the order of the learners' outputs. A reward model whose scores a policy of its group reports
    (:func:`served_models`, which :func:`spread` keeps in one process) is that policy's entry index."""
    served = served_models(jobs)
    out: list[Group] = []
    order: list[int] = []
    for group in parse_groups([jobs[i] for i in share]):
        indices = [share[i] for i in group]
        entries = [indices.index(served[i]) if i in served else jobs[i] for i in indices]
        out.append((is_multislot(jobs[indices[0]]), entries))
        order += indices
    return out, order
