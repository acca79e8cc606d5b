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
from pydantic_core import to_json

from .vwfeatures import CONSTANT_HASH, FNV_PRIME, PAD, Model, flat

MAX_FEATURES = 1 << 16  # positions in a term's key take 16 bits; an action with more features takes the grid
FNV = np.int64(int(FNV_PRIME))
KEPT = 10_000  # own terms of this many actions are kept per model
BATCH_BYTES = 32 << 20  # batches of actions and their layouts kept per model, in bytes of arrays
LAYOUTS = 8  # layouts kept per batch of actions (one per shape of context)
_MISSING = object()


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
    """What a request computes, for a batch of actions and a context's namespaces. The request's features are the
    batch's (flat), then the context's, a feature of value 0, the constant and "none" (hash 0, value 1); its terms'
    pool holds the actions' own terms (kept), then the terms the request computes (``first``, ``second``: their
    features, ``multiplier``: 1 or VW's FNV prime): the context's linear ones, value 0's and the constant's (each
    with "none"), the context's pairs, the cross pairs. Per action row, ``columns`` are its terms in the pool in the
    grid's order (padded with the value-0 term) and ``features`` each one's (first, second or -1) feature, for its
    name."""

    first: np.ndarray
    second: np.ndarray
    multiplier: np.ndarray
    columns: np.ndarray
    features: np.ndarray


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


def _count(model: Model, kept: Any) -> None:
    """Count what is kept in the model's batches; past :data:`BATCH_BYTES`, forget them all (a loop whose requests
    rarely repeat their actions keeps little; one whose requests do finds them again at once)."""
    size = sum(part.nbytes for part in kept if isinstance(part, np.ndarray)) if kept is not None else 0
    model.batch_bytes += size
    if model.batch_bytes > BATCH_BYTES:
        model.batches.clear()
        model.batch_bytes = size


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
    # the hashes as signed integers (the same bits): VW's hash arithmetic wraps alike, and the weight table takes
    # them as positions without a conversion
    batch = _Batch(ns, index.ravel().view(np.int64), value.ravel(), names, sizes, scores, keys, first, second, {})
    _frozen(batch)
    return batch


def _layout(model: Model, batch: _Batch, s_ns: np.ndarray) -> _Layout:
    """:class:`_Layout` of ``batch`` with a context whose features' namespaces are ``s_ns``."""
    n, widest = batch.ns.shape
    own_terms, s = batch.scores.shape[1], len(s_ns)
    base = n * widest  # the context's first feature; the value-0 feature at base + s, the constant after it
    linear_at = n * own_terms  # the pool: own terms, the context's linear ones, value 0, the constant, the pairs
    pairs_at = linear_at + s + 2
    p, q = _within(model, s_ns)
    # the cross pairs: an action feature first when (its namespace, the context's) is an interaction, the
    # context's first when it is the other way round
    own_ns, shared = batch.ns[:, :, None], s_ns[None, None, :]
    own_first = model.pairs[own_ns, shared]
    a, i, c = np.nonzero(own_first | (model.pairs[shared, own_ns] & (own_ns != shared)))
    ahead = own_first[a, i, c]
    mine, theirs = a * widest + i, base + c
    cross_first, cross_second = np.where(ahead, mine, theirs), np.where(ahead, theirs, mine)
    cross_at = pairs_at + len(p)
    linear = np.nonzero(model.linear[s_ns])[0]
    rows = []
    for action, size in enumerate(batch.sizes):
        count = int(np.count_nonzero(batch.keys[action] < np.uint64(1 << 33)))
        mine_here = np.nonzero(a == action)[0]
        here_ahead = ahead[mine_here]
        at_mine, at_theirs = i[mine_here], size + c[mine_here]
        keys = np.concatenate(
            [
                batch.keys[action, :count],
                _keys(size + linear, size + p, size + q),
                _keys(
                    np.zeros(0, dtype=np.intp),
                    *(np.where(here_ahead, x, y) for x, y in ((at_mine, at_theirs), (at_theirs, at_mine))),
                ),
            ]
        )
        columns = np.concatenate(
            [
                action * own_terms + np.arange(count),
                linear_at + linear,
                pairs_at + np.arange(len(p)),
                cross_at + mine_here,
            ]
        )
        firsts = np.concatenate([batch.first[action, :count], base + linear, base + p, cross_first[mine_here]])
        seconds = np.concatenate(
            [batch.second[action, :count], np.full(len(linear), -1), base + q, cross_second[mine_here]]
        )
        order = np.argsort(keys, kind="stable")
        rows.append((columns[order], firsts[order], seconds[order]))
    width = max(len(r[0]) for r in rows)
    columns = np.full((n, width), linear_at + s)  # padding: the value-0 feature's term
    features = np.zeros((n, width, 2), dtype=np.intp)
    for action, (cols, firsts, seconds) in enumerate(rows):
        columns[action, : len(cols)] = cols
        features[action, : len(cols), 0], features[action, : len(cols), 1] = firsts, seconds
    # every term a request computes, as (first feature × multiplier) ^ second: the context's own features, the value-0
    # feature and the constant with the feature "none" (hash 0, value 1) second and 1 as multiplier (their own hash
    # and value), the pairs with VW's FNV multiplier
    none = base + s + 2
    own = np.arange(base, base + s + 2)
    pairs = len(p) + len(cross_first)
    layout = _Layout(
        np.concatenate([own, base + p, cross_first]),
        np.concatenate([np.full(s + 2, none), base + q, cross_second]),
        np.concatenate([np.ones(s + 2, dtype=np.int64), np.full(pairs, FNV, dtype=np.int64)]),
        columns,
        features,
    )
    _frozen(layout)
    return layout


