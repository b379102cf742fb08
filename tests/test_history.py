"""The scheduler's history (sacct) of jobs gone from squeue: the parser, the one call, and the
run's decision. Unit tests on a fake query host with canned sacct output: not SLURM tests (the
rig's tests, with slurmdbd, are the real thing)."""

from __future__ import annotations

import signal

import pytest

from slurmrunner.asking import HISTORY_ANSWERS, HISTORY_FAILURES
from slurmrunner.errors import HostError, TransientSchedulerError
from slurmrunner.hosts.local import LocalHost
from slurmrunner.slurm import SharedSqueue, SlurmScheduler, parse_sacct, sacct_argv
from tests.fake_slurm import FakeQueryHost, FakeSubmitHost, end, failed, fake_run, ok, start, write

SACCT = "\n".join(
    [
        "101|OUT_OF_MEMORY|0:125|None",
        "102|CANCELLED by 1000|0:15|None",
        "103|COMPLETED|0:0|None",
        "104|TIMEOUT|0:0|TimeLimit",
        "105|FAILED|2:0|NonZeroExitCode",
        "999|FAILED|1:0|None",  # not asked for
        "106.batch|FAILED|1:0|None",  # a step (-X asks for none)
        "107|WEIRD_STATE|0:0|None",  # not a state sacct prints
        "108|cancelled|0:0|None",  # not as sacct prints it
        "109|COMPLETED|zero|None",
        "110|COMPLETED",
        "garbage",
        "111|RUNNING|0:0|None",
        "",
    ]
)


def test_sacct_is_parsed_strictly():
    asked = [str(n) for n in range(101, 112)]
    found = parse_sacct(SACCT, asked)
    assert {j: s.state for j, s in found.items()} == {
        "101": "OUT_OF_MEMORY",
        "102": "CANCELLED",
        "103": "COMPLETED",
        "104": "TIMEOUT",
        "105": "FAILED",
        "111": "RUNNING",
    }
    assert found["101"].reason == "exit code 0:125, from sacct"
    assert found["103"].reason == "from sacct"
    assert found["104"].reason == "TimeLimit, from sacct"
    assert not found["111"].terminal


def test_one_sacct_for_every_id_on_the_query_host():
    query, submit = FakeQueryHost(), FakeSubmitHost()
    scheduler = SlurmScheduler(submit, SharedSqueue(query), "alice")
    query.sacct = SACCT
    assert scheduler.history([]) == {}
    assert query.argvs == []
    found = scheduler.history(["101", "102", "120"])
    assert set(found) == {"101", "102"}
    assert query.argvs == [
        [
            "sacct",
            "--allocations",
            "--noheader",
            "--parsable2",
            "--allusers",
            "--jobs=101,102,120",
            "--format=JobIDRaw,State,ExitCode,Reason",
        ]
    ]
    assert query.argvs[0] == sacct_argv(["101", "102", "120"])
    assert not submit.calls  # as the server's query identity, never as the user


@pytest.mark.parametrize(
    "answer",
    [
        (1, "Slurm accounting storage is disabled"),  # no slurmdbd
        (127, "bash: line 1: sacct: command not found"),  # no sacct over SSH
        (1, "sacct: error: Invalid user id"),  # refused: cannot know either
    ],
)
def test_sacct_that_cannot_know_says_nothing(answer):
    query = FakeQueryHost()
    query.sacct = answer
    assert SlurmScheduler(FakeSubmitHost(), SharedSqueue(query), "alice").history(["101"]) == {}


def test_no_sacct_on_this_host_says_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no program at all
    scheduler = SlurmScheduler(FakeSubmitHost(), SharedSqueue(LocalHost()), "alice")
    assert scheduler.history(["101"]) == {}


def test_sacct_that_did_not_answer_this_time_is_transient():
    query = FakeQueryHost()
    query.sacct = (1, "sacct: error: Problem talking to the database: Connection refused")
    scheduler = SlurmScheduler(FakeSubmitHost(), SharedSqueue(query), "alice")
    with pytest.raises(TransientSchedulerError, match="Connection refused"):
        scheduler.history(["101"])


