"""VW prediction for one loop: PMF over the eligible actions, priority factors, seeded sampling.

Serving workers only predict (``-t``); learning happens in the trainer. The served action is drawn
from the final PMF with a uniform number derived from the event id, so a decision can be reproduced.
"""

from __future__ import annotations

import hashlib
import math
import shlex
import tempfile
import threading
from pathlib import Path
from typing import Any

import vowpalwabbit

from ..core import vwcalls, vwoptions
from ..core.dsjson import predict_line, with_slots
from ..core.errors import ApiError
from ..core.settings import POLICY_KINDS

# Exploration algorithms other than epsilon-greedy; their policies keep their own parameters.
OTHER_EXPLORATION = {
    "--first",
    "--bag",
    "--cover",
    "--softmax",
    "--squarecb",
    "--regcb",
    "--regcbopt",
    "--rnd",
}
# How a workspace reads its input and whether it learns: set by each use of a policy, not by the policy.
IO_OPTIONS = {"-t", "--testonly", "--dsjson", "--json", "--quiet"}


def drop_options(words: list[str], with_value: set[str], flags: set[str] | None = None) -> list[str]:
    """VW argument ``words`` without the options ``with_value`` and their values (``--name value`` or
    ``--name=value``), and without the ``flags``."""
    out: list[str] = []
    value_next = False
    for word in words:
        if value_next:
            value_next = False
            continue
        name, equals, _ = word.partition("=")
        if name in with_value:
            value_next = not equals
        elif not flags or word not in flags:
            out.append(word)
    return out


def vw_arguments(policy_arguments: str, exploration: float) -> str:
    """The policy's VW arguments with ``--epsilon`` set from the loop's explorationPercentage."""
    words = vwoptions.split(policy_arguments)
    out = drop_options(words, {"--epsilon"}, IO_OPTIONS)
    if not OTHER_EXPLORATION.intersection(words):
        out += ["--epsilon", repr(exploration)]
    return " ".join(out)


def uniform(event_id: str) -> float:
    """A number in [0, 1) determined by the event id."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def sample(pmf: list[float], event_id: str) -> int:
    """Index drawn from ``pmf`` with the event id's uniform number."""
    u = uniform(event_id)
    total = 0.0
    for i, p in enumerate(pmf):
        total += p
        if u < total:
            return i
    return max(i for i, p in enumerate(pmf) if p > 0)


def reweight(pmf: list[float], factors: list[float]) -> list[float]:
    """Multiply by priority factors and renormalise; a model PMF that is not a distribution is uniform."""
    if len(pmf) != len(factors):
        raise ValueError(f"{len(pmf)} probabilities for {len(factors)} factors")
    if not (pmf and all(map(math.isfinite, pmf)) and min(pmf) >= 0 and sum(pmf) > 0):
        pmf = [1.0] * len(pmf)
    # factors of 1 (no priority rule applies) leave each p as it is: the same floats, without the products
    weighted = pmf if factors.count(1.0) == len(factors) else [p * f for p, f in zip(pmf, factors, strict=True)]
    total = sum(weighted)
    if total <= 0 or not math.isfinite(total):
        weighted, total = list(factors), sum(factors)
    return [w / total for w in weighted]


def pmf_of(vw: vowpalwabbit.Workspace, line: str) -> list[float]:
    """VW's PMF for one DSJSON line (prediction only), in ``_multi`` order (:func:`ranker.core.vwcalls.pmf`)."""
    return vwcalls.pmf(vw, line)


def is_multislot(arguments: str) -> bool:
    """Whether VW arguments make a multi-slot policy (conditional contextual bandits)."""
    return POLICY_KINDS[True][1] in vwoptions.split(arguments)


def slot_scores_of(vw: vowpalwabbit.Workspace, line: str) -> list[dict[int, float]]:
    """VW's probability of each ``_multi`` index, per slot, for one CCB line (prediction only).

    VW draws each slot's action itself and moves it first; the probabilities are what the caller needs.
    """
    return vwcalls.slot_scores(vw, line)


def unreadable(exc: Exception) -> ApiError:
    """The 400 of a Rank whose features VW refused to read (``exc``: VW's RuntimeError or ValueError)."""
    return ApiError(400, "InvalidRankRequest", f"the features cannot be read: {exc}")


_CCB_LABEL = vowpalwabbit.LabelType.CONDITIONAL_CONTEXTUAL_BANDIT.value


