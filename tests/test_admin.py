"""Configuration, policy, model and log administration: test client for the semantics, the real SDK for the wire."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest
import vowpalwabbit
from azure.ai.personalizer import PersonalizerAdministrationClient, PersonalizerClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError
from conftest import ADMIN_KEY, KEYED_CONFIG, RANK_KEY

from ranker.app import create_app
from ranker.core import dsjson
from ranker.core.settings import load_settings
from ranker.learning.trainer import Trainer
from ranker.store import models

ADMIN = {"Ocp-Apim-Subscription-Key": ADMIN_KEY}
RANK = {"Ocp-Apim-Subscription-Key": RANK_KEY}
ACTIONS = [{"id": f"a{i}", "features": [{"item": {"kind": f"k{i}"}}]} for i in range(4)]
V1 = "/personalizer/v1.0"


@pytest.fixture
def keyed(tmp_path):
    path = tmp_path / "ranker.toml"
    path.write_text(KEYED_CONFIG.replace('policy = "default"', 'policy = "default"\nrewardWaitTime = "PT1S"'))
    settings = load_settings(path, environ={}, overrides={"data_dir": tmp_path})
    app = create_app(settings)
    return app.test_client(), app.extensions["ranker"], settings


def serving(service, loop, version, timeout=10.0):
    """Wait until the worker serves ``version`` (models load beside the requests)."""
    deadline = time.monotonic() + timeout
    while service.loops[loop].engine.version != version:
        assert time.monotonic() < deadline, f"{loop} still serves {service.loops[loop].engine.version}"
        service.refresh(service.loops[loop])
        time.sleep(0.02)


def rank(client, event_id, headers=RANK):
    body = {"contextFeatures": [{"u": {"seg": "s1"}}], "actions": ACTIONS, "eventId": event_id}
    response = client.post(f"{V1}/rank", json=body, headers=headers)
    assert response.status_code == 201
    return response.get_json()


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/configurations/service"),
        ("put", "/configurations/service"),
        ("get", "/configurations/policy"),
        ("put", "/configurations/policy"),
        ("delete", "/configurations/policy"),
        ("get", "/model"),
        ("put", "/model"),
        ("delete", "/model"),
        ("get", "/model/properties"),
        ("get", "/logs/properties"),
        ("delete", "/logs"),
    ],
)
def test_admin_operations_need_the_admin_key(keyed, method, path):
    client, _, _ = keyed
    response = getattr(client, method)(V1 + path, headers=RANK, json={})
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "OperationNotAllowed"
    assert getattr(client, method)(V1 + path, json={}).status_code == 401


def test_service_configuration_round_trip_and_validation(keyed):
    client, service, settings = keyed
    config = client.get(f"{V1}/configurations/service", headers=ADMIN).get_json()
    assert config["rewardWaitTime"] == "PT1S" and config["explorationPercentage"] == 0.2
    assert config["learningMode"] == "Online" and "lastConfigurationEditDate" not in config

    changed = dict(config, explorationPercentage=0.05, rewardAggregation="sum", learningMode="Apprentice")
    response = client.put(f"{V1}/configurations/service", json=changed, headers=ADMIN)
    assert response.status_code == 200
    assert response.get_json()["explorationPercentage"] == 0.05
    again = client.get(f"{V1}/configurations/service", headers=ADMIN).get_json()
    assert again["rewardAggregation"] == "sum" and again["lastConfigurationEditDate"]
    assert service.loops["cards"].settings.learning_mode == "Apprentice"
    assert rank(client, "after-change")["ranking"][0]["probability"] == 1.0  # Apprentice serves the baseline
    client.post(f"{V1}/events/after-change/reward", json={"value": 0.5}, headers=RANK)
    with Trainer(settings) as trainer:
        trainer.run_once(now=datetime.now(UTC) + timedelta(seconds=5))
    progress = client.get(f"{V1}/configurations/service", headers=ADMIN).get_json()["latestApprenticeModeMetrics"]
    assert progress["numberOfEvents"] == 1 and progress["sumOfRewards"] == 0.5

    for bad in [{"rewardWaitTime": "PT0S"}, {"explorationPercentage": 2}, {"rewardAggregation": "mode"}]:
        response = client.put(f"{V1}/configurations/service", json=dict(config, **bad), headers=ADMIN)
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == "InvalidServiceConfiguration"
    assert client.get(f"{V1}/configurations/service", headers=ADMIN).get_json()["rewardAggregation"] == "sum"


def test_a_new_policy_resets_the_model_and_the_trainer_retrains_from_the_log(keyed):
    client, service, settings = keyed
    for i in range(30):
        rank(client, f"e{i}")
        client.post(f"{V1}/events/e{i}/reward", json={"value": 1.0}, headers=RANK)
    with Trainer(settings) as trainer:
        assert trainer.run_once(now=datetime.now(UTC) + timedelta(seconds=5))["loops"]["cards"]["learned"] == 30
    learned_version = models.current(settings.data_dir, "cards")[0]

    policy = {"name": "slow", "arguments": "--cb_explore_adf --epsilon 0.1 --cb_type ips -q ::"}
    response = client.put(f"{V1}/configurations/policy", json=policy, headers=ADMIN)
    assert response.status_code == 200 and response.get_json() == policy
    assert client.get(f"{V1}/configurations/policy", headers=ADMIN).get_json() == policy
    # a fresh model is published at once, and served with the new arguments
    assert models.current(settings.data_dir, "cards")[0] > learned_version
    loop = service.loops["cards"]
    assert "--cb_type ips" in loop.arguments
    serving(service, "cards", models.current(settings.data_dir, "cards")[0])
    assert rank(client, "x1")["ranking"][0]["probability"] == pytest.approx(0.25)
    assert service.store.decision("cards", "x1")["policy"] == "slow"

    with Trainer(settings) as trainer:  # retrains every retained decision with the new policy
        report = trainer.run_once(now=datetime.now(UTC) + timedelta(seconds=5))
        assert report["loops"]["cards"]["learned"] == 31

    assert client.delete(f"{V1}/configurations/policy", headers=ADMIN).get_json()["name"] == "default"
    bad = client.put(f"{V1}/configurations/policy", json={"name": "x", "arguments": "--cb_adf"}, headers=ADMIN)
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "InvalidPolicyConfiguration"


def test_model_export_import_reset(keyed, tmp_path):
    client, service, settings = keyed
    exported = client.get(f"{V1}/model", headers=ADMIN)
    assert exported.status_code == 200 and exported.mimetype == "application/octet-stream"
    path = tmp_path / "exported.vw"
    path.write_bytes(exported.data)
    vowpalwabbit.Workspace(f"--quiet -t -i {path}").finish()

    garbage = client.put(f"{V1}/model", data=b"not a model", headers=ADMIN, content_type="application/octet-stream")
    assert garbage.status_code == 400 and garbage.get_json()["error"]["code"] == "InvalidModelImportFormat"
    # a multi-slot model, which VW would load with this single-slot loop's arguments without a word
    multislot = tmp_path / "multislot.vw"
    vw = vowpalwabbit.Workspace("--ccb_explore_adf --epsilon 0.2 --cb_type mtr -q :: --quiet")
    vw.save(str(multislot))
    vw.finish()
    other = client.put(
        f"{V1}/model", data=multislot.read_bytes(), headers=ADMIN, content_type="application/octet-stream"
    )
    assert other.status_code == 400 and "not a single-slot model" in other.get_json()["error"]["message"]
    assert other.get_json()["error"]["code"] == "InvalidModelImportFormat"
    assert client.get(f"{V1}/model", headers=ADMIN).data == exported.data

    # a model that learned a2 is the best action, trained outside the service on logged records
    arguments = service.loops["cards"].arguments
    ws = vowpalwabbit.Workspace(arguments + " --dsjson --quiet")
    for i in range(40):
        rank(client, f"t{i}")
        record = service.store.decision("cards", f"t{i}")["record"]
        chosen = json.loads(record)["a"][0] - 1
        ws.learn(ws.parse(dsjson.labeled(record, 1.0 if chosen == 2 else 0.0)))
    ws.save(str(tmp_path / "good.vw"))
    ws.finish()
    response = client.put(
        f"{V1}/model", data=(tmp_path / "good.vw").read_bytes(), headers=ADMIN, content_type="application/octet-stream"
    )
    assert response.status_code == 204
    serving(service, "cards", models.current(settings.data_dir, "cards")[0])
    best = max(rank(client, "after-import")["ranking"], key=lambda r: r["probability"])
    assert best["id"] == "a2"
    assert client.get(f"{V1}/model", headers=ADMIN).data == (tmp_path / "good.vw").read_bytes()
    properties = client.get(f"{V1}/model/properties", headers=ADMIN).get_json()
    assert properties["creationTime"] <= properties["lastModifiedTime"]

    # the trainer continues from the imported model with the decisions logged after the import
    with Trainer(settings) as trainer:
        report = trainer.run_once(now=datetime.now(UTC) + timedelta(seconds=5))
    assert report["loops"]["cards"]["learned"] == 1

    assert client.delete(f"{V1}/model", headers=ADMIN).status_code == 204
    serving(service, "cards", models.current(settings.data_dir, "cards")[0])
    assert rank(client, "after-reset")["ranking"][0]["probability"] == pytest.approx(0.25)


def test_log_properties_and_delete(keyed):
    client, service, _ = keyed
    assert client.get(f"{V1}/logs/properties", headers=ADMIN).get_json() == {"dateRange": {}}
    for i in range(3):
        rank(client, f"e{i}")
    client.post(f"{V1}/events/e0/reward", json={"value": 1}, headers=RANK)
    dates = client.get(f"{V1}/logs/properties", headers=ADMIN).get_json()["dateRange"]
    assert dates["from"] <= dates["to"]
    last_id = service.store.read("SELECT max(id) AS id FROM decisions")[0]["id"]
    assert client.delete(f"{V1}/logs", headers=ADMIN).status_code == 204
    assert service.store.counts() == {"decisions": 0, "rewards": 0}
    rank(client, "e0")  # the event id is free again, and the id is never reused
    assert service.store.read("SELECT id FROM decisions")[0]["id"] > last_id


def test_the_sdk_administration_client_runs_unchanged(serve):
    server = serve(KEYED_CONFIG)
    admin = PersonalizerAdministrationClient(server.url, AzureKeyCredential(ADMIN_KEY), retry_total=0)
    config = admin.get_service_configuration()
    config["explorationPercentage"] = 0.1
    assert admin.update_service_configuration(config)["explorationPercentage"] == 0.1
    assert admin.get_service_configuration()["explorationPercentage"] == 0.1

    policy = admin.update_policy({"name": "custom", "arguments": "--cb_explore_adf --epsilon 0.1 -q ::"})
    assert admin.get_policy() == policy
    assert admin.reset_policy()["name"] == "default"

    model = b"".join(admin.export_model())
    admin.import_model(io.BytesIO(model))
    assert b"".join(admin.export_model()) == model
    assert set(admin.get_model_properties()) == {"creationTime", "lastModifiedTime"}
    admin.reset_model()

    client = PersonalizerClient(server.url, AzureKeyCredential(RANK_KEY), retry_total=0)
    client.rank({"actions": ACTIONS, "contextFeatures": [{"u": {"seg": "s"}}]})
    assert admin.get_log_properties()["dateRange"]["from"]
    admin.delete_logs()
    with sqlite3.connect(server.data_dir / "ranker.db") as conn:
        assert conn.execute("SELECT count(*) FROM decisions").fetchone() == (0,)
    conn.close()

    rank_only = PersonalizerAdministrationClient(server.url, AzureKeyCredential(RANK_KEY), retry_total=0)
    with pytest.raises(HttpResponseError) as error:
        rank_only.get_policy()
    assert error.value.status_code == 403


def test_an_apprentice_loop_graduates_to_online_on_replayed_evidence(tmp_path):
    path = tmp_path / "ranker.toml"
    path.write_text(
        KEYED_CONFIG.replace(
            'policy = "default"', 'policy = "default"\nrewardWaitTime = "PT1S"\napprenticeGraduationEvents = 300'
        )
    )
    settings = load_settings(path, environ={}, overrides={"data_dir": tmp_path})
    client = create_app(settings).test_client()
    # Online first: exploration shows that a2 earns 1 and the baseline (a0, first eligible) nothing.
    for i in range(400):
        body = rank(client, f"e{i}")
        client.post(f"{V1}/events/e{i}/reward", json={"value": float(body["rewardActionId"] == "a2")}, headers=RANK)
    config = client.get(f"{V1}/configurations/service", headers=ADMIN).get_json()
    client.put(f"{V1}/configurations/service", json=dict(config, learningMode="Apprentice"), headers=ADMIN)
    for i in range(20):
        assert rank(client, f"apprentice{i}")["rewardActionId"] == "a0"

    with Trainer(settings) as trainer:
        trainer.run_once(now=datetime.now(UTC) + timedelta(seconds=5))
    with sqlite3.connect(tmp_path / "ranker.db") as conn:
        switches = conn.execute("SELECT loop, from_mode, to_mode, evidence FROM mode_switches").fetchall()
    conn.close()
    assert [s[:3] for s in switches] == [("cards", "Apprentice", "Online")]
    evidence = json.loads(switches[0][3])
    assert evidence["graduate"] and evidence["events"] >= 300 and evidence["lower_bound"] > evidence["baseline"]
    assert client.get(f"{V1}/configurations/service", headers=ADMIN).get_json()["learningMode"] == "Online"


def test_graduation_is_off_by_default(keyed):
    client, _, settings = keyed
    config = client.get(f"{V1}/configurations/service", headers=ADMIN).get_json()
    client.put(f"{V1}/configurations/service", json=dict(config, learningMode="Apprentice"), headers=ADMIN)
    for i in range(50):
        rank(client, f"a{i}")
    with Trainer(settings) as trainer:
        trainer.run_once(now=datetime.now(UTC) + timedelta(seconds=5))
    assert client.get(f"{V1}/configurations/service", headers=ADMIN).get_json()["learningMode"] == "Apprentice"


@pytest.mark.parametrize(
    "arguments",
    [
        '--cb_explore_adf "',  # unreadable quoting
        "--cb_explore_adf --no_such_option",  # VW refuses it
        "--cb_explore_adf -f /tmp/written-by-vw.vw",  # files are the service's business
        "--cb_explore_adf --readable_model=/tmp/written-by-vw.txt",
        "--cb_explore_adf -q :: -d/etc/passwd",
    ],
)
def test_a_policy_vw_refuses_or_that_names_files_is_a_400_and_changes_nothing(keyed, arguments):
    client, service, _ = keyed
    response = client.put(f"{V1}/configurations/policy", json={"name": "bad", "arguments": arguments}, headers=ADMIN)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "InvalidPolicyConfiguration"
    assert client.get(f"{V1}/configurations/policy", headers=ADMIN).get_json()["name"] == "default"
    assert service.store.read("SELECT count(*) AS n FROM loop_config")[0]["n"] == 0
    rank(client, "still-serving")


@pytest.mark.parametrize(
    "change", [{"logRetentionDays": 1000000}, {"rewardWaitTime": "P999999999D"}, {"modelExportFrequency": "P4000D"}]
)
def test_service_settings_out_of_range_are_a_400(keyed, change):
    client, _, settings = keyed
    config = client.get(f"{V1}/configurations/service", headers=ADMIN).get_json()
    response = client.put(f"{V1}/configurations/service", json=dict(config, **change), headers=ADMIN)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "InvalidServiceConfiguration"
    with Trainer(settings) as trainer:  # and the trainer keeps working
        trainer.run_once(now=datetime.now(UTC) + timedelta(seconds=5))
