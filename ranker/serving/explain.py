"""Why the model scored an action as it did: each weight × value term of VW's linear score.

VW's score of an action (a cost estimate; lower is better) is the sum over the action's features, and over
the interactions of its namespaces, of weight × value, plus the constant feature's weight. This module
lists those terms for a decision, named as VW's ``--audit`` names them (``account^planenterprise``,
``account^planenterprise*kind^motionrenewal``), with the sign turned so that a positive score argues for
the action (VW's cost is −reward). An action's terms plus its constant add up to ``score``, the model's
raw score for it (−cost), which VW itself computed for the same request.

The terms are rebuilt from what VW parsed, not from its audit printout (which goes to the process's
stdout, shared by every thread of a serving worker): :mod:`ranker.serving.vwfeatures` rebuilds VW's feature space
(hashing, merging, interactions, the weight table, read once per served model); this module multiplies out
the terms, keeps the largest and says what Rank answers; single-slot Rank's terms come from
:mod:`ranker.serving.rankterms` (the context's terms once per request, each action's own once per model), which
lists the same terms as the grid here. tests/test_explain.py checks the sums against VW's raw scores.

About 530 lines: the grid (per-model caches of what depends on the actions' namespaces alone, arrays per action;
multi-slot Rank's path, and single-slot's when an action has too many features for rankterms) stays beside the exact
path it must agree with, so both are read together.

VW adds the terms in single precision, so its score differs from the exact sum of the terms by a rounding
(about 1e-7 of the score, at most TOLERANCE): ``constant`` carries it, and the parts add up to VW's score.
When a term cannot be rebuilt (an option this module does not model), a larger difference is reported as
one more term, ``(not attributed)``, so that the sum still holds and nothing is hidden.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import rankterms
from .vwfeatures import (
    CCB_ID_NAMESPACE,
    CONSTANT_HASH,
    CONSTANT_NAMESPACE,
    FNV_PRIME,
    PAD,
    Model,
    Parsed,
    compile_interactions,
    flat,
    interaction_namespace,
)

NOT_ATTRIBUTED = "(not attributed)"
# A rebuilt score further than this from VW's own (relative to the score's size) leaves a remainder term.
TOLERANCE = 1e-5


@dataclass
class Explanation:
    """One action's explanation: the model's score (−VW's cost), the constant's part, the largest terms (as Rank
    answers them: ``{"name", "score"}``, largest first)."""

    score: float
    constant: float
    features: list[dict[str, Any]]

    def body(self, action_id: str) -> dict[str, Any]:
        return {"id": action_id, "score": self.score, "constant": self.constant, "features": self.features}


# -- the terms -----------------------------------------------------------------------------------------


@dataclass
class _Features:
    """One action's features as VW's learner sees them: each feature's namespace, index (the hash times VW's
    multiplier, applied in :func:`explain_batch`), value and name; namespaces in order (:func:`merged_features`),
    except for :func:`explain_batch`'s grid, which needs only each namespace's features in VW's order."""

    ns: list[int]
    index: list[int]
    value: list[float]
    names: list[str]
    multiplier: int = 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        index = np.array(self.index, dtype=np.uint64) * np.uint64(self.multiplier)
        return np.array(self.ns, dtype=np.uint8), index, np.array(self.value, dtype=np.float32)


def merged_features(
    model: Model, own: dict[int, tuple[list, list, list]], shared: dict[int, tuple[list, list, list]], multiplier: int
) -> _Features:
    """The action's features as VW's learner sees them once the shared ones are merged in: per namespace the
    action's own features, then the shared ones, and the action's constant."""
    f = _Features([], [], [], [], multiplier)
    empty = ([], [], [])
    for ns in sorted(own.keys() | shared.keys()):
        oh, ov, on = own.get(ns, empty)
        sh, sv, sn = shared.get(ns, empty)
        f.ns += [ns] * (len(oh) + len(sh))
        f.index += oh + sh
        f.value += ov + sv
        f.names += on + sn
    if model.constant:
        f.ns.append(CONSTANT_NAMESPACE)
        f.index.append(CONSTANT_HASH)
        f.value.append(1.0)
        f.names.append("Constant")
    return f


