"""An installed ranker (a built wheel, not the checkout) serves with its shipped default policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import requests

from ranker.harness import Server

PROJECT = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_and_serves_with_the_default_policy(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(PROJECT)],
        check=True,
    )
    wheel = next((tmp_path / "dist").glob("ranker-*.whl"))
    # The dependencies come from this Python's site-packages; ranker itself only from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "venv")], check=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], check=True)
    where = subprocess.run(
        [python, "-c", "import ranker, ranker.core.settings as s; print(ranker.__file__); print(s.PACKAGE_POLICIES)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(path.startswith(str(tmp_path / "venv")) for path in where), where

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = Server(data_dir, python=python, cwd=tmp_path)
    try:
        policy = requests.get(f"{server.url}/personalizer/v1.0/configurations/policy", timeout=10).json()
        assert policy == {"name": "default", "arguments": "--cb_explore_adf --epsilon 0.2 --cb_type mtr -q ::"}
        body = {"contextFeatures": [{"u": {"seg": "a"}}], "actions": [{"id": "x"}, {"id": "y"}]}
        ranked = requests.post(f"{server.url}/personalizer/v1.0/rank", json=body, timeout=10)
        assert ranked.status_code == 201 and {r["id"] for r in ranked.json()["ranking"]} == {"x", "y"}
        # the review pages' templates and stylesheet ship in the wheel
        sign_in = requests.get(f"{server.url}/review", timeout=10)
        assert sign_in.status_code == 200 and 'name="csrf"' in sign_in.text and "review.css" in sign_in.text
        style = requests.get(f"{server.url}/review/static/review.css", timeout=10)
        assert style.status_code == 200 and style.headers["Content-Type"].startswith("text/css")
    finally:
        server.stop()
