"""VW's feature space as a served model sees it, rebuilt without VW's audit printout: namespaces, feature
hashing, the interactions VW generates, the weight table, and what a prediction's parsed examples hold.

VW merges the shared features into each action (the action's own first) and generates interactions (``-q ::``
is every pair of namespaces present, in namespace order; a namespace with itself pairs each feature with itself
and the ones after it); an interaction's index is ``(16777619 × i) ^ j``, masked by the weight table; a
multi-slot policy adds the slot's features and VW's slot index feature (``_ccb_slot_index^index<k>``) with the
interactions VW adds for it. :mod:`ranker.serving.explain` turns these into each action's weight × value terms;
tests/test_explain.py checks names, indices and values against VW's audit output.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..core import vwcalls, vwoptions

FNV_PRIME = np.uint64(16777619)
CONSTANT_HASH = 11650396
DEFAULT_NAMESPACE = 32
CONSTANT_NAMESPACE = 128
CCB_SLOT_NAMESPACE = 139
CCB_ID_NAMESPACE = 140
WILDCARD = ord(":")
PAD = 255  # the namespace of padding in batched arrays: no interaction, no linear term


def interaction_namespace(ns: int) -> bool:
    """Namespaces VW's wildcard interactions cover: printable ASCII and the slot features' namespace."""
    return 32 <= ns <= 126 or ns == CCB_SLOT_NAMESPACE


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


def flat(groups: dict[int, tuple[list, list, list]]) -> tuple[list[int], list[int], list[float], list[str]]:
    """Features per namespace (:meth:`Model.features`) as flat lists: namespaces, hashes, values, names."""
    ns: list[int] = []
    hashes: list[int] = []
    values: list[float] = []
    names: list[str] = []
    for index, (h, v, n) in groups.items():
        ns += [index] * len(h)
        hashes += h
        values += v
        names += n
    return ns, hashes, values, names


class ActionFeatures(NamedTuple):
    groups: dict[int, tuple[list, list, list]]  # per namespace: hashes, values, names
    flat: tuple[list[int], list[int], list[float], list[str]]  # :func:`flat` of them
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray]  # the flat namespaces, hashes and values as numpy arrays


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
        self._actions: dict[str, ActionFeatures] = {}
        self.layouts: dict = {}  # ranker.serving.explain's and rankterms', per namespaces of a batch of actions
        self.terms: dict = {}  # ranker.serving.rankterms': each action's own terms
        self.batches: dict = {}  # ranker.serving.rankterms': requests' actions as batches, and their layouts
        self.batch_bytes = 0  # the size of those batches' arrays
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

    def action_features(self, entry: dict[str, Any]) -> ActionFeatures:
        """:meth:`features` of an action's ``_multi`` entry, per namespace and flat, kept between requests (an
        action's features repeat from Rank to Rank). Keyed by the entry's ``repr`` (the same keys, values and
        order give the same text, and VW's features depend on nothing else); the lists returned are shared, so
        callers only read them. Two threads may compute one entry at once; both results are the same."""
        key = repr(entry)
        found = self._actions.get(key)
        if found is None:
            if len(self._actions) >= 10_000:
                self._actions.clear()
            groups = self.features(entry)
            ns, hashes, values, names = flat(groups)
            arrays = np.array(ns, dtype=np.uint8), np.array(hashes, dtype=np.uint64), np.array(values, dtype=np.float32)
            for array in arrays:
                array.flags.writeable = False
            found = self._actions[key] = ActionFeatures(groups, (ns, hashes, values, names), arrays)
        return found

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
    every = [ns for ns in range(256) if interaction_namespace(ns)]
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


_models_lock = threading.Lock()


def model_of(engine: Any, arguments: str | None = None) -> Model:
    """The engine's :class:`Model`, built on first use (reading its weights takes a few milliseconds) and kept
    on the engine, where a Rank finds it without a lock; ``arguments``: the VW options the model was trained
    with, when the engine was not given them all."""
    model = getattr(engine, "explained_model", None)
    if model is None:
        with _models_lock:
            model = getattr(engine, "explained_model", None)
            if model is None:
                with engine.lock:  # VW reads its weights for json_weights; no prediction meanwhile
                    model = Model(engine.workspace, arguments or engine.arguments, engine.multislot)
                engine.explained_model = model
    return model


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
