"""Runs on the real cluster as alice, through sudo and through SSH (parametrised)."""

from __future__ import annotations

import json
import subprocess
import time

from .conftest import (
    CONFIG,
    PROJECT,
    Srv,
    job_ids,
    jobs_since,
    parse_results,
    run_jobs,
    squeue,
    wait_for,
)


def _job_ids(results: list[dict]) -> set[str]:
    return {r["job_id"] for r in results if r["job_id"]}


def _summary_calls(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if "calls" in line), "")


def test_100_inputs_in_4_jobs_owned_by_alice(srv: Srv, profile: dict) -> None:
    # target_num_jobs 4, max_num_jobs 5; without fitting to the partition, 4 jobs
    config = json.loads(json.dumps(CONFIG))
    config["batching_config"]["cap_jobs_to_partition"] = False
    proc, results = srv.run_inputs(profile, [{"x": i} for i in range(100)], config)
    assert proc.returncode == 0, proc.stderr
    assert [r["index"] for r in results] == list(range(100))
    assert all(r["status"] == "ok" for r in results)
    assert [r["result"]["square"] for r in results] == [i * i for i in range(100)]
    ids = _job_ids(results)
    assert len(ids) == 4
    owners = squeue(f"--jobs={','.join(sorted(ids))}", "--format=%u").split()
    assert owners == ["alice"] * len(ids)
    calls = _summary_calls(proc.stderr)
    assert f"sbatch: {len(ids)}" in calls
    if profile["backend"] == "slurm_ssh":
        assert "ssh_connections: 1" in calls


def test_jobs_fit_what_the_partition_runs_at_once(srv: Srv, profile: dict) -> None:
    # The rig's partition is one 2-CPU node: 4 jobs of 2 CPUs would run one after another,
    # so the run is one job (sinfo asked once); 1-CPU jobs fit 2 at once.
    proc, results = srv.run_inputs(profile, [{"x": i} for i in range(40)])
    assert proc.returncode == 0, proc.stderr
    assert len(_job_ids(results)) == 1
    assert "40 tasks in 1 job, 2 at a time (4 planned, but only 1 fit side by side)" in proc.stderr
    one_cpu = json.loads(json.dumps(CONFIG))
    one_cpu["batching_config"].update(target_cpus_per_job=1, max_cpus_per_job=1)
    proc, results = srv.run_inputs(profile, [{"x": i} for i in range(40)], one_cpu)
    assert proc.returncode == 0, proc.stderr
    assert len(_job_ids(results)) == 2
    assert [r["result"]["square"] for r in results] == [i * i for i in range(40)]


def test_task_sees_extra_lines_and_user_local_exports(srv: Srv, profile: dict) -> None:
    names = ["SOMEVARIABLE", "ANOTHERVARIABLE", "LIBRARY_1_CACHE_DIR", "LIBRARY_2_FILE"]
    proc, results = srv.run_inputs(profile, [{"env": names, "whoami": True}])
    assert proc.returncode == 0, proc.stderr
    out = results[0]["result"]
    assert out["user"] == "alice"
    assert out["env"] == {
        "SOMEVARIABLE": "123",
        "ANOTHERVARIABLE": "ABC",
        "LIBRARY_1_CACHE_DIR": f"{PROJECT}/.fractal_cache/somewhere/library_1",
        "LIBRARY_2_FILE": f"{PROJECT}/.fractal_cache/somewhere/else/library_2.json",
    }


def test_exit_3_fails_alone_with_its_log_tail(srv: Srv, profile: dict) -> None:
    inputs = [{"x": 1}, {"fail": 3}, {"x": 3}, {"x": 4}]
    proc, results = srv.run_inputs(profile, inputs)
    assert proc.returncode == 1
    assert [r["status"] for r in results] == ["ok", "failed", "ok", "ok"]
    err = results[1]["error"]
    assert err["cause"] == "exit_code"
    assert "failing on purpose with status 3" in err["log_tail"]


