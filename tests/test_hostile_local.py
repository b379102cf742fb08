"""Hostile job output, through the real watcher on the local backend (the cases and checks are
in tests/hostile_cases.py; tests/integration/test_hostile_rig.py runs them as alice on the rig).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from slurmrunner import Profile, Runner, SlurmRunnerConfig, Store, TaskResources

from .hostile_cases import CASES, check_case, check_honest, local_runner, watch_cases


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    return watch_cases(*local_runner(tmp_path_factory.mktemp("hostile")))


def test_the_honest_run_watched_beside_them_is_right(watched):
    check_honest(watched)


@pytest.mark.parametrize("case", CASES)
def test_hostile_output(watched, case):
    check_case(watched, case)


def test_a_50_mb_result_never_reaches_the_watcher(watched):
    run, k = watched["where"]["50 MB result"]
    hostile = run.results()[3 * k + 1]
    assert hostile.error and "50000012 bytes" in hostile.error.message
    assert Path(run.run_dir, "tasks", f"{3 * k + 1}.out.json").stat().st_size == 50_000_012


def test_cancel_mid_run_keeps_what_had_ended_despite_bad_lines(tmp_path):
    task = tmp_path / "task.py"
    task.write_text(
        "import json, os, sys, time\n"
        "a = sys.argv\n"
        "args = json.load(open(a[a.index('--args-json') + 1]))\n"
        "out = a[a.index('--out-json') + 1]\n"
        "run = os.path.dirname(os.path.dirname(out))\n"
        "if args.get('bad'):\n"
        "    open(os.path.join(run, 'results', '0.jsonl'), 'ab').write(b'{\"i\": true}\\n')\n"
        "    time.sleep(60)\n"
        "json.dump({'x': args['x']}, open(out, 'w'))\n"
    )
    runner = Runner(
        SlurmRunnerConfig(),
        Profile(backend="local", project_dir=str(tmp_path / "proj")),
        Store(tmp_path / "s.sqlite"),
    )
    res = TaskResources(tasks_per_job=3, parallel_tasks_per_job=1)
    run = runner.submit([sys.executable, "-S", str(task)], [{"x": 0}, {"x": 1, "bad": 1}], res)
    deadline = time.monotonic() + 30
    while not any("not valid records" in w for w in run.poll().warnings):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert run.cancel() == 1
    results = run.results()
    assert [(r.status, r.result) for r in results] == [("ok", {"x": 0}), ("cancelled", None)]
