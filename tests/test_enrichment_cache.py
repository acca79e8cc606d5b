"""What a Rank's enrichment serves while each worker keeps entity versions for ``signals.recheck_seconds``: a
change sent through the same worker shows at its next Rank; one made by another process within that time."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import RANK_KEY
from signals_config import ACTIONS, CONFIG, SIGNALS_KEY

from ranker.app import create_app
from ranker.cli import cli
from ranker.core.settings import load_settings

SIGNALS = {"Ocp-Apim-Subscription-Key": SIGNALS_KEY}
RANK = {"Ocp-Apim-Subscription-Key": RANK_KEY}


def make_client(tmp_path: Path, recheck: float):
    config = CONFIG.replace("[signals]\n", f"[signals]\nrecheck_seconds = {recheck}\n", 1)
    assert config != CONFIG
    (tmp_path / "ranker.toml").write_text(config)
    settings = load_settings(tmp_path / "ranker.toml", environ={}, overrides={"data_dir": tmp_path})
    return create_app(settings).test_client()


def served(client, event_id: str) -> dict:
    """The account as the Rank served and logged it."""
    body = {"contextFeatures": [{"account": {"id": "acme"}}], "actions": ACTIONS, "eventId": event_id}
    assert client.post("/personalizer/v1.0/rank", json=body, headers=RANK).status_code == 201
    service = client.application.extensions["ranker"]
    return json.loads(service.store.decision("cards", event_id)["record"])["c"]["account"]


def api_calls(at_ns: int, n: int) -> dict:
    records = [
        {
            "timeUnixNano": str(at_ns - i),
            "eventName": "api.call",
            "attributes": [{"key": "api.name", "value": {"stringValue": "reporting"}}],
        }
        for i in range(n)
    ]
    resource = {"attributes": [{"key": "account.id", "value": {"stringValue": "acme"}}]}
    return {"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": records}]}]}


def test_every_change_through_the_worker_shows_at_its_next_rank(tmp_path):
    client = make_client(tmp_path, 1.0)  # the longest a worker may keep a version
    assert served(client, "r0") == {"id": "acme"}  # unknown, and remembered as unknown
    client.put("/entities/account/acme", json={"attributes": {"plan": "team"}}, headers=SIGNALS)
    assert served(client, "r1")["plan"] == "team"
    client.patch("/entities/account/acme", json={"attributes": {"plan": "enterprise"}}, headers=SIGNALS)
    assert served(client, "r2")["plan"] == "enterprise"
    now = time.time_ns()
    assert client.post("/v1/logs", json=api_calls(now, 2), headers=SIGNALS).status_code == 200
    assert served(client, "r3")["reporting_api_calls_30d"] == 2
    assert client.post("/v1/logs", json=api_calls(now - 10**6, 1), headers=SIGNALS).status_code == 200
    assert served(client, "r4")["reporting_api_calls_30d"] == 3
    assert client.delete("/entities/account/acme", headers=SIGNALS).status_code == 204
    assert served(client, "r5") == {"id": "acme"}


def test_a_change_by_another_process_shows_within_recheck_seconds(tmp_path, runner):
    recheck = 0.3
    client = make_client(tmp_path, recheck)
    client.put("/entities/account/acme", json={"attributes": {"plan": "team"}}, headers=SIGNALS)
    assert served(client, "before")["plan"] == "team"
    crm = tmp_path / "crm.csv"
    crm.write_text("id,plan\nacme,enterprise\n")
    argv = ["signals", "import", "--type", "account", str(crm), "--config", str(tmp_path / "ranker.toml")]
    result = runner.invoke(cli, argv, env={"RANKER_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    changed = time.monotonic()
    time.sleep(recheck)
    assert time.monotonic() - changed >= recheck
    assert served(client, "after")["plan"] == "enterprise"
