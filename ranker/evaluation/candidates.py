"""The policies a replay scores: VW policies (:class:`Candidate` with arguments) and the built-ins.

- a VW policy (``Candidate(name, arguments)`` with ``--cb_explore_adf``, or ``--ccb_explore_adf`` for a
  multi-slot source): replayed progressively, scored on each event before it learns from it;
- ``Online``: what was logged (weight 1);
- ``Baseline``: the first eligible action (a multi-slot slot's baseline);
- ``Random``: uniform over the eligible actions (a slot's).

What each one's probability of the logged action is, is told in :mod:`ranker.evaluation.replay`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ranker.core import vwoptions
from ranker.core.settings import Policy, Settings, policy_kind
from ranker.serving.engine import IO_OPTIONS, drop_options, is_multislot

__all__ = ["BASELINE", "BUILT_INS", "ONLINE", "RANDOM", "Candidate", "policy_candidates"]

ONLINE, BASELINE, RANDOM = "Online", "Baseline", "Random"


@dataclass(frozen=True)
class Candidate:
    """A policy to replay: VW ``arguments`` (with ``--cb_explore_adf``, or ``--ccb_explore_adf`` for a
    multi-slot source), or None for a built-in by ``name``."""

    name: str
    arguments: str | None = None

    def __post_init__(self) -> None:
        if self.arguments is None:
            if self.name not in (ONLINE, BASELINE, RANDOM):
                raise ValueError(f"{self.name!r}: give VW arguments, or use {ONLINE}, {BASELINE} or {RANDOM}")
            return
        try:
            words = vwoptions.split(self.arguments)
            policy_kind(words)
            vwoptions.check(words)
        except ValueError as exc:
            raise ValueError(f"{self.name!r}: {exc}") from None
        object.__setattr__(self, "arguments", " ".join(drop_options(words, set(), IO_OPTIONS)))

    @property
    def multislot(self) -> bool | None:
        """Whether the VW policy is multi-slot; None for a built-in, which replays either kind."""
        return None if self.arguments is None else is_multislot(self.arguments)


BUILT_INS = (Candidate(ONLINE), Candidate(BASELINE), Candidate(RANDOM))


def policy_candidates(settings: Settings, policies: Sequence[str] = (), *, multislot: bool = False) -> list[Candidate]:
    """Candidates from policy files (``{"name", "arguments"}``): each entry a file path or a policy name in
    ``settings.policies_dir``; with none, every policy file there of the source's kind (``--cb_explore_adf``,
    or with ``multislot`` ``--ccb_explore_adf``). Their arguments are used as written; a policy named
    explicitly is taken whatever its kind, and :func:`~ranker.evaluation.replay.replay` refuses it on a source
    of the other kind."""
    paths = [Path(p) if p.endswith(".json") else settings.policies_dir / f"{p}.json" for p in policies]
    candidates = []
    for path in paths or sorted(settings.policies_dir.glob("*.json")):
        try:
            policy = Policy.model_validate_json(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read policy {path}: {exc}") from exc
        candidate = Candidate(policy.name, policy.arguments)
        if paths or candidate.multislot == multislot:
            candidates.append(candidate)
    return candidates
