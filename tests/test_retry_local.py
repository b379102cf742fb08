"""Retries on the embedded local backend: by policy, on demand, after a crash, cancelled."""

import sys
import time
from pathlib import Path

import pytest

from slurmrunner import PollPolicy, Profile, Runner, Store
from slurmrunner.config import parse_config
from slurmrunner.errors import BatchingError, ConfigError
from slurmrunner.retrying import Retrying

# Fails (exit 3) on its first attempt when its input says so: the next finds the marker.
FLAKY = """
import json, os, sys, time
args = json.load(open(sys.argv[2]))
mark = os.path.join(args["dir"], "mark-%d" % args["x"])
first = not os.path.exists(mark)
open(mark, "a").close()
if first and args.get("sleep"):
    time.sleep(args["sleep"])
if first and args.get("fail"):
    print("failing on purpose", flush=True)
    sys.exit(3)
if not first and args.get("sleep_again"):
    time.sleep(args["sleep_again"])
json.dump({"x": args["x"]}, open(sys.argv[4], "w"))
"""
FAST = PollPolicy(read_min_s=0.05, read_max_s=0.2, squeue_min_s=0.1)


def make_runner(tmp_path: Path, retry: dict | None = None, **config) -> Runner:
    profile = Profile(backend="local", project_dir=str(tmp_path / "proj"))
    cfg = parse_config({"retry": retry or {}, **config})
    return Runner(cfg, profile, Store(tmp_path / "store.sqlite"), FAST)


def inputs(tmp_path: Path, n: int, failing: set[int], **extra) -> tuple[list[str], list[dict]]:
    task = tmp_path / "flaky.py"
    task.write_text(FLAKY)
    (tmp_path / "marks").mkdir(exist_ok=True)
    args = [
        {"x": i, "dir": str(tmp_path / "marks"), "fail": i in failing, **extra} for i in range(n)
    ]
    return [sys.executable, str(task)], args


def test_policy_retries_exit_code_when_the_admin_lists_it(tmp_path):
    r = make_runner(tmp_path, {"exit_code": {"max_attempts": 2}})
    command, args = inputs(tmp_path, 6, {1, 4})
    results = r.run(command, args)
    assert [x.status for x in results] == ["ok"] * 6
    for x in results:
        if x.index in (1, 4):
            assert len(x.attempts) == 1
            first = x.attempts[0]
            assert first["status"] == "failed" and first["error"]["cause"] == "exit_code"
            assert first["job_id"] != x.job_id
        else:
            assert x.attempts is None and x.resources is None  # siblings ran once
    run_id = r.store.resolve_run_id("last")
    jobs = r.store.jobs(run_id)
    retry_jobs = [j for j in jobs if j.task_list is not None]
    assert sorted(i for j in retry_jobs for i in j.task_list) == [1, 4]
    assert all(j.done for j in jobs)
    assert r.store.run(run_id).state == "done"
    assert r.store.counters(run_id)["retried_tasks"] == 2
    assert r.store.status_counts(run_id) == {"ok": 6}


def test_exit_code_is_not_retried_unless_listed_and_a_run_may_ask_for_less(tmp_path):
    r = make_runner(tmp_path, {"out_of_memory": {"max_attempts": 3, "mem": "2x"}})
    command, args = inputs(tmp_path, 3, {0})
    results = r.run(command, args)
    assert results[0].status == "failed" and results[0].attempts is None
    r2 = make_runner(tmp_path / "b", {"exit_code": {"max_attempts": 3}})
    command, args = inputs(tmp_path / "b", 3, {0})
    asks = {"retry": {"exit_code": {"max_attempts": 1}}}
    results = r2.run(command, args, asks)
    assert results[0].status == "failed" and results[0].attempts is None


def test_retry_on_demand_runs_the_chosen_failures_again(tmp_path):
    r = make_runner(tmp_path, default_slurm_config={"mem": 100})
    command, args = inputs(tmp_path, 5, {0, 3})
    first = r.run(command, args)
    assert [x.status for x in first] == ["failed", "ok", "ok", "failed", "ok"]
    run = Runner.attach("last", r.store, FAST)
    started = run.retry(causes=["exit_code"], indices=[3], mem="2x")
    assert (started.n_tasks, started.indices) == (1, [3])
    assert r.store.run(run.id).state == "running"
    results = run.wait(timeout=60)
    assert [x.status for x in results] == ["failed", "ok", "ok", "ok", "ok"]
    assert results[3].attempts[0]["resources"] == {"mem_mb": 100, "time_minutes": None}
    assert results[3].resources == {"mem_mb": 200, "time_minutes": None}
    assert r.store.run(run.id).state == "done"
    # Every failure again: task 0 only now; then nothing is left to retry.
    assert run.retry().indices == [0]
    assert run.wait(timeout=60)[0].status == "ok"
    with pytest.raises(ConfigError, match="no failed task"):
        run.retry()


def test_a_retry_over_the_admins_bound_is_refused_before_anything(tmp_path):
    r = make_runner(
        tmp_path, default_slurm_config={"mem": 100}, batching_config={"max_mem_per_job": 1000}
    )
    command, args = inputs(tmp_path, 2, {0})
    r.run(command, args)
    run = Runner.attach("last", r.store, FAST)
    jobs_before = r.store.jobs(run.id)
    with pytest.raises(BatchingError, match="max_mem_per_job is 1000MB"):
        run.retry(mem="20x")
    assert r.store.jobs(run.id) == jobs_before
    assert r.store.result(run.id, 0).status == "failed"
    assert r.store.run(run.id).state == "done"


