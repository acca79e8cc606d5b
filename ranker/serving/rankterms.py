"""The terms of a single-slot Rank's actions, with what the actions share computed once.

Under ``-q ::`` most of an action's terms do not depend on the action: the context's linear terms and the pairs of
two context features are the same for every action of a request, and an action's own linear terms and the pairs of
two of its own features are the same in every request (for one served model). Only the pairs of an action feature
with a context feature are new for each action and request. So this module computes the context's terms once per
request, each action's own terms once per model (kept between requests, as its hashed features are) and the cross
pairs for each action, all of a request's new terms in one pass over the weight table; then it picks every
action's largest terms at once.

The terms, their names and their order are those of :func:`ranker.serving.explain.explain_batch`'s grid (a row per
action: its own features, then the context's; linear terms first, then pairs in row order), which
tests/test_explain.py checks against VW's audit and raw scores: each term carries its place in that grid as a key,
so terms of equal size come in the grid's order. Only the sum of an action's terms is added in another order
(the constant carries the difference, about 1e-16 of the score).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .vwfeatures import CONSTANT_HASH, FNV_PRIME, PAD, Model, flat

MAX_FEATURES = 1 << 16  # positions in a term's key take 16 bits; an action with more features takes the grid
KEPT = 10_000  # own terms of this many actions (and batches of them) are kept per model
LAYOUTS = 64  # layouts kept per batch of actions (one per shape of context)


class _Own(NamedTuple):
    """One action's features (namespaces, hashes times VW's multiplier, values, names) and the terms of its own
    features alone: their scores (linear ones, then pairs in VW's order), keys, features (first, second or -1)."""

    ns: np.ndarray
    index: np.ndarray
    value: np.ndarray
    names: list[str]
    scores: np.ndarray
    keys: np.ndarray
    first: np.ndarray
    second: np.ndarray


class _Batch(NamedTuple):
    """A request's actions: their features as one flat array (action by action, each padded to the widest with
    a feature of value 0), their own terms as rows (padded with zeros) and what is kept per context shape."""

    ns: np.ndarray  # (actions, widest), padding PAD
    index: np.ndarray  # flat
    value: np.ndarray  # flat
    names: list[str]  # flat, as index
    sizes: list[int]
    scores: np.ndarray  # (actions, own terms)
    keys: np.ndarray
    first: np.ndarray  # each own term's features, as positions in ``index``; -1: none (a linear term)
    second: np.ndarray
    layouts: dict


class _Layout(NamedTuple):
    """What a request computes, for a batch of actions and a context's namespaces: the pairs (positions in the
    batch's features followed by the context's and a feature of value 0), the context's linear features, and per
    action row the terms' keys and features (own terms, cross pairs, the context's terms)."""

    first: np.ndarray
    second: np.ndarray
    linear: np.ndarray
    cross: int  # cross pairs per action (padded with pairs of the value-0 feature)
    keys: np.ndarray
    term_first: np.ndarray
    term_second: np.ndarray


def _frozen(parts: tuple) -> None:
    for part in parts:
        if isinstance(part, np.ndarray):
            part.flags.writeable = False


def _within(model: Model, ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of features of one row that are interactions, in the grid's order: (first, second) positions."""
    same = ns[:, None] == ns[None, :]
    later = np.triu(np.ones((len(ns), len(ns)), dtype=bool))
    return np.nonzero(model.pairs[ns[:, None], ns[None, :]] & (~same | later))


def _keys(linear: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Terms' places in the grid's order: a linear term's position, then pairs by first and second position."""
    pairs = np.uint64(1 << 32) | (first.astype(np.uint64) << np.uint64(16)) | second.astype(np.uint64)
    return np.concatenate([linear.astype(np.uint64), pairs])


def _own(model: Model, entry: dict[str, Any], multiplier: int) -> _Own:
    features = model.action_features(entry)
    (ns, hashes, value), names = features.arrays, features.flat[3]
    index = hashes * np.uint64(multiplier)
    i, j = _within(model, ns)
    linear = -(model.weights(index) * value) * model.linear[ns].astype(np.float32)
    pairs = -(model.weights((index[i] * FNV_PRIME) ^ index[j]) * (value[i] * value[j]))
    at = np.arange(len(ns))
    own = _Own(
        ns,
        index,
        value,
        names,
        np.concatenate([linear, pairs]),
        _keys(at, i, j),
        np.concatenate([at, i]),
        np.concatenate([np.full(len(ns), -1), j]),
    )
    _frozen(own)
    return own


def _kept(model: Model, key: Any, make: Any) -> Any:
    found = model.terms.get(key)
    if found is None:
        if len(model.terms) >= KEPT:
            model.terms.clear()
        found = model.terms[key] = make()
    return found


def _batch(model: Model, entries: list[dict[str, Any]], multiplier: int) -> _Batch | None:
    own = [_kept(model, (repr(e), multiplier), lambda e=e: _own(model, e, multiplier)) for e in entries]
    sizes = [len(o.ns) for o in own]
    widest, terms, n = max(sizes), max(len(o.scores) for o in own), len(own)
    if widest >= MAX_FEATURES:
        return None
    ns = np.full((n, widest), PAD, dtype=np.uint8)
    index = np.zeros((n, widest), dtype=np.uint64)
    value = np.zeros((n, widest), dtype=np.float32)
    names = [""] * (n * widest)
    scores = np.zeros((n, terms), dtype=np.float32)
    keys = np.full((n, terms), np.uint64(1 << 33))  # padding: after every term
    first = np.zeros((n, terms), dtype=np.intp)
    second = np.full((n, terms), -1, dtype=np.intp)
    for a, o in enumerate(own):
        size, count = len(o.ns), len(o.scores)
        ns[a, :size], index[a, :size], value[a, :size] = o.ns, o.index, o.value
        names[a * widest : a * widest + size] = o.names
        scores[a, :count], keys[a, :count] = o.scores, o.keys
        first[a, :count] = o.first + a * widest
        second[a, :count] = np.where(o.second < 0, -1, o.second + a * widest)
    batch = _Batch(ns, index.ravel(), value.ravel(), names, sizes, scores, keys, first, second, {})
    _frozen(batch)
    return batch


def _layout(model: Model, batch: _Batch, s_ns: np.ndarray) -> _Layout:
    """:class:`_Layout` of ``batch`` with a context whose features' namespaces are ``s_ns``."""
    n, widest = batch.ns.shape
    s = len(s_ns)
    base = n * widest  # the context's first feature in the request's features; the value-0 feature at base + s
    # the context's pairs
    p, q = _within(model, s_ns)
    # the cross pairs: an action feature first when the pair is (its namespace, the context's), the context's first
    # when it is the other way round
    own_ns, shared = batch.ns[:, :, None], s_ns[None, None, :]
    own_first = model.pairs[own_ns, shared]
    valid = own_first | (model.pairs[shared, own_ns] & (own_ns != shared))
    a, i, c = np.nonzero(valid)
    ahead = own_first[a, i, c]
    per_action = np.bincount(a, minlength=n)
    width = int(per_action.max()) if len(a) else 0
    column = np.arange(len(a)) - np.concatenate([[0], np.cumsum(per_action)[:-1]])[a]
    mine, theirs = a * widest + i, base + c
    cross_first = np.full((n, width), base + s)
    cross_second = np.full((n, width), base + s)
    cross_first[a, column] = np.where(ahead, mine, theirs)
    cross_second[a, column] = np.where(ahead, theirs, mine)
    # keys: positions in each action's row (its own features, then the context's)
    sizes = np.array(batch.sizes, dtype=np.intp)
    at_mine, at_theirs = i, sizes[a] + c
    cross_keys = np.full((n, width), np.uint64(1 << 33))
    cross_keys[a, column] = _keys(
        np.zeros(0, dtype=np.intp), np.where(ahead, at_mine, at_theirs), np.where(ahead, at_theirs, at_mine)
    )
    at = np.arange(s)
    context_keys = np.stack([_keys(size + at, size + p, size + q) for size in batch.sizes])
    context_first = np.broadcast_to(np.concatenate([base + at, base + p]), (n, s + len(p)))
    context_second = np.broadcast_to(np.concatenate([np.full(s, -1), base + q]), (n, s + len(p)))
    layout = _Layout(
        np.concatenate([base + p, cross_first.ravel()]),
        np.concatenate([base + q, cross_second.ravel()]),
        model.linear[s_ns].astype(np.float32),
        width,
        np.concatenate([batch.keys, cross_keys, context_keys], axis=1),
        np.concatenate([batch.first, cross_first, context_first], axis=1),
        np.concatenate([batch.second, np.where(cross_first == base + s, -1, cross_second), context_second], axis=1),
    )
    _frozen(layout)
    return layout


def rank_terms(
    model: Model, shared: dict[int, tuple[list, list, list]], entries: list[dict[str, Any]], multiplier: int, top: int
) -> tuple[list[tuple[list[tuple[str, float]], float, int]], float] | None:
    """Per action of ``entries`` (``_multi`` objects): its ``top`` largest terms as (name, score) without the
    zero ones, the sum of all its terms and how many are not zero; and the constant's score. ``shared``: the
    context's features (:meth:`Model.features`). None when an action has too many features for the keys (the
    caller takes the grid)."""
    batch = _kept(model, (repr(entries), multiplier), lambda: _batch(model, entries, multiplier))
    s_ns, s_hashes, s_values, s_names = flat(shared)
    if batch is None or batch.ns.shape[1] + len(s_ns) >= MAX_FEATURES:
        return None
    s_ns = np.array(s_ns, dtype=np.uint8)
    layout = batch.layouts.get(s_ns.tobytes())
    if layout is None:
        if len(batch.layouts) >= LAYOUTS:
            batch.layouts.clear()
        layout = batch.layouts[s_ns.tobytes()] = _layout(model, batch, s_ns)
    n, s = len(entries), len(s_ns)
    # the request's features: the actions' (kept), the context's, a feature of value 0 (the cross pairs' padding)
    s_index = np.array([*s_hashes, 0, CONSTANT_HASH], dtype=np.uint64) * np.uint64(multiplier)
    index = np.concatenate([batch.index, s_index[:-1]])
    value = np.concatenate([batch.value, np.array([*s_values, 0.0], dtype=np.float32)])
    # every new term at once: the context's linear ones, its pairs, the cross pairs
    first, second = layout.first, layout.second
    hashed = np.concatenate([s_index, (index[first] * FNV_PRIME) ^ index[second]])
    weights = model.weights(hashed)
    constant = float(-weights[s + 1]) if model.constant else 0.0
    terms = -(weights[s + 2 :] * (value[first] * value[second]))  # VW's order: weight × (value × value)
    context_linear = -(weights[:s] * value[len(batch.value) : len(batch.value) + s]) * layout.linear
    pairs = len(first) - n * layout.cross
    context = np.concatenate([context_linear, terms[:pairs]])
    scores = np.concatenate(
        [batch.scores, terms[pairs:].reshape(n, layout.cross), np.broadcast_to(context, (n, len(context)))], axis=1
    )
    # each action's largest terms: by size, equal sizes in the grid's order (sizes as float bits sort as the floats)
    size = np.abs(scores).view(np.uint32).astype(np.uint64)
    order = ((np.uint64(0x7FFFFFFF) - size) << np.uint64(33)) | layout.keys
    k, rows = min(top, scores.shape[1]), np.arange(n)[:, None]
    if k < scores.shape[1]:
        best = np.argpartition(order, k - 1, axis=1)[:, :k]
    else:
        best = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    best = best[rows, np.argsort(order[rows, best], axis=1)]
    largest = scores[rows, best].astype(np.float64).tolist()
    firsts, seconds = layout.term_first[rows, best].tolist(), layout.term_second[rows, best].tolist()
    totals = scores.sum(axis=1, dtype=np.float64).tolist()
    counts = np.count_nonzero(scores, axis=1).tolist()
    names = batch.names + s_names
    out = []
    for a in range(n):
        listed = [
            (names[f] if g < 0 else names[f] + "*" + names[g], term)
            for f, g, term in zip(firsts[a], seconds[a], largest[a], strict=True)
            if term
        ]
        out.append((listed, totals[a], counts[a]))
    return out, constant