@dataclass
class _Arrays:
    ns: np.ndarray
    index: np.ndarray
    value: np.ndarray
    names: list[str]


def terms(model: Model, f: _Features) -> tuple[np.ndarray, list[tuple[int, ...]], float]:
    """Every term of the action's score as (scores, the features of each term, the constant's score);
    scores have the sign turned (−weight × value)."""
    f = _Arrays(*f.arrays(), f.names)
    scores: list[np.ndarray] = []
    members: list[np.ndarray] = []
    constant = 0.0
    n = len(f.index)
    positions = np.arange(n)
    linear = np.array([ns not in model.ignore_linear for ns in f.ns.tolist()], dtype=bool)
    const = f.ns == CONSTANT_NAMESPACE
    if const.any():
        constant = float(-(model.weights(f.index[const]) * f.value[const]).sum(dtype=np.float64))
    keep = linear & ~const
    scores.append(-(model.weights(f.index[keep]) * f.value[keep]))
    members.append(positions[keep][:, None])
    present = sorted({int(ns) for ns in f.ns.tolist() if interaction_namespace(int(ns))})
    starts = {int(ns): int(np.argmax(f.ns == ns)) for ns in set(f.ns.tolist())}
    counts = {int(ns): int((f.ns == ns).sum()) for ns in set(f.ns.tolist())}
    for inter in compile_interactions(model.specs, present):
        if any(ns not in counts for ns in inter):
            continue
        # VW's hash chain: h = FNV*i1; h = FNV*(h ^ i_m) for the middle terms; index = i_last ^ h
        combos = np.array([[0]], dtype=np.int64)  # rows: positions of the term's features
        for level, ns in enumerate(inter):
            own = np.arange(starts[ns], starts[ns] + counts[ns])
            rows = np.repeat(combos, len(own), axis=0) if level else own[:, None]
            if level:
                cols = np.tile(own, len(combos))
                if inter[level - 1] == ns:  # the same namespace again: this feature and the ones after it
                    ok = cols >= rows[:, -1]
                    rows, cols = rows[ok], cols[ok]
                rows = np.concatenate([rows, cols[:, None]], axis=1)
            combos = rows
        index = f.index[combos]
        h = index[:, 0] * FNV_PRIME
        for m in range(1, combos.shape[1] - 1):
            h = (h ^ index[:, m]) * FNV_PRIME
        hashed = index[:, -1] ^ h if combos.shape[1] > 1 else index[:, 0]
        value = f.value[combos[:, 0]]
        for m in range(1, combos.shape[1]):
            value = value * f.value[combos[:, m]]
        scores.append(-(model.weights(hashed) * value))
        members.append(combos)
    flat = np.concatenate([s.astype(np.float64) for s in scores]) if scores else np.zeros(0)
    groups = [tuple(row) for m in members for row in m.tolist()]
    return flat, groups, constant


