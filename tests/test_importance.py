"""Feature importance of features sent flat (VW's default namespace), as Personalizer's quickstart sends them."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from ranker.app import create_app
from ranker.cli import cli
from ranker.core.schemas import RankRequest
from ranker.core.settings import load_settings
from ranker.evaluation.importance import DEFAULT, importance, namespaces, unscored
from ranker.evaluation.jobs import run_pending
from ranker.evaluation.replay import LoopLog
from ranker.logdata.export import export
from ranker.serving.service import Service, timestamp

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)  # in the past: the API's jobs read what is due now
K, EVENTS = 4, 1200
SEGMENTS = ["fintech", "retail", "health", "media"]
POLICY = "--cb_explore_adf --epsilon 0.2 --cb_type mtr -q ::"


def click_probability(segment: int, action: int) -> float:
    """The segment decides: in segment s, action s is clicked 80% of the time, every other one 10%; the role
    decides nothing."""
    return 0.8 if action == segment else 0.1


def rank_request(event_id: str, segment: int, role: str) -> RankRequest:
    actions = [{"id": f"a{i}", "features": [{"kind": {"k": f"k{i % 2}"}}]} for i in range(K)]
    context = [{"seg": SEGMENTS[segment], "role": role}]  # flat, as in Personalizer's quickstart
    return RankRequest.model_validate({"contextFeatures": context, "actions": actions, "eventId": event_id})


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    data_dir: Path = tmp_path_factory.mktemp("flat")
    loops = {"default": {"rewardWaitTime": "PT1S", "explorationPercentage": 0.5}}
    settings = load_settings(environ={}, overrides={"data_dir": data_dir, "synchronous": "NORMAL", "loops": loops})
    service = Service(settings)
    loop = service.loops["default"]
    rng = random.Random(8)
    drawn = [(rng.randrange(len(SEGMENTS)), rng.choice(["admin", "user"])) for _ in range(EVENTS)]
    responses = [
        service.rank(loop, rank_request(f"e{n}", *drawn[n]), now=T0 + timedelta(milliseconds=10 * n))
        for n in range(EVENTS)
    ]
    ids = {row["event_id"]: row["id"] for row in service.store.read("SELECT id, event_id FROM decisions")}
    rewards = [
        (ids[f"e{n}"], 1.0, timestamp(T0 + timedelta(milliseconds=10 * n + 300)))
        for n, response in enumerate(responses)
        if rng.random() < click_probability(drawn[n][0], int(response["rewardActionId"][1:]))
    ]
    service.store.write(
        lambda conn: conn.executemany("INSERT INTO rewards (decision_id, value, received_at) VALUES (?, ?, ?)", rewards)
    )
    return settings, LoopLog(settings, "default", now=T0 + timedelta(hours=1))


def test_features_sent_flat_are_scored_and_the_deciding_one_comes_first(logged):
    _, log = logged
    assert namespaces(log) == {"kind": {"k"}, DEFAULT: {"seg", "role"}}  # the actions' id feature is not listed
    rows = importance(log, POLICY)
    by_part = {(row["namespace"], row["feature"]): row for row in rows}
    assert set(by_part) == {("kind", None), (DEFAULT, None), (DEFAULT, "seg"), (DEFAULT, "role")}
    # without the segment the model can only learn the best action overall: close to chance
    assert by_part[(DEFAULT, "seg")]["score"] > 60 and by_part[(DEFAULT, None)]["score"] > 60
    assert by_part[(DEFAULT, "role")]["score"] < 25 and by_part[("kind", None)]["score"] < 25
    assert rows[0]["namespace"] == DEFAULT and rows[0]["feature"] in (None, "seg")
    assert unscored(log, rows) == [
        {"namespace": DEFAULT, "feature": "id", "reason": "the action id feature stays in every replay"}
    ]


def test_cli_and_api_report_flat_features_and_what_was_not_scored(logged, tmp_path):
    settings, log = logged
    path = tmp_path / "log.json"
    export(settings, "default", path, now=T0 + timedelta(hours=1))
    result = CliRunner().invoke(cli, ["importance", "--file", str(path), "--arguments", POLICY])
    assert result.exit_code == 0, result.output
    assert "(default).seg" in result.output and "(default).role" in result.output
    assert "not scored on its own: (default).id (the action id feature stays in every replay)" in result.output

    client = create_app(settings).test_client()
    window = {"startTime": "2025-01-01T00:00:00Z", "endTime": "2025-01-02T00:00:00Z"}
    admin = {"Ocp-Apim-Subscription-Key": "unused"}
    created = client.put("/personalizer/v1.0/featureImportances/fi", json={"name": "fi", **window}, headers=admin)
    assert created.status_code == 200, created.get_json()
    assert run_pending(settings) == 1
    body = client.get("/personalizer/v1.0/featureImportances/fi", headers=admin).get_json()
    assert body["status"] == "Succeeded", body
    scores = {(s["namespace"], s["featureName"]): s["score"] for s in body["featureScores"]}
    assert set(scores) == {("kind", ""), ("", ""), ("", "seg"), ("", "role")}
    assert scores[("", "seg")] > 60 > 25 > scores[("", "role")]
    reason = "the action id feature stays in every replay"
    assert body["notScored"] == [{"namespace": "", "featureName": "id", "reason": reason}]
