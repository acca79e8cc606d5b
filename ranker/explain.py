"""Why the model scored an action as it did: each weight × value term of VW's linear score.

VW's score of an action (a cost estimate; lower is better) is the sum over the action's features, and over
the interactions of its namespaces, of weight × value, plus the constant feature's weight. This module
lists those terms for a decision, named as VW's ``--audit`` names them (``account^planenterprise``,
``account^planenterprise*kind^motionrenewal``), with the sign turned so that a positive score argues for
the action (VW's cost is −reward). An action's terms plus its constant add up to ``score``, the model's
raw score for it (−cost), which VW itself computed for the same request.

The terms are rebuilt from what VW parsed, not from its audit printout (which goes to the process's
stdout, shared by every thread of a serving worker): the feature indices and values of the parsed
examples, VW's merging of the shared features into each action (the action's own features first), the
interactions VW generates (``-q ::`` is every pair of namespaces present, in namespace order; a namespace
with itself pairs each feature with itself and the ones after it), VW's interaction hashing
(``(16777619 × i) ^ j``, masked by the weight table), and for a multi-slot policy the slot's features and
VW's slot index feature (``_ccb_slot_index^index<k>``) with the interactions VW adds for it. The weights
come from the model's own table (``json_weights``), read once per served model. tests/test_explain.py
checks names, indices and values against VW's audit output and the sums against VW's raw scores.

VW adds the terms in single precision, so its score differs from the exact sum of the terms by a rounding
(about 1e-7 of the score, at most TOLERANCE): ``constant`` carries it, and the parts add up to VW's score.
When a term cannot be rebuilt (an option this module does not model), a larger difference is reported as
one more term, ``(not attributed)``, so that the sum still holds and nothing is hidden.
"""

from __future__ import annotations

import itertools
import json
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from vowpalwabbit.pyvw import pylibvw

from . import vwoptions

FNV_PRIME = np.uint64(16777619)
CONSTANT_HASH = 11650396
DEFAULT_NAMESPACE = 32
CONSTANT_NAMESPACE = 128
CCB_SLOT_NAMESPACE = 139
CCB_ID_NAMESPACE = 140
WILDCARD = ord(":")
NOT_ATTRIBUTED = "(not attributed)"
# A rebuilt score further than this from VW's own (relative to the score's size) leaves a remainder term.
TOLERANCE = 1e-5


def _interaction_namespace(ns: int) -> bool:
    """Namespaces VW's wildcard interactions cover: printable ASCII and the slot features' namespace."""
    return 32 <= ns <= 126 or ns == CCB_SLOT_NAMESPACE


@dataclass
class Term:
    name: str
    score: float


@dataclass
class Explanation:
    """One action's explanation: the model's score (−VW's cost), the constant's part, the largest terms."""

    score: float
    constant: float
    features: list[Term]
    terms: int  # how many terms the score has (the listed ones are the largest)

    def body(self, action_id: str) -> dict[str, Any]:
        return {
            "id": action_id,
            "score": self.score,
            "constant": self.constant,
            "features": [{"name": t.name, "score": t.score} for t in self.features],
        }


# -- what VW parsed ----------------------------------------------------------------------------------


def example_features(ex: Any) -> list[tuple[int, list[int], list[float]]]:
    """(namespace, indices, values) of a parsed example, in VW's namespace order."""
    out = []
    for i in range(ex.num_namespaces()):
        ns = ex.namespace(i)
        n = ex.num_features_in(ns)
        out.append((ns, [ex.feature(ns, j) for j in range(n)], [ex.feature_weight(ns, j) for j in range(n)]))
    return out


@dataclass
class Parsed:
    """What one prediction read: each example's features and each action's raw score (VW's cost)."""

    shared: list[tuple[int, list[int], list[float]]]
    actions: list[list[tuple[int, list[int], list[float]]]]
    slots: list[list[tuple[int, list[int], list[float]]]]
    costs: list[float]


def read_cb(examples: list[Any]) -> Parsed:
    """Read a single-slot prediction (after ``predict_multi``, before the examples are finished)."""
    actions = [example_features(ex) for ex in examples[1:]]
    costs = [ex.get_partial_prediction() for ex in examples[1:]]
    return Parsed(example_features(examples[0]), actions, [], costs)


def read_ccb(examples: list[Any], n_actions: int) -> Parsed:
    """Read a multi-slot prediction: shared, ``n_actions`` actions, then the slots. The actions' raw scores
    are those of the last slot VW predicted."""
    actions = [example_features(ex) for ex in examples[1 : 1 + n_actions]]
    slots = [example_features(ex) for ex in examples[1 + n_actions :]]
    costs = [ex.get_partial_prediction() for ex in examples[1 : 1 + n_actions]]
    return Parsed(example_features(examples[0]), actions, slots, costs)