def explain_action(model: Model, f: _Features, cost: float, top: int) -> Explanation:
    """The action's score (−``cost``, VW's own), its constant and its ``top`` largest terms."""
    scores, groups, constant = terms(model, f)
    score = 0.0 - float(cost)  # 0.0 - x: no negative zero
    constant += 0.0
    rest = score - constant - float(scores.sum())
    listed = []
    if len(scores):
        k = min(top, len(scores))
        best = np.argpartition(-np.abs(scores), k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        best = sorted((i for i in best.tolist() if scores[i] != 0), key=lambda i: -abs(scores[i]))
        listed = [{"name": "*".join(f.names[p] for p in groups[i]), "score": float(scores[i])} for i in best]
    if abs(rest) <= TOLERANCE * max(1.0, abs(score)):
        # VW adds the terms in single precision; the constant carries that rounding, so the parts add up
        constant += rest
    else:
        listed.append({"name": NOT_ATTRIBUTED, "score": rest})
        listed.sort(key=lambda t: -abs(t["score"]))
        listed = listed[: max(top, 1)] if listed[0]["name"] == NOT_ATTRIBUTED else listed[:top]
    return Explanation(score, constant, listed)


@functools.lru_cache(maxsize=64)
def _later(m: int) -> np.ndarray:
    """``[i, j]``: position j is i or after it (read only)."""
    later = np.triu(np.ones((m, m), dtype=bool))
    later.flags.writeable = False
    return later


class _Layout(NamedTuple):
    """What :func:`explain_batch` reads of its actions' namespaces alone (the same for every request whose
    actions have the same namespaces in the same order): the pairs that are interactions (action, first,
    second position) and each one's column among its action's pair terms, the linear and constant features,
    the slot index feature, and, per column of the terms, its features' positions and its arity."""

    a: np.ndarray
    i: np.ndarray
    j: np.ndarray
    column: np.ndarray
    width: int
    dense: bool
    linear: np.ndarray
    constant: np.ndarray
    slot_at: np.ndarray
    allowed3: np.ndarray | None
    first: np.ndarray
    second: np.ndarray
    arity: np.ndarray


def _layout(model: Model, ns: np.ndarray) -> _Layout:
    key = (ns.shape, ns.tobytes())
    found = model.layouts.get(key)
    if found is None:
        if len(model.layouts) >= 1000:
            model.layouts.clear()
        found = model.layouts[key] = _new_layout(model, ns)
    return found


def _new_layout(model: Model, ns: np.ndarray) -> _Layout:
    n, m = ns.shape
    same = ns[:, :, None] == ns[:, None, :]
    order_ok = ~same | _later(m)
    a, i, j = np.nonzero(model.pairs[ns[:, :, None], ns[:, None, :]] & order_ok)
    per_action = np.bincount(a, minlength=n)
    starts = np.concatenate([[0], np.cumsum(per_action)[:-1]])
    column = np.arange(len(a)) - starts[a]
    width = int(per_action.max()) if n else 0
    dense = bool((per_action == width).all())
    slot_at = np.argmax(ns == CCB_ID_NAMESPACE, axis=1)
    cubic = model.multislot and bool((ns == CCB_ID_NAMESPACE).any())
    allowed3 = model.triples[ns[:, :, None], ns[:, None, :]] & order_ok if cubic else None
    # per term column: linear (m), pairs (width), triples (m * m when cubic)
    first = [np.broadcast_to(np.arange(m), (n, m)), np.zeros((n, width), dtype=np.intp)]
    second = [np.zeros((n, m), dtype=np.intp), np.zeros((n, width), dtype=np.intp)]
    arity = [np.zeros((n, m), dtype=np.int8), np.ones((n, width), dtype=np.int8)]
    first[1][a, column], second[1][a, column] = i, j
    if cubic:
        grid = np.arange(m * m)
        first.append(np.broadcast_to(grid // m, (n, m * m)))
        second.append(np.broadcast_to(grid % m, (n, m * m)))
        arity.append(np.full((n, m * m), 2, dtype=np.int8))
    layout = _Layout(
        a,
        i,
        j,
        column,
        width,
        dense,
        model.linear[ns].astype(np.float32),
        ns == CONSTANT_NAMESPACE,
        slot_at,
        allowed3,
        np.concatenate(first, axis=1),
        np.concatenate(second, axis=1),
        np.concatenate(arity, axis=1),
    )
    for part in layout:
        if isinstance(part, np.ndarray):
            part.flags.writeable = False
    return layout


def explain_batch(model: Model, feats: list[_Features], costs: list[float], top: int) -> list[Explanation]:
    """:func:`explain_action` for several actions at once, with every interaction of every action in one grid
    of feature pairs (VW's pair order: a namespace with itself pairs each feature with itself and the later
    ones); a model with interactions the grid does not cover takes :func:`explain_action`."""
    if not model.fast:
        return [explain_action(model, f, c, top) for f, c in zip(feats, costs, strict=True)]
    m = max(len(f.index) for f in feats)
    ns = np.array([f.ns + [PAD] * (m - len(f.ns)) for f in feats], dtype=np.uint8)
    index = np.array([f.index + [0] * (m - len(f.ns)) for f in feats], dtype=np.uint64)
    value = np.array([f.value + [0.0] * (m - len(f.ns)) for f in feats], dtype=np.float32)
    index *= np.uint64(feats[0].multiplier)
    return _explain_rows(model, ns, index, value, [f.names for f in feats], costs, top)


def _explain_rows(
    model: Model,
    ns: np.ndarray,
    index: np.ndarray,
    value: np.ndarray,
    names: list[list[str]],
    costs: list[float],
    top: int,
) -> list[Explanation]:
    """:func:`explain_batch` of actions given as rows (namespace, index times VW's multiplier, value; padded
    with namespace ``PAD``) and each action's feature names."""
    n, m = ns.shape
    grid = _layout(model, ns)
    a, i, j = grid.a, grid.i, grid.j
    # only the pairs that are interactions read the weight table (a random read each: the cost of the grid)
    hashed = (index[a, i] * FNV_PRIME) ^ index[a, j]
    pair_scores = -(model.weights(hashed) * (value[a, i] * value[a, j]))
    if grid.dense:  # every action has as many pairs: one row each, in order
        pair_scores = pair_scores.reshape(n, -1)
    else:
        padded = np.zeros((n, grid.width), dtype=np.float32)
        padded[a, grid.column] = pair_scores
        pair_scores = padded
    weighted = -(model.weights(index) * value)
    parts = [weighted * grid.linear, pair_scores]
    slot_at = grid.slot_at
    if grid.allowed3 is not None:  # (a, b, slot index): VW's chain hash with the slot index feature last
        pair_hash = (index[:, :, None] * FNV_PRIME) ^ index[:, None, :]
        pair_value = value[:, :, None] * value[:, None, :]
        slot_index = index[np.arange(n), slot_at]
        hashed = (pair_hash * FNV_PRIME) ^ slot_index[:, None, None]
        slot_value = value[np.arange(n), slot_at][:, None, None]
        parts.append(np.where(grid.allowed3, -(model.weights(hashed) * (pair_value * slot_value)), 0).reshape(n, -1))
    scores = np.concatenate(parts, axis=1)  # float32, as VW multiplies
    constants = np.where(grid.constant, weighted, 0).sum(axis=1, dtype=np.float64)
    # each action's largest terms, largest first (ties in argpartition's order), all actions at once
    k, rows = min(top, scores.shape[1]), np.arange(n)[:, None]
    magnitude = np.abs(scores)
    if k < scores.shape[1]:
        best = np.argpartition(magnitude, -k, axis=1)[:, -k:]
    else:
        best = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    best = best[rows, np.argsort(-magnitude[rows, best], axis=1, kind="stable")]
    largest = scores[rows, best].astype(np.float64)
    # each listed term's features, as positions in the action's features: first, second (pairs), slot (triples)
    first = grid.first[rows, best].tolist()
    second = grid.second[rows, best].tolist()
    arity = grid.arity[rows, best].tolist()
    nonzero = (largest != 0).tolist()
    largest = largest.tolist()
    sums = scores.sum(axis=1, dtype=np.float64).tolist()
    slots, constants = slot_at.tolist(), constants.tolist()
    out = []
    for a, action_names in enumerate(names):
        slot_name = action_names[slots[a]]
        listed = [
            {
                "name": action_names[i]
                if r == 0
                else action_names[i] + "*" + action_names[j]
                if r == 1
                else action_names[i] + "*" + action_names[j] + "*" + slot_name,
                "score": term,
            }
            for i, j, r, term, keep in zip(first[a], second[a], arity[a], largest[a], nonzero[a], strict=True)
            if keep
        ]
        out.append(_finished(costs[a], constants[a], listed, sums[a], top))
    return out


def _finished(cost: float, constant: float, listed: list, total: float, top: int) -> Explanation:
    """An action's explanation from VW's ``cost``, the constant's part, its largest terms ({name, score}) and the
    sum of all its terms: the rounding between the terms' sum and VW's score goes to the constant, a
    larger difference is listed as :data:`NOT_ATTRIBUTED`."""
    score = 0.0 - float(cost)  # 0.0 - x: no negative zero
    constant += 0.0
    rest = score - constant - total
    if abs(rest) <= TOLERANCE * max(1.0, abs(score)):
        constant += rest  # VW adds in single precision: the constant carries the rounding
    else:
        listed = sorted([*listed, {"name": NOT_ATTRIBUTED, "score": rest}], key=lambda t: -abs(t["score"]))
        listed = listed[: max(top, 1)]
    return Explanation(score, constant, listed)


def explain_cb(
    model: Model, parsed: Parsed, context: dict[str, Any], actions: list[dict[str, Any]], which: list[int], top: int
) -> dict[int, Explanation]:
    """Explanations of the actions ``which`` (``_multi`` indices) of a single-slot prediction."""
    shared = model.features(context)
    if model.fast:
        # the context's terms once, each action's own terms once per model, the pairs across per action
        found = rankterms.rank_terms(model, shared, actions, parsed.multiplier, top)
        if found is not None:
            per_action, constant = found
            return {
                i: _finished(parsed.costs[i], constant, *per_action[i], top)  # type: ignore[arg-type]
                for i in which
            }
        # an action with more features than the terms' keys hold: the grid, each action's own features then the
        # shared ones (VW's order in a namespace)
        s_ns, s_index, s_value, s_names = flat(shared)
        if model.constant:
            s_ns, s_index = [*s_ns, CONSTANT_NAMESPACE], [*s_index, CONSTANT_HASH]
            s_value, s_names = [*s_value, 1.0], [*s_names, "Constant"]
        feats = []
        for i in which:
            ns, index, value, names = model.action_features(actions[i]).flat
            feats.append(_Features(ns + s_ns, index + s_index, value + s_value, names + s_names, parsed.multiplier))
    else:
        feats = [
            merged_features(model, model.action_features(actions[i]).groups, shared, parsed.multiplier) for i in which
        ]
    return dict(zip(which, explain_batch(model, feats, [parsed.costs[i] for i in which], top), strict=True))


def explain_ccb(
    model: Model,
    parsed: Parsed,
    context: dict[str, Any],
    actions: list[dict[str, Any]],
    slot: dict[str, Any],
    k: int,
    action: int,
    top: int,
) -> Explanation:
    """The explanation of ``_multi`` action ``action`` in slot ``k``, the last slot of a multi-slot
    prediction: its features, the context's, the slot's (its top-level ones in VW's slot namespace, the others
    in their own) and VW's slot index feature ``_ccb_slot_index^index<k>``."""
    shared = {ns: (h[:], v[:], n[:]) for ns, (h, v, n) in model.features(context).items()}
    for ns, (h, v, n) in model.features(slot, slot=True).items():
        group = shared.setdefault(ns, ([], [], []))
        group[0].extend(h)
        group[1].extend(v)
        group[2].extend(n)
    slot_hash = model.ws.hash_feature(f"index{k}", model.space("_id"))
    shared[CCB_ID_NAMESPACE] = ([slot_hash], [1.0], [f"_ccb_slot_index^index{k}"])
    f = merged_features(model, model.action_features(actions[action]).groups, shared, parsed.multiplier)
    return explain_batch(model, [f], [parsed.costs[action]], top)[0]


# -- what Rank answers -----------------------------------------------------------------------------------

EXPLORED_NOTE = (
    "The chosen action is not the one the model ranks first: it was drawn as exploration, or a rule "
    "(priority, discovery) moved it up. Its feature contributions are not the reason it was chosen."
)


def explored(model_pmf: list[float], chosen: int) -> bool:
    """Whether ``chosen`` is not the one action the model's distribution favours most."""
    if len(model_pmf) <= 1:
        return False
    top = max(model_pmf)
    return model_pmf[chosen] < top or model_pmf.count(top) > 1


def action_entry(action_id: str, features: dict[str, Any], id_feature: bool) -> dict[str, Any]:
    """The action's ``_multi`` object as :func:`ranker.core.dsjson.context_json` writes it (for names)."""
    if id_feature and "id" not in features:
        return {"_id": action_id, "id": action_id, **features}
    return {"_id": action_id, **features}


def rank_explanation(
    model: Model,
    parsed: Parsed,
    context: dict[str, Any],
    eligible: list[tuple[str, dict[str, Any]]],
    order: list[int],
    id_feature: bool,
    top: int,
    discovery: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Rank's ``inferenceExplanation``: per eligible action in ranking order, its score, constant and largest
    contributions, and the discovery rule that raised it, if one did."""
    entries = [action_entry(i, f, id_feature) for i, f in eligible]
    found = explain_cb(model, parsed, context, entries, order, top)
    out = []
    for i in order:
        body = found[i].body(eligible[i][0])
        if eligible[i][0] in discovery:
            body["discovery"] = {k: discovery[eligible[i][0]][k] for k in ("rule", "floor")}
        out.append(body)
    return out


def logged(
    verdict: Any, raised: dict[str, dict[str, Any]], was_explored: bool | None = None, answer: bool = False
) -> dict[str, Any]:
    """The rules' part of a decision (what the log's ``explanation`` keeps): exclusions and priority factors
    with the rule that set them, and discovery floors that raised an action. ``answer``: the shape Rank
    answers with (the rules under ``rules``, and ``explored`` beside them)."""
    rules = {"excluded": verdict.excluded, "reweighted": verdict.reweighted}
    if raised:
        rules["discovery"] = raised
    if not answer:
        return rules
    out: dict[str, Any] = {"rules": rules}
    if was_explored is not None:
        out["explored"] = was_explored
        if was_explored:
            out["explorationNote"] = EXPLORED_NOTE
    return out


def slots_explanation(
    model: Model,
    predicted: list[tuple[list[dict[int, float]], Parsed]],
    filling: Any,
    context: dict[str, Any],
    offered: list[tuple[str, dict[str, Any]]],
    id_feature: bool,
    top: int,
    discovery: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Multi-slot Rank's ``inferenceExplanation``: per filled slot, the chosen action's explanation, whether
    it was explored, and the discovery rule that raised it in the slot, if one did (``discovery``: per slot id,
    the actions a floor raised). ``predicted`` holds each filled slot's prediction, in order (``choose_slots``
    predicts once per filled slot, that slot last)."""
    entries = [action_entry(i, f, id_feature) for i, f in offered]
    out = []
    filled = [c for c in filling.chosen if c is not None]
    flags = dict(slots_explored(predicted, filling))
    for k, ((_, parsed), slot, (chosen, _)) in enumerate(zip(predicted, filling.slots, filled, strict=True)):
        found = explain_ccb(model, parsed, context, entries, slot, k, chosen, top)
        body = {"slotId": slot["_id"], **found.body(offered[chosen][0]), "explored": flags[slot["_id"]]}
        rule = (discovery or {}).get(slot["_id"], {}).get(offered[chosen][0])
        if rule is not None:
            body["discovery"] = {"rule": rule["rule"], "floor": rule["floor"]}
        out.append(body)
    return out


def slots_explored(predicted: list[tuple[list[dict[int, float]], Any]], filling: Any) -> list[tuple[str, bool]]:
    """(slot id, explored) of each filled slot a model predicted: whether its action is not the one VW's
    distribution for the slot favours most."""
    filled = [c for c in filling.chosen if c is not None]
    out = []
    for (per_slot, _), slot, (chosen, _) in zip(predicted, filling.slots, filled, strict=False):
        scores = per_slot[-1] if per_slot else {}
        candidates = slot["_inc"]
        out.append((slot["_id"], explored([scores.get(m, 0.0) for m in candidates], candidates.index(chosen))))
    return out
