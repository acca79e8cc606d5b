"""Feature importance: leave one namespace (or one feature) out, replay, and score the loss of reward.

A namespace is dropped with VW's ``--ignore <c>``, which discards at parse time every namespace whose name
starts with the character ``c`` (linear terms and the interactions built from them): the records replayed are
exactly the logged ones. Namespaces sharing a first character are therefore left out together; a row names
every namespace it dropped. A single feature is left out by rewriting each record minimally: the feature's key
is removed from the namespace objects that hold it (in ``c``, in every action of ``_multi`` and, in a multi-slot
record, in every slot of ``_slots``), nothing else changes.

The score of a left-out part, with R the SNIPS estimate of the full model, R₋ that of the model without the
part and R₀ that of the uniformly random policy (the reward of knowing nothing)::

    score = clip(100 · (R − R₋) / (R − R₀), 0, 100)

100 means the model without it is no better than chance, 0 that it loses nothing (or gains). When the full
model does not beat chance (R ≤ R₀), every score is 0. For a multi-slot source (``arguments`` with
``--ccb_explore_adf``) the estimates are the replay's overall ones: every filled slot pooled.

Features sent flat, outside any namespace (Personalizer's quickstart sends ``[{"seg": "fintech"}]``), are in
VW's default namespace, which no first character selects. They are scored too, as the namespace ``(default)``
and, always, one by one (there is no ``--ignore`` to group them): the records are rewritten without the key(s),
in ``c``, in the actions and in the slots. The action id feature (``id`` of each action, which ranker adds to
every action as Personalizer does) stays in every replay and is not scored: :func:`unscored` lists it, and any
other part that could not be scored on its own, with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ranker.evaluation.candidates import RANDOM, Candidate
from ranker.evaluation.replay import replay
from ranker.evaluation.sources import DsjsonFile, Event, LoopLog, MultiSlotEvent, Skipped, source_is_multislot

__all__ = ["DEFAULT", "importance", "namespaces", "unscored"]

_SPECIAL = ("_", "@")  # DSJSON fields that are not feature namespaces (_multi, _label_*, _text, @meta ...)
DEFAULT = "(default)"  # VW's default namespace: features sent flat, outside any namespace
ACTION_ID = "id"  # the action id feature of each action: never left out


def _holders(context: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects of a record's ``c`` that hold features: ``c`` itself, its actions and its slots."""
    return [context, *context.get("_multi", []), *context.get("_slots", [])]


def namespaces(source: LoopLog | DsjsonFile, limit: int = 1000) -> dict[str, set[str]]:
    """The namespaces (keys of ``c``, of the actions and of the slots holding an object, or an array, which VW's
    JSON parser reads as a namespace) and the feature names of their objects, from the first ``limit`` events
    of the source's kind; under :data:`DEFAULT` the features sent flat (other than the actions' ``id``)."""
    kind = MultiSlotEvent if source_is_multislot(source) else Event
    found: dict[str, set[str]] = {}
    for n, event in enumerate(e for e in source.events() if type(e) is kind):
        if n >= limit:
            break
        context = json.loads(event.line)["c"]
        for i, holder in enumerate(_holders(context)):
            for key, value in holder.items():
                if key.startswith(_SPECIAL):
                    continue
                if not isinstance(value, dict | list):
                    if not (i > 0 and key == ACTION_ID):  # c is holder 0; the actions' id feature stays
                        found.setdefault(DEFAULT, set()).add(key)
                    continue
                names = found.setdefault(key, set())
                for obj in value if isinstance(value, list) else [value]:
                    if isinstance(obj, dict):
                        names.update(k for k in obj if not k.startswith(_SPECIAL))
    return found


class _WithoutFeature:
    """``source`` with features' keys removed from the namespace that holds them, in every record: one
    ``feature``, or for :data:`DEFAULT` ``features`` (flat keys; the actions' ``id`` is never removed)."""

    def __init__(self, source: LoopLog | DsjsonFile, namespace: str, feature: str, features: set[str] | None = None):
        self.source, self.namespace, self.feature = source, namespace, feature
        self.features = {feature} if features is None else features

    def __str__(self) -> str:
        return f"{self.source} without {self.namespace}.{self.feature}"

    def multislot(self) -> bool:
        return source_is_multislot(self.source)

    def events(self) -> Iterator[Event | MultiSlotEvent | Skipped]:
        for event in self.source.events():
            if type(event) is Skipped:
                yield event
                continue
            record = json.loads(event.line)
            context = record["c"]
            for i, holder in enumerate(_holders(context)):
                if self.namespace == DEFAULT:
                    for key in self.features - ({ACTION_ID} if i > 0 else set()):
                        if not isinstance(holder.get(key), dict | list):
                            holder.pop(key, None)
                    continue
                value = holder.get(self.namespace)
                for obj in value if isinstance(value, list) else [value]:
                    if isinstance(obj, dict):
                        obj.pop(self.feature, None)
            yield event._replace(line=json.dumps(record, separators=(",", ":")))


