"""The OpenAPI document says exactly what a real server accepts: Schemathesis generates requests from it (valid
and invalid ones, and sequences along its links) against ``ranker serve`` with keys, with every check on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import ADMIN_KEY, KEYED_CONFIG

from ranker.core.settings import hash_key
from ranker.server.openapi import openapi

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

# the triage endpoints answer the admin key of cards
[triage]
loop = "cards"
"""
)
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
MAX_EXAMPLES = 8
OPERATIONS = sum(
    method in ("get", "put", "post", "patch", "delete") for item in openapi()["paths"].values() for method in item
)
FUZZ_SECONDS, STATEFUL_SECONDS = 50, 25


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

# The only checks off, for what no schema can say (every entry that matches an operation applies):
# a model is bytes only VW can tell good from bad;
[[operations]]
include-path-regex = "/model$"
include-method = "PUT"
checks.positive_data_acceptance.enabled = false

# which slots an event has is the state of the log (a reward for a slot the event lacks is a 400).
[[operations]]
include-path-regex = "/multislot/events/.+/reward$"
checks.positive_data_acceptance.enabled = false

# an entity's attributes are features whose names hold no '.' at any depth and whose JSON takes at most 64 KiB:
# the shared feature schema does not say either.
[[operations]]
include-path-regex = "^/entities/"
include-method-regex = "^(PUT|PATCH)$"
checks.positive_data_acceptance.enabled = false

# the dismissal reasons are a setting (triage.dismiss_reasons), not part of the document.
[[operations]]
include-path-regex = "^/triage/items/.+/dismiss$"
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


def run_schemathesis(url: str, workdir: Path, phases: str, seconds: int) -> tuple[int, str, float]:
    """Run the Schemathesis CLI for ``seconds`` at most (it repeats fuzzing and stateful runs until then)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    started = time.monotonic()
    run = subprocess.run(
        [
            *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(workdir / "schemathesis.toml"), "run"),
            *(f"{url}/openapi.json", "--phases", phases, "--max-time", str(seconds), "--seed", "1"),
            # Hypothesis' generator check, not the server's: ids follow a pattern (no control characters, no dot
            # segments) that the generator meets by filtering, and on a busy machine it filters "too much".
            "--suppress-health-check=filter_too_much",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    return run.returncode, run.stdout + run.stderr, time.monotonic() - started


def test_the_server_does_what_its_openapi_document_says(serve, tmp_path):
    server = serve(CONFIG, policy_optimization_seconds="1")
    (tmp_path / "schemathesis.toml").write_text(schemathesis_config(ADMIN_KEY))
    # single requests first (boundary values, then random ones), then sequences along the document's links
    for phases, seconds, operations in (
        ("coverage,fuzzing", FUZZ_SECONDS, f"Tested: {OPERATIONS}"),  # every operation of the document
        ("stateful", STATEFUL_SECONDS, "Tested: "),  # those the links reach
    ):
        code, output, elapsed = run_schemathesis(server.url, tmp_path, phases, seconds)
        summary = output[output.rfind("SUMMARY") :]
        print(f"\n{phases}: {elapsed:.0f} s\n{summary}")
        assert code == 0, output[-20000:]
        assert operations in summary
        assert re.search(r"Test cases:\s+[1-9]\d* generated", summary), summary
