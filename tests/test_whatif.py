"""Rule what-ifs (``ranker evaluate --rules``) on a simulated loop whose rules excluded an action, truth known."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ranker.cli import cli
from ranker.core.schemas import RankRequest
from ranker.core.settings import load_settings
from ranker.evaluation import weight_bound
from ranker.evaluation.replay import BUILT_INS, DsjsonFile, LoopLog, replay
from ranker.evaluation.whatif import joined_interval, load_rules, what_if
from ranker.logdata.export import export
from ranker.serving.service import Service, timestamp

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
K, EVENTS = 4, 3000
# The world: SMB accounts click a3 90% of the time and the others 20%; enterprise accounts a3 50%, others 30%.
# The loop's rules offer a3 to enterprise accounts only, so it was never shown to SMB accounts.
CLICK = {"smb": (0.2, 0.2, 0.2, 0.9), "enterprise": (0.3, 0.3, 0.3, 0.5)}
OLD_RULES = {
    "entitlements": [
        {
            "name": "enterprise-only",
            "actions": {"ids": ["a3"]},
            "requires": [{"path": "account.plan", "equals": "enterprise"}],
        }
    ]
}


def rank_request(event_id: str, plan: str) -> RankRequest:
    actions = [{"id": f"a{i}", "features": [{"kind": {"k": f"k{i}"}}]} for i in range(K)]
    context = [{"account": {"plan": plan}}]
    return RankRequest.model_validate({"contextFeatures": context, "actions": actions, "eventId": event_id})


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A loop that explores uniformly (an untrained model, exploration 100%) under the old rules."""
    data_dir: Path = tmp_path_factory.mktemp("whatif")
    loops = {"default": {"rewardWaitTime": "PT1S", "explorationPercentage": 1.0, "rules": OLD_RULES}}
    settings = load_settings(environ={}, overrides={"data_dir": data_dir, "synchronous": "NORMAL", "loops": loops})
    service = Service(settings)
    loop = service.loops["default"]
    rng = random.Random(12)
    plans = [rng.choice(["smb", "enterprise"]) for _ in range(EVENTS)]
    responses = [
        service.rank(loop, rank_request(f"e{n}", plans[n]), now=T0 + timedelta(milliseconds=10 * n))
        for n in range(EVENTS)
    ]
    ids = {row["event_id"]: row["id"] for row in service.store.read("SELECT id, event_id FROM decisions")}
    rewards = [
        (ids[f"e{n}"], 1.0, timestamp(T0 + timedelta(milliseconds=10 * n + 300)))
        for n, response in enumerate(responses)
        if rng.random() < CLICK[plans[n]][int(response["rewardActionId"][1:])]
    ]
    service.store.write(
        lambda conn: conn.executemany("INSERT INTO rewards (decision_id, value, received_at) VALUES (?, ?, ?)", rewards)
    )
    log = LoopLog(settings, "default", now=T0 + timedelta(hours=1))
    return settings, log, plans, replay(log, BUILT_INS, reward_model=None)


def rules_file(tmp_path, text: str) -> Path:
    path = tmp_path / "new-rules.toml"
    path.write_text(text)
    return path


def test_lifting_an_entitlement_reports_the_unsupported_share_and_bounds_around_the_truth(logged, tmp_path):
    _, log, plans, report = logged
    result = what_if(log, report, load_rules(rules_file(tmp_path, "")))  # no rules: a3 for everyone
    online = next(row for row in result["policies"] if row["policy"] == "Online")
    smb = plans.count("smb") / len(plans)
    # Online explored uniformly over what it could show: under no rules, uniform over all 4 actions; a3 was never
    # shown to SMB accounts, a quarter of their new policy's mass
    assert result["excluded_known"] and online["unsupported_share"] == pytest.approx(smb / 4)
    truth = smb * sum(CLICK["smb"]) / 4 + (1 - smb) * sum(CLICK["enterprise"]) / 4
    lower, upper = online["interval"]
    assert lower <= truth <= upper
    assert online["worst"] < truth < online["best"]
    # ignoring the unsupported mass would understate the new policy by SMB's a3 clicks (0.9 a quarter of the time)
    assert online["supported_estimate"] < truth - 0.05
    assert online["best"] - online["worst"] == pytest.approx(online["unsupported_share"])
    assert upper - lower > online["best"] - online["worst"]  # the interval holds whatever a3 earns


