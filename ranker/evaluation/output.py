"""A replay's report on disk: ``report.json`` and, with matplotlib, ``report.png``."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from ranker.evaluation.report import Report


def write(report: Report, folder: str | Path) -> tuple[Path, Path | None]:
    """Write ``report.json`` and, when matplotlib is installed, ``report.png`` into ``folder``; return their
    paths (None for the plot without matplotlib: ``pip install 'ranker[eval]'``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "report.json"
    body = report.to_dict()
    try:
        png_path: Path | None = plot(report, folder / "report.png")
    except ImportError:
        png_path = None
        body["plot"] = "matplotlib is not installed: pip install 'ranker[eval]'"
    else:
        body["plot"] = png_path.name
    json_path.write_text(json.dumps(body, indent=2) + "\n")
    return json_path, png_path


def plot(report: Report, path: str | Path) -> Path:
    """A PNG of each policy's estimate with its interval, and of its cumulative SNIPS estimate over time; with
    segments (``--by``), below them a forest plot per path: each policy's difference with the first reference
    (Online) and its interval, overall and per segment.

    Needs matplotlib (raises :class:`ImportError` without it); uses its object API, no pyplot or display.
    """
    from matplotlib.figure import Figure

    forests = list(report.segments.items()) if report.references else []
    heights = [4.8] + [1.0 + 0.3 * _forest_rows(report, segments) for _, segments in forests]  # inches
    figure = Figure(figsize=(12, sum(heights)), layout="constrained")
    grid = figure.add_gridspec(len(heights), 2, width_ratios=[1, 1.6], height_ratios=heights)
    bars, curves = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1])
    names = [row["policy"] for row in report.policies]
    values = [row["snips"] if row["snips"] is not None else math.nan for row in report.policies]
    low = [v - row["interval"][0] for v, row in zip(values, report.policies, strict=True)]
    high = [row["interval"][1] - v for v, row in zip(values, report.policies, strict=True)]
    positions = list(range(len(names)))
    bars.errorbar(values, positions, xerr=[low, high], fmt="o", capsize=4)
    bars.set_yticks(positions, names)
    bars.invert_yaxis()
    bars.set_xlabel(f"expected reward (SNIPS, {100 * (1 - report.alpha):g}% Cressie-Read interval)")
    bars.grid(axis="x", alpha=0.3)
    cumulative = report.cumulative
    try:
        x: list[Any] = [datetime.fromisoformat(stamp) for stamp in cumulative["timestamp"]]
        curves.set_xlabel("time")
    except (TypeError, ValueError):
        x = cumulative["event"]
        curves.set_xlabel("events")
    for name in names:
        y = [math.nan if v is None else v for v in cumulative["snips"][name]]
        curves.plot(x, y, label=name)
    curves.set_ylabel("cumulative SNIPS estimate")
    curves.grid(alpha=0.3)
    curves.legend(fontsize="small")
    for k, (by, segments) in enumerate(forests):
        _forest(figure.add_subplot(grid[1 + k, :]), report, by, segments)
    pooled = f", {report.samples} (event, slot) pairs, all slots pooled" if report.multislot else ""
    figure.suptitle(f"{report.source}: {report.events} events{pooled}")
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path


def _compared(report: Report, policies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with a difference from the first reference (every policy but the reference itself)."""
    return [row for row in policies if report.references[0] in row.get("versus", {})]


def _forest_rows(report: Report, segments: list[dict[str, Any]]) -> int:
    return len(_compared(report, report.policies)) * (1 + len(segments))


def _forest(axes: Any, report: Report, path: str, segments: list[dict[str, Any]]) -> None:
    """Each policy's difference with the first reference, overall then per segment of ``path``."""
    reference = report.references[0]
    labels, values, low, high = [], [], [], []
    for row in _compared(report, report.policies):
        name = row["policy"]
        parts = [("all events", row)] + [
            (f"{segment['segment']} ({segment['events']})", next(p for p in segment["policies"] if p["policy"] == name))
            for segment in segments
        ]
        for label, values_row in parts:
            difference = values_row["versus"][reference]
            lower, upper = difference["interval"]
            labels.append(f"{name}: {label}")
            values.append(difference["estimate"])
            low.append(difference["estimate"] - lower)
            high.append(upper - difference["estimate"])
    positions = list(range(len(labels)))
    axes.errorbar(values, positions, xerr=[low, high], fmt="o", capsize=3)
    axes.axvline(0.0, color="grey", linewidth=1)
    axes.set_yticks(positions, labels, fontsize="small")
    axes.invert_yaxis()
    axes.set_xlabel(f"difference in reward with {reference} by {path} ({100 * (1 - report.alpha):g}% paired interval)")
    axes.grid(axis="x", alpha=0.3)
