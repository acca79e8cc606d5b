"""Settings: TOML, environment, overrides, validation, and the default policy's claim."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from ranker.core.settings import SettingsError, load_settings, parse_duration

ROOT = Path(__file__).parent.parent


def test_precedence_file_then_environment_then_overrides(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("port = 9000\nworkers = 3\n[loops.cards]\nexplorationPercentage = 0.05\n")
    settings = load_settings(path, environ={"RANKER_WORKERS": "4"}, overrides={"host": "::1"})
    assert (settings.port, settings.workers, settings.host) == (9000, 4, "::1")
    assert settings.loops["cards"].exploration_percentage == 0.05
    assert settings.policy("cards").name == "default"


@pytest.mark.parametrize(
    "toml, message",
    [
        ('[loops.a]\nrewardWaitTime = "10 minutes"\n', "ISO 8601"),
        ('[loops.a]\npolicy = "missing"\n', "cannot read policy"),
        ('[loops.a]\npolicy = { name = "x", arguments = "--cb_adf" }\n', "--cb_explore_adf"),
        ('[loops.a]\nlearningMode = "Sometimes"\n', "learningMode"),
        ('[loops."bad name"]\n', "loop name"),
        ('[loops.a]\nkeys = [{ role = "rank", sha256 = "plaintext" }]\n', "sha256"),
        ("unknown_setting = 1\n", "unknown_setting"),
        ("port = [\n", "cannot read config"),
    ],
)
def test_bad_settings_are_refused_with_a_reason(tmp_path, toml, message):
    path = tmp_path / "r.toml"
    path.write_text(toml)
    with pytest.raises(SettingsError, match=message):
        load_settings(path, environ={})


def test_durations():
    assert parse_duration("PT10M").total_seconds() == 600
    assert parse_duration("P1DT2H").total_seconds() == 93600
    assert parse_duration("PT1.5S").total_seconds() == 1.5
    with pytest.raises(ValueError):
        parse_duration("P")


def _simulation():
    spec = importlib.util.spec_from_file_location("simulate_news", ROOT / "scripts" / "simulate_news.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_default_policy_learns_where_personalizers_stalls():
    """README: the shipped default reaches the ε-greedy ceiling on the news simulation; Personalizer's does not."""
    sim = _simulation()
    default = load_settings(environ={}).policy("default").arguments
    personalizer = json.loads((ROOT / "policies" / "personalizer.json").read_text())["arguments"]
    fast = np.mean(sim.simulate(default, 2500, seed=1)[-500:])
    slow = np.mean(sim.simulate(personalizer, 2500, seed=1)[-500:])
    assert fast > 0.75
    assert slow < 0.6


SECRET_URL = "postgresql://ranker:s3cret-pw@127.0.0.1:{port}/ranker"


def test_the_database_url_comes_from_the_environment_and_its_password_is_never_shown(tmp_path):
    from click.testing import CliRunner

    from ranker.cli import cli
    from ranker.harness import free_port

    url = SECRET_URL.format(port=free_port())  # nothing listens there
    settings = load_settings(environ={"RANKER_DATABASE_URL": url, "RANKER_DATA_DIR": str(tmp_path)})
    assert settings.database_url.get_secret_value() == url
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in settings.database_name
    assert settings.database_name == url.replace("s3cret-pw", "***")
    assert load_settings(environ={}).database_url is None  # unset: SQLite in data_dir
    playbook = {"loop": "a", "playbook": [{"id": "call", "subject": "s", "template": "t"}]}  # triage on PostgreSQL
    with_triage = load_settings(
        environ={"RANKER_DATABASE_URL": url}, overrides={"loops": {"a": {}}, "triage": playbook}
    )
    assert with_triage.database_url is not None and with_triage.triage.playbook[0].id == "call"
    with pytest.raises(SettingsError) as refused:  # a bad setting beside the URL: the error does not show it
        load_settings(
            environ={"RANKER_DATABASE_URL": url}, overrides={"loops": {"a": {}}, "triage": {**playbook, "loop": "b"}}
        )
    assert "s3cret-pw" not in str(refused.value)

    with pytest.raises(SettingsError) as refused:
        load_settings(environ={"RANKER_DATABASE_URL": "mysql://root:s3cret-pw@db/x"})
    assert "s3cret-pw" not in str(refused.value) and "postgresql://" in str(refused.value)

    env = {"RANKER_DATABASE_URL": url, "RANKER_DATA_DIR": str(tmp_path)}
    for args in (["migrate"], ["settings"]):
        result = CliRunner().invoke(cli, args, env=env)
        assert "s3cret-pw" not in result.output, result.output
    failed = CliRunner().invoke(cli, ["migrate"], env=env)
    assert failed.exit_code == 1 and "cannot be reached" in failed.output and "***" in failed.output