# -- the model: weights, interactions, names -----------------------------------------------------------


def _expand(spec: list[int], present: list[int]) -> list[tuple[int, ...]]:
    """VW's expansion of one interaction's wildcards over the (sorted) interaction namespaces present."""
    fixed = [(i, ns) for i, ns in enumerate(spec) if ns != WILDCARD]
    n_wild = len(spec) - len(fixed)
    if n_wild == 0:
        return [tuple(spec)]
    out = []
    for combo in itertools.combinations_with_replacement(present, n_wild):
        full = list(combo)
        for i, ns in fixed:
            full.insert(i, ns)
        out.append(tuple(full))
    return out


def _left_sorted(sorted_terms: tuple[int, ...]) -> bool:
    """VW's ``must_be_left_sorted``: a repeated namespace next to a different one ('aab', 'abb')."""
    if len(sorted_terms) <= 1:
        return True
    diff = pair = False
    for a, b in itertools.pairwise(sorted_terms):
        if a == b:
            if diff:
                return True
            pair = True
        else:
            if pair:
                return True
            diff = True
    return False


def compile_interactions(specs: list[list[int]], present: list[int]) -> list[tuple[int, ...]]:
    """The interactions VW uses for an example whose interaction namespaces are ``present`` (sorted):
    wildcards expanded, sorted by length then namespaces, duplicates (as sets) dropped, and an interaction
    with a repeated namespace sorted (VW's ``compile_interactions``)."""
    compiled: list[tuple[int, ...]] = []
    for spec in specs:
        compiled += _expand(spec, present)
    compiled.sort(key=lambda t: (len(t), t))
    seen: set[tuple[int, ...]] = set()
    out = []
    for inter in compiled:
        key = tuple(sorted(inter))
        if key in seen:
            continue
        seen.add(key)
        out.append(key if _left_sorted(key) else inter)
    return out


def interaction_specs(arguments: str, multislot: bool) -> tuple[list[list[int]], set[int]]:
    """The interactions of VW arguments (``-q``, ``--cubic``, ``--interactions``; with VW's slot-index
    interactions for a multi-slot policy) and the namespaces of ``--ignore_linear``."""
    words = vwoptions.split(arguments)
    specs: list[list[int]] = []
    ignore_linear: set[int] = set()
    for option, value in itertools.pairwise(words):
        if option in ("-q", "--quadratic", "--cubic", "--interactions"):
            specs.append([ord(ch) for ch in value])
        elif option == "--ignore_linear":
            ignore_linear.update(ord(ch) for ch in value)
    if multislot:  # VW's insert_ccb_interactions
        specs = specs + [s + [CCB_ID_NAMESPACE] for s in specs] + [[WILDCARD, CCB_ID_NAMESPACE]]
    return specs, ignore_linear


def weight_table(ws: Any) -> np.ndarray:
    """The model's weights, one per slot of VW's weight table (its non-zero ones from ``json_weights``)."""
    table = np.zeros(ws.num_weights(), dtype=np.float32)
    weights = json.loads(ws.json_weights())["weights"]
    if weights:
        index = np.fromiter((w["index"] for w in weights), dtype=np.int64, count=len(weights))
        table[index] = np.fromiter((w["value"] for w in weights), dtype=np.float32, count=len(weights))
    return table