def rank_terms(
    model: Model, shared: dict[int, tuple[list, list, list]], entries: list[dict[str, Any]], multiplier: int, top: int
) -> tuple[list[tuple[list[dict[str, Any]], float]], float] | None:
    """Per action of ``entries`` (``_multi`` objects): its ``top`` largest terms as ``{name, score}`` without the
    zero ones, and the sum of all its terms; and the constant's score. ``shared``: the
    context's features (:meth:`Model.features`). None when an action has too many features for the keys (the
    caller takes the grid)."""
    # the actions as JSON text: what VW reads of them (keys in order, numbers and booleans told apart)
    key = to_json(entries, inf_nan_mode="constants")
    batch = model.batches.get((key, multiplier), _MISSING)
    if batch is _MISSING:
        batch = _batch(model, entries, multiplier)
        _count(model, batch)
        model.batches[(key, multiplier)] = batch
    s_ns, s_hashes, s_values, s_names = flat(shared)
    if batch is None or batch.ns.shape[1] + len(s_ns) >= MAX_FEATURES:
        return None
    s_ns = np.array(s_ns, dtype=np.uint8)
    layout = batch.layouts.get(s_ns.tobytes())
    if layout is None:
        if len(batch.layouts) >= LAYOUTS:
            batch.layouts.clear()
        layout = batch.layouts[s_ns.tobytes()] = _layout(model, batch, s_ns)
        _count(model, layout)
    n, s = len(entries), len(s_ns)
    # the request's features: the actions' (kept), the context's, a feature of value 0, the constant, "none"
    s_index = np.array([*s_hashes, 0, CONSTANT_HASH, 0], dtype=np.int64)
    if multiplier != 1:
        s_index *= multiplier
    index = np.concatenate([batch.index, s_index])
    value = np.concatenate([batch.value, np.array([*s_values, 0.0, 1.0, 1.0], dtype=np.float32)])
    # every new term at once: the context's linear ones (and the constant), its pairs, the cross pairs
    first, second = layout.first, layout.second
    slots = ((index[first] * layout.multiplier) ^ index[second]) & np.int64(int(model.mask))
    if model.shift:
        slots >>= np.int64(int(model.shift))
    # VW's order: weight × (value × value); a feature's own term: weight × (value × 1)
    terms = -(model.table.take(slots) * (value[first] * value[second]))
    constant = float(terms[s + 1]) if model.constant else 0.0
    scores = np.concatenate([batch.scores.ravel(), terms])[layout.columns]  # rows in the grid's order
    # each action's largest terms: by size, equal sizes in the grid's order. Sizes as float bits (which sort as the
    # floats) above each term's column: a sort of these numbers (several times faster than an argsort) orders the
    # terms, and their low bits say which they are
    width = scores.shape[1]
    size = np.abs(scores).view(np.int32).astype(np.int64)
    best = np.sort((np.int64(0x7FFFFFFF) - size) << np.int64(32) | np.arange(width), axis=1)
    best = best[:, :top] & np.int64(0xFFFFFFFF) if top < width else best & np.int64(0xFFFFFFFF)
    rows = np.arange(n)[:, None]
    largest = scores[rows, best].tolist()
    features = layout.features[rows, best].tolist()
    totals = scores.sum(axis=1, dtype=np.float64).tolist()
    names = batch.names + s_names
    out = []
    for a in range(n):
        listed = [
            {"name": names[f] if g < 0 else names[f] + "*" + names[g], "score": term}
            for (f, g), term in zip(features[a], largest[a], strict=True)
            if term
        ]
        out.append((listed, totals[a]))
    return out, constant
