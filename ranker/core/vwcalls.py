"""The one place that calls pylibvw, VW's extension module, directly.

pyvw's ``parse``/``learn``/``predict`` wrap every parsed example in a Python ``Example`` (and look up its label
type), which costs more than VW's own parse and predict of 10 actions; these are the calls pyvw makes
underneath, so a model learned or a prediction made through them is the same. Serving, training, import checks
and replay workers use them from here: a change of VW's private API is mended in this module alone.
"""

from __future__ import annotations

import vowpalwabbit
from vowpalwabbit.pyvw import pylibvw

# The raw calls, for loops that hoist them into local names (replay workers).
parse = vowpalwabbit.Workspace._parse  # a DSJSON/JSON line -> VW's examples (shared first, then the actions)
learn_multi = pylibvw.vw.learn_multi
predict_multi = pylibvw.vw.predict_multi
finish_multi = pylibvw.vw._finish_example_multi_ex  # every parsed line must be finished, learned or not


def pmf(ws: vowpalwabbit.Workspace, line: str) -> list[float]:
    """VW's PMF for one line (prediction only), in ``_multi`` order: the list ``Workspace.predict`` returns."""
    examples = parse(ws, line)
    try:
        predict_multi(ws, examples)
        return list(examples[0].get_action_scores())
    finally:
        finish_multi(ws, examples)


def slot_scores(ws: vowpalwabbit.Workspace, line: str) -> list[dict[int, float]]:
    """Per slot of a CCB line, VW's probability of each ``_multi`` index (prediction only)."""
    examples = parse(ws, line)
    try:
        predict_multi(ws, examples)
        return [dict(scores) for scores in examples[0].get_decision_scores()]
    finally:
        finish_multi(ws, examples)


def learn(ws: vowpalwabbit.Workspace, line: str) -> None:
    """``ws.learn(ws.parse(line))`` then ``ws.finish_example``."""
    examples = parse(ws, line)
    try:
        learn_multi(ws, examples)
    finally:
        finish_multi(ws, examples)


def action_count(ws: vowpalwabbit.Workspace, line: str) -> int:
    """How many action examples VW reads in a line (a RuntimeError when it cannot parse it)."""
    examples = parse(ws, line)
    try:
        return len(examples) - 1
    finally:
        finish_multi(ws, examples)
