"""A run taken over before its start ended (a service killed between storing a run and its
watcher's first step) is started by the process that takes it over: its folder is made, or
the half-made one kept, before any job is submitted. Submitted without it, every job failed
to launch (SLURM: "Could not open stdout file", the run's tasks all `job_failed`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from slurmrunner import PollPolicy, Profile, Runner, SlurmRunnerConfig, Store, TaskResources
from slurmrunner.watcher import Watcher

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "task.py")
FAST = PollPolicy(read_min_s=0.05, read_max_s=0.5, squeue_min_s=0.2, squeue_max_s=2.0)
RES = TaskResources(tasks_per_job=2, parallel_tasks_per_job=1)


def _take_over(run_id: str, store: Store) -> None:
    """What the service does at start: attach every unfinished run, watch it with resume."""
    run = Runner.attach(run_id, store, FAST)
    watcher = Watcher(FAST)
    watcher.add(run, resume=True)
    deadline = time.monotonic() + 60
    while watcher.runs():
        assert time.monotonic() < deadline, "the run did not finish"
        watcher.step()
        time.sleep(watcher.pause())


def _runner(tmp_path: Path) -> tuple[Runner, Store]:
    store = Store(tmp_path / "store.sqlite")
    profile = Profile(backend="local", project_dir=str(tmp_path / "project"))
    return Runner(SlurmRunnerConfig(), profile, store, FAST), store


def test_a_stored_run_never_started_is_started_when_taken_over(tmp_path):
    runner, store = _runner(tmp_path)
    run = runner.prepare([sys.executable, EXAMPLE], [{"x": i} for i in range(5)], RES)
    assert store.run(run.id).state == "submitting"
    assert not Path(run.spec.run_dir).exists()  # died before its folder was made
    _take_over(run.id, store)
    assert store.run(run.id).state == "done"
    assert [(r.status, r.result["square"]) for r in run.results()] == [
        ("ok", i * i) for i in range(5)
    ]


def test_a_half_made_folder_is_kept_when_taken_over(tmp_path):
    runner, store = _runner(tmp_path)
    run = runner.prepare([sys.executable, EXAMPLE], [{"x": i} for i in range(3)], RES)
    Path(run.spec.run_dir).mkdir(parents=True, mode=0o700)  # died right after its mkdir
    (Path(run.spec.run_dir).parent).chmod(0o700)
    _take_over(run.id, store)
    assert store.run(run.id).state == "done"
    assert [r.result["square"] for r in run.results()] == [0, 1, 4]
