"""Failures where the user looks: printed as they happen, counted by cause, listed on demand,
and a run stopped early by --max-failures."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from slurmrunner.cli.failures import SHOWN_FAILURES, FailureReporter
from slurmrunner.results import TaskError, TaskResult
from slurmrunner.store import Store
from tests.conftest import EXAMPLES
from tests.helpers_cli import isolate_cli_env, slurmrunner, write_inputs

TASK = str(EXAMPLES / "task.py")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    isolate_cli_env(monkeypatch, tmp_path)


def flat(text):
    return re.sub(r"\s+", " ", text)


def read_results(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_id_of(stderr):
    return re.search(r"^run (\S+):", stderr, re.MULTILINE)[1]


def failed(index, tail="", cause="exit_code", message="exited with status 1", log=None):
    return TaskResult(index, "failed", error=TaskError(cause, message, tail), log=log)


# through the real command


def test_three_failures_printed_with_tail_and_path_then_listed(
    tmp_path, project_dir, local_profile_file
):
    inputs = [{"x": i} for i in range(10)]
    for i, status in ((2, 3), (5, 4), (7, 5)):
        inputs[i] = {"x": i, "fail": status}
    path = write_inputs(tmp_path / "in.jsonl", inputs)
    proc = slurmrunner("run", "-p", local_profile_file, "-i", path, "--", sys.executable, TASK)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    run_id = run_id_of(err)
    for i, status in ((2, 3), (5, 4), (7, 5)):
        assert f"task {i} failed (exit_code): exited with status {status}" in err
        assert f"failing on purpose with status {status}" in err
        log = f"{project_dir}/.slurmrunner/runs/{run_id}/logs/{i}.log"
        assert f"log: {log}" in err
    assert re.search("failure causes\\W+exit_code \N{MULTIPLICATION SIGN}3", err)
    assert "exit_code: " not in err  # a cause is not an exit status
    assert f"3 failed — `slurmrunner results {run_id} --failed`" in err
    assert "hint:" not in err  # most tasks worked: the command is fine

    listed = slurmrunner("results", run_id[:17], "--failed")
    assert listed.returncode == 0, listed.stderr
    assert [r["index"] for r in read_results(listed.stdout)] == [2, 5, 7]
    every = slurmrunner("results", "last")
    assert [r["index"] for r in read_results(every.stdout)] == list(range(10))


def test_program_without_fractal_flags_gets_a_hint(tmp_path, local_profile_file):
    path = write_inputs(tmp_path / "in.jsonl", [{"x": i} for i in range(3)])
    proc = slurmrunner("run", "-p", local_profile_file, "-i", path, "--", "sleep", "5")
    assert proc.returncode == 1
    text = flat(proc.stderr)
    assert text.count("hint:") == 1
    assert "--call stdin" in text
    assert "unrecognized option" in text  # the log tail, printed with the failure


def test_max_failures_cancels_the_rest(tmp_path, local_profile_file):
    inputs = [{"x": 0, "fail": 2}] + [{"x": i, "sleep": 0.5} for i in range(1, 100)]
    path = write_inputs(tmp_path / "in.jsonl", inputs)
    t0 = time.monotonic()
    proc = slurmrunner(
        "run",
        "-p",
        local_profile_file,
        "-i",
        path,
        "--max-failures",
        "1",
        "--",
        sys.executable,
        TASK,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    results = read_results(proc.stdout)
    assert [r["index"] for r in results] == list(range(100))
    counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "failed", "cancelled")}
    assert counts["failed"] == 1 and counts["cancelled"] > 50, counts
    assert "--max-failures 1" in proc.stderr and "cancelling the rest" in proc.stderr
    assert elapsed < 40  # 99 half-second tasks on few CPUs would take longer
    run_id = run_id_of(proc.stderr)
    assert Store().run(run_id).state == "cancelled"


def test_max_failures_must_be_positive(tmp_path, local_profile_file):
    path = write_inputs(tmp_path / "in.jsonl", [{"x": 1}])
    proc = slurmrunner("run", "-i", path, "--max-failures", "0", "--", "true")
    assert proc.returncode == 2


# the reporter itself


def test_failures_shown_up_to_the_limit(capsys):
    reporter = FailureReporter("RUN", 50, "fractal")
    reporter.feed([failed(i, tail=f"line of {i}") for i in range(SHOWN_FAILURES + 5)])
    err = capsys.readouterr().err
    assert err.count(" failed (exit_code)") == SHOWN_FAILURES
    assert f"task {SHOWN_FAILURES - 1} failed" in err
    assert f"task {SHOWN_FAILURES} failed" not in err
    assert err.count("more failures not shown") == 1
    assert "slurmrunner results RUN --failed" in err


def test_failure_text_is_not_markup(capsys):
    reporter = FailureReporter("RUN", 5, "stdin")
    reporter.feed(
        [
            failed(
                0,
                tail="a\n[/oops] [bold]b\n",
                message="[red]boom[/]",
                cause="exit[_]code",
                log="/p/[x]/0.log",
            )
        ]
    )
    err = capsys.readouterr().err
    for text in ("[/oops] [bold]b", "[red]boom[/]", "exit[_]code", "/p/[x]/0.log"):
        assert text in err


def test_only_the_last_lines_of_the_tail(capsys):
    tail = "".join(f"line {k}\n" for k in range(20))
    FailureReporter("RUN", 5, "stdin").feed([failed(0, tail=tail)])
    err = capsys.readouterr().err
    assert "line 19" in err and "line 15" in err and "line 14" not in err


@pytest.mark.parametrize(
    ("batch", "call", "hinted"),
    [
        ([failed(i, tail="x: unrecognized option '--args-json'") for i in range(3)], "fractal", 1),
        ([failed(0, tail="usage: --out-json required")], "fractal", 1),  # one task only
        ([failed(i, tail="unrecognized option '--args-json'") for i in range(3)], "stdin", 0),
        ([failed(i, tail="Traceback: KeyError") for i in range(3)], "fractal", 0),
        (
            [failed(0, tail="--args-json"), TaskResult(1, "ok"), failed(2, tail="--args-json")],
            "fractal",
            0,
        ),
        (
            [
                failed(0, tail="--args-json"),
                failed(1, tail="--args-json", cause="out_of_memory"),
                failed(2, tail="--args-json"),
            ],
            "fractal",
            0,
        ),
    ],
    ids=["three-alike", "single-task", "stdin-form", "other-error", "one-ok", "mixed-causes"],
)
def test_early_hint(capsys, batch, call, hinted):
    reporter = FailureReporter("RUN", 1 if len(batch) == 1 else 100, call)
    for r in batch:  # one at a time, as they come
        reporter.feed([r])
    reporter.feed([failed(50, tail="--args-json")])
    assert capsys.readouterr().err.count("hint:") == hinted