class Model:
    """What explaining needs of one served model; built once per engine, then only read."""

    def __init__(self, ws: Any, arguments: str, multislot: bool):
        self.ws = ws
        self.multislot = multislot
        self.table = weight_table(ws)
        stride = ws.get_stride()
        self.shift = np.uint64(stride.bit_length() - 1)
        self.mask = np.uint64((ws.num_weights() << int(self.shift)) - 1)
        self.specs, self.ignore_linear = interaction_specs(arguments, multislot)
        self._hashes: dict[tuple[str, str], int] = {}
        self._space: dict[str, int] = {}
        self._lock = threading.Lock()

    def weights(self, index: np.ndarray) -> np.ndarray:
        return self.table[((index & self.mask) >> self.shift).astype(np.int64)]

    def space(self, name: str) -> int:
        found = self._space.get(name)
        if found is None:
            found = self._space[name] = self.ws.hash_space(name)
        return found

    def feature_hash(self, ns: str, name: str) -> int:
        key = (ns, name)
        found = self._hashes.get(key)
        if found is None:
            if len(self._hashes) > 100_000:
                self._hashes.clear()
            found = self._hashes[key] = self.ws.hash_feature(name, self.space(ns))
        return found

    def names(self, obj: dict[str, Any], multiplier: int, slot: bool = False) -> dict[tuple[int, int], str]:
        """(namespace, index) -> VW's audit name of each feature VW's JSON parser makes of ``obj``.

        A slot's top-level features land in VW's slot namespace (139)."""
        names: dict[tuple[int, int], str] = {}
        self._walk(obj, " ", names, multiplier, CCB_SLOT_NAMESPACE if slot else None)
        return names

    def _walk(self, obj: dict[str, Any], ns: str, out: dict, multiplier: int, default_to: int | None) -> None:
        index = ord(ns[0]) if ns != " " or default_to is None else default_to
        prefix = "" if ns == " " else ns + "^"
        for key, value in obj.items():
            if key[:1] == "_":
                continue
            kind = type(value)
            if kind is dict:
                self._walk(value, key, out, multiplier, None)
            elif kind is list:
                if all(type(v) is dict for v in value):
                    for item in value:
                        self._walk(item, key, out, multiplier, None)
                else:
                    base = self.space(key)
                    for i in range(len(value)):
                        out[(ord(key[0]), ((base + i) * multiplier) & 0xFFFFFFFFFFFFFFFF)] = f"{key}^[{i}]"
            elif kind is str:
                out[(index, self.feature_hash(ns, key + value) * multiplier)] = prefix + key + value
            elif value is True or (kind is not bool and value is not None):
                out[(index, self.feature_hash(ns, key) * multiplier)] = prefix + key


_models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_models_lock = threading.Lock()


def model_of(engine: Any, arguments: str | None = None) -> Model:
    """The engine's :class:`Model`, built on first use (reading its weights takes a few milliseconds);
    ``arguments``: the VW options the model was trained with, when the engine was not given them all."""
    with _models_lock:
        model = _models.get(engine)
        if model is None:
            model = _models[engine] = Model(engine.workspace, arguments or engine.arguments, engine.multislot)
        return model


# -- the terms -----------------------------------------------------------------------------------------


@dataclass
class _Features:
    """One action's features as VW's learner sees them: namespaces in order, each feature's index, value
    and name."""

    ns: np.ndarray  # uint8 per feature
    index: np.ndarray  # uint64
    value: np.ndarray  # float32
    names: list[str]


def merged_features(
    model: Model,
    own: list[tuple[int, list[int], list[float]]],
    shared: list[tuple[int, list[int], list[float]]],
    names: dict[tuple[int, int], str],
) -> _Features:
    """The action's features after VW merges the shared ones into it: per namespace the action's own
    features, then the shared ones; the shared constant is not merged (the action has its own)."""
    groups: dict[int, tuple[list[int], list[float]]] = {}
    for ns, idx, val in own:
        g = groups.setdefault(ns, ([], []))
        g[0].extend(idx)
        g[1].extend(val)
    for ns, idx, val in shared:
        if ns == CONSTANT_NAMESPACE:
            continue
        g = groups.setdefault(ns, ([], []))
        g[0].extend(idx)
        g[1].extend(val)
    order = sorted(groups)
    ns_list: list[int] = []
    idx_list: list[int] = []
    val_list: list[float] = []
    name_list: list[str] = []
    for ns in order:
        idx, val = groups[ns]
        ns_list += [ns] * len(idx)
        idx_list += idx
        val_list += val
        for i in idx:
            name = names.get((ns, i))
            if name is None:
                name = "Constant" if ns == CONSTANT_NAMESPACE else f"{chr(ns) if ns < 128 else ns}^#{i}"
            name_list.append(name)
    return _Features(
        np.array(ns_list, dtype=np.uint8),
        np.array(idx_list, dtype=np.uint64),
        np.array(val_list, dtype=np.float32),
        name_list,
    )


def terms(model: Model, f: _Features) -> tuple[np.ndarray, list[tuple[int, ...]], float]:
    """Every term of the action's score as (scores, the features of each term, the constant's score);
    scores have the sign turned (−weight × value)."""
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
    present = sorted({int(ns) for ns in f.ns.tolist() if _interaction_namespace(int(ns))})
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
        listed = [Term("*".join(f.names[p] for p in groups[i]), float(scores[i])) for i in best]
    count = len(scores)
    if abs(rest) <= TOLERANCE * max(1.0, abs(score)):
        # VW adds the terms in single precision; the constant carries that rounding, so the parts add up
        constant += rest
    else:
        listed.append(Term(NOT_ATTRIBUTED, rest))
        listed.sort(key=lambda t: -abs(t.score))
        listed = listed[: max(top, 1)] if listed[0].name == NOT_ATTRIBUTED else listed[:top]
        count += 1
    return Explanation(score, constant, listed, count)


