"""Offline evaluations and feature importances through the API: jobs over logs the real Service wrote, run by
``run_pending`` (the trainer's call) with the real VW; and the real SDK against ``ranker serve``, whose trainer
runs them."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from azure.ai.personalizer import PersonalizerAdministrationClient, PersonalizerClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from conftest import ADMIN_KEY, KEYED_CONFIG, RANK_KEY

from ranker.app import create_app
from ranker.core.schemas import RankRequest
from ranker.core.settings import load_settings
from ranker.evaluation.jobs import requeue_interrupted, run_pending
from ranker.serving.service import timestamp
from ranker.store import connect

ADMIN = {"Ocp-Apim-Subscription-Key": ADMIN_KEY}
RANK = {"Ocp-Apim-Subscription-Key": RANK_KEY}
V1 = "/personalizer/v1.0"
K, SEGMENTS, EVENTS = 4, 4, 800
LEARNER = {"name": "learner", "arguments": "--cb_explore_adf --epsilon 0.05 --cb_type mtr -q ::"}
BOGUS = "--cb_explore_adf --softmax --squarecb"  # VW does not take two exploration algorithms
CONFIG = KEYED_CONFIG.replace('policy = "default"', 'policy = "default"\nrewardWaitTime = "PT1S"')


def click_probability(segment: int, action: int) -> float:
    """In segment s, action (s + 1) mod K is clicked 70% of the time, every other one 10%."""
    return 0.7 if action == (segment + 1) % K else 0.1


def request_body(event_id: str, segment: int, rng: random.Random) -> dict:
    actions = [{"id": f"a{i}", "features": [{"item": {"kind": f"k{i}"}}]} for i in range(K)]
    context = [{"user": {"segment": f"s{segment}"}}, {"noise": {"draw": rng.randrange(3)}}]
    return {"contextFeatures": context, "actions": actions, "eventId": event_id}


@pytest.fixture
def logged(tmp_path):
    """A keyed app whose loop "cards" logged EVENTS decisions two hours ago, rewards drawn from the world."""
    path = tmp_path / "ranker.toml"
    path.write_text(CONFIG)
    settings = load_settings(path, environ={}, overrides={"data_dir": tmp_path, "synchronous": "NORMAL"})
    app = create_app(settings)
    service = app.extensions["ranker"]
    loop = service.loops["cards"]
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(hours=2)
    segments = [rng.randrange(SEGMENTS) for _ in range(EVENTS)]
    bodies = [RankRequest.model_validate(request_body(f"e{n}", segments[n], rng)) for n in range(EVENTS)]
    with ThreadPoolExecutor(4) as pool:
        responses = list(
            pool.map(lambda n: service.rank(loop, bodies[n], now=start + timedelta(milliseconds=10 * n)), range(EVENTS))
        )
    ids = {row["event_id"]: row["id"] for row in service.store.read("SELECT id, event_id FROM decisions")}
    rewards = []
    for n, response in enumerate(responses):
        if rng.random() < click_probability(segments[n], int(response["rewardActionId"][1:])):
            rewards.append((ids[f"e{n}"], 1.0, timestamp(start + timedelta(milliseconds=10 * n + 300))))
    service.store.write(
        lambda conn: conn.executemany("INSERT INTO rewards (decision_id, value, received_at) VALUES (?, ?, ?)", rewards)
    )
    window = {"startTime": (start - timedelta(minutes=1)).isoformat(), "endTime": datetime.now(UTC).isoformat()}
    return app.test_client(), settings, window, len(rewards) / EVENTS


def by_name(evaluation: dict) -> dict[str, dict]:
    return {policy["name"]: policy for policy in evaluation["content"]["value"]}


def test_an_evaluation_runs_reports_each_policy_and_its_policy_can_be_applied(logged):
    client, settings, window, mean_reward = logged
    body = {"name": "weekly", **window, "policies": [LEARNER]}
    created = client.put(f"{V1}/evaluations/ev1", json=body, headers=ADMIN)
    assert created.status_code == 200
    assert created.get_json()["status"] == "Pending"
    assert created.get_json()["evaluationType"] == "Manual"
    again = client.put(f"{V1}/evaluations/ev1", json=body, headers=ADMIN)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "ResourceExists"
    applied = client.post(
        f"{V1}/configurations/applyFromEvaluation", json={"evaluationId": "ev1", "policyName": "learner"}, headers=ADMIN
    )
    assert applied.status_code == 409  # not run yet

    assert run_pending(settings) == 1
    assert run_pending(settings) == 0
    evaluation = client.get(f"{V1}/evaluations/ev1", headers=ADMIN).get_json()
    assert evaluation["status"] == "Succeeded", evaluation
    assert evaluation["events"] == EVENTS
    policies = by_name(evaluation)
    assert set(policies) == {"Online", "Baseline", "Random", "learner"}
    assert policies["learner"]["policySource"] == "Custom" and policies["Online"]["policySource"] == "Online"
    for policy in policies.values():
        summary = policy["summary"]
        lower, upper = summary["confidenceInterval"]
        assert 0 <= lower <= summary["expectedReward"] <= upper <= 1, policy
        assert summary["events"] == EVENTS
        assert policy["timeseries"]["data"]
    # Online is what was served: its estimate is the mean logged reward
    assert policies["Online"]["summary"]["ips"] == pytest.approx(mean_reward)
    # the world rewards learning the segment's action; a uniform choice earns (0.7 + 3 * 0.1) / 4
    assert (
        policies["Random"]["summary"]["confidenceInterval"][0]
        < 0.25
        < policies["Random"]["summary"]["confidenceInterval"][1]
    )
    assert policies["learner"]["summary"]["expectedReward"] > policies["Random"]["summary"]["confidenceInterval"][1]
    # the learner beats what was served (a fresh, uniform model) by the lower end of its interval: it is the optimum
    learned = [v for v in evaluation["content"]["value"] if v["name"] == "learner" and not v["slotId"]][0]
    served = [v for v in evaluation["content"]["value"] if v["name"] == "Online" and not v["slotId"]][0]
    assert learned["summary"]["confidenceInterval"][0] > served["summary"]["confidenceInterval"][0]
    assert evaluation["optimalPolicy"] == "learner"
    # is it better? each policy's paired difference with Online and with Baseline, on the same events
    comparisons = {c["reference"]: c for c in learned["summary"]["comparisons"]}
    assert set(comparisons) == {"Online", "Baseline"}
    assert comparisons["Online"]["verdict"] == "better" and comparisons["Online"]["moreEvents"] == 0
    lower, upper = comparisons["Online"]["confidenceInterval"]
    assert 0 < lower <= comparisons["Online"]["difference"] <= upper
    random_row = policies["Random"]["summary"]["comparisons"]
    assert [c["reference"] for c in random_row] == ["Online", "Baseline"]
    assert [c["reference"] for c in served["summary"]["comparisons"]] == ["Baseline"]

    listed = client.get(f"{V1}/evaluations", headers=ADMIN).get_json()["value"]
    assert [(e["id"], e["status"]) for e in listed] == [("ev1", "Succeeded")]

    def apply(policy_name, evaluation_id="ev1"):
        body = {"evaluationId": evaluation_id, "policyName": policy_name}
        return client.post(f"{V1}/configurations/applyFromEvaluation", json=body, headers=ADMIN)

    assert apply("learner", "nope").status_code == 404
    assert apply("nope").status_code == 404
    assert apply("Random").status_code == 400
    assert apply("learner", "ev1").status_code == 204
    assert client.get(f"{V1}/configurations/policy", headers=ADMIN).get_json() == LEARNER
    assert apply("Online").status_code == 204  # the policy the loop had when the evaluation was made
    assert client.get(f"{V1}/configurations/policy", headers=ADMIN).get_json()["name"] == "default"

    assert client.delete(f"{V1}/evaluations/ev1", headers=ADMIN).status_code == 204
    assert client.get(f"{V1}/evaluations/ev1", headers=ADMIN).status_code == 404
    assert client.delete(f"{V1}/evaluations/ev1", headers=ADMIN).status_code == 404
    assert client.get(f"{V1}/evaluations", headers=ADMIN).get_json() == {"value": []}


# A0 only for segment s3, where it is the clicked one: under these rules Baseline (the first eligible action)
# shows a0 in s3 and a1 elsewhere, earning (0.7 + 0.7 + 0.1 + 0.1) / 4 in the simulated world (0.25 as logged);
# Random, uniform over a1-a3 in s0-s2 and over all four in s3, earns (3 * 0.3 + 0.25) / 4.
WHAT_IF_RULES = {
    "entitlements": [
        {
            "name": "a0-for-s3",
            "actions": {"ids": ["a0"]},
            "requires": [{"path": "user.segment", "equals": "s3"}],
        }
    ]
}
WHAT_IF_TRUTH = {"Baseline": 0.4, "Random": (3 * 0.3 + 0.25) / 4}


def test_an_evaluation_reports_segments_and_a_rule_what_if(logged):
    client, settings, window, _ = logged
    body = {"name": "why", **window, "policies": [LEARNER], "segmentBy": ["user.segment", "noise.draw"]}
    body |= {"minSegmentEvents": 150, "rules": WHAT_IF_RULES}
    created = client.put(f"{V1}/evaluations/seg", json=body, headers=ADMIN)
    assert created.status_code == 200, created.get_json()
    assert run_pending(settings) == 1
    evaluation = client.get(f"{V1}/evaluations/seg", headers=ADMIN).get_json()
    assert evaluation["status"] == "Succeeded", evaluation
    assert evaluation["segmentBy"] == ["user.segment", "noise.draw"] and evaluation["rules"] == WHAT_IF_RULES
    assert evaluation["minSegmentEvents"] == 150
    segments = evaluation["segments"]
    assert list(segments) == ["user.segment", "noise.draw"]
    assert {s["segment"] for s in segments["user.segment"]} == {"s0", "s1", "s2", "s3"}
    assert {s["segment"] for s in segments["noise.draw"]} == {"0", "1", "2"}  # numbers as JSON
    for path, rows in segments.items():
        assert sum(s["events"] for s in rows) == EVENTS, path
        for segment in rows:
            policies = {p["name"]: p["summary"] for p in segment["policies"]}
            assert set(policies) == {"Online", "Baseline", "Random", "learner"}
            for name, summary in policies.items():
                assert summary["events"] == segment["events"]
                lower, upper = summary["confidenceInterval"]
                assert 0 <= lower <= summary["expectedReward"] <= upper <= 1, (path, segment["segment"], name)
            assert [c["reference"] for c in policies["learner"]["comparisons"]] == ["Online", "Baseline"]
    # every segment's Baseline shows a0: clicked 70% in s3, 10% elsewhere
    baseline = {
        s["segment"]: next(p["summary"] for p in s["policies"] if p["name"] == "Baseline")
        for s in segments["user.segment"]
    }
    assert baseline["s3"]["confidenceInterval"][0] > baseline["s0"]["confidenceInterval"][1]

    what_if = evaluation["rulesWhatIf"]
    assert what_if["events"] == EVENTS and what_if["excludedActionsKnown"] is True
    rows = {row["name"]: row for row in what_if["policies"]}
    assert set(rows) == {"Online", "Baseline", "Random", "learner"}
    for name, truth in WHAT_IF_TRUTH.items():
        row = rows[name]
        assert row["unsupportedShare"] == 0  # the rules only take actions away; the logging explored every one
        assert row["worst"] == row["best"] == pytest.approx(row["supportedEstimate"])
        lower, upper = row["confidenceInterval"]
        assert lower <= truth <= upper, (name, row)
    # as logged, Baseline showed a0 everywhere and earned about 0.25: the what-if sees the rules' change
    assert rows["Baseline"]["confidenceInterval"][0] > by_name(evaluation)["Baseline"]["summary"]["expectedReward"]


@pytest.mark.parametrize(
    "extra, target",
    [
        ({"segmentBy": ["user..segment"]}, "segmentBy.0"),
        ({"segmentBy": "user.segment"}, "segmentBy"),
        ({"segmentBy": ["p"] * 11}, "segmentBy"),
        ({"minSegmentEvents": 0}, "minSegmentEvents"),
        ({"minSegmentEvents": "100"}, "minSegmentEvents"),
        ({"rules": {"entitlement": []}}, "rules.entitlement"),
        ({"rules": {"priority": [{"name": "p", "actions": {"ids": ["a1"]}, "factor": 0}]}}, "rules.priority.0.factor"),
        ({"rules": []}, "rules"),
    ],
)
def test_bad_segments_and_rules_are_a_400_in_the_one_error_shape(tmp_path, extra, target):
    path = tmp_path / "ranker.toml"
    path.write_text(CONFIG)
    client = create_app(load_settings(path, environ={}, overrides={"data_dir": tmp_path})).test_client()
    window = {"startTime": "2030-01-01T00:00:00Z", "endTime": "2030-01-02T00:00:00Z"}
    response = client.put(f"{V1}/evaluations/bad", json={"name": "n", **window, **extra}, headers=ADMIN)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "BadRequest" and error["target"] == target and error["message"]
    assert client.get(f"{V1}/evaluations/bad", headers=ADMIN).status_code == 404


def test_policy_optimization_adds_the_best_policy_it_found_and_it_can_be_applied(logged):
    client, settings, window, _ = logged
    body = {"name": "tuned", **window, "enablePolicyOptimization": "false"}
    refused = client.put(f"{V1}/evaluations/ev2", json=body, headers=ADMIN)
    assert refused.status_code == 400 and refused.get_json()["error"]["target"] == "enablePolicyOptimization"
    body = {"name": "tuned", **window, "enablePolicyOptimization": True}
    assert client.put(f"{V1}/evaluations/ev2", json=body, headers=ADMIN).status_code == 200
    # one second of search: the first batch (the loop's policy, Personalizer's default, the base) always runs
    assert run_pending(settings.model_copy(update={"policy_optimization_seconds": 1.0})) == 1
    evaluation = client.get(f"{V1}/evaluations/ev2", headers=ADMIN).get_json()
    assert evaluation["status"] == "Succeeded", evaluation
    policies = by_name(evaluation)
    found = [p for p in policies.values() if p["policySource"] == "OfflineExperimentation"]
    assert len(found) == 1 and set(policies) == {"Online", "Baseline", "Random", found[0]["name"]}
    optimized = found[0]
    assert evaluation["enablePolicyOptimization"] is True
    assert evaluation["policies"] == [{"name": optimized["name"], "arguments": optimized["arguments"]}]
    assert "--cb_explore_adf" in optimized["arguments"] and optimized["summary"]["events"] == EVENTS
    # the world rewards learning the segment's action: the search's best learns it
    assert optimized["summary"]["expectedReward"] > policies["Random"]["summary"]["confidenceInterval"][1]
    body = {"evaluationId": "ev2", "policyName": optimized["name"]}
    assert client.post(f"{V1}/configurations/applyFromEvaluation", json=body, headers=ADMIN).status_code == 204
    applied = client.get(f"{V1}/configurations/policy", headers=ADMIN).get_json()
    assert applied == {"name": optimized["name"], "arguments": optimized["arguments"]}


def test_requests_are_checked_and_need_the_admin_key(logged):
    client, settings, window, _ = logged
    body = {"name": "n", **window}
    for method, path in [
        ("put", "/evaluations/x"),
        ("get", "/evaluations/x"),
        ("get", "/evaluations"),
        ("delete", "/evaluations/x"),
        ("post", "/evaluations"),
        ("post", "/configurations/applyFromEvaluation"),
        ("put", "/featureImportances/x"),
        ("get", "/featureImportances/x"),
        ("get", "/featureImportances"),
        ("delete", "/featureImportances/x"),
    ]:
        response = getattr(client, method)(f"{V1}{path}", json=body, headers=RANK)
        assert response.status_code == 403, (method, path)
        assert set(response.get_json()["error"]) >= {"code", "message"}
        assert getattr(client, method)(f"{V1}{path}", json=body).status_code == 401
        assert getattr(client, method)(f"{V1}{path}", data="x", headers=RANK).status_code == 403
    for bad, target in [
        ({**window}, "name"),
        ({"name": "n", "startTime": window["endTime"], "endTime": window["startTime"]}, "startTime"),
        ({"name": "n", **window, "endTime": "tomorrow"}, "endTime"),
        ({"name": "n", **window, "policies": [{"name": "p", "arguments": "--cb_adf"}]}, None),
        ({"name": "n", **window, "policies": [{"name": "Random", "arguments": LEARNER["arguments"]}]}, "policies[0]"),
        ({"name": "n", **window, "policies": [LEARNER, {"name": "p", "arguments": BOGUS}]}, "policies[1]"),
    ]:
        response = client.put(f"{V1}/evaluations/bad", json=bad, headers=ADMIN)
        assert response.status_code == 400, bad
        assert response.get_json()["error"].get("target") == target or target is None
    assert client.get(f"{V1}/evaluations/bad", headers=ADMIN).status_code == 404

    submitted = client.post(f"{V1}/evaluations", json={"id": "posted", **body}, headers=ADMIN)
    assert submitted.status_code == 201
    assert submitted.headers["Location"].endswith("/evaluations/posted")
    fresh = client.post(f"{V1}/evaluations", json=body, headers=ADMIN)
    assert fresh.status_code == 201 and fresh.get_json()["id"] != "posted"
    assert client.post(f"{V1}/evaluations", json={"id": "posted", **body}, headers=ADMIN).status_code == 409
    top = client.get(f"{V1}/evaluations?top=1&skip=1", headers=ADMIN).get_json()["value"]
    assert len(top) == 1


def test_an_evaluation_of_an_empty_range_fails_with_its_reason(logged):
    client, settings, window, _ = logged
    empty = {"name": "future", "startTime": "2100-01-01T00:00:00Z", "endTime": "2100-01-02T00:00:00Z"}
    assert client.put(f"{V1}/evaluations/empty", json=empty, headers=ADMIN).status_code == 200
    assert run_pending(settings) == 1
    evaluation = client.get(f"{V1}/evaluations/empty", headers=ADMIN).get_json()
    assert evaluation["status"] == "Failed"
    assert "no event" in evaluation["description"]
    assert "content" not in evaluation


def test_a_job_left_running_by_a_stopped_trainer_runs_again(logged):
    client, settings, window, _ = logged
    assert client.put(f"{V1}/evaluations/cut", json={"name": "cut", **window}, headers=ADMIN).status_code == 200
    conn = connect(settings.database_path)
    try:
        conn.execute("UPDATE jobs SET status = 'Running'")  # the trainer stopped in the middle of it
        assert run_pending(settings, conn=conn) == 0
        assert requeue_interrupted(conn) == 1
        assert run_pending(settings, conn=conn) == 1
    finally:
        conn.close()
    evaluation = client.get(f"{V1}/evaluations/cut", headers=ADMIN).get_json()
    assert evaluation["status"] == "Succeeded"
    assert {p["name"] for p in evaluation["content"]["value"]} == {"Online", "Baseline", "Random"}


def test_feature_importance_scores_each_namespace(logged):
    client, settings, window, _ = logged
    created = client.put(f"{V1}/featureImportances/fi", json={"name": "fi", **window}, headers=ADMIN)
    assert created.status_code == 200 and created.get_json()["status"] == "Pending"
    assert client.put(f"{V1}/featureImportances/fi", json={"name": "fi", **window}, headers=ADMIN).status_code == 409
    assert run_pending(settings) == 1
    importance = client.get(f"{V1}/featureImportances/fi", headers=ADMIN).get_json()
    assert importance["status"] == "Succeeded", importance
    scores = {score["namespace"]: score["score"] for score in importance["featureScores"]}
    assert set(scores) == {"user", "item", "noise"}
    assert all(0 <= score <= 100 for score in scores.values())
    # the segment decides which action is clicked; the noise carries nothing, and the item's kind nothing the
    # action's id (a feature outside any namespace, which stays) does not carry already
    assert scores["user"] > 75
    assert scores["noise"] < 25 and scores["item"] < 25
    listed = client.get(f"{V1}/featureImportances", headers=ADMIN).get_json()["value"]
    assert [(f["id"], f["status"]) for f in listed] == [("fi", "Succeeded")]
    assert client.delete(f"{V1}/featureImportances/fi", headers=ADMIN).status_code == 204
    assert client.get(f"{V1}/featureImportances/fi", headers=ADMIN).status_code == 404


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_the_sdk_evaluation_calls_run_unchanged_and_the_trainer_runs_the_jobs(serve, database_url):
    server = serve(CONFIG, **({"database_url": database_url} if database_url else {}))
    admin = PersonalizerAdministrationClient(server.url, AzureKeyCredential(ADMIN_KEY), retry_total=0)
    client = PersonalizerClient(server.url, AzureKeyCredential(RANK_KEY), retry_total=0)
    rng = random.Random(11)
    start = datetime.now(UTC) - timedelta(seconds=1)
    for n in range(60):
        segment = rng.randrange(SEGMENTS)
        response = client.rank(request_body(f"s{n}", segment, rng))
        if rng.random() < click_probability(segment, int(response["rewardActionId"][1:])):
            client.reward(f"s{n}", {"value": 1.0})
    time.sleep(2.5)  # rewardWaitTime and the commit grace: every decision is due
    window = {"startTime": start.isoformat(), "endTime": datetime.now(UTC).isoformat()}

    extensions = {"segmentBy": ["user.segment"], "minSegmentEvents": 5, "rules": WHAT_IF_RULES}
    admin.create_evaluation("sdk", {"name": "sdk", **window, "policies": [LEARNER], **extensions})
    with pytest.raises(ResourceExistsError):
        admin.create_evaluation("sdk", {"name": "sdk", **window, "policies": [LEARNER]})
    admin.create_feature_importance("sdk-fi", {"name": "sdk-fi", **window})
    deadline = time.monotonic() + 30
    while True:
        evaluation = admin.get_evaluation("sdk", start_time=start, end_time=datetime.now(UTC))
        importance = admin.get_feature_importance("sdk-fi")
        if evaluation["status"] != "Pending" and importance["status"] not in ("Pending", "Running"):
            break
        assert time.monotonic() < deadline, (evaluation["status"], importance["status"])
        time.sleep(0.2)
    assert evaluation["status"] == "Succeeded", evaluation
    assert {p["name"] for p in evaluation["content"]["value"]} == {"Online", "Baseline", "Random", "learner"}
    # the extensions pass through the SDK: the segments and the rule what-if
    assert evaluation["segmentBy"] == ["user.segment"] and evaluation["rules"] == WHAT_IF_RULES
    by_segment = evaluation["segments"]["user.segment"]
    assert sum(segment["events"] for segment in by_segment) == evaluation["events"]
    assert all(len(segment["policies"]) == 4 for segment in by_segment)
    what_if = {row["name"]: row for row in evaluation["rulesWhatIf"]["policies"]}
    assert set(what_if) == {"Online", "Baseline", "Random", "learner"}
    assert all(row["worst"] <= row["best"] for row in what_if.values())
    assert importance["status"] == "Succeeded", importance
    assert {s["namespace"] for s in importance["featureScores"]} == {"user", "item", "noise"}
    assert [e["id"] for e in admin.list_evaluations()] == ["sdk"]
    assert [f["id"] for f in admin.list_feature_importances()] == ["sdk-fi"]

    admin.apply_from_evaluation({"evaluationId": "sdk", "policyName": "learner"})
    assert admin.get_policy() == LEARNER
    with pytest.raises(ResourceNotFoundError):
        admin.apply_from_evaluation({"evaluationId": "sdk", "policyName": "nope"})

    admin.delete_evaluation("sdk")
    admin.delete_feature_importance("sdk-fi")
    with pytest.raises(ResourceNotFoundError):
        admin.get_evaluation("sdk", start_time=start, end_time=datetime.now(UTC))
    with pytest.raises(ResourceNotFoundError):
        admin.get_feature_importance("sdk-fi")
    rank_only = PersonalizerAdministrationClient(server.url, AzureKeyCredential(RANK_KEY), retry_total=0)
    with pytest.raises(HttpResponseError) as error:
        list(rank_only.list_evaluations())
    assert error.value.status_code == 403


@pytest.mark.parametrize(
    "method, url, body",
    [
        ("put", "/evaluations/x", {"name": "x", "startTime": "0001-01-01T00:00:00+01:00", "endTime": "2030-01-01"}),
        ("put", "/evaluations/x", {"name": "x", "startTime": "2020-01-01", "endTime": "9999-12-31T23:59:59-01:00"}),
        ("get", "/evaluations?top=99999999999999999999", None),
        ("get", "/evaluations?skip=99999999999999999999", None),
        ("get", "/featureImportances?top=-5", None),
    ],
)
def test_times_and_paging_out_of_range_are_a_400(tmp_path, method, url, body):
    path = tmp_path / "ranker.toml"
    path.write_text(CONFIG)
    client = create_app(load_settings(path, environ={}, overrides={"data_dir": tmp_path})).test_client()
    response = getattr(client, method)(f"/personalizer/v1.0{url}", json=body, headers=ADMIN)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "BadRequest"
