"""The decision record: one DSJSON line per decision, built once at Rank time.

The same text is what VW parses to predict, what the log keeps, what the trainer learns from (with the
label added) and what ``ranker export`` writes, so there is exactly one feature mapping. Field names are
VW's DSJSON (VowpalWabbit wiki "DSJSON"): ``c`` holds the shared namespaces and ``_multi`` (one object
per eligible action, in request order), ``a`` the 1-based action indices with the chosen one first,
``p`` their probabilities, ``_label_*`` the learned label.

A multi-slot decision is VW's conditional contextual bandit (CCB) DSJSON: ``c`` also holds ``_slots``
(one object per filled slot, in request order: ``_id``, the slot's features and ``_inc``, the 0-based
``_multi`` indices it could take), and after ``c`` come ``_outcomes`` (per slot: ``_id``, ``_a`` the
0-based indices with the chosen one first, ``_p`` their probabilities, ``_label_cost`` once learned) and
``_ba``, per slot the ``_multi`` index of its baselineAction (of the first action left where the rules
forbid the baseline in that slot).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic_core import to_json

from .errors import ApiError

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
_string = json.encoder.encode_basestring  # what _dumps writes for a string (json's C function)
_float = float.__repr__  # what _dumps writes for a finite float
_PREDICT_HEADS: dict[int, str] = {}  # n_actions: the head of predict_line's text


def merge(objects: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """Merge a Personalizer feature list into one object; a repeated top-level name is an error."""
    if len(objects) == 1:
        return objects[0]
    merged: dict[str, Any] = {}
    for i, obj in enumerate(objects):
        for key, value in obj.items():
            if key in merged:
                raise ApiError(
                    400, "InvalidRankRequest", f"{where}[{i}] repeats the feature name {key!r}", target=where
                )
            merged[key] = value
    return merged


def context_json(context: dict[str, Any], actions: list[tuple[str, dict[str, Any]]], id_feature: bool) -> str:
    """The ``c`` object as JSON text: shared features plus ``_multi`` for the given actions.

    Each action carries its id under ``_id`` (VW skips keys starting with '_') and, when
    ``id_feature`` is on and the action has no ``id`` feature of its own, as the feature ``id``.
    """
    multi = []
    for action_id, features in actions:
        entry = {"_id": action_id}
        if id_feature and "id" not in features:
            entry["id"] = action_id
        entry.update(features)
        multi.append(entry)
    # pydantic_core's encoder: the same text as _dumps (numbers in their shortest form, UTF-8 as is), but for
    # the exponent of small floats (1e-5 where json writes 1e-05), at under half the cost
    return to_json({**context, "_multi": multi}).decode()


def predict_line(c_json: str, n_actions: int) -> str:
    """What VW parses to predict. Its DSJSON parser needs a non-empty ``a``; the order does not matter."""
    head = _PREDICT_HEADS.get(n_actions)
    if head is None:
        head = '{"a":' + _dumps(list(range(1, n_actions + 1))) + ',"c":'
        if len(_PREDICT_HEADS) < 1024:  # one per number of eligible actions seen: a few in practice
            _PREDICT_HEADS[n_actions] = head
    return head + c_json + "}"


def decision_line(event_id: str, timestamp: str, c_json: str, order: list[int], pmf: list[float], **extra: Any) -> str:
    """The logged record: ``order`` holds 0-based indices into ``_multi``, the chosen action first."""
    if not extra:  # Rank's record: the text _dumps writes for the head below, written directly (a third less)
        try:
            p = ",".join([_float(pmf[i]) for i in order])
        except TypeError:  # a probability that is not a float (an imported record's): _dumps writes it
            p = "n"
        if "n" not in p:  # not nan or inf either, which json spells otherwise
            a = ",".join([str(i + 1) for i in order])
            return (
                f'{{"Version":"1","EventId":{_string(event_id)},"Timestamp":{_string(timestamp)},'
                f'"a":[{a}],"p":[{p}],"c":{c_json}}}'
            )
    head = {
        "Version": "1",
        "EventId": event_id,
        "Timestamp": timestamp,
        "a": [i + 1 for i in order],
        "p": [pmf[i] for i in order],
        **extra,
    }
    return _dumps(head)[:-1] + ',"c":' + c_json + "}"


def head(line: str, decode: Callable[[str], Any] = json.loads) -> Any:
    """The record's head: its keys before ``c`` (``EventId``, ``Timestamp``, ``a``, ``p``, a label), decoded
    without the features; a :class:`ValueError` when the line has no ``c`` or its head is not JSON."""
    return decode(line[: line.index(',"c":')] + "}")


def labeled(line: str, reward: float, *, skip_learn: bool = False) -> str:
    """The record with VW's CB label added: cost = -reward on the chosen (first) action, at its logged
    probability."""
    logged = head(line)
    return with_label(line, logged["a"][0] - 1, reward, logged["p"][0], skip_learn=skip_learn)


def with_label(line: str, index: int, reward: float, probability: float = 1.0, *, skip_learn: bool = False) -> str:
    """The record with VW's CB label: cost = -reward on ``_multi[index]`` at ``probability`` (1: a known reward,
    not an explored one, as Apprentice's imitation learns). VW's DSJSON parser reads the label only when it
    comes before ``c``, so it is put first."""
    label = {
        "_label_cost": -reward,
        "_label_probability": probability,
        "_label_Action": index + 1,
        "_labelIndex": index,
    }
    if skip_learn:
        label["_skipLearn"] = True
    return _dumps(label)[:-1] + "," + line[1:]


def label_reward(cost: Any, where: str = "_label_cost") -> float:
    """The reward a read label's cost stands for (the cost negated, never -0.0); a :class:`ValueError` unless
    it is a number in [-1, 1]."""
    if type(cost) not in (int, float) or not -1 <= cost <= 1:
        raise ValueError(f"{where} must be a number in [-1, 1] (the reward negated)")
    return 0.0 - cost


def with_slots(c_json: str, slots: list[dict[str, Any]]) -> str:
    """The ``c`` object of :func:`context_json` with ``_slots`` added: each slot ``{"_id", "_inc", ...features}``."""
    return c_json[:-1] + ',"_slots":' + _dumps(slots) + "}"


def multislot_line(
    event_id: str, timestamp: str, c_json: str, outcomes: list[dict[str, Any]], baseline: list[int]
) -> str:
    """The logged multi-slot record."""
    head = {"Version": "1", "EventId": event_id, "Timestamp": timestamp}
    return ccb_line(head, c_json, {"_outcomes": outcomes, "_ba": baseline})


def ccb_line(head: dict[str, Any], c: str | dict[str, Any], tail: dict[str, Any]) -> str:
    """A multi-slot line: ``head``'s keys, then ``c`` (an object or its JSON text), then ``tail``'s keys
    (``_outcomes``, ``_ba``): VW's DSJSON parser reads ``_outcomes`` only after ``c``."""
    front = _dumps(head)[:-1] + ("," if head else "")
    return front + '"c":' + (c if isinstance(c, str) else _dumps(c)) + "," + _dumps(tail)[1:]


