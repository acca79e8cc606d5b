"""The README and docs/ are the user's manual: the README starts with the two commands and points to docs/, where
every setting, command and endpoint is documented; every command has help with an example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ranker.cli import cli
from ranker.core.settings import documentation
from ranker.server.openapi import openapi

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
DOCS = {path.name: path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}
ALL_DOCS = "\n".join(DOCS.values())


def test_readme_starts_with_the_two_commands():
    block = re.search(r"```sh\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert block[0] == "python3 -m pip install -e . && ranker serve"
    assert block[1] == "python3 -m pip install -e '.[test]' && python3 -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert block[1] in ci


def test_the_readme_links_every_page_of_the_docs():
    assert DOCS
    for name in DOCS:
        assert f"(docs/{name})" in README, name


@pytest.mark.parametrize("name", [name for name, _, _ in documentation()])
def test_every_setting_is_documented(name):
    assert f"| `{name}` |" in DOCS["configuration.md"]


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_with_an_example_and_is_documented(runner, command):
    result = runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    assert f"`ranker {command}`" in DOCS["cli.md"]


def _endpoints() -> list[tuple[str, str]]:
    """(method, path) of every operation in the OpenAPI document, Personalizer's under one URL shape."""
    found = []
    for path, operations in openapi()["paths"].items():
        if path.startswith("/personalizer/") and not path.startswith("/personalizer/v1.0/"):
            continue  # the same operations under the other two URL shapes
        for method in operations:
            if method in ("get", "put", "post", "patch", "delete"):
                found.append((method.upper(), path.removeprefix("/personalizer/v1.0/")))
    return sorted(found)


@pytest.mark.parametrize("method, path", _endpoints())
def test_every_endpoint_is_documented(method, path):
    """The path, with any names for its parameters, appears in the docs beside its method."""
    pattern = re.escape(path).replace(r"\{", "{").replace(r"\}", "}")
    pattern = re.sub(r"\{[^}]+\}", r"\\{[^}]+\\}", pattern)
    assert re.search(pattern, ALL_DOCS), path
    assert method in ALL_DOCS


def test_the_documented_configuration_example_is_valid(tmp_path):
    from ranker.core.settings import hash_key, load_settings

    example = re.search(r"```toml\n(.*?)```", DOCS["configuration.md"], re.S).group(1)
    example = example.replace('sha256 = "..."', f'sha256 = "{hash_key("k")}"')
    path = tmp_path / "ranker.toml"
    path.write_text(example)
    settings = load_settings(path, environ={})
    loop = settings.loops["cs-next-best-action"]
    assert [r.name for r in loop.rules.entitlements] == ["enterprise-only", "no-upsell-after-renewal"]
    assert loop.rules.priority[0].factor == 2.0 and settings.auth
