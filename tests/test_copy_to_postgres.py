"""``ranker migrate --copy-to``: an SQLite log with its models moves into PostgreSQL, resumably, counts verified,
and a trainer on PostgreSQL goes on from the copied checkpoint."""

from __future__ import annotations

import os

from click.testing import CliRunner
from postgres import log_rows
from test_trainer import LATER, T0, rank, reward

from ranker.cli import cli
from ranker.core.settings import load_settings
from ranker.learning.trainer import Trainer
from ranker.serving.service import Service
from ranker.store import open_database
from ranker.store.signals import SignalStore

LOOPS = {"default": {"rewardWaitTime": "PT1S", "modelExportFrequency": "PT1S"}}


def test_a_log_is_copied_into_postgresql_resumably_and_learning_goes_on_there(tmp_path, pg_cluster):
    sqlite = load_settings(environ={}, overrides={"data_dir": tmp_path / "node", "loops": LOOPS})
    service = Service(sqlite)
    for n in range(30):
        rank(service, f"e{n}")
        reward(service, f"e{n}", n % 2, T0)
    with Trainer(sqlite) as trainer:
        assert trainer.run_once(now=LATER)["learned"] == 30
    service.store.delete_log("default")  # ids are never given out again, on either engine
    for n in range(30, 40):
        rank(service, f"e{n}")
    SignalStore(service.store).upsert_entity("account", "acme", lambda *_: ({"plan": "team"}, {"plan": "t"}), "t")
    url = pg_cluster.database()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    env |= {"RANKER_DATA_DIR": str(tmp_path / "node"), "RANKER_COPY_TO": url}

    copied = CliRunner().invoke(cli, ["migrate"], env=env)
    assert copied.exit_code == 0, copied.output
    assert "counts verified: decisions 10, rewards 0" in copied.output and "model_versions 1" in copied.output
    assert "signal_entities 1, signal_versions 1, signal_entity_history 1" in copied.output

    # the log grew after the copy stopped: the next run goes on after the last id copied
    for n in range(40, 45):
        rank(service, f"e{n}")
        reward(service, f"e{n}", 1.0, T0)
    again = CliRunner().invoke(cli, ["migrate"], env=env)
    assert again.exit_code == 0 and "decisions 15, rewards 5" in again.output, again.output
    source = log_rows(tmp_path / "node", None, "SELECT * FROM decisions ORDER BY id")
    assert log_rows(tmp_path, url, "SELECT * FROM decisions ORDER BY id") == source

    # a database that holds something else is refused
    used = pg_cluster.database()
    Service(load_settings(environ={}, overrides={"data_dir": tmp_path / "other", "database_url": used}))
    open_database(load_settings(environ={}, overrides={"data_dir": tmp_path, "database_url": used})).models.publish(
        "default", b"x"
    )
    refused = CliRunner().invoke(cli, ["migrate"], env={**env, "RANKER_COPY_TO": used})
    assert refused.exit_code == 1 and "not empty" in refused.output

    # on PostgreSQL the trainer goes on from the copied checkpoint, and the workers serve the copied model
    moved = load_settings(environ={}, overrides={"data_dir": tmp_path / "pg", "database_url": url, "loops": LOOPS})
    node = Service(moved)
    assert node.loops["default"].engine.version == service.loops["default"].engine.version
    rank(node, "e45")
    assert node.store.decision("default", "e45")["id"] == 46  # after every id SQLite gave out, deleted ones too
    with Trainer(moved) as trainer:
        report = trainer.run_once(now=LATER)
    assert report["learned"] == 16 and report["loops"]["default"]["last_decision_id"] == 46
