"""Plans that fit the cluster (issue 13), on the real SLURM: a run split by the partition's
time limit runs right, one that cannot fit is refused before any sbatch, and a job pending for
a reason that never clears (PartitionTimeLimit) fails its run, saying why.

The rig's partitions have no time limit, so these tests use their own partition `short`
(MaxTime 10 minutes, the rig's one node), created at run time with `scontrol create` and left
in place (SLURM keeps a partition's finished jobs listed for MinJobAge; it is recreated after a
controller restart), its MaxTime put back after each test.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import CONFIG, TASK, Running, Srv, job_ids, jobs_since, profiles, squeue, wait_for

SHORT = "short"
SHORT_MAX = "00:10:00"


def _scontrol(*args: str) -> None:
    proc = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"scontrol {' '.join(args)}: {proc.stderr}"


@pytest.fixture
def short(rig: dict[str, str]) -> Iterator[str]:
    parts = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
    if SHORT not in (p.rstrip("*") for p in parts.stdout.split()):
        node = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
        _scontrol(
            "create",
            f"PartitionName={SHORT}",
            f"Nodes={node}",
            f"MaxTime={SHORT_MAX}",
            "State=UP",
            "Default=NO",
        )
    else:
        _scontrol("update", f"PartitionName={SHORT}", f"MaxTime={SHORT_MAX}", "State=UP")
    yield SHORT
    _scontrol("update", f"PartitionName={SHORT}", f"MaxTime={SHORT_MAX}")


def short_config(time: str, **batching: Any) -> dict[str, Any]:
    config = json.loads(json.dumps(CONFIG))
    config["default_slurm_config"].update(partition=SHORT, time=time)
    config["batching_config"].update(batching)
    return config


def test_a_plan_split_by_the_time_limit_runs_right(srv: Srv, short: str) -> None:
    # 12 tasks of 2 minutes, one at a time: 5 fit in the 10 minutes of a job, so 3 jobs
    # (target_num_jobs 1 alone would make one 24-minute job, which sbatch refuses here)
    config = short_config(
        "00:02:00", target_num_jobs=1, max_num_jobs=5, target_cpus_per_job=1, max_cpus_per_job=2
    )
    inputs = [{"x": i} for i in range(12)]
    proc, results = srv.run_inputs(profiles()["sudo"], inputs, config)
    assert proc.returncode == 0, proc.stderr
    assert "12 tasks in 3 jobs, 1 at a time" in proc.stderr
    assert [r["result"]["square"] for r in results] == [i * i for i in range(12)]
    ids = sorted({r["job_id"] for r in results})
    assert len(ids) == 3
    limits = squeue(f"--jobs={','.join(ids)}", "--format=%P %l").split("\n")
    assert sorted(line for line in limits if line) == [f"{SHORT} 8:00"] * 3


def test_a_plan_that_cannot_fit_is_refused_before_any_sbatch(srv: Srv, short: str) -> None:
    # 100 tasks of 2 minutes, at most 2 at once and 5 one after another: 10 jobs, over 2
    config = short_config("00:02:00", target_num_jobs=2, max_num_jobs=2)
    before = job_ids()
    proc, results = srv.run_inputs(profiles()["sudo"], [{"x": i} for i in range(100)], config)
    assert proc.returncode == 2, proc.stderr
    flat = " ".join(proc.stderr.split())
    for part in (
        "100 tasks",
        "time=00:02:00",
        "time limit of 00:10:00",
        "2 at once",
        "10 jobs are needed",
        "max_num_jobs=2",
    ):
        assert part in flat, (part, flat)
    assert results == [] and jobs_since(before) == set()


def test_a_job_that_can_never_start_fails_its_run(
    srv: Srv, short: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node is taken by a job of root's, so the run's job waits; then the partition's
    # limit drops under the job's time: SLURM says PartitionTimeLimit, which never clears.
    # The run fails once the reason has held for the grace (60 s unless told: 10 s here).
    env = srv.env()
    monkeypatch.setattr(srv, "env", lambda: {**env, "SLURMRUNNER_PENDING_GRACE_S": "10"})
    sbatch = ["sbatch", "--parsable", "-p", SHORT, "--exclusive", "-t", "5", "-o", "/dev/null"]
    blocker = subprocess.run(
        [*sbatch, "--wrap", "sleep 300"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        wait_for(
            lambda: "RUNNING" in squeue(f"--jobs={blocker}", "--format=%T"),
            60,
            "the blocking job to run",
        )
        before = job_ids()
        config = short_config("00:05:00", target_num_jobs=1)
        run = Running(
            srv.popen("run", *srv.files(profiles()["sudo"], [{"x": 3}], config), "--", TASK)
        )
        (job,) = wait_for(lambda: jobs_since(before), 60, "the run's job")
        assert "PENDING" in squeue(f"--jobs={job}", "--format=%T")
        _scontrol("update", f"PartitionName={SHORT}", "MaxTime=00:02:00")
        code, _, err = run.wait(180)
        flat = " ".join(err.split())
        assert code == 1, err
        # a warning first: the reason had to hold for the grace
        assert re.search(rf"job 0 \({job}\) is pending: PartitionTimeLimit", flat), flat
        assert "the run fails if this is still so after 10 s" in flat
        assert re.search(rf"job 0 \({job}\) can never start: PartitionTimeLimit", flat), flat
        assert "unschedulable" in flat
        assert squeue(f"--jobs={job}", "--format=%T").split() == ["CANCELLED"]
    finally:
        subprocess.run(["scancel", blocker], check=False)
