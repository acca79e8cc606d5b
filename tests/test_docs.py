"""The README is the user's manual: every setting and command is in it, every command has help."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ranker.cli import cli
from ranker.settings import documentation

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_readme_starts_with_the_two_commands():
    block = re.search(r"```sh\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert block[0] == "python3 -m pip install -e . && ranker serve"
    assert block[1] == "python3 -m pip install -e '.[test]' && python3 -m pytest"
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert block[1] in ci


@pytest.mark.parametrize("name", [name for name, _, _ in documentation()])
def test_every_setting_is_documented(name):
    assert f"| `{name}` |" in README


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_with_an_example_and_is_in_the_readme(runner, command):
    result = runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    assert f"`ranker {command}`" in README


def test_the_readme_configuration_example_is_valid(tmp_path):
    from ranker.settings import hash_key, load_settings

    example = re.search(r"```toml\n(.*?)```", README, re.S).group(1)
    example = example.replace('sha256 = "..."', f'sha256 = "{hash_key("k")}"')
    path = tmp_path / "ranker.toml"
    path.write_text(example)
    settings = load_settings(path, environ={})
    loop = settings.loops["cs-next-best-action"]
    assert [r.name for r in loop.rules.entitlements] == ["enterprise-only", "no-upsell-after-renewal"]
    assert loop.rules.priority[0].factor == 2.0 and settings.auth