def record_problem(line: Any) -> str | None:
    """Why a logged record cannot be learned as the server writes records, or None when it can.

    The server never writes such a record; a bad copy or a manual edit of the log can. Checked: the whole line
    is one JSON object with ``c`` and its non-empty ``_multi``; single-slot: ``a`` orders every action once
    (1-based) and ``p`` has a probability in [0, 1] for each, the chosen one above 0; multi-slot: ``c`` has
    ``_slots``, and each ``_outcomes`` entry names its slot and orders actions of ``_multi`` (0-based) with a
    probability for each, the chosen one above 0.
    """
    if not isinstance(line, str):
        return f"the record is {type(line).__name__}, not JSON text"
    try:
        record = json.loads(line)
    except ValueError as exc:
        return f"not JSON ({exc})"
    if not isinstance(record, dict) or not isinstance(record.get("c"), dict):
        return "no context object c"
    multi = record["c"].get("_multi")
    if not isinstance(multi, list) or not multi or not all(isinstance(action, dict) for action in multi):
        return "no actions in c._multi"
    n = len(multi)

    def ranking(actions: Any, probabilities: Any, first: int, what: str) -> str | None:
        if not isinstance(actions, list) or not actions or not all(type(i) is int for i in actions):
            return f"{what}: the actions are not a list of indices"
        if len(set(actions)) != len(actions) or not all(first <= i < n + first for i in actions):
            return f"{what}: the actions {actions} are not distinct indices of the {n} actions"
        if not isinstance(probabilities, list) or len(probabilities) != len(actions):
            return f"{what}: not one probability per action"
        if not all(type(q) in (int, float) and 0 <= q <= 1 for q in probabilities) or probabilities[0] <= 0:
            return f"{what}: the probabilities {probabilities} are not in [0, 1] with the chosen one above 0"
        return None

    if "_outcomes" not in record:
        if len(record.get("a") or ()) != n:
            return f"a does not order the {n} actions"
        return ranking(record.get("a"), record.get("p"), 1, "a, p")
    outcomes, slots = record["_outcomes"], record["c"].get("_slots")
    if not isinstance(outcomes, list) or not outcomes or not isinstance(slots, list) or len(slots) != len(outcomes):
        return "the slots (c._slots) and their _outcomes do not match"
    for k, outcome in enumerate(outcomes):
        if not isinstance(outcome, dict) or not isinstance(outcome.get("_id"), str):
            return f"_outcomes[{k}] names no slot"
        problem = ranking(outcome.get("_a"), outcome.get("_p"), 0, f"_outcomes[{k}]")
        if problem:
            return problem
    return None


