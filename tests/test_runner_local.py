"""The Python API on the embedded local backend: run, submit/poll/cancel, attach."""

import sys
import time
from pathlib import Path

from slurmrunner import Profile, Runner, SlurmRunnerConfig, Store, TaskResources

TASK = str(Path(__file__).resolve().parents[1] / "examples" / "task.py")


def runner(tmp_path):
    profile = Profile(project_dir=str(tmp_path / "proj"))
    return Runner(SlurmRunnerConfig(), profile, Store(tmp_path / "store.sqlite"))


def test_run_returns_results_in_input_order(tmp_path):
    results = runner(tmp_path).run([sys.executable, TASK], [{"x": i} for i in range(12)])
    assert [r.result["square"] for r in results] == [i * i for i in range(12)]
    assert all(r.status == "ok" and r.duration_s is not None for r in results)


def test_submit_then_cancel_reports_every_task_cancelled(tmp_path):
    r = runner(tmp_path)
    run = r.submit([sys.executable, TASK], [{"sleep": 60} for _ in range(4)])
    deadline = time.monotonic() + 20
    while run.poll().jobs.get("RUNNING", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run.cancel() >= 1
    results = run.results()
    assert [x.status for x in results] == ["cancelled"] * 4
    assert all(x.error.cause == "cancelled" for x in results)


def test_attach_finds_the_run_and_its_results(tmp_path):
    r = runner(tmp_path)
    run = r.submit([sys.executable, TASK], [{"x": 2}, {"x": 3}])
    first = run.wait(timeout=60)
    again = Runner.attach(run.id, r.store)
    assert again.results() == first
    assert again.status().done
    assert again.status().calls["local_submit"] == 2


def test_explicit_batching_is_honoured(tmp_path):
    res = TaskResources(tasks_per_job=3, parallel_tasks_per_job=1)
    results = runner(tmp_path).run([sys.executable, TASK], [{"x": i} for i in range(7)], res)
    assert len({x.job_id for x in results}) == 3
