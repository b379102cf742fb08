"""The local queue's pure helpers: CPU quota files and process identity."""

from __future__ import annotations

import os
import subprocess

from slurmrunner.local_jobs import job_directives
from slurmrunner.local_queue import _read_quota, parse_job_id, process_alive, start_ticks


def test_cgroup_v2_quota_rounds_up_to_whole_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _read_quota(str(tmp_path), "cpu.max") == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _read_quota(str(tmp_path), "cpu.max") is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert _read_quota(str(tmp_path), "cfs") == 1
    (tmp_path / "cpu.cfs_quota_us").write_text("-1\n")
    assert _read_quota(str(tmp_path), "cfs") is None
    assert _read_quota(str(tmp_path / "missing"), "cfs") is None


def test_a_reused_pid_is_not_the_same_process():
    proc = subprocess.Popen(["sleep", "30"])
    ticks = start_ticks(proc.pid)
    assert ticks is not None
    assert process_alive(proc.pid, ticks)
    assert not process_alive(proc.pid, ticks + 1)  # same pid, another start: another process
    proc.kill()
    proc.wait()
    assert not process_alive(proc.pid, ticks)
    assert start_ticks(os.getpid()) is not None


def test_job_ids_and_directives_are_parsed_strictly():
    assert parse_job_id("local-ab12cd34-12") == ("ab12cd34", 12)
    for bad in ("local-12", "local-", "12", "local-ab-1x", "local--3"):
        assert parse_job_id(bad) is None, bad
    script = (
        "#!/bin/bash\n#SBATCH --job-name=sr-x-0\n#SBATCH --cpus-per-task=2\n"
        "#SBATCH --output='/home/a/My Project é/jobs/0.out'\n#SBATCH --chdir=/home/a\n"
    )
    assert job_directives(script) == {
        "job-name": "sr-x-0",
        "cpus-per-task": "2",
        "output": "/home/a/My Project é/jobs/0.out",
        "chdir": "/home/a",
    }
