"""The cluster misbehaves and the runner must not: time limits, a controller outage, a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from .conftest import CONFIG, REPO, TASK, Srv, parse_results, profiles, squeue


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
    time.sleep(3)
    subprocess.run([str(REPO / "scripts/cluster-down"), "slurmctld"], check=True)
    try:
        time.sleep(15)
    finally:
        subprocess.run([str(REPO / "scripts/cluster-up")], check=True, capture_output=True)
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
    time.sleep(2)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    waited = srv("wait", run_id)
    assert waited.returncode == 0, waited.stderr
    results = parse_results(waited.stdout)
    assert [r["result"]["square"] for r in results] == [i * i for i in range(20)]
    names = squeue("--format=%j").split()
    assert sum(1 for n in names if n.startswith(f"sr-{run_id}-")) == n_jobs
