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

from . import vwcalls, vwoptions

FNV_PRIME = np.uint64(16777619)
CONSTANT_HASH = 11650396
DEFAULT_NAMESPACE = 32
CONSTANT_NAMESPACE = 128
CCB_SLOT_NAMESPACE = 139
CCB_ID_NAMESPACE = 140
WILDCARD = ord(":")
PAD = 255  # the namespace of padding in batched arrays: no interaction, no linear term
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


@dataclass
class Parsed:
    """What explaining reads of one prediction: each action's raw score (VW's cost) and what VW multiplied
    feature hashes by (its weights per feature and stride, read off an action's constant feature)."""

    costs: list[float]
    multiplier: int = 1


def _multiplier_of(ex: Any) -> int:
    if ex.num_features_in(CONSTANT_NAMESPACE):
        return max(1, ex.feature(CONSTANT_NAMESPACE, 0) // CONSTANT_HASH)
    return 1


def read_cb(examples: list[Any]) -> Parsed:
    """Read a single-slot prediction (after ``predict_multi``, before the examples are finished)."""
    return Parsed([ex.get_partial_prediction() for ex in examples[1:]], _multiplier_of(examples[1]))


def read_ccb(examples: list[Any], n_actions: int) -> Parsed:
    """Read a multi-slot prediction: shared, ``n_actions`` actions, then the slots. The actions' raw scores
    are those of the last slot VW predicted."""
    actions = examples[1 : 1 + n_actions]
    return Parsed([ex.get_partial_prediction() for ex in actions], _multiplier_of(actions[0]))


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
        self.pairs, self.triples, self.fast = _tables(self.specs, multislot)
        self.linear = np.ones(256, dtype=bool)
        self.linear[[*self.ignore_linear, CONSTANT_NAMESPACE, PAD]] = False
        self.constant = "--noconstant" not in vwoptions.split(arguments)
        self._hashes: dict[tuple[str, str], int] = {}
        self._space: dict[str, int] = {}
        self._lock = threading.Lock()

    def weights(self, index: np.ndarray) -> np.ndarray:
        slots = index & self.mask
        if self.shift:
            slots >>= self.shift
        return self.table.take(slots.astype(np.intp))

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

    def features(self, obj: dict[str, Any], slot: bool = False) -> dict[int, tuple[list, list, list]]:
        """The features VW's JSON parser makes of ``obj``, per namespace index in parse order, as (hashes,
        values, VW's audit names). Nested objects are namespaces named by their key; a string is the feature
        key+value, true and non-zero numbers the feature key; false, null and 0 make none; an array of numbers
        is anonymous features ``key^[i]``; a slot's top-level features go to VW's slot namespace (139)."""
        out: dict[int, tuple[list, list, list]] = {}
        self._walk(obj, " ", out, CCB_SLOT_NAMESPACE if slot else DEFAULT_NAMESPACE)
        return out

    def _walk(self, obj: dict[str, Any], ns: str, out: dict, index: int) -> None:
        prefix = "" if ns == " " else ns + "^"
        hashes, values, names = out.setdefault(index, ([], [], []))
        hashed = self._hashes
        for key, value in obj.items():
            if key[:1] == "_":
                continue
            kind = type(value)
            if kind is str:
                name = key + value
                h = hashed.get((ns, name))
                hashes.append(h if h is not None else self.feature_hash(ns, name))
                values.append(1.0)
                names.append(prefix + name)
            elif kind is dict:
                self._walk(value, key, out, ord(key[0]))
            elif kind is list:
                if all(type(v) is dict for v in value):
                    for item in value:
                        self._walk(item, key, out, ord(key[0]))
                else:
                    base = self.space(key)
                    group = out.setdefault(ord(key[0]), ([], [], []))
                    for i, v in enumerate(value):
                        if v:
                            group[0].append(base + i)
                            group[1].append(float(v))
                            group[2].append(f"{key}^[{i}]")
            elif value is True or (kind is not bool and value):
                h = hashed.get((ns, key))
                hashes.append(h if h is not None else self.feature_hash(ns, key))
                values.append(float(value))
                names.append(prefix + key)


def _tables(specs: list[list[int]], multislot: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """The interactions as lookup tables over (namespace, namespace): ``pairs[a, b]`` when (a, b) is an
    interaction, ``triples[a, b]`` when (a, b, slot index) is one; and whether that is all of them (otherwise
    :func:`terms` computes interactions one by one). Wildcards expand over every namespace they can cover,
    which gives the same terms as VW's expansion over the namespaces it has seen (the others have none)."""
    every = [ns for ns in range(256) if _interaction_namespace(ns)]
    pairs = np.zeros((256, 256), dtype=bool)
    triples = np.zeros((256, 256), dtype=bool)
    fast = True
    for inter in compile_interactions(specs, every):
        if len(inter) == 2:
            pairs[inter] = True
        elif len(inter) == 3 and inter[2] == CCB_ID_NAMESPACE and multislot:
            triples[inter[:2]] = True
        else:
            fast = False
    return pairs, triples, fast


_models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_models_lock = threading.Lock()


def model_of(engine: Any, arguments: str | None = None) -> Model:
    """The engine's :class:`Model`, built on first use (reading its weights takes a few milliseconds);
    ``arguments``: the VW options the model was trained with, when the engine was not given them all."""
    with _models_lock:
        model = _models.get(engine)
        if model is None:
            with engine.lock:  # VW reads its weights for json_weights; no prediction meanwhile
                model = Model(engine.workspace, arguments or engine.arguments, engine.multislot)
            _models[engine] = model
        return model


# -- the terms -----------------------------------------------------------------------------------------


@dataclass
class _Features:
    """One action's features as VW's learner sees them: each feature's namespace, index (the hash times VW's
    multiplier, applied in :func:`explain_batch`), value and name, namespaces in order."""

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


def explain_batch(model: Model, feats: list[_Features], costs: list[float], top: int) -> list[Explanation]:
    """:func:`explain_action` for several actions at once, with every interaction of every action in one grid
    of feature pairs (VW's pair order: a namespace with itself pairs each feature with itself and the later
    ones); a model with interactions the grid does not cover takes :func:`explain_action`."""
    if not model.fast:
        return [explain_action(model, f, c, top) for f, c in zip(feats, costs, strict=True)]
    n, m = len(feats), max(len(f.index) for f in feats)
    ns = np.full((n, m), PAD, dtype=np.uint8)
    index = np.zeros((n, m), dtype=np.uint64)
    value = np.zeros((n, m), dtype=np.float32)
    for k, f in enumerate(feats):
        ns[k, : len(f.ns)], index[k, : len(f.ns)], value[k, : len(f.ns)] = f.ns, f.index, f.value
    index *= np.uint64(feats[0].multiplier)
    later = np.triu(np.ones((m, m), dtype=bool))
    same = ns[:, :, None] == ns[:, None, :]
    order_ok = ~same | later
    pair_hash = (index[:, :, None] * FNV_PRIME) ^ index[:, None, :]
    pair_value = value[:, :, None] * value[:, None, :]
    allowed = model.pairs[ns[:, :, None], ns[:, None, :]] & order_ok
    pair_scores = model.weights(pair_hash) * pair_value
    pair_scores *= np.where(allowed, np.float32(-1), np.float32(0))
    parts = [-(model.weights(index) * value) * model.linear[ns], pair_scores.reshape(n, -1)]
    slot_at = np.argmax(ns == CCB_ID_NAMESPACE, axis=1)
    cubic = model.multislot and bool((ns == CCB_ID_NAMESPACE).any())
    if cubic:  # (a, b, slot index): VW's chain hash with the slot index feature last
        slot_index = index[np.arange(n), slot_at]
        allowed3 = model.triples[ns[:, :, None], ns[:, None, :]] & order_ok
        hashed = (pair_hash * FNV_PRIME) ^ slot_index[:, None, None]
        slot_value = value[np.arange(n), slot_at][:, None, None]
        parts.append(np.where(allowed3, -(model.weights(hashed) * (pair_value * slot_value)), 0).reshape(n, -1))
    scores = np.concatenate(parts, axis=1).astype(np.float64)
    constants = np.where(ns == CONSTANT_NAMESPACE, -(model.weights(index) * value), 0).sum(axis=1, dtype=np.float64)
    k = min(top, scores.shape[1])
    best = np.argpartition(-np.abs(scores), k - 1, axis=1)[:, :k] if k < scores.shape[1] else None
    out = []
    for a, f in enumerate(feats):
        row = scores[a]
        chosen = best[a].tolist() if best is not None else list(range(len(row)))
        chosen = sorted((i for i in chosen if row[i] != 0), key=lambda i: -abs(row[i]))
        listed = []
        for i in chosen:
            if i < m:
                members = (i,)
            elif i < m + m * m:
                members = divmod(i - m, m)
            else:
                members = (*divmod(i - m - m * m, m), int(slot_at[a]))
            listed.append(Term("*".join(f.names[p] for p in members), float(row[i])))
        score = 0.0 - float(costs[a])
        constant = float(constants[a]) + 0.0
        rest = score - constant - float(row.sum())
        count = int(np.count_nonzero(row))
        if abs(rest) <= TOLERANCE * max(1.0, abs(score)):
            constant += rest  # VW adds in single precision: the constant carries the rounding
        else:
            listed = sorted([*listed, Term(NOT_ATTRIBUTED, rest)], key=lambda t: -abs(t.score))[: max(top, 1)]
            count += 1
        out.append(Explanation(score, constant, listed, count))
    return out


def explain_cb(
    model: Model, parsed: Parsed, context: dict[str, Any], actions: list[dict[str, Any]], which: list[int], top: int
) -> dict[int, Explanation]:
    """Explanations of the actions ``which`` (``_multi`` indices) of a single-slot prediction."""
    shared = model.features(context)
    feats = [merged_features(model, model.features(actions[i]), shared, parsed.multiplier) for i in which]
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
    f = merged_features(model, model.features(actions[action]), shared, parsed.multiplier)
    return explain_batch(model, [f], [parsed.costs[action]], top)[0]


def predict_parsed(engine: Any, line: str, read: Any) -> tuple[Any, Parsed]:
    """Parse and predict ``line`` with the engine's workspace and read the examples before they are
    finished: (VW's prediction of the first example, what ``read`` returns)."""
    with engine.lock:
        ws = engine.workspace
        examples = vwcalls.parse(ws, line)
        try:
            vwcalls.predict_multi(ws, examples)
            if engine.multislot:
                prediction = [dict(s) for s in examples[0].get_decision_scores()]
            else:
                prediction = list(examples[0].get_action_scores())
            return prediction, read(examples)
        finally:
            vwcalls.finish_multi(ws, examples)


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
    for k, ((_, parsed), slot, (chosen, _)) in enumerate(zip(predicted, filling.slots, filled, strict=True)):
        found = explain_ccb(model, parsed, context, entries, slot, k, chosen, top)
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
