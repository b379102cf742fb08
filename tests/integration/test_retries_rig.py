"""Retries (issue 14) on the real SLURM, as alice through sudo: a task out of memory retried by
the admin's policy with twice the memory, a task over its time limit retried on demand
(`slurmrunner retry --cause time_limit --time 3x`), retries over `max_mem_per_job` refused
before any sbatch (by policy and on demand) while `exit_code` failures are left alone, and a
runner killed between the first attempt and its retry, which `wait` then finishes with no job
submitted twice.

The time-limit story is the long pole (a 1-minute job ends TIMEOUT after ~75-90 s, then its
retry ends in seconds): it runs in a background thread from the module's start, on its own store,
while the other tests run on the node's other CPU; its test, last, checks what it saw.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import (
    CONFIG,
    SERVER,
    SHARED,
    TASK,
    Running,
    Srv,
    job_ids,
    jobs_since,
    parse_results,
    profiles,
    squeue,
    wait_for,
)

ALICE = profiles()["sudo"]
# One task at a time per job: a job's memory is then one task's (100M), so 150 MB is over it.
ONE_AT_A_TIME = {"mem": "100M", "parallel_tasks_per_job": 1}


def with_retry(policy: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(CONFIG))  # max_mem_per_job 2G
    config["retry"] = policy
    return config


def flat(text: str) -> str:
    return " ".join(text.split())


def run_of(job_id: str) -> str:
    """The run id a job belongs to, from its SLURM name `sr-<run id>-<k>`."""
    (name,) = squeue(f"--jobs={job_id}", "--format=%j").split()
    assert name.startswith("sr-"), name
    return name[3:].rsplit("-", 1)[0]


def names_listed(run_id: str) -> list[str]:
    """Every job name SLURM lists (finished ones too, for MinJobAge = 300 s) of the run, once per
    job: a name twice is a job submitted twice."""
    return sorted(n for n in squeue("--format=%j").split() if n.startswith(f"sr-{run_id}-"))


def job_field(job_id: str, fmt: str) -> str:
    return squeue(f"--jobs={job_id}", f"--format={fmt}").strip()


def names(run_id: str, n: int) -> list[str]:
    return [f"sr-{run_id}-{k}" for k in range(n)]


def sacct_jobs(run_id: str, since: str) -> list[tuple[str, str, str]]:
    """(name, state, time limit) of each allocation of the run that accounting knows."""
    out = subprocess.run(
        ["sacct", "--allusers", "-X", "-n", "-P", "-o", "JobName,State,Timelimit", "-S", since],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [tuple(line.split("|")) for line in out.splitlines() if line]
    return sorted(r for r in rows if r[0].startswith(f"sr-{run_id}-"))  # type: ignore[misc]


def submit(srv: Srv, inputs: list[Any], resources: dict[str, Any], config: dict[str, Any]) -> str:
    sub = srv(
        "submit",
        *srv.files(ALICE, inputs, config),
        "--resources",
        json.dumps(resources),
        "--",
        TASK,
    )
    assert sub.returncode == 0, sub.stderr
    return sub.stdout.strip()


def run(
    srv: Srv, inputs: list[Any], resources: dict[str, Any], config: dict[str, Any]
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    proc = srv(
        "run", *srv.files(ALICE, inputs, config), "--resources", json.dumps(resources), "--", TASK
    )
    return proc, parse_results(proc.stdout)


# --- the time-limit story, in the background -------------------------------------------------


class Story:
    """Submit a task with time 1 (minute) that sleeps 100 s, 5 s when retried; `wait` (it ends
    time_limit); then `retry --cause time_limit --time 3x`, which waits too. What each step
    said is kept."""

    def __init__(self, srv: Srv) -> None:
        self.srv = srv
        self.since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
        self.run_id: str | None = None
        self.steps: dict[str, tuple[int, str, str, float]] = {}
        self.error: BaseException | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.stopping = False
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.t0 = time.monotonic()

    def _call(self, name: str, *args: str, timeout: float) -> tuple[int, str, str, float]:
        t = time.monotonic()
        self.proc = self.srv.popen(*args)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"{name} timed out after {timeout}s:\n{err}") from None
        self.steps[name] = (self.proc.returncode, out, err, time.monotonic() - t)
        return self.steps[name]

    def _main(self) -> None:
        try:
            self.run_id = submit(
                # killed at 60-90 s (limits are checked every 30 s); the retry is short (the
                # suite's time): its grown limit is read in accounting below
                self.srv,
                [{"sleep": 100, "sleep_again": 5}],
                {"time": "1", "parallel_tasks_per_job": 1},
                CONFIG,
            )
            self._call("wait", "wait", self.run_id, timeout=240)
            if self.stopping:
                return
            self._call(
                "retry", "retry", self.run_id, "--cause", "time_limit", "--time", "3x", timeout=400
            )
        except BaseException as exc:  # shown by the test that reads the story
            self.error = exc

    def stop(self) -> None:
        """At the module's end, if the story is still going (a failed test stopped the module
        early): cancel its run and end the CLI process it is waiting on (by its PID)."""
        self.stopping = True
        if self.thread.is_alive() and self.run_id:
            self.srv("cancel", self.run_id, timeout=60)
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
        self.thread.join(60)


@pytest.fixture(scope="module", autouse=True)
def story(rig: dict[str, str]) -> Iterator[Story]:
    work = SHARED / f"w-retries-{os.getpid()}-{time.monotonic_ns()}"
    work.mkdir(mode=0o755)
    srv = Srv(work, f"/home/{SERVER}/store-{time.monotonic_ns()}.sqlite")
    s = Story(srv)
    s.thread.start()
    yield s
    s.stop()
    shutil.rmtree(work, ignore_errors=True)


# --- 1. out of memory, retried by the admin's policy -----------------------------------------


def test_out_of_memory_is_retried_by_policy_with_twice_the_memory(srv: Srv) -> None:
    t0 = time.monotonic()
    config = with_retry({"out_of_memory": {"max_attempts": 2, "mem": "2x"}})
    inputs = [{"alloc_mb": 150}, {"x": 1}, {"x": 2}, {"x": 3}]
    # 2 jobs of 2 tasks, one at a time, 100M each; the retry is a 3rd job of 200M
    proc, results = run(srv, inputs, {**ONE_AT_A_TIME, "tasks_per_job": 2}, config)
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in results] == ["ok"] * 4, results
    big, *siblings = results
    assert big["result"] == {"allocated_mb": 150}
    assert big["resources"]["mem_mb"] == 200, big
    (first,) = big["attempts"]
    assert first["status"] == "failed", first
    assert first["error"]["cause"] == "out_of_memory", first
    assert first["resources"]["mem_mb"] == 100, first
    assert first["job_id"] and first["job_id"] != big["job_id"], (first, big)
    # siblings ran once: no attempts, no resources of a retry; job 0's sibling shared the OOM job
    for r, x in zip(siblings, (1, 2, 3), strict=True):
        assert r["result"] == {"square": x * x}
        assert "attempts" not in r and "resources" not in r, r
    assert siblings[0]["job_id"] == first["job_id"]
    run_id = run_of(big["job_id"])
    # SLURM's own view: three jobs, each submitted once; the retry's with 200M, the first 100M
    assert names_listed(run_id) == names(run_id, 3)
    assert job_field(big["job_id"], "%j %m %T") == f"sr-{run_id}-2 200M COMPLETED"
    assert job_field(first["job_id"], "%m %T") == "100M OUT_OF_MEMORY"
    print(f"\n[policy OOM] {time.monotonic() - t0:.1f}s")


# --- 3. over max_mem_per_job: refused; exit_code failures left alone -------------------------


def test_retries_over_max_mem_per_job_are_refused_and_exit_code_left_alone(srv: Srv) -> None:
    t0 = time.monotonic()
    # 30x of 100M is 3000MB, over max_mem_per_job (2G): the policy cannot retry the OOM task.
    config = with_retry({"out_of_memory": {"max_attempts": 3, "mem": "30x"}})
    inputs = [{"alloc_mb": 150}, {"fail": 3}, {"x": 4}]
    proc, results = run(srv, inputs, {**ONE_AT_A_TIME, "tasks_per_job": 3}, config)
    assert proc.returncode == 1, proc.stderr
    oom, bad, good = results
    assert (oom["status"], oom["error"]["cause"]) == ("failed", "out_of_memory"), oom
    assert (bad["status"], bad["error"]["cause"]) == ("failed", "exit_code"), bad
    assert good["result"] == {"square": 16}
    for r in results:
        assert "attempts" not in r, r
    said = flat(proc.stderr)
    assert "out_of_memory failures not retried" in said, said
    assert "max_mem_per_job is 2048MB" in said and "mem=3000MB" in said, said
    run_id = run_of(oom["job_id"])
    assert names_listed(run_id) == names(run_id, 1)  # no retry job was ever submitted

    # On demand, over the bound too: refused before any sbatch, naming it; nothing changes.
    before = job_ids()
    refused = srv("retry", run_id, "--cause", "out_of_memory", "--mem", "100x", timeout=120)
    assert refused.returncode == 2, (refused.returncode, refused.stderr)
    said = flat(refused.stderr)
    assert "max_mem_per_job" in said and "10000MB" in said, said
    assert not jobs_since(before)
    assert names_listed(run_id) == names(run_id, 1)
    assert parse_results(srv("results", run_id).stdout) == results
    print(f"\n[bounds + exit_code] {time.monotonic() - t0:.1f}s")


# --- 4. the runner killed between the first attempt and the retry ----------------------------


def test_a_runner_killed_between_attempts_leaves_wait_to_finish_the_retry(srv: Srv) -> None:
    t0 = time.monotonic()
    config = with_retry({"out_of_memory": {"max_attempts": 2, "mem": "2x"}})
    inputs = [{"alloc_mb": 150}, {"x": 5}]
    run_id = submit(srv, inputs, {**ONE_AT_A_TIME, "tasks_per_job": 2}, config)
    watching = Running(srv.popen("wait", run_id))

    def between() -> str | None:
        watching.ended()  # it must not have finished the retry already
        if f"sr-{run_id}-1" in names_listed(run_id):
            return "the retry's job was submitted"
        stored = parse_results(srv("results", run_id).stdout)
        if any(r["status"] == "failed" for r in stored):
            return "the first attempt's failure was saved, no retry yet"
        return None

    where = wait_for(between, 120, "the first attempt's end", step=0.1)
    os.kill(watching.pid, signal.SIGKILL)  # the `wait` we started, by its PID
    watching.kill()  # reaps it
    print(f"\n[kill] SIGKILL when {where}; jobs listed: {names_listed(run_id)}")

    waited = srv("wait", run_id, timeout=180)
    assert waited.returncode == 0, waited.stderr
    big, small = parse_results(waited.stdout)
    assert big["status"] == "ok" and big["result"] == {"allocated_mb": 150}, big
    assert big["resources"]["mem_mb"] == 200
    (first,) = big["attempts"]
    assert (first["error"]["cause"], first["resources"]["mem_mb"]) == ("out_of_memory", 100)
    assert small["result"] == {"square": 25} and "attempts" not in small, small
    assert small["job_id"] == first["job_id"] != big["job_id"]
    # every job once: the first and the retry, whoever submitted it
    assert names_listed(run_id) == names(run_id, 2)
    assert job_field(big["job_id"], "%j %m") == f"sr-{run_id}-1 200M"
    print(f"[kill] {time.monotonic() - t0:.1f}s")


# --- 2. over the time limit, retried on demand (the background story) ------------------------


def test_time_limit_is_retried_on_demand_with_three_times_the_time(story: Story) -> None:
    t0 = time.monotonic()
    story.thread.join(500)
    assert not story.thread.is_alive(), "the time-limit story did not end"
    if story.error is not None:
        raise story.error
    code, out, err, took = story.steps["wait"]
    print(f"\n[time limit] first attempt ended after {took:.0f}s of wait")
    assert code == 1, err
    (first_try,) = parse_results(out)
    assert (first_try["status"], first_try["error"]["cause"]) == ("failed", "time_limit")
    code, out, err, took = story.steps["retry"]
    print(f"[time limit] retry --time 3x took {took:.0f}s")
    assert code == 0, err
    (task,) = parse_results(out)
    assert task["status"] == "ok", task
    (first,) = task["attempts"]  # two attempts: this one and the first
    assert first["error"]["cause"] == "time_limit" and first["job_id"] == first_try["job_id"]
    assert first["resources"]["time_minutes"] == 1, first
    assert task["resources"]["time_minutes"] == 3, task
    assert task["job_id"] != first["job_id"]
    assert task["duration_s"] >= 5, task  # the retried attempt ran its task
    assert story.run_id is not None
    # accounting: two jobs, each once; the first TIMEOUT at 1 minute, the retry 3 minutes
    expected = [
        (f"sr-{story.run_id}-0", "TIMEOUT", "00:01:00"),
        (f"sr-{story.run_id}-1", "COMPLETED", "00:03:00"),
    ]
    run_id, since = story.run_id, story.since
    try:  # accounting may hear of the retry's end a moment after the CLI did
        wait_for(lambda: sacct_jobs(run_id, since) == expected, 30, "sacct", step=1)
    except AssertionError:
        assert sacct_jobs(run_id, since) == expected
    print(
        f"[time limit] story {time.monotonic() - story.t0:.0f}s in all, "
        f"{time.monotonic() - t0:.0f}s waited here"
    )
