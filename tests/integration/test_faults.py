"""The cluster misbehaves and the runner must not: time limits, a controller outage, a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from .conftest import (
    CONFIG,
    REPO,
    TASK,
    Srv,
    parse_results,
    profiles,
    run_jobs,
    squeue,
    wait_for,
)


def test_job_past_its_time_limit_reports_time_limit(srv: Srv) -> None:
    # time is per task: 1 minute; 2 tasks per job run in parallel, so the job gets 1 minute.
    # SLURM enforces limits on a 30 s tick: both backends wait for it side by side.
    config = {**CONFIG, "default_slurm_config": {**CONFIG["default_slurm_config"], "time": "1"}}
    runs = [
        srv.submit(profile, [{"x": 1}, {"sleep": 600}], config) for profile in profiles().values()
    ]
    waiters = [srv.popen("wait", run_id) for run_id in runs]
    for waiter in waiters:
        out, err = waiter.communicate(timeout=300)
        results = parse_results(out)
        assert waiter.returncode == 1, err
        assert results[0]["status"] == "ok"
        assert results[1]["status"] == "failed"
        assert results[1]["error"]["cause"] == "time_limit", results[1]
        assert "TIMEOUT" in results[1]["error"]["message"]


def test_controller_down_for_15s_loses_nothing(srv: Srv) -> None:
    # One outage, watched by a run of each backend.
    inputs = [{"x": i, "sleep": 2} for i in range(16)]
    runs = [srv.submit(profile, inputs) for profile in profiles().values()]
    waiters = [srv.popen("wait", run_id) for run_id in runs]
    # The outage starts once a job of the runs is running (its tasks end while the
    # controller is away), not after a guessed delay.
    wait_for(
        lambda: any("RUNNING" in run_jobs(run_id).values() for run_id in runs),
        120,
        "a job of the runs to run",
    )
    subprocess.run([str(REPO / "scripts/cluster-down"), "slurmctld"], check=True)
    try:
        time.sleep(15)  # the outage itself: what the test is about, not a synchronisation
    finally:
        up = subprocess.run([str(REPO / "scripts/cluster-up")], capture_output=True, text=True)
        assert up.returncode == 0, f"scripts/cluster-up failed:\n{up.stderr}"
    for waiter in waiters:
        out, err = waiter.communicate(timeout=300)
        assert waiter.returncode == 0, err
        results = parse_results(out)
        assert [r["status"] for r in results] == ["ok"] * 16
        assert [r["result"]["square"] for r in results] == [i * i for i in range(16)]


def test_runner_killed_mid_run_then_wait_finds_everything(srv: Srv, profile: dict) -> None:
    inputs = [{"x": i, "sleep": 1} for i in range(20)]
    runner = srv.popen("run", *srv.files(profile, inputs), "--", TASK)
    assert runner.stderr is not None
    first = runner.stderr.readline()  # "run <id>: 20 tasks in N jobs"
    assert first.startswith("run "), first
    run_id = first.split()[1].rstrip(":")
    n_jobs = int(first.split(" in ")[1].split()[0])

    # Killed mid-run: once every job of the run is submitted and one runs (not after a
    # guessed delay, which on a loaded machine could land anywhere in the submission).
    def submitted_and_running() -> dict[str, str] | None:
        jobs = run_jobs(run_id)
        return jobs if len(jobs) == n_jobs and "RUNNING" in jobs.values() else None

    wait_for(submitted_and_running, 120, f"the {n_jobs} jobs of run {run_id}, one running")
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    waited = srv("wait", run_id)
    assert waited.returncode == 0, waited.stderr
    results = parse_results(waited.stdout)
    assert [r["result"]["square"] for r in results] == [i * i for i in range(20)]
    names = squeue("--format=%j").split()
    assert sum(1 for n in names if n.startswith(f"sr-{run_id}-")) == n_jobs
