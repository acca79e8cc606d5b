"""Per-segment results of a replay (``ranker evaluate --by account.plan``): is it better for whom?

A segment is the value at a dotted path of the logged context (the record's ``c``: ``account.plan`` is the
``plan`` of the ``account`` namespace; a namespace sent as a list of objects, as VW's JSON allows, is searched
in order). Each path given segments the events on its own (two paths give two segmentations, not their cross
product). A value is a segment's name as logged (strings as they are, other JSON values as JSON); an event
without the path is in ``(missing)``. Segments with fewer than ``minimum`` events are pooled into ``other``
(itself reported whatever its size), so that no row rests on a handful of events.

Every segment gets, per policy, the row a replay gives the whole log, computed on the segment's events only:
estimates, the Cressie-Read interval with the segment's own weight bound and the paired differences with the
references (:mod:`ranker.evaluation.compare`). For a multi-slot source a segment holds the (event, slot) pairs
of its events, pooled as in the overall row.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ranker.evaluation.compare import compare, describe
from ranker.evaluation.estimators import LoggedData

__all__ = ["MISSING", "OTHER", "segment_rows", "segment_value", "segment_values", "table"]

MISSING, OTHER = "(missing)", "other"
_ABSENT = object()


def _find(value: Any, parts: list[str]) -> Any:
    for i, part in enumerate(parts):
        if isinstance(value, list):  # a namespace of several objects: the first that holds the rest of the path
            for item in value:
                found = _find(item, parts[i:])
                if found is not _ABSENT:
                    return found
            return _ABSENT
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def segment_value(context: Mapping[str, Any], path: str) -> str:
    """The segment of a logged context (the record's ``c``) at a dotted ``path``."""
    value = _find(context, path.split("."))
    if value is _ABSENT or value is None:
        return MISSING
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def segment_values(line: str, paths: Sequence[str]) -> tuple[str, ...]:
    """The segments of a DSJSON line, one per path."""
    context = json.loads(line).get("c", {})
    return tuple(segment_value(context, path) for path in paths)


def _pool(values: Sequence[str], minimum: int) -> list[str]:
    counts = Counter(values)
    return [value if counts[value] >= minimum else OTHER for value in values]


def segment_rows(
    data: Mapping[str, LoggedData],
    sample_event: np.ndarray,
    event_segments: Sequence[tuple[str, ...]],
    paths: Sequence[str],
    minimum: int,
    row: Callable[[str, LoggedData], dict[str, Any]],
    references: Sequence[str],
    *,
    alpha: float,
    r_min: float,
    r_max: float,
) -> dict[str, list[dict[str, Any]]]:
    """``{path: [{"segment", "events", "samples", "policies": [row, ...]}, ...]}``, largest segment first
    (``other`` last). ``sample_event`` maps each sample of ``data`` to its event (an index into
    ``event_segments``, the events' segments per path); ``row(policy, data)`` is the replay's row of a policy's
    data, to which each segment's ``"versus"`` is added."""
    result: dict[str, list[dict[str, Any]]] = {}
    for k, path in enumerate(paths):
        per_event = np.array(_pool([values[k] for values in event_segments], minimum), dtype=object)
        per_sample = per_event[sample_event]
        counts = Counter(per_event.tolist())
        order = sorted(counts, key=lambda value: (value == OTHER, -counts[value], value))
        segments = []
        for value in order:
            mask = per_sample == value
            if not mask.any():  # events whose samples were all left out
                continue
            parts = {name: values.subset(mask) for name, values in data.items()}
            versus = compare(parts, references, alpha=alpha, r_min=r_min, r_max=r_max)
            policies = [row(name, part) | {"versus": versus[name]} for name, part in parts.items()]
            segments.append(
                {"segment": value, "events": counts[value], "samples": int(mask.sum()), "policies": policies}
            )
        result[path] = segments
    return result


def table(
    segments: Mapping[str, list[dict[str, Any]]],
    overall: Sequence[dict[str, Any]],
    references: Sequence[str],
    alpha: float,
) -> str:
    """One block per path: per policy its ``overall`` row (all events), then one per segment: n, SNIPS, the
    interval and the differences."""
    blocks = []
    level = f"{100 * (1 - alpha):g}% interval"
    for path, rows in segments.items():
        lines: list[tuple[str, ...]] = [
            ("policy", path, "n", "SNIPS", level, *(f"vs {reference}" for reference in references))
        ]
        for whole in overall:
            name = whole["policy"]
            parts = [("(all)", whole)] + [
                (segment["segment"], next(p for p in segment["policies"] if p["policy"] == name)) for segment in rows
            ]
            for i, (value, policy) in enumerate(parts):
                lo, hi = policy["interval"]
                snips = "-" if policy["snips"] is None else f"{policy['snips']:.4f}"
                lines.append(
                    (
                        name if i == 0 else "",
                        value,
                        str(policy["n"]),
                        snips,
                        f"[{lo:.4f}, {hi:.4f}]",
                        *(describe(policy["versus"].get(reference)) for reference in references),
                    )
                )
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        blocks.append(
            "\n".join(
                "  ".join(
                    cell.rjust(w) if 2 <= i <= 4 else cell.ljust(w)
                    for i, (cell, w) in enumerate(zip(line, widths, strict=True))
                ).rstrip()
                for line in lines
            )
        )
    return "\n\n".join(blocks)