def test_memory_over_the_limit_is_out_of_memory(srv: Srv, profile: dict) -> None:
    # Memory is per task: 100M, the job gets parallel * 100M; one task touches 600 MB.
    inputs = [{"alloc_mb": 600}, {"x": 2}]
    proc, results = srv.run_inputs(profile, inputs, extra=("--resources", '{"mem": "100M"}'))
    assert proc.returncode == 1
    assert results[0]["status"] == "failed"
    assert results[0]["error"]["cause"] == "out_of_memory", results[0]
    assert results[1]["status"] == "ok"


def test_cancel_cancels_every_unfinished_task_and_leaves_no_job(srv: Srv, profile: dict) -> None:
    run_id = srv.submit(profile, [{"sleep": 120} for _ in range(6)])
    wait_for(lambda: "RUNNING" in run_jobs(run_id).values(), 120, f"a job of run {run_id} to run")
    can = srv("cancel", run_id)
    assert can.returncode == 0, can.stderr
    results = parse_results(srv("results", run_id).stdout)
    assert len(results) == 6
    assert all(r["status"] == "cancelled" and r["error"]["cause"] == "cancelled" for r in results)
    ids = sorted(_job_ids(results))
    # SLURM ends a cancelled job in its own time (signals, KillWait, epilog): wait until no job
    # of the run is still active, well before its tasks (120 s) could have ended by themselves.
    active = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED"}

    def ended() -> list[str] | None:
        states = squeue(f"--jobs={','.join(ids)}", "--format=%T").split()
        return states if states and not active.intersection(states) else None

    states = wait_for(ended, 30, f"the jobs {ids} to end after cancel")
    assert states and all(s in ("CANCELLED", "COMPLETED") for s in states), states


def test_nothing_of_alices_run_is_readable_by_bob(srv: Srv, profile: dict) -> None:
    proc, results = srv.run_inputs(profile, [{"x": 5}])
    assert proc.returncode == 0, proc.stderr
    log = results[0]["log"]
    run_dir = log.rsplit("/logs/", 1)[0]
    listing = subprocess.run(
        ["find", run_dir, "-perm", "/077", "-printf", "%m %p\n"], capture_output=True, text=True
    )
    assert listing.returncode == 0 and listing.stdout == "", listing.stdout
    for path in (log, f"{run_dir}/results/0.jsonl", f"{run_dir}/tasks/0.args.json", run_dir):
        bob = subprocess.run(["runuser", "-u", "bob", "--", "cat", path], capture_output=True)
        assert bob.returncode != 0
        assert b"Permission denied" in bob.stderr or b"Is a directory" not in bob.stderr
    # The server's own state (its store) is private to the server user too.
    assert oct(__import__("os").stat(srv.store).st_mode & 0o077) == "0o0"


def test_bad_username_is_refused_before_anything_is_submitted(srv: Srv) -> None:
    before = job_ids()
    # root is refused by the impersonation policy, before sudo is ever asked.
    for user, word in (("alice;id", "username"), ("root", "never impersonated")):
        prof = {"backend": "slurm_sudo", "username": user, "project_dir": PROJECT}
        t0 = time.monotonic()
        proc, results = srv.run_inputs(prof, [{"x": 1}])
        assert time.monotonic() - t0 < 15
        assert proc.returncode == 2, proc.stderr
        assert word in proc.stderr, proc.stderr
        assert results == []
    assert not jobs_since(before)


def test_results_stream_into_the_store_and_wait_collects_them(srv: Srv, profile: dict) -> None:
    run_id = srv.submit(profile, [{"x": i} for i in range(10)])
    waited = srv("wait", run_id)
    assert waited.returncode == 0, waited.stderr
    results = parse_results(waited.stdout)
    assert [r["result"]["square"] for r in results] == [i * i for i in range(10)]
    again = parse_results(srv("results", run_id).stdout)
    assert again == results
    assert json.loads(json.dumps(results)) == results
