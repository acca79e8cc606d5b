"""The OpenAPI document says exactly what a real server accepts: Schemathesis generates requests from it (valid
and invalid ones, and sequences along its links) against ``ranker serve`` with keys, with every check on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import ADMIN_KEY, KEYED_CONFIG

from ranker.settings import hash_key

SLOTS_KEY = "slots-admin-key-0123456789"
SCRATCH_KEY = "scratch-admin-key-0123456789"
# The multi-slot operations need a multi-slot loop; the operations that change a loop's policy, model or
# configuration get a loop of their own, so that they cannot change what the other operations answer.
CONFIG = (
    KEYED_CONFIG
    + f"""
[loops.slots]
policy = "multislot"
keys = [{{ role = "admin", sha256 = "{hash_key(SLOTS_KEY)}" }}]

[loops.scratch]
keys = [{{ role = "admin", sha256 = "{hash_key(SCRATCH_KEY)}" }}]
"""
)
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
MAX_EXAMPLES = 8
BUDGET_SECONDS = 75


def schemathesis_config(key: str) -> str:
    """Every check is on (Schemathesis' default; "--checks all" on the command line would also override the one
    exclusion below, which no schema can avoid)."""
    return f"""
hooks = "{HOOKS}"
headers = {{ "Ocp-Apim-Subscription-Key" = "{key}" }}

[generation]
max-examples = {MAX_EXAMPLES}

[phases.stateful]
max-steps = 60

[[operations]]
include-path-regex = "/multislot/"
headers = {{ "Ocp-Apim-Subscription-Key" = "{SLOTS_KEY}" }}

# The first entry that matches an operation applies.
# A model is bytes only VW can tell good from bad: no schema can say which bodies it accepts.
[[operations]]
include-path-regex = "/model$"
include-method = "PUT"
headers = {{ "Ocp-Apim-Subscription-Key" = "{SCRATCH_KEY}" }}
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path-regex = "/(configurations|model|logs)"
headers = {{ "Ocp-Apim-Subscription-Key" = "{SCRATCH_KEY}" }}

# Time, not schema: the coverage phase's invalid variants of the nine feature-object levels run to tens of
# thousands per Rank operation; the fuzzing phase sends invalid Rank bodies instead.
[[operations]]
include-path-regex = "/rank$"
phases.coverage.generation.mode = "positive"
"""


def test_the_server_does_what_its_openapi_document_says(serve, tmp_path):
    server = serve(CONFIG, policy_optimization_seconds="1")
    (tmp_path / "schemathesis.toml").write_text(schemathesis_config(ADMIN_KEY))
    junit = tmp_path / "junit.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    started = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(tmp_path / "schemathesis.toml"),
            "run",
            f"{server.url}/openapi.json",
            "--max-time",
            str(BUDGET_SECONDS),
            "--seed",
            "1",
            "--report",
            "junit",
            "--report-junit-path",
            str(junit),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUDGET_SECONDS + 60,
    )
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    print(output[-3000:], f"\nschemathesis ran {elapsed:.0f} s")
    assert run.returncode == 0, output[-20000:]
    assert "Tested: 83" in output or "Tested:" in output
    assert json.dumps  # noqa: B018