def test_a_new_priority_factor_needs_no_unsupported_action(logged, tmp_path):
    _, log, plans, report = logged
    text = '[rules]\n[[rules.entitlements]]\nname = "enterprise-only"\nactions = { ids = ["a3"] }\n'
    text += 'requires = [{ path = "account.plan", equals = "enterprise" }]\n'
    text += '[[rules.priority]]\nname = "push-a0"\nactions = { ids = ["a0"] }\nfactor = 3.0\n'
    result = what_if(log, report, load_rules(rules_file(tmp_path, text)))
    online = next(row for row in result["policies"] if row["policy"] == "Online")
    assert online["unsupported_share"] == 0.0 and online["worst"] == online["best"]
    smb = plans.count("smb") / len(plans)
    # a0 three times as likely: SMB 3/5 a0 and 1/5 each of a1, a2; enterprise 3/6 a0 and 1/6 each of the rest
    truth = smb * 0.2 + (1 - smb) * (3 * 0.3 + 0.3 + 0.3 + 0.5) / 6
    lower, upper = online["interval"]
    assert lower <= truth <= upper
    assert online["supported_estimate"] == pytest.approx(truth, abs=0.04)


def test_cli_rules_what_if_and_a_file_without_the_excluded_actions(logged, tmp_path, monkeypatch):
    settings, log, _, _ = logged
    monkeypatch.setenv("RANKER_DATA_DIR", str(settings.data_dir))
    exported = tmp_path / "log.json"
    export(settings, "default", exported, now=T0 + timedelta(hours=1))
    path = rules_file(tmp_path, "")
    args = ["evaluate", "--file", str(exported), "--no-dr", "--workers", "1", "--policy", "default"]
    result = CliRunner().invoke(cli, [*args, "--rules", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "under the rules of" in result.output and "does not keep the actions the old rules excluded" in result.output
    body = json.loads((tmp_path / "out" / "report.json").read_text())
    what = body["rules_what_if"]
    assert not what["excluded_known"] and {row["policy"] for row in what["policies"]} >= {"Online", "default"}
    assert all(row["unsupported_share"] == 0.0 for row in what["policies"])  # nothing excluded is known
    bad = rules_file(tmp_path, '[[priority]]\nname = "x"\nactions = { ids = ["a0"] }\nfactor = -1\n')
    result = CliRunner().invoke(cli, [*args, "--rules", str(bad), "-o", str(tmp_path / "bad")])
    assert result.exit_code == 1 and "rules" in result.output and not (tmp_path / "bad").exists()
    source = DsjsonFile(exported)
    assert what["events"] == sum(1 for _ in source.events())


@pytest.mark.parametrize("never_shown_reward", [0.0, 0.5, 1.0])
def test_the_what_if_interval_covers_whatever_the_never_shown_action_earns(never_shown_reward):
    """The interval's construction (the never-shown mass joins each weight, with the worst or best reward) on
    simulated logs: uniform logging over 3 of 4 actions in half the contexts, the new policy uniform over 4."""
    rng = np.random.default_rng(3)
    contexts, n, replications = 10, 1500, 300
    click = rng.uniform(0.05, 0.6, (contexts, K))
    click[:5, 3] = never_shown_reward
    excluded = np.arange(contexts) < 5
    mu = np.where(excluded[:, None], [1 / 3, 1 / 3, 1 / 3, 0.0], 0.25)
    new = np.full((contexts, K), 0.25)
    truth = float(np.mean(np.sum(new * click, axis=1)))
    never = np.where(excluded, 0.25, 0.0)
    hits = 0
    for _ in range(replications):
        x = rng.integers(0, contexts, n)
        a = np.minimum((rng.uniform(size=(n, 1)) > np.cumsum(mu[x], axis=1)).sum(axis=1), K - 1)
        r = (rng.uniform(size=n) < click[x, a]).astype(float)
        lower, upper = joined_interval(new[x, a] / mu[x, a], never[x], r, weight_bound(mu[x, a]), 0.0, 1.0)
        hits += lower <= truth <= upper
    assert hits / replications >= 0.95