def test_policy_over_the_bound_leaves_the_task_failed_and_says_why(tmp_path):
    r = make_runner(
        tmp_path,
        {"exit_code": {"max_attempts": 2, "mem": "20x"}},
        default_slurm_config={"mem": 100},
        batching_config={"max_mem_per_job": 1000},
    )
    command, args = inputs(tmp_path, 2, {0})
    run = r.submit(command, args)
    results = run.wait(timeout=60)
    assert results[0].status == "failed" and results[0].attempts is None
    assert any("not retried" in w and "max_mem_per_job" in w for w in run.status().warnings)


def test_a_process_dead_before_retrying_leaves_the_retry_to_the_next(tmp_path, monkeypatch):
    r = make_runner(tmp_path, {"exit_code": {"max_attempts": 2}})
    command, args = inputs(tmp_path, 4, {2})

    class Died(Exception):
        pass

    def die(self, rules):  # the process dies as it would retry the failures it saved
        self._policy_scan = False
        if self._policy_todo:
            raise Died()

    with monkeypatch.context() as m:
        m.setattr(Retrying, "_retry_failures", die)
        run = r.submit(command, args)
        with pytest.raises(Died):
            run.wait(timeout=60)
    assert r.store.run(run.id).state == "running"
    assert r.store.result(run.id, 2).status == "failed"
    n_jobs = len(r.store.jobs(run.id))
    results = Runner.attach(run.id, r.store, FAST).wait(timeout=60)
    assert [x.status for x in results] == ["ok"] * 4
    assert len(results[2].attempts) == 1
    jobs = r.store.jobs(run.id)
    assert len(jobs) == n_jobs + 1  # one retry job, made once
    assert len({j.job_id for j in jobs}) == len(jobs)


def test_cancelling_a_run_cancels_its_pending_retries(tmp_path):
    r = make_runner(tmp_path, {"exit_code": {"max_attempts": 2}})
    command, args = inputs(tmp_path, 3, {1}, sleep_again=60)
    run = r.submit(command, args)
    deadline = time.monotonic() + 30
    while not any(j.task_list for j in r.store.jobs(run.id)):
        assert time.monotonic() < deadline, "no retry job"
        run.poll()
        time.sleep(0.05)
    run.cancel()
    results = run.results()
    assert results[1].status == "cancelled" and len(results[1].attempts) == 1
    assert r.store.run(run.id).state == "cancelled"
    assert all(j.done for j in r.store.jobs(run.id))
    with pytest.raises(ConfigError, match="cancelled"):
        run.retry()


def test_failures_of_one_job_go_again_together(tmp_path):
    r = make_runner(
        tmp_path,
        {"exit_code": {"max_attempts": 2}},
        batching_config={"max_num_jobs": 2, "target_num_jobs": 1},
    )
    command, args = inputs(tmp_path, 12, set(range(1, 12, 2)))
    # One task at a time: the six failures come one by one, in one job.
    run = r.submit(command, args, {"parallel_tasks_per_job": 1})
    results = run.wait(timeout=120)
    assert [x.status for x in results] == ["ok"] * 12
    retry_jobs = [j for j in r.store.jobs(run.id) if j.task_list is not None]
    assert len(retry_jobs) == 1, [j.task_list for j in retry_jobs]


def test_a_cancelled_runs_failures_are_not_retried_by_a_later_look(tmp_path):
    r = make_runner(tmp_path, {"exit_code": {"max_attempts": 2}})
    command, args = inputs(tmp_path, 2, {0})
    args[1]["sleep"] = 60
    run = r.submit(command, args, {"tasks_per_job": 2, "parallel_tasks_per_job": 2})
    deadline = time.monotonic() + 30
    while r.store.result(run.id, 0) is None:
        assert time.monotonic() < deadline, "task 0 did not fail"
        run.poll()
        time.sleep(0.05)
    run.poll()
    # Its job still runs: its failures wait for its end, to go again together.
    assert [j.task_list for j in r.store.jobs(run.id)] == [None]
    run.cancel()
    jobs = r.store.jobs(run.id)
    again = Runner.attach(run.id, r.store, FAST)
    again.poll()  # `slurmrunner status` polls: it must not retry a cancelled run
    assert r.store.jobs(run.id) == jobs
    assert r.store.run(run.id).state == "cancelled"
    assert r.store.result(run.id, 0).status == "failed"


def test_a_retry_by_another_process_is_seen_by_the_one_watching(tmp_path):
    r = make_runner(tmp_path)
    command, args = inputs(tmp_path, 3, {1})
    r.run(command, args)
    watching = Runner.attach("last", Store(tmp_path / "store.sqlite"), FAST)
    assert watching.all_ended
    other = Runner.attach("last", Store(tmp_path / "store.sqlite"), FAST)
    other.retry(indices=[1])
    results = watching.wait(timeout=60)  # this one saves the retry's result
    assert [x.status for x in results] == ["ok"] * 3
    assert len(results[1].attempts) == 1