def importance(
    source: LoopLog | DsjsonFile, arguments: str, *, features: bool = False, workers: int = 1
) -> list[dict[str, Any]]:
    """Rows ``{"namespace", "feature", "dropped", "estimate", "full", "random", "score"}``, most important
    first: one per namespace first character (``feature`` None; also ``namespaces``, the names it dropped, and
    ``events``, how many the replay read), one for the default namespace's features together and one per each
    of them (:data:`DEFAULT`), and, with ``features``, one per feature of every namespace. The score is defined
    in the module docstring. Raises :class:`ValueError` when the source has no event."""
    full_args = Candidate("full", arguments).arguments
    found = namespaces(source)
    flat = found.pop(DEFAULT, set())
    groups: dict[str, list[str]] = {}
    for name in sorted(found):
        groups.setdefault(name[0], []).append(name)
    candidates = [Candidate(RANDOM), Candidate("full", full_args)]
    candidates += [Candidate(f"-{char}", f"{full_args} --ignore {char}") for char in groups]
    report = replay(source, candidates, reward_model=None, workers=workers)
    estimates = {row["policy"]: row["snips"] or 0.0 for row in report.policies}
    full, chance = estimates["full"], estimates[RANDOM]

    def score(without: float) -> float:
        if full <= chance:
            return 0.0
        return round(min(100.0, max(0.0, 100.0 * (full - without) / (full - chance))), 2)

    rows = [
        {
            "namespace": ", ".join(names),
            "namespaces": names,
            "events": report.events,
            "feature": None,
            "dropped": f"--ignore {char}",
            "estimate": estimates[f"-{char}"],
            "full": full,
            "random": chance,
            "score": score(estimates[f"-{char}"]),
        }
        for char, names in groups.items()
    ]

    def without(namespace: str, feature: str, keys: set[str] | None = None) -> float:
        report = replay(
            _WithoutFeature(source, namespace, feature, keys),  # type: ignore[arg-type]
            [Candidate("full", full_args)],
            reward_model=None,
            workers=workers,
        )
        return report.policies[0]["snips"] or 0.0

    def row(namespace: str, feature: str | None, dropped: str, estimate: float) -> dict[str, Any]:
        return {
            "namespace": namespace,
            "feature": feature,
            "dropped": dropped,
            "estimate": estimate,
            "full": full,
            "random": chance,
            "score": score(estimate),
        }

    if flat:  # no --ignore selects the default namespace: rewrite the records without its features
        estimate = without(DEFAULT, "*", flat)
        dropped = "records rewritten without the features outside any namespace"
        rows.append(row(DEFAULT, None, dropped, estimate) | {"namespaces": [DEFAULT], "events": report.events})
        for feature in sorted(flat):
            rows.append(row(DEFAULT, feature, "records rewritten without the feature", without(DEFAULT, feature)))
    if features:
        for name in sorted(found):
            for feature in sorted(found[name]):
                dropped = "records rewritten without the feature"
                rows.append(row(name, feature, dropped, without(name, feature)))
    rows.sort(key=lambda row: row["score"], reverse=True)
    return rows


def unscored(source: LoopLog | DsjsonFile, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What the importance ``rows`` of ``source`` could not score on its own, ``{"namespace", "feature",
    "reason"}``: the actions' id feature (it stays in every replay), and namespaces that share a first character
    (VW's ``--ignore`` leaves them out together: they are scored as one)."""
    out: list[dict[str, str]] = []
    first = next((event for event in source.events() if type(event) is not Skipped), None)
    actions = json.loads(first.line)["c"].get("_multi", []) if first is not None else []
    if any(isinstance(action, dict) and ACTION_ID in action for action in actions):
        out.append(
            {"namespace": DEFAULT, "feature": ACTION_ID, "reason": "the action id feature stays in every replay"}
        )
    for row in rows:
        names = row.get("namespaces") or []
        if len(names) > 1:
            reason = f"scored together with {row['namespace']}: namespaces sharing a first character go together"
            out.extend({"namespace": name, "feature": "", "reason": reason} for name in names)
    return out
