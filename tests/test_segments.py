"""Per-segment results (``ranker evaluate --by``) on a simulated log whose truth differs by segment."""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from ranker.cli import cli
from ranker.evaluation.output import write
from ranker.evaluation.replay import BUILT_INS, DsjsonFile, replay
from ranker.evaluation.segments import MISSING, OTHER, segment_value

# The world: two actions logged uniformly; enterprise accounts click the second 60% of the time and the first
# 30%, SMB accounts the first 60% and the second 30%; a few startups (pooled as "other") click either 50%.
CLICK = {"enterprise": (0.3, 0.6), "smb": (0.6, 0.3), "startup": (0.5, 0.5)}
SHARE = {"enterprise": 0.48, "smb": 0.5, "startup": 0.02}
EVENTS = 3000


def dsjson_log(path, events: int = EVENTS, seed: int = 4) -> dict[str, int]:
    """Write the log; return how many events each plan has."""
    rng = random.Random(seed)
    counts = dict.fromkeys(CLICK, 0)
    with open(path, "w") as out:
        for n in range(events):
            plan = rng.choices(list(SHARE), weights=list(SHARE.values()))[0]
            counts[plan] += 1
            chosen = rng.randrange(2)
            reward = float(rng.random() < CLICK[plan][chosen])
            context = {
                "account": {"plan": plan, "seats": 10 if plan == "smb" else 500},
                "_multi": [{"i": {"id": "a0"}}, {"i": {"id": "a1"}}],
            }
            if n % 10 == 0:
                del context["account"]["seats"]
            line = {
                "_label_cost": -reward,
                "_label_probability": 0.5,
                "_label_Action": chosen + 1,
                "_labelIndex": chosen,
                "Timestamp": f"2030-01-01T00:{n // 3600 % 60:02d}:{n // 60 % 60:02d}.{n % 60:03d}0000Z",
                "Version": "1",
                "EventId": f"e{n}",
                "a": [chosen + 1, 2 - chosen],
                "c": context,
                "p": [0.5, 0.5],
            }
            out.write(json.dumps(line) + "\n")
    return counts


def truth(plan: str) -> tuple[float, float]:
    """(Baseline's value, Online's value) in a plan: Baseline always shows the first action."""
    return CLICK[plan][0], sum(CLICK[plan]) / 2


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    path = tmp_path_factory.mktemp("segments") / "log.json"
    counts = dsjson_log(path)
    report = replay(DsjsonFile(path), BUILT_INS, reward_model=None, by=["account.plan", "account.seats"])
    return path, counts, report


def test_each_segment_has_its_own_rows_and_small_ones_are_pooled(logged):
    _, counts, report = logged
    plans = report.segments["account.plan"]
    largest = sorted(["smb", "enterprise"], key=lambda plan: -counts[plan])
    assert [s["segment"] for s in plans] == [*largest, OTHER]  # largest first, "other" last
    assert [s["events"] for s in plans] == [counts[largest[0]], counts[largest[1]], counts["startup"]]
    assert counts["startup"] < 100 <= counts["enterprise"]
    for segment in plans:
        assert [p["policy"] for p in segment["policies"]] == ["Online", "Baseline", "Random"]
        assert all(p["n"] == segment["events"] for p in segment["policies"])
    # numbers are segments as JSON; events without the path are a segment of their own
    seats = {s["segment"]: s["events"] for s in report.segments["account.seats"]}
    assert set(seats) == {"10", "500", MISSING} and sum(seats.values()) == EVENTS


def test_better_for_one_segment_and_worse_for_another(logged):
    _, _, report = logged
    plans = {s["segment"]: {p["policy"]: p for p in s["policies"]} for s in report.segments["account.plan"]}
    for plan, verdict in (("enterprise", "worse"), ("smb", "better")):
        baseline, online = truth(plan)
        difference = plans[plan]["Baseline"]["versus"]["Online"]
        assert difference["verdict"] == verdict, (plan, difference)
        lower, upper = difference["interval"]
        assert lower <= baseline - online <= upper
        lower, upper = plans[plan]["Baseline"]["interval"]
        assert lower <= baseline <= upper
    # over all events the two cancel out nearly: the overall row alone would hide both answers
    overall = {row["policy"]: row for row in report.policies}
    assert overall["Baseline"]["versus"]["Online"]["verdict"] == "not distinguishable"
    text = report.table()
    assert "account.plan" in text and "enterprise" in text and "(all)" in text


def test_segment_values_at_dotted_paths():
    context = {"account": {"plan": "smb", "tier": 2, "beta": True}, "FromUrl": [{"a": 1}, {"weather": "Sunny"}]}
    assert segment_value(context, "account.plan") == "smb"
    assert segment_value(context, "account.tier") == "2" and segment_value(context, "account.beta") == "true"
    assert segment_value(context, "FromUrl.weather") == "Sunny"  # a namespace sent as a list of objects
    assert segment_value(context, "account.region") == MISSING == segment_value(context, "nope.plan")


def test_cli_by_segment_report_json_and_forest_plot(logged, tmp_path, monkeypatch):
    path, counts, _ = logged
    runner = CliRunner()
    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path))
    args = ["evaluate", "--file", str(path), "--no-dr", "--workers", "1", "--policy", "default"]
    args += ["--by", "account.plan", "--min-segment-events", str(counts["startup"]), "-o", str(tmp_path / "out")]
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    body = json.loads((tmp_path / "out" / "report.json").read_text())
    # with the minimum at the startups' count, they are a segment of their own
    largest = sorted(["smb", "enterprise"], key=lambda plan: -counts[plan])
    assert [s["segment"] for s in body["segments"]["account.plan"]] == [*largest, "startup"]
    assert body["min_segment_events"] == counts["startup"]
    assert "startup" in result.output and "no plot" in result.output
    bad = runner.invoke(cli, [*args[:-2], "--by", "account..plan", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and "dotted paths" in bad.output


def test_report_png_has_a_forest_plot_of_the_segments(logged, tmp_path):
    pytest.importorskip("matplotlib")
    _, _, report = logged
    _, png = write(report, tmp_path)
    _, plain = write(replay(DsjsonFile(logged[0]), BUILT_INS, reward_model=None), tmp_path / "plain")
    from matplotlib.image import imread

    # one forest per --by path below the estimates and curves: a taller figure
    assert imread(png).shape[0] > imread(plain).shape[0] + 300
    assert np.isfinite(imread(png)).all()
