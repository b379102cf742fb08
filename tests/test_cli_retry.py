"""`slurmrunner retry`, on this machine and on a service (test_cli_modes' harness: each test runs
twice, `local` and `service`): failed tasks run again in new jobs of the same run and the run is
watched to its end as `wait` does; refusals are messages and exit 2."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from slurmrunner.cli.retry_cmds import RetryAsk, read_ask, retry_line
from tests.helpers_cli import cli, flat, slurmrunner, write_inputs
from tests.test_cli_modes import Mode, mode, read_results, run_id_of, served, status_of

__all__ = ["mode", "served"]  # test_cli_modes' fixtures, by name

# Fails (status 3) the first time it runs for an input, leaving a mark, then succeeds; an
# input with "always" fails every time.
FLAKY = """\
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--args-json")
parser.add_argument("--out-json")
ns = parser.parse_args()
args = json.load(open(ns.args_json))
mark = os.path.join(os.path.dirname(os.path.abspath(__file__)), "marks", str(args["x"]))
if args.get("always") or not os.path.exists(mark):
    open(mark, "a").close()
    print("failing this time", file=sys.stderr)
    sys.exit(3)
json.dump({"x": args["x"]}, open(ns.out_json, "w"))
"""


@pytest.fixture
def flaky(tmp_path: Path) -> list[str]:
    script = tmp_path / "flaky" / "flaky.py"
    (script.parent / "marks").mkdir(parents=True)
    script.write_text(FLAKY)
    for x in (0, 2):  # these two succeed at once
        (script.parent / "marks" / str(x)).touch()
    return [sys.executable, str(script)]


def failed_run(tmp_path: Path, flaky: list[str], *extra: dict[str, Any]) -> str:
    """A run whose task 1 failed once (exit_code); tasks 0 and 2 ok."""
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": 0}, {"x": 1}, {"x": 2}, *extra])
    proc = slurmrunner("run", "-i", inputs, "-r", '{"mem": "1G"}', "--", *flaky)
    assert proc.returncode == 1, proc.stderr
    return run_id_of(proc.stderr)


def test_retry_by_cause_ends_ok_with_both_attempts(
    mode: Mode, tmp_path: Path, flaky: list[str]
) -> None:
    run_id = failed_run(tmp_path, flaky)
    proc = slurmrunner("retry", "last", "--cause", "exit_code", "--mem", "2x")
    assert proc.returncode == 0, proc.stderr
    err = flat(proc.stderr)
    assert f"retrying 1 task of run {run_id} in 1 job (exit_code: 1; mem 2x)" in err
    assert re.search(r"retried tasks\W+1 \(1 ok on a later attempt\)", err), err
    results = read_results(proc.stdout)
    assert [r["status"] for r in results] == ["ok"] * 3
    again = results[1]
    assert again["result"] == {"x": 1} and again["resources"]["mem_mb"] == 2048
    [first] = again["attempts"]  # the first attempt; this result is the second
    assert first["status"] == "failed" and first["error"]["cause"] == "exit_code"
    assert first["resources"]["mem_mb"] == 1024
    assert "attempts" not in results[0]

    st = status_of(run_id)
    assert st["state"] == "done" and st["counts"] == {"ok": 3} and st["retried_tasks"] == 1
    listed = read_results(cli("results", run_id).stdout)
    assert len(listed[1]["attempts"]) == 1

    nothing = cli("retry", run_id)
    assert nothing.exit_code == 2 and "no failed task to retry" in flat(nothing.stderr)


def test_retry_detached_then_wait(mode: Mode, tmp_path: Path, flaky: list[str]) -> None:
    run_id = failed_run(tmp_path, flaky, {"x": 3, "always": True})
    detached = slurmrunner("retry", run_id[:-2], "--indices", "1,3", "--detach")
    assert detached.returncode == 0, detached.stderr
    line = rf"retrying 2 tasks of run {run_id} in [12] jobs? \(exit_code: 2\)"
    assert re.search(line, flat(detached.stderr)), detached.stderr
    assert detached.stdout == ""
    waited = slurmrunner("wait", run_id)
    assert waited.returncode == 1, waited.stderr  # task 3 fails at every attempt
    results = read_results(waited.stdout)
    assert [r["status"] for r in results] == ["ok", "ok", "ok", "failed"]
    assert [len(r.get("attempts") or ()) for r in results] == [0, 1, 0, 1]
    assert status_of(run_id)["retried_tasks"] == 2


def test_refusals_exit_2_with_the_message(mode: Mode, tmp_path: Path, flaky: list[str]) -> None:
    run_id = failed_run(tmp_path, flaky)
    refused = {
        ("--mem", "3q"): "--mem: '3q' is not 2x, +2G or 8G",
        ("--time", "0x"): "--time: the factor '0x' must be between 1x and 100x",
        ("--cause", "bored"): "--cause bored: not a cause a task can fail of",
        ("--indices", "3-1"): "--indices: '3-1': indices count from 0",
        ("--indices", "a"): "--indices: 'a' is not an index",
        ("--cause", "out_of_memory"): "no failed task of cause out_of_memory to retry",
        ("--indices", "0"): "task(s) 0 did not fail",
        ("--mem", "32G"): "max_mem_per_job is 16000MB",
        ("--detach", "-o", "x.jsonl"): "--detach returns once the retry is submitted",
    }
    for args, words in refused.items():
        result = cli("retry", run_id, *args)
        assert result.exit_code == 2, (args, result.output)
        assert words in flat(result.stderr), (args, result.stderr)
        assert "Traceback" not in result.output
    assert cli("retry", "nope").exit_code == 2
    st = status_of(run_id)  # nothing was retried
    assert st["counts"] == {"ok": 2, "failed": 1} and st["retried_tasks"] == 0


def test_a_cancelled_run_is_not_retried(mode: Mode, tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": 1, "sleep": 60}])
    task = [sys.executable, str(Path(__file__).parents[1] / "examples" / "task.py")]
    run_id = cli("submit", "-i", inputs, "--", *task).stdout.strip()
    assert cli("cancel", run_id).exit_code == 0
    refused = cli("retry", run_id)
    assert refused.exit_code == 2 and "cancelled" in flat(refused.stderr)


def test_read_ask_and_the_line() -> None:
    ask = read_ask(["out_of_memory,time_limit", "out_of_memory"], "5, 1-3,3", "+2G", None)
    assert ask == RetryAsk(["out_of_memory", "time_limit"], [1, 2, 3, 5], "+2G", None)
    line = retry_line("R", 3, 2, {"time_limit": 1, "out_of_memory": 2}, ask)
    assert line == "retrying 3 tasks of run R in 2 jobs (out_of_memory: 2, time_limit: 1; mem +2G)"
    assert retry_line("R", 1, 1, {}, RetryAsk(None, None, None, None)) == (
        "retrying 1 task of run R in 1 job"
    )
    assert json.loads(json.dumps(ask.keywords()))["indices"] == [1, 2, 3, 5]
