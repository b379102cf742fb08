"""Causes that only the scheduler's accounting (slurmdbd, `sacct`) still knows, and requeues.

The rig keeps finished jobs in `squeue` for MinJobAge (300 s). A watcher that was away longer
finds its job gone from the queue: the cause must then come from `sacct`, not become `lost`.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    CONFIG,
    PROJECT,
    TASK,
    Running,
    Srv,
    parse_results,
    profiles,
    run_jobs,
    squeue,
    wait_for,
)

SLURM_CONF = Path("/etc/slurm/slurm.conf")
# One job, one task at a time: the OOM task runs first, its sibling after it.
ONE_JOB = {
    **CONFIG,
    "batching_config": {
        **CONFIG["batching_config"],
        "target_num_jobs": 1,
        "target_cpus_per_job": 1,
        "max_cpus_per_job": 1,
    },
}


def _reconfigure(text: str) -> None:
    SLURM_CONF.write_text(text)
    subprocess.run(["scontrol", "reconfigure"], check=True, capture_output=True)


@pytest.fixture
def short_min_job_age() -> Iterator[None]:
    """MinJobAge of 2 s for the test: jobs leave squeue soon after they end, as on a cluster
    where the watcher was away for longer than MinJobAge. The rig's file is put back after
    (and scripts/cluster-up rewrites it anyway)."""
    saved = SLURM_CONF.read_text()
    assert re.search(r"^MinJobAge=\d+$", saved, re.M), "the rig's slurm.conf sets MinJobAge"
    _reconfigure(re.sub(r"^MinJobAge=\d+$", "MinJobAge=2", saved, flags=re.M))
    try:
        yield
    finally:
        _reconfigure(saved)


def _sacct_state(job_name: str) -> str:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--allusers", f"--name={job_name}", "--format=State"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[-1] if out else ""


@pytest.mark.parametrize(
    ("task", "told_by"),
    [
        # The OOM killer takes the task: the worker saw it and says so in its record.
        ({"alloc_mb": 600}, "OOM killer"),
        # It takes the worker first: the job dies with no record, only sacct knows why.
        ({"alloc_mb": 600, "oom_first": True}, "from sacct"),
    ],
    ids=["task-killed", "worker-killed"],
)
def test_oom_job_gone_from_squeue_still_says_out_of_memory(
    srv: Srv, short_min_job_age: None, task: dict, told_by: str
) -> None:
    # submit returns once the job is in: nobody watches while it runs out of memory, ends
    # and leaves the queue. The next `wait` finds the job gone from squeue.
    run_id = srv.submit(profiles()["sudo"], [task, {"x": 3}], ONE_JOB)
    name = f"sr-{run_id}-0"
    wait_for(lambda: _sacct_state(name) == "OUT_OF_MEMORY", 120, f"{name} to run out of memory")
    wait_for(lambda: not run_jobs(run_id), 120, f"{name} to leave squeue")
    waited = srv("wait", run_id)
    assert waited.returncode == 1, waited.stderr
    first = parse_results(waited.stdout)[0]
    assert first["status"] == "failed"
    assert first["error"]["cause"] == "out_of_memory", first
    assert told_by in first["error"]["message"], first


def _records(run_id: str) -> int:
    """Task records the job wrote so far (its first results chunk), read as root."""
    chunk = Path(PROJECT, ".slurmrunner/runs", run_id, "results/0.jsonl")
    try:
        return chunk.read_text(errors="replace").count('"i":')
    except OSError:
        return 0


def test_job_requeued_mid_run_ends_with_every_task_ok(srv: Srv) -> None:
    # One job of 6 tasks, 2 at a time, each 3 s, requeued by the admin once 2 tasks ended.
    # It starts again after the rig's cred_expire (30 s); every task ends ok, and the tasks
    # the first attempt finished are not what makes them ok by luck: all 6 are checked.
    inputs = [{"x": i, "sleep": 3} for i in range(6)]
    resources = '{"tasks_per_job": 6, "parallel_tasks_per_job": 2}'
    files = srv.files(profiles()["sudo"], inputs)
    runner = Running(srv.popen("run", *files, "--resources", resources, "--", TASK))
    m = wait_for(lambda: runner.ended() or runner.stderr_match(r"^run (\S+?):"), 60, "run id")
    run_id = m[1]
    wait_for(lambda: runner.ended() or _records(run_id) >= 2, 120, "2 tasks to end")
    [name] = run_jobs(run_id)
    slurm_id = squeue(f"--name={name}", "--format=%i").split()[0]
    subprocess.run(["scontrol", "requeue", slurm_id], check=True)
    rc, out, err = runner.wait(300)
    assert rc == 0, err
    results = parse_results(out)
    assert [r["status"] for r in results] == ["ok"] * 6
    assert [r["result"]["square"] for r in results] == [i * i for i in range(6)]
    assert "requeued" in err, err