class SlotPredictor:
    """VW's scores for the slots of one multi-slot Rank, filled in turn, from one parse of its ``c`` object.

    :func:`ranker.serving.slots.choose_slots` predicts each slot with the slots above it pinned to their actions:
    ``_slots`` = the filled slots (``_inc`` their action) then the slot (``_inc`` the actions left). Parsing
    that line per slot reads the context and every action again; here the line is parsed once and each
    prediction lists the examples that line would have given: the shared and action examples, then slot
    examples labelled with their ``_inc`` (VW's CCB text label ``ccb slot 3,4,5``). VW's label parser adds to
    an example's include list instead of replacing it, so each slot example is labelled once: the line holds
    every slot once for its own prediction and once more (all but the last) for the predictions it is pinned in.
    VW adds each prediction's per-slot scores to the shared example's list, so a prediction reads the new ones.

    Made by :meth:`Engine.slot_predictor`, which holds the workspace's lock until :meth:`close`.
    """

    def __init__(self, vw: vowpalwabbit.Workspace, lock: threading.Lock, c_json: str, slots: list[dict[str, Any]]):
        """``slots``: per slot of the request, its ``_id`` and features (no ``_inc``), in request order. A
        RuntimeError or ValueError when VW cannot read the line (the lock is then let go)."""
        n = len(slots)
        self._vw, self._lock = vw, lock
        lock.acquire()
        try:
            self._examples = vwcalls.parse(vw, with_slots(c_json, slots + slots[:-1]))
        except BaseException:
            lock.release()
            raise
        self._head = len(self._examples) - (2 * n - 1)  # the shared example and the actions
        self._open = self._examples[self._head : self._head + n]  # slot k, for its own prediction
        self._pinned = self._examples[self._head + n :]  # slot k, pinned in later slots' predictions
        self._seen = 0  # how many per-slot scores the shared example holds

    def scores(self, pinned: list[tuple[int, int]], k: int, candidates: list[int]) -> list[dict[int, float]]:
        """VW's scores per slot (as :meth:`Engine.predict_slots` gives them) for the ``c`` object whose ``_slots``
        are the request's slots ``pinned`` (``(slot, its action)``, in order), then slot ``k`` with ``_inc`` =
        ``candidates``."""
        examples = self._examples[: self._head]
        for slot, action in pinned:
            example = self._pinned[slot]
            if example.get_ccb_num_explicitly_included_actions() == 0:
                example.set_label_string(self._vw, f"ccb slot {action}", _CCB_LABEL)
            examples.append(example)
        example = self._open[k]
        example.set_label_string(self._vw, "ccb slot " + ",".join(map(str, candidates)), _CCB_LABEL)
        examples.append(example)
        vwcalls.predict_multi(self._vw, examples)
        scores = self._examples[0].get_decision_scores()
        new, self._seen = scores[self._seen :], len(scores)
        return [dict(slot) for slot in new]

    def close(self) -> None:
        """Give the examples back to VW and let go of the workspace."""
        try:
            vwcalls.finish_multi(self._vw, self._examples)
        finally:
            self._lock.release()


class Engine:
    """A predict-only VW workspace for one loop and model version; safe to share between threads."""

    def __init__(self, arguments: str, model_path: str | None = None, version: str = "0"):
        self.arguments = arguments
        self.version = version
        self.multislot = is_multislot(arguments)
        # A multi-slot prediction reads the ``c`` object alone: VW's DSJSON parser predicts nothing for a
        # CCB line without ``_outcomes`` (and vowpalwabbit 9.11 can crash on one once the model has learned).
        options = f"{arguments} {'--json' if self.multislot else '--dsjson'} --quiet -t"
        if model_path is not None:
            options += f" -i {shlex.quote(model_path)}"
        self._vw = vowpalwabbit.Workspace(options)
        self._lock = threading.Lock()

    @property
    def workspace(self) -> vowpalwabbit.Workspace:
        """The VW workspace; use it holding :attr:`lock` (ranker.serving.explain reads parsed examples with it)."""
        return self._vw

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    def predict(self, c_json: str, n_actions: int) -> list[float]:
        """VW's PMF over the ``_multi`` actions, in their order."""
        with self._lock:
            pmf = pmf_of(self._vw, predict_line(c_json, n_actions))
        if len(pmf) != n_actions:
            raise ValueError(f"VW read {len(pmf)} actions where {n_actions} were given")
        return pmf

    def predict_slots(self, c_json: str) -> list[dict[int, float]]:
        """Per slot of a CCB ``c`` object (with ``_slots``), VW's probability of each ``_multi`` index."""
        with self._lock:
            return slot_scores_of(self._vw, c_json)

    def slot_predictor(self, c_json: str, slots: list[dict[str, Any]]) -> SlotPredictor:
        """A :class:`SlotPredictor` for the slots of one multi-slot Rank: it holds the workspace until its
        ``close()``, which the caller must call (a RuntimeError or ValueError when VW cannot read the line)."""
        return SlotPredictor(self._vw, self._lock, c_json, slots)

    def close(self) -> None:
        self._vw.finish()


def fresh_model(arguments: str) -> bytes:
    """The bytes of an untrained model with these VW arguments."""
    ws = vowpalwabbit.Workspace(f"{arguments} --quiet")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fresh.vw"
        ws.save(str(path))
        ws.finish()
        return path.read_bytes()