def test_a_gone_job_takes_its_end_from_sacct_before_anything_is_concluded(tmp_path):
    run, query = fake_run(tmp_path, n_tasks=4, tasks_per_job=2)
    assert run.job_ids() == ["101", "102"]
    # Job 101: one task ended, the next was SIGKILLed, then the worker itself: no end line.
    write(run, 0, start(0), ok(0, 0), failed(1, 0, "signal", sig=signal.SIGKILL))
    write(run, 1, start(1))
    run.poll()
    assert [r.index for r in run.results()] == [0]
    # Both left squeue (MinJobAge) before anyone looked; slurmdbd was down for a moment.
    query.states.clear()
    query.sacct = (1, "sacct: error: slurmdbd: Connection refused")
    run.poll()
    run.poll()
    assert [r.index for r in run.results()] == [0]  # no answer is not an answer
    query.sacct = "101|OUT_OF_MEMORY|0:125|None\n102|TIMEOUT|0:0|None\n"
    status = run.poll()
    assert status.done
    causes = {r.index: r.error.cause if r.error else "ok" for r in run.results()}
    assert causes == {0: "ok", 1: "out_of_memory", 2: "time_limit", 3: "time_limit"}
    assert "from sacct" in run.results()[2].error.message
    sacct_calls = [a for a in query.argvs if a[0] == "sacct"]
    assert len(sacct_calls) == 3 and all("--jobs=101,102" in a for a in sacct_calls)
    assert status.calls["sacct"] == 3 and status.calls["sacct_errors"] == 2
    assert {j.state for j in run.store.jobs(run.id)} == {"OUT_OF_MEMORY", "TIMEOUT"}


def test_a_job_whose_files_tell_its_end_needs_no_sacct(tmp_path):
    run, query = fake_run(tmp_path, n_tasks=2, tasks_per_job=2)
    write(run, 0, start(0), ok(0, 0), ok(1, 0), end(0, 2))
    query.states.clear()
    assert run.poll().done
    assert all(r.ok for r in run.results())
    assert query.calls["sacct"] == 0


@pytest.mark.parametrize(
    ("answer", "tries"),
    [
        ((1, "Slurm accounting storage is disabled"), HISTORY_ANSWERS),
        ("101|RUNNING|0:0|None\n", HISTORY_ANSWERS),  # a history that lags squeue
        ((1, "sacct: error: Socket timed out on send/recv operation"), HISTORY_FAILURES),
    ],
)
def test_lost_only_when_neither_squeue_nor_sacct_knows(tmp_path, answer, tries):
    run, query = fake_run(tmp_path, n_tasks=2, tasks_per_job=2)
    write(run, 0, start(0), ok(0, 0))
    query.states.clear()
    query.sacct = answer
    for _ in range(tries - 1):
        assert not run.poll().done
    assert [r.index for r in run.results()] == [0]
    status = run.poll()
    assert status.done and status.calls["sacct"] == tries
    lost = run.results()[1]
    assert lost.error.cause == "lost"
    assert "nor to sacct" in lost.error.message


def test_the_local_queue_is_its_own_history(tmp_path):
    from slurmrunner.local_jobs import LocalScheduler
    from slurmrunner.local_queue import job_id_text

    scheduler = LocalScheduler(tmp_path / "queue.sqlite")
    unknown = job_id_text(scheduler.queue.queue_id, 12345)
    assert scheduler.history([unknown]) == {}
    with pytest.raises(TransientSchedulerError):  # another queue's job is not ours to judge
        scheduler.history(["local-otherqueue-1"])


def test_a_host_that_cannot_be_reached_is_transient_for_the_run(tmp_path):
    run, query = fake_run(tmp_path, n_tasks=1, tasks_per_job=1)
    query.states.clear()
    query.sacct = HostError("connection to the cluster lost")
    for _ in range(3):
        assert not run.poll().done  # ... bounded by HISTORY_FAILURES, like a down slurmdbd
    assert run.status().calls["sacct_errors"] == 3
