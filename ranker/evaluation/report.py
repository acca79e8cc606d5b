"""A replay's report: estimates per policy (and per slot, per segment), paired differences, cumulative curves.

:class:`Report` is what :func:`~ranker.evaluation.replay.replay` returns: ``to_dict()`` is ``report.json``
(:mod:`ranker.evaluation.output` writes it, with the plot), ``table()`` the terminal table of ``ranker evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ranker.evaluation import segments
from ranker.evaluation.compare import describe
from ranker.evaluation.estimators import LoggedData

__all__ = ["OVERALL", "Report"]

OVERALL = "overall"  # a multi-slot policy's row over every slot, in the table


@dataclass
class Report:
    """Estimates per policy, as rows of :func:`~ranker.evaluation.evaluate` plus the cumulative curves.

    For a multi-slot source (``multislot``) each policy row is the overall one, with ``"slots"``: {slot id:
    row}; ``slots`` lists the slot ids with a row, ``samples`` counts the (event, slot) pairs, and ``data``
    holds the overall :class:`~ranker.evaluation.LoggedData` per policy, ``slot_data`` the slots' ones.
    """

    source: str
    events: int
    skipped: dict[str, int]
    errors: list[tuple[int, str]]
    reward_range: tuple[float, float]
    alpha: float
    reward_model: str | None
    policies: list[dict[str, Any]]
    cumulative: dict[str, Any]
    seconds: float
    data: dict[str, LoggedData] = field(repr=False, default_factory=dict)  # not serialised
    multislot: bool = False
    samples: int = 0  # (event, slot) pairs of a multi-slot source
    slots: list[str] = field(default_factory=list)
    slots_not_reported: int = 0  # slot ids past MAX_SLOT_ROWS: in the overall rows only
    slot_data: dict[str, dict[str, LoggedData]] = field(repr=False, default_factory=dict)  # not serialised
    references: list[str] = field(default_factory=list)  # the policies each row's "versus" compares it with
    segments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by --by path: see segments.py
    # single-slot: each policy's PMF over every kept event's actions, flat, with each event's first index and
    # count of actions (for rule what-ifs, :mod:`ranker.evaluation.whatif`); not serialised
    pmfs: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    rules_what_if: dict[str, Any] | None = None  # ranker evaluate --rules: :func:`ranker.evaluation.whatif.what_if`
    starts: np.ndarray | None = field(repr=False, default=None)
    min_segment_events: int = 0

    def to_dict(self) -> dict[str, Any]:
        multislot = (
            {
                "multislot": True,
                "samples": self.samples,
                "slots": self.slots,
                "slots_not_reported": self.slots_not_reported,
            }
            if self.multislot
            else {}
        )
        return {
            "source": self.source,
            "events": self.events,
            "skipped": self.skipped,
            "errors": [{"line": line, "error": error} for line, error in self.errors],
            "reward_range": list(self.reward_range),
            "alpha": self.alpha,
            "references": self.references,
            "reward_model": self.reward_model,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events / self.seconds) if self.seconds > 0 else None,
            **multislot,
            "policies": self.policies,
            **({"segments": self.segments, "min_segment_events": self.min_segment_events} if self.segments else {}),
            **({"rules_what_if": self.rules_what_if} if self.rules_what_if is not None else {}),
            "cumulative": self.cumulative,
        }

    def table(self) -> str:
        """The terminal table: policy, n, IPS, SNIPS, DR and the Cressie-Read interval, then per reference the
        paired difference with its interval and verdict. For a multi-slot source: policy, slot (each policy's
        overall row, then one per slot), n, IPS, SNIPS, the interval and the differences."""
        level = f"{100 * (1 - self.alpha):g}% interval"
        rows: list[tuple[str, ...]] = []
        versus = tuple(f"vs {reference}" for reference in self.references)

        def differences(values: dict[str, Any]) -> tuple[str, ...]:
            return tuple(describe(values.get("versus", {}).get(reference)) for reference in self.references)

        if self.multislot:
            rows.append(("policy", "slot", "n", "IPS", "SNIPS", level, *versus))
            for row in self.policies:
                for name, slot, values in [(row["policy"], OVERALL, row)] + [
                    ("", slot, values) for slot, values in row["slots"].items()
                ]:
                    lo, hi = values["interval"]
                    cells = (str(values["n"]), _fmt(values["ips"]), _fmt(values["snips"]), f"[{_fmt(lo)}, {_fmt(hi)}]")
                    rows.append((name, slot, *cells, *differences(values)))
        else:
            rows.append(("policy", "n", "IPS", "SNIPS", "DR", level, *versus))
            for row in self.policies:
                lo, hi = row["interval"]
                rows.append(
                    (
                        row["policy"],
                        str(row["n"]),
                        _fmt(row["ips"]),
                        _fmt(row["snips"]),
                        _fmt(row["dr"]),
                        f"[{_fmt(lo)}, {_fmt(hi)}]",
                        *differences(row),
                    )
                )
        text_columns = 2 if self.multislot else 1
        first_versus = len(rows[0]) - len(versus)
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        text = "\n".join(
            "  ".join(
                cell.ljust(w) if i < text_columns or i >= first_versus else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in rows
        )
        if self.segments:  # then one block per --by path
            text += "\n\n" + segments.table(self.segments, self.policies, self.references, self.alpha)
        return text


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
