"""The command line, through click's runner and as a real process."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

from ranker.cli import cli
from ranker.core.settings import hash_key


def test_new_key_prints_a_key_and_its_hash(runner):
    result = runner.invoke(cli, ["new-key", "--role", "admin"])
    assert result.exit_code == 0
    key = result.output.split("key: ")[1].split()[0]
    assert f'role = "admin", sha256 = "{hash_key(key)}"' in result.output


def test_hash_key(runner):
    result = runner.invoke(cli, ["hash-key", "secret"])
    assert result.output.strip() == hash_key("secret")


def test_migrate_creates_the_log(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path))
    result = runner.invoke(cli, ["migrate"])
    assert result.exit_code == 0 and "create_decisions_and_rewards" in result.output
    tables = {r[0] for r in sqlite3.connect(tmp_path / "ranker.db").execute("SELECT name FROM sqlite_master")}
    assert {"decisions", "rewards"} <= tables
    assert "up to date" in runner.invoke(cli, ["migrate"]).output


def test_settings_validates_a_file(runner, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[loops.cards]\nrewardWaitTime = "PT5S"\n')
    result = runner.invoke(cli, ["settings", "--config", str(good)])
    assert result.exit_code == 0 and "valid; loops cards; auth off" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[loops.cards]\nrewardWaitTime = "PT0.5S"\n')
    result = runner.invoke(cli, ["settings", "--config", str(bad)])
    assert result.exit_code == 1 and "rewardWaitTime must be at least 1 second" in result.output


def test_serve_refuses_a_public_address_without_keys(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ranker", "serve", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "RANKER_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "without keys" in result.stderr


def test_serve_says_loudly_that_auth_is_off(serve):
    server = serve()
    server.stop()
    assert "AUTH IS OFF" in (server.data_dir / "server.log").read_text()


def test_import_export_and_evaluate(runner, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path))
    vw_file = Path(__file__).parent / "data" / "dsjson_cb.json"
    result = runner.invoke(cli, ["import", str(vw_file)])
    assert result.exit_code == 0 and "6 decisions imported, 0 lines skipped" in result.output
    again = runner.invoke(cli, ["import", str(vw_file)])
    assert again.exit_code == 1 and "dsjson_cb.json:1: not written: EventId" in again.output

    out = tmp_path / "export.json"
    assert runner.invoke(cli, ["export", "-o", str(out)]).exit_code == 0
    assert len(out.read_text().splitlines()) == 6

    report = tmp_path / "report"
    args = ["evaluate", "--file", str(out), "--policy", "default", "--workers", "1", "-o", str(report)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    table = result.output[result.output.index("policy") :].splitlines()
    assert [line.split()[0] for line in table[1:5]] == ["Online", "Baseline", "Random", "default"]
    assert (report / "report.json").exists()
    assert runner.invoke(cli, ["export", "--loop", "nope"]).exit_code == 1
    # each policy against Online and a reference, on the same events: 6 events settle nothing
    result = runner.invoke(cli, [*args, "--reference", "Baseline"])
    assert result.exit_code == 0, result.output
    table = result.output[result.output.index("policy") :].splitlines()
    assert table[0].split()[-4:] == ["vs", "Online", "vs", "Baseline"]
    assert "not distinguishable (~" in table[4]
    body = json.loads((report / "report.json").read_text())
    assert body["references"] == ["Online", "Baseline"]
    assert set(body["policies"][3]["versus"]) == {"Online", "Baseline"}
    result = runner.invoke(cli, [*args, "--reference", "nobody"])
    assert result.exit_code == 1 and "the reference 'nobody' is not a candidate" in result.output

    refused = "--cb_explore_adf --softmax --squarecb"  # two exploration algorithms
    for workers in ("1", "2"):
        bad = ["evaluate", "--file", str(out), "--arguments", refused, "--workers", workers]
        result = runner.invoke(cli, [*bad, "-o", str(tmp_path / "bad")])
        assert result.exit_code == 1 and f"Error: VW does not take the arguments '{refused}'" in (result.output), (
            result.output
        )
        assert not (tmp_path / "bad").exists()


def test_train_once_learns_what_is_due(runner, tmp_path, monkeypatch):
    from datetime import UTC, datetime, timedelta

    from ranker.core.schemas import RankRequest
    from ranker.core.settings import load_settings
    from ranker.serving.service import Service

    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path))
    config = tmp_path / "ranker.toml"
    config.write_text('[loops.cards]\nrewardWaitTime = "PT1S"\n')
    service = Service(load_settings(config))
    request = RankRequest.model_validate({"actions": [{"id": "a"}, {"id": "b"}]})
    earlier = datetime.now(UTC) - timedelta(minutes=1)
    for _ in range(3):
        service.rank(service.loops["cards"], request, now=earlier)
    result = runner.invoke(cli, ["train", "--once", "--config", str(config)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["learned"] == 3 and report["loops"]["cards"]["published"] is not None
    assert json.loads(runner.invoke(cli, ["train", "--once", "--config", str(config)]).output)["learned"] == 0


def test_search_and_importance_over_a_file(runner, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path))
    vw_file = str(Path(__file__).parent / "data" / "dsjson_cb.json")
    result = runner.invoke(cli, ["evaluate", "--file", vw_file, "--search", "0", "--workers", "1", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "search.json").read_text())
    assert found["tried"] >= 3 and found["best"]["arguments"].startswith("--cb_explore_adf")
    assert found["improvement"]["versus_online"]["verdict"] in ("better", "worse", "not distinguishable")
    assert "best - Online: " in result.output
    assert runner.invoke(cli, ["evaluate", "--file", vw_file, "--search", "0", "--apply"]).exit_code == 2

    result = runner.invoke(cli, ["importance", "--file", vw_file, "-o", str(tmp_path / "rows.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert {row["namespace"] for row in rows} >= {"FromUrl"} and all(0 <= row["score"] <= 100 for row in rows)
