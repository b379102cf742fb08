"""A requeued (preempted) job: its next attempt's records replace the interrupted ones, and the
requeue is a state change, not a reason to ask squeue every second.

On the local backend with the real worker (a scheduler that requeues a job whose first attempt
was stopped, as SLURM does on preemption), and on the fake SLURM of fake_slurm.py for squeue's
cadence. The rig's tests do it with `scontrol requeue`."""

from __future__ import annotations

import os
import sys
from typing import Any

from slurmrunner import PollPolicy, Profile, Runner, SlurmRunnerConfig, Store, TaskResources
from slurmrunner import run as run_module
from slurmrunner.backends import Backend, backend_for
from slurmrunner.hosts.local import LocalHost
from slurmrunner.jobstate import JobState
from slurmrunner.watcher import FRESH_SQUEUE_S
from tests.fake_slurm import end, failed, fake_run, ok, start, write

# Its first attempt, task 1 stops the job (SIGTERM to the worker, as a preemption does) and
# waits to be stopped with it; every other run of a task writes which attempt ran it.
TASK = r"""
import json, os, signal, sys, time
argv = sys.argv
args = json.load(open(argv[argv.index("--args-json") + 1]))
attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
if args.get("preempt") and attempt == 0:
    os.kill(os.getppid(), signal.SIGTERM)
    time.sleep(60)
json.dump({"x": args["x"], "attempt": attempt}, open(argv[argv.index("--out-json") + 1], "w"))
"""


class Requeueing:
    """The local scheduler, but a job whose first attempt was stopped is requeued once, under
    the same id: the same script again with SLURM_RESTART_COUNT=1."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.cheap_poll = inner.cheap_poll
        self.call_names = inner.call_names
        self.scripts: dict[str, str] = {}
        self.attempt: dict[str, str] = {}  # job id -> the local job of its newest attempt
        self.said: list[str] = []

    def submit(self, script: str) -> str:
        job_id = self.inner.submit(script)
        self.scripts[job_id], self.attempt[job_id] = script, job_id
        return job_id

    def poll(self, job_ids: list[str]) -> dict[str, JobState]:
        states = self.inner.poll([self.attempt[j] for j in job_ids])
        out = {}
        for j in job_ids:
            st = states[self.attempt[j]]
            if st.state == "FAILED" and self.attempt[j] == j:
                os.environ["SLURM_RESTART_COUNT"] = "1"  # the local queue keeps our environment
                try:
                    self.attempt[j] = self.inner.submit(self.scripts[j])
                finally:
                    del os.environ["SLURM_RESTART_COUNT"]
                st = JobState("PENDING", "BeginTime")
            out[j] = st
            self.said.append(st.state)
        return out

    def history(self, job_ids: list[str]) -> dict[str, JobState]:
        return {}

    def find(self, job_names: list[str]) -> dict[str, str]:
        return self.inner.find(job_names)

    def cancel(self, job_ids: list[str]) -> None:
        self.inner.cancel([self.attempt.get(j, j) for j in job_ids])

    def partition_shape(self, partition: str | None) -> Any:
        return self.inner.partition_shape(partition)


def test_a_requeued_jobs_next_attempt_replaces_its_interrupted_records(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    task = tmp_path / "task.py"
    task.write_text(TASK)
    profile = Profile(backend="local", project_dir=str(tmp_path / "proj"))
    runner = Runner(SlurmRunnerConfig(), profile, Store(tmp_path / "store.sqlite"))
    scheduler = Requeueing(backend_for(profile).scheduler)
    monkeypatch.setattr(run_module, "backend_for", lambda *a: Backend(LocalHost(), scheduler))
    inputs = [{"x": 0}, {"x": 1, "preempt": True}, {"x": 2}]
    res = TaskResources(tasks_per_job=3, parallel_tasks_per_job=1)
    run = runner.submit([sys.executable, str(task)], inputs, res)
    results = run.wait(timeout=90)
    assert [r.status for r in results] == ["ok"] * 3, [r.error for r in results]
    # task 0 ended in the first attempt and did not run again; 1 and 2 ran in the second
    assert [r.result["attempt"] for r in results] == [0, 1, 1]
    requeued = [w for w in run.warnings if "requeued" in w]
    assert len(requeued) == 1 and run.job_ids()[0] in requeued[0]
    assert "PENDING" in scheduler.said


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def _poll_for(run: Any, clock: Clock, seconds: float, step: float = 0.2) -> None:
    for _ in range(round(seconds / step)):
        run.poll()
        clock.t += step


def test_a_requeue_is_a_state_change_not_a_reason_to_ask_every_second(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(run_module, "time", clock)
    run, query = fake_run(tmp_path, 2, 2, PollPolicy(squeue_min_s=1.0, squeue_max_s=30.0))
    # The first attempt: task 0 ended, task 1 was interrupted by the preemption.
    write(run, 0, start(0), ok(0, 0), failed(1, 0, "interrupted"), end(0, 2, "SIGTERM"))
    # past the seconds after a run joins, when squeue is asked at its fastest pace anyway
    _poll_for(run, clock, FRESH_SQUEUE_S + 0.4)
    query.states["101"] = "PENDING"  # requeued: back in the queue
    before = query.calls["squeue"]
    _poll_for(run, clock, 10.0)
    # 1 s doubling while nothing changes (at most 5 in 10 s), not one a second (10)
    assert query.calls["squeue"] - before <= 5
    assert [w for w in run.warnings if "requeued" in w] == [
        "job 0 (101) was requeued by the scheduler: its unfinished tasks run again in its "
        "next attempt"
    ]
    assert [r.index for r in run.results()] == [0]  # task 1 waits for its next attempt
    query.states["101"] = "RUNNING"
    write(run, 0, start(0, attempt=1), ok(1, 0, attempt=1), end(0, 3))
    _poll_for(run, clock, 1.0)
    results = run.results()
    assert [(r.status, r.result) for r in results] == [
        ("ok", {"attempt": 0}),
        ("ok", {"attempt": 1}),
    ]


def test_a_requeue_seen_only_in_the_files_still_takes_the_next_attempt(tmp_path):
    # squeue never caught the job back in the queue: its next start line says it all
    run, query = fake_run(tmp_path, 2, 2)
    write(run, 0, start(0), ok(0, 0), failed(1, 0, "interrupted"), end(0, 2, "SIGTERM"))
    run.poll()
    write(run, 0, start(0, attempt=1), ok(1, 0, attempt=1), end(0, 3))
    run.poll()
    query.states["101"] = "COMPLETED"
    assert run.poll().done
    assert [r.result for r in run.results()] == [{"attempt": 0}, {"attempt": 1}]
    assert any("requeued" in w for w in run.warnings)


def test_an_interrupted_record_without_a_next_attempt_takes_the_jobs_cause(tmp_path):
    run, query = fake_run(tmp_path, 2, 2)
    write(run, 0, start(0), ok(0, 0), failed(1, 0, "interrupted"), end(0, 2, "SIGTERM"))
    run.poll()
    query.states["101"] = "PREEMPTED"
    assert run.poll().done
    assert run.results()[1].error.cause == "preempted"


def test_a_later_attempt_never_replaces_a_final_record(tmp_path):
    # a task that failed on its own in attempt 0 keeps that outcome
    run, _ = fake_run(tmp_path, 1, 1)
    write(run, 0, start(0), failed(0, 0, "exit_code"), start(0, attempt=1), ok(0, 0, 1), end(0, 2))
    assert run.poll().done
    assert run.results()[0].error.cause == "exit_code"
