"""What the CLI prints from a record, the store or the scheduler is text, never rich markup:
`[/oops]` prints as itself instead of crashing the command, `[bold red]` styles nothing."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import sys

import pytest
from rich.console import Console

from slurmrunner.cli.inspect_cmds import runs_table
from tests.conftest import EXAMPLES
from tests.helpers_cli import cli, flat, isolate_cli_env

TASK = str(EXAMPLES / "task.py")
MARKUP = "[/oops] [bold red]x[/]"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    isolate_cli_env(monkeypatch, tmp_path)


def test_markup_from_records_store_and_paths_prints_literally(tmp_path):
    # the run folder and every log path hold markup too: `[bold red]/[/oops]`
    project = tmp_path / "[bold red]" / "[" / "oops]"
    project.mkdir(mode=0o700, parents=True)
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"backend": "local", "project_dir": str(project)}))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"x": 1}\n{"x": 2, "fail": 3}\n')
    first = cli("run", "-p", profile, "-i", inputs, "--", sys.executable, TASK)
    assert first.exit_code == 1, first.output
    # the failure as it came, its log path, the run folder
    assert flat(first.stderr).count("[bold red]/[/oops]") >= 2
    run_id = re.search(r"^run (\S+):", first.stderr, re.MULTILINE)[1]

    # What a record, a job's state, a counter and the run's state could carry, in the store.
    db = sqlite3.connect(tmp_path / "store.sqlite")
    with db:
        row = db.execute("SELECT result FROM tasks WHERE idx = 1").fetchone()[0]
        result = json.loads(row)
        result["error"].update(cause=MARKUP, message=f"message {MARKUP}")
        db.execute("UPDATE tasks SET result = ? WHERE idx = 1", (json.dumps(result),))
        db.execute("UPDATE jobs SET state = ?", (f"STATE{MARKUP}",))
        db.execute("INSERT INTO counters VALUES (?, ?, 1)", (run_id, f"call{MARKUP}"))
        db.execute("UPDATE runs SET state = ?", (f"state{MARKUP}",))
    db.close()
    log = next(project.glob("**/logs/1.log"))
    log.write_text("y" * (1024 * 1024 + 10) + "\n")  # over what `logs` shows: it says so

    status = cli("status", run_id)
    assert status.exit_code == 0, status.output
    text = flat(status.stderr)
    for expected in (
        f"state{MARKUP}",
        f"{MARKUP} \N{MULTIPLICATION SIGN}1",
        f"STATE{MARKUP}: 2",  # both jobs
        f"call{MARKUP}: 1",
    ):
        assert expected in text
    waited = cli("wait", run_id)
    assert waited.exit_code == 1, waited.output  # a failed task, not a crash
    assert f"{MARKUP} \N{MULTIPLICATION SIGN}1" in flat(waited.stderr)
    assert f"message {MARKUP}" in cli("results", run_id, "--failed").stdout
    logs = cli("logs", run_id, 1)
    assert logs.exit_code == 0, logs.output
    assert f"bytes of {log}" in flat(logs.stderr)


def test_the_runs_table_takes_its_cells_as_text():
    rows = [
        {
            "id": f"R{MARKUP}",
            "created": "2024-01-01 00:00:00",
            "state": MARKUP,
            "n_tasks": 1,
            "backend": "local",
            "user": MARKUP,
        }
    ]
    out = io.StringIO()
    Console(file=out, width=300).print(runs_table(rows))
    assert out.getvalue().count(MARKUP) == 3