def is_multislot(line: str) -> bool:
    """Whether a record is multi-slot (CCB). Feature names never start with '_', so the key is ours."""
    return '"_outcomes":[' in line


def split_multislot(line: str) -> tuple[str, dict[str, Any]]:
    """A multi-slot record as (its text up to and including ``c``, its tail ``{"_outcomes", "_ba"}``)."""
    at = line.rindex(',"_outcomes":[')
    return line[:at], json.loads("{" + line[at + 1 :])


def logged_actions(line: str) -> list[int]:
    """The ``_multi`` index of each slot's logged action in a multi-slot line (its ``_outcomes``' ``_a[0]``)."""
    return [outcome["_a"][0] for outcome in split_multislot(line)[1]["_outcomes"]]


def labeled_slots(line: str, rewards: list[float], *, skip_learn: bool = False) -> str:
    """The multi-slot record with a cost (-reward) on each slot's chosen action, in ``_outcomes`` order, and
    ``"_skipLearn":true`` between ``c`` and ``_outcomes`` when asked (VW's parser reads it anywhere)."""
    front, tail = split_multislot(line)
    for outcome, reward in zip(tail["_outcomes"], rewards, strict=True):
        outcome["_label_cost"] = -reward
    return front + (',"_skipLearn":true' if skip_learn else "") + "," + _dumps(tail)[1:]


def with_slot_labels(line: str, labels: list[tuple[int, float]]) -> str:
    """The multi-slot record with each slot's outcome replaced by ``(action index, reward)`` at probability 1:
    known rewards, not explored ones (Apprentice's imitation)."""
    front, tail = split_multislot(line)
    for outcome, (index, reward) in zip(tail["_outcomes"], labels, strict=True):
        outcome.update({"_a": [index], "_p": [1.0], "_label_cost": -reward})
    return front + "," + _dumps(tail)[1:]
