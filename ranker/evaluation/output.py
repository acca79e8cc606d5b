"""A replay's report on disk: ``report.json`` and, with matplotlib, ``report.png``."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from ranker.evaluation.replay import Report


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
    """A PNG of each policy's estimate with its interval, and of its cumulative SNIPS estimate over time.

    Needs matplotlib (raises :class:`ImportError` without it); uses its object API, no pyplot or display.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.8), layout="constrained")
    bars, curves = figure.subplots(1, 2, width_ratios=[1, 1.6])
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
    pooled = f", {report.samples} (event, slot) pairs, all slots pooled" if report.multislot else ""
    figure.suptitle(f"{report.source}: {report.events} events{pooled}")
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path
