"""The README's service quickstart, as scripts/service-demo runs it: admin commands, `serve`,
then the example run through the API with the same CLI. The script, not a copy of its steps:
what the README shows is what is tested."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_service_demo_runs_the_example_through_the_service():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURMRUNNER_")}
    env["PYTHON"] = sys.executable  # the interpreter running the tests, never PATH's
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "service-demo")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["result"]["square"] for r in results] == [x * x for x in range(10)]
    assert "listening on http://127.0.0.1:" in done.stderr
    assert "alice@example.org" in done.stdout  # `runs` through the service