def _multiplier(parsed: Parsed) -> int:
    """What VW multiplied the parsed hashes by (its weights per feature and stride), read off the constant."""
    for ns, idx, _ in parsed.actions[0] if parsed.actions else parsed.shared:
        if ns == CONSTANT_NAMESPACE and idx:
            return max(1, idx[0] // CONSTANT_HASH)
    return 1


def explain_cb(
    model: Model, parsed: Parsed, context: dict[str, Any], actions: list[dict[str, Any]], which: list[int], top: int
) -> dict[int, Explanation]:
    """Explanations of the actions ``which`` (``_multi`` indices) of a single-slot prediction."""
    multiplier = _multiplier(parsed)
    shared_names = model.names(context, multiplier)
    out = {}
    for i in which:
        names = {**shared_names, **model.names(actions[i], multiplier)}
        f = merged_features(model, parsed.actions[i], parsed.shared, names)
        out[i] = explain_action(model, f, parsed.costs[i], top)
    return out


def slot_id_feature(model: Model, k: int, multiplier: int) -> tuple[int, list[int], list[float]]:
    """VW's slot index feature of the k-th slot (namespace 140, ``index<k>`` hashed in ``_id``)."""
    return CCB_ID_NAMESPACE, [model.ws.hash_feature(f"index{k}", model.space("_id")) * multiplier], [1.0]


def explain_ccb(
    model: Model,
    parsed: Parsed,
    context: dict[str, Any],
    actions: list[dict[str, Any]],
    slot: dict[str, Any],
    action: int,
    top: int,
) -> Explanation:
    """The explanation of ``_multi`` action ``action`` in the last slot of a multi-slot prediction: its
    features, the context's, the slot's (its top-level ones in VW's slot namespace) and the slot index."""
    multiplier = _multiplier(parsed)
    k = len(parsed.slots) - 1
    names = {**model.names(context, multiplier), **model.names(slot, multiplier, slot=True)}
    names.update(model.names(actions[action], multiplier))
    names[(CCB_ID_NAMESPACE, slot_id_feature(model, k, multiplier)[1][0])] = f"_ccb_slot_index^index{k}"
    shared = list(parsed.shared)
    for ns, idx, val in parsed.slots[k]:
        if ns == CONSTANT_NAMESPACE:
            continue
        shared.append((CCB_SLOT_NAMESPACE if ns == DEFAULT_NAMESPACE else ns, idx, val))
    shared.append(slot_id_feature(model, k, multiplier))
    f = merged_features(model, parsed.actions[action], shared, names)
    return explain_action(model, f, parsed.costs[action], top)


def predict_parsed(engine: Any, line: str, read: Any) -> tuple[Any, Parsed]:
    """Parse and predict ``line`` with the engine's workspace and read the examples before they are
    finished: (VW's prediction of the first example, what ``read`` returns)."""
    with engine.lock:
        ws = engine.workspace
        examples = ws._parse(line)
        try:
            pylibvw.vw.predict_multi(ws, examples)
            if engine.multislot:
                prediction = [dict(s) for s in examples[0].get_decision_scores()]
            else:
                prediction = list(examples[0].get_action_scores())
            return prediction, read(examples)
        finally:
            pylibvw.vw._finish_example_multi_ex(ws, examples)


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
    return model_pmf[chosen] < top or sum(p == top for p in model_pmf) > 1


def action_entry(action_id: str, features: dict[str, Any], id_feature: bool) -> dict[str, Any]:
    """The action's ``_multi`` object as :func:`ranker.dsjson.context_json` writes it (for names)."""
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
) -> list[dict[str, Any]]:
    """Multi-slot Rank's ``inferenceExplanation``: per filled slot, the chosen action's explanation and
    whether it was explored. ``predicted`` holds each filled slot's prediction, in order (``choose_slots``
    predicts once per filled slot, that slot last)."""
    entries = [action_entry(i, f, id_feature) for i, f in offered]
    out = []
    filled = [c for c in filling.chosen if c is not None]
    flags = dict(slots_explored(predicted, filling))
    for (_, parsed), slot, (chosen, _) in zip(predicted, filling.slots, filled, strict=True):
        found = explain_ccb(model, parsed, context, entries, slot, chosen, top)
        body = {"slotId": slot["_id"], **found.body(offered[chosen][0]), "explored": flags[slot["_id"]]}
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
