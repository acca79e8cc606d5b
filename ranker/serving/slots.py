"""Multi-slot Rank's filling: which actions each slot may take once its rules have spoken, and the slots
filled in order, each with a different action, each predicted with the slots above it pinned (VW's CCB).
:meth:`ranker.serving.service.Service.rank_multislot` uses it; a simulation calls it with its own VW workspace to
choose exactly as the service does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import PydanticSerializationError, to_json

from ..core import dsjson, rules
from . import discovery
from .engine import Engine, reweight, sample, unreadable


@dataclass
class Slots:
    """The slots :func:`choose_slots` filled: the record's ``_slots``, ``_outcomes`` and ``_ba`` (filled slots
    only), and per requested slot the ``_multi`` index chosen with its probability (None: no action left) and
    the actions a discovery floor raised (``_multi`` index -> the rule's ``{"rule", "floor", "share"}``)."""

    slots: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    baselines: list[int] = field(default_factory=list)
    chosen: list[tuple[int, float] | None] = field(default_factory=list)
    raised: list[dict[int, dict[str, Any]]] = field(default_factory=list)


def slot_options(
    slot_ids: list[str], features: list[dict[str, Any]], verdicts: list[rules.Verdict], baselines: list[int]
) -> tuple[list[int], list[tuple[str, dict[str, Any], list[tuple[int, float]], int | None]]]:
    """What :func:`choose_slots` chooses from, given each slot's rule verdict and baselineAction (indices into
    the request's actions): the actions some slot may take, in request order (the record's ``_multi``), and
    per slot its id, features, allowed ``_multi`` indices with their priority factors and its baseline's
    ``_multi`` index (None where the rules forbid it in the slot)."""
    offered = sorted({i for verdict in verdicts for i in verdict.eligible})
    position = {action: m for m, action in enumerate(offered)}
    slots = [
        (
            slot_id,
            slot_features,
            [(position[i], f) for i, f in zip(verdict.eligible, verdict.factors, strict=True)],
            position[baseline] if baseline in verdict.eligible else None,
        )
        for slot_id, slot_features, verdict, baseline in zip(slot_ids, features, verdicts, baselines, strict=True)
    ]
    return offered, slots


def choose_slots(
    event_id: str,
    c_json: str,
    slots: list[tuple[str, dict[str, Any], list[tuple[int, float]], int | None]],
    predict_slots: Callable[[str], list[dict[int, float]]] | None,
    floors: list[dict[int, dict[str, Any]]] | None = None,
    *,
    scores: Callable[[list[tuple[int, int]], int, list[int]], list[dict[int, float]]] | None = None,
) -> Slots:
    """Fill the slots in order, each with a different action (see :meth:`Service.rank_multislot`); a script
    calls it with its own VW workspace to choose exactly as the service does.

    ``slots``: per slot its id, its features, the ``_multi`` indices its rules allow with their priority
    factors, and its baselineAction's ``_multi`` index (None where the rules forbid it in the slot).
    ``predict_slots`` gives VW's per-slot scores for a ``c`` object with ``_slots`` (``Engine.predict_slots``);
    None serves every slot its baseline (Apprentice). Per slot: the actions allowed minus those earlier slots
    took; VW's scores for the slot with the earlier slots pinned to their actions (``_inc``), reweighted by
    the priority factors, then the slot's discovery ``floors`` (per slot, ``_multi`` index -> ``{"rule",
    "floor", "share"}``: :func:`ranker.serving.discovery.slot_floors`) mixed in over the actions left
    (:func:`ranker.serving.discovery.floor`), so the probability logged for the slot is the one its action was drawn
    with; the draw uses the number of ``"{event id}\n{k}"``. Apprentice serves the baseline where it is left
    (no floors), else the first action left; ``_ba`` logs the baselineAction wherever the rules allow it
    (taken or not: the Baseline of offline evaluation), else the first action left.
    """
    taken: set[int] = set()
    filled: list[tuple[int, int]] = []  # (request slot index, its action) of the slots filled so far
    filling = Slots()
    for k, (slot_id, features, allowed, baseline) in enumerate(slots):
        raised: dict[int, dict[str, Any]] = {}
        left = [(m, f) for m, f in allowed if m not in taken]
        if not left:
            filling.chosen.append(None)
            filling.raised.append(raised)
            continue
        candidates = [m for m, _ in left]
        served_baseline = baseline if baseline in candidates else candidates[0]
        if predict_slots is None and scores is None:
            pmf = [float(m == served_baseline) for m in candidates]
            chosen = candidates.index(served_baseline)
        else:
            # the earlier slots pinned to their actions, so VW's PMF for this slot is conditioned on them
            if scores is not None:
                per_slot = scores(filled, k, candidates)
            else:
                pinned = [
                    {**entry, "_inc": [outcome["_a"][0]]}
                    for entry, outcome in zip(filling.slots, filling.outcomes, strict=True)
                ]
                slot_entry = {"_id": slot_id, **features, "_inc": candidates}
                per_slot = predict_slots(dsjson.with_slots(c_json, [*pinned, slot_entry]))
            slot_scores = per_slot[-1] if len(per_slot) == len(filled) + 1 else {}
            pmf = reweight([slot_scores.get(m, 0.0) for m in candidates], [f for _, f in left])
            if floors and floors[k]:
                at = {m: j for j, m in enumerate(candidates)}
                pmf, up = discovery.floor(pmf, {at[m]: w["floor"] for m, w in floors[k].items() if m in at})
                raised = {candidates[j]: floors[k][candidates[j]] for j in sorted(up)}
            chosen = sample(pmf, f"{event_id}\n{k}")
        # by probability, highest first, ties in candidate order (a reversed sort keeps equal keys in order)
        others = list(range(len(candidates)))
        del others[chosen]
        order = [chosen] + sorted(others, key=pmf.__getitem__, reverse=True)
        filling.slots.append({"_id": slot_id, **features, "_inc": candidates})
        filling.outcomes.append({"_id": slot_id, "_a": [candidates[j] for j in order], "_p": [pmf[j] for j in order]})
        filling.baselines.append(served_baseline if baseline is None else baseline)
        filling.chosen.append((candidates[chosen], pmf[chosen]))
        filling.raised.append(raised)
        taken.add(candidates[chosen])
        filled.append((k, candidates[chosen]))
    return filling


_LOW, _HIGH = 1e-4, 1.0  # json and pydantic_core write a float in [1e-4, 1] alike (below: 1e-05 against 1e-5)


def record_line(event_id: str, stamp: str, c_json: str, filling: Slots) -> str:
    """The logged record of a multi-slot decision: ``dsjson.multislot_line(event_id, stamp,
    dsjson.with_slots(c_json, filling.slots), filling.outcomes, filling.baselines)``, the same text.

    Its head and ``_outcomes`` are written by pydantic_core (a fifth of json's cost for 60 probabilities) when
    every probability is in [1e-4, 1], where both write the same shortest form; otherwise, or when a text
    cannot be written as UTF-8 (a lone surrogate), by ``multislot_line``."""
    c = dsjson.with_slots(c_json, filling.slots)
    outcomes = filling.outcomes
    if all(all(map(_LOW.__le__, o["_p"])) and all(map(_HIGH.__ge__, o["_p"])) for o in outcomes):
        try:
            head = to_json({"Version": "1", "EventId": event_id, "Timestamp": stamp})
            tail = to_json({"_outcomes": outcomes, "_ba": filling.baselines})
        except PydanticSerializationError:
            pass
        else:
            return head[:-1].decode() + ',"c":' + c + "," + tail[1:].decode()
    return dsjson.multislot_line(event_id, stamp, c, outcomes, filling.baselines)


def fill_slots(
    engine: Engine,
    event_id: str,
    c_json: str,
    slots: list[tuple[str, dict[str, Any], list[tuple[int, float]], int | None]],
    floors: list[dict[int, dict[str, Any]]] | None,
    predicted: list[tuple[list[dict[int, float]], Any]],
) -> Slots:
    """:func:`choose_slots` with VW's scores from one parse of ``c`` for all the slots
    (:meth:`ranker.serving.engine.Engine.slot_predictor`): the same slots, probabilities and record as a line per
    slot. Each prediction is added to ``predicted`` (its per-slot scores, None); 400 when VW cannot read the
    features."""

    try:
        predictor = engine.slot_predictor(c_json, [{"_id": slot_id, **features} for slot_id, features, _, _ in slots])
    except (RuntimeError, ValueError) as exc:  # VW refused the features
        raise unreadable(exc) from exc

    def scores(pinned: list[tuple[int, int]], k: int, candidates: list[int]) -> list[dict[int, float]]:
        try:
            per_slot = predictor.scores(pinned, k, candidates)
        except (RuntimeError, ValueError) as exc:
            raise unreadable(exc) from exc
        predicted.append((per_slot, None))
        return per_slot

    try:
        return choose_slots(event_id, c_json, slots, None, floors, scores=scores)
    finally:
        predictor.close()
