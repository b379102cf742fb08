"""How a task's outcome is decided from the worker's record and its job's end state (pure)."""

import pytest

from slurmrunner.batching import PartitionShape
from slurmrunner.jobstate import GONE, JobState
from slurmrunner.records import TaskRecord
from slurmrunner.results import TaskResult, cancelled, from_record, without_record
from slurmrunner.slurm import is_transient, parse_sbatch_parsable, parse_sinfo, parse_squeue


def rec(status="ok", cause=None, **kw):
    r = {"i": 7, "job": 0, "status": status, "duration_s": 0.5, "max_rss_mb": 12.0, "log": "l"}
    if cause:
        r["error"] = {"cause": cause, "message": "m", "log_tail": "tail"}
    return TaskRecord.model_validate({**r, **kw})


def test_ok_record_is_the_only_success():
    r = from_record(rec(result={"a": 1}), "12", None, "/run/logs/7.log")
    assert (r.status, r.result, r.job_id, r.max_rss_mb) == ("ok", {"a": 1}, "12", 12.0)
    assert r.log == "/run/logs/7.log"  # the server's path, not the record's "l"
    assert r.t_end is None  # an older worker's record
    timed = from_record(rec(t_end=1000.5), "12", None, "/l")
    assert timed.t_end == 1000.5 and TaskResult.from_dict(timed.to_dict()) == timed
    # results stored before t_end existed read as they were
    old = {k: v for k, v in timed.to_dict().items() if k != "t_end"}
    assert TaskResult.from_dict(old).t_end is None


@pytest.mark.parametrize(
    ("state", "cause", "status"),
    [
        ("OUT_OF_MEMORY", "out_of_memory", "failed"),
        ("TIMEOUT", "time_limit", "failed"),
        ("CANCELLED", "cancelled", "cancelled"),
        ("NODE_FAIL", "node_failure", "failed"),
        ("PREEMPTED", "preempted", "failed"),
        ("FAILED", "job_failed", "failed"),
        ("UNKNOWN", "lost", "failed"),
        ("COMPLETED", "lost", "failed"),
    ],
)
def test_a_task_without_record_gets_the_jobs_cause(state, cause, status):
    r = without_record(3, "99", state, "Reason", "slurmstepd: error: x")
    assert (r.status, r.error.cause) == (status, cause)
    assert "99" in r.error.message
    assert r.error.log_tail == "slurmstepd: error: x"


@pytest.mark.parametrize(
    ("state", "cause"),
    [("COMPLETED", "bad_record"), ("UNKNOWN", "bad_record"), ("OUT_OF_MEMORY", "out_of_memory")],
)
def test_a_job_that_wrote_bad_lines_leaves_bad_record_not_lost(state, cause):
    r = without_record(3, "99", state, bad_lines=2)
    assert (r.status, r.error.cause) == ("failed", cause)


@pytest.mark.parametrize(
    ("state", "cause"), [("TIMEOUT", "time_limit"), ("CANCELLED", "cancelled"), (None, "signal")]
)
def test_killed_or_interrupted_task_takes_the_jobs_cause(state, cause):
    assert from_record(rec("failed", "signal"), "1", state, None).error.cause == cause


def test_the_tasks_own_failure_is_kept_whatever_the_job_did():
    r = from_record(rec("failed", "exit_code"), "1", "OUT_OF_MEMORY", None)
    assert (r.error.cause, r.error.log_tail) == ("exit_code", "tail")


def test_round_trip_and_cancelled():
    r = cancelled(4, "8")
    assert TaskResult.from_dict(r.to_dict()) == r
    assert r.status == "cancelled"


def test_squeue_parsing_and_transient_errors():
    out = "3|COMPLETED|None|sr-a-0\n4|CANCELLED by 1003|None|sr-a-1\n2|RUNNING|None|sr-a-2\n"
    states = parse_squeue(out)
    assert states["4"][0] == JobState("CANCELLED", "None")
    assert states["3"][0].terminal and not states["2"][0].terminal
    assert states["2"][1] == "sr-a-2"
    assert GONE.state == "UNKNOWN"
    assert is_transient("slurm_load_jobs error: Socket timed out on send/recv operation")
    assert is_transient("Unable to contact slurm controller (connect failure)")
    assert not is_transient("sbatch: error: invalid partition specified: nosuch")
    assert parse_sbatch_parsable("1234\n") == "1234"
    assert parse_sbatch_parsable("1234;cluster\n") == "1234"


SINFO = """main*|2|18079|1|idle|infinite
main*|8|64000|3|mix|1-00:00:00
main*|8|64000|2|drain|1-00:00:00
main*|4|8000|1|idle*|1-00:00:00
gpu|2|18079|1|alloc|30:00
"""


def test_sinfo_parsing_keeps_the_usable_nodes_of_one_partition():
    default = parse_sinfo(SINFO, None)
    assert default == PartitionShape(((2, 18079, 1), (8, 64000, 3)), max_time_minutes=24 * 60)
    assert parse_sinfo(SINFO, "main") == default
    assert parse_sinfo(SINFO, "gpu") == PartitionShape(((2, 18079, 1),), max_time_minutes=30)
    assert parse_sinfo(SINFO, "nosuch") is None
    assert parse_sinfo("main*|2|18079|1|down|infinite\n", None) is None  # nothing usable
    assert parse_sinfo("", None) is None


def test_sbatch_refusals_for_the_user_job_limit_are_waited_out():
    from slurmrunner.errors import SchedulerError, SubmitLimitError
    from slurmrunner.hosts.base import CommandResult
    from slurmrunner.slurm import _raise_for

    def refusal(stderr):
        with pytest.raises(SchedulerError) as info:
            _raise_for(CommandResult(("sbatch",), 1, "", stderr), "sbatch refused the job")
        return info.value

    policy = "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy"
    for limit in ("QOSMaxSubmitJobPerUserLimit", "AssocMaxSubmitJobLimit", "QOSGrpSubmitJobsLimit"):
        assert isinstance(refusal(f"sbatch: error: {limit}\n{policy}"), SubmitLimitError)
    for final in ("QOSMaxWallDurationPerJobLimit", "QOSGrpGRES"):
        err = refusal(f"sbatch: error: {final}\n{policy}")
        assert not isinstance(err, SubmitLimitError) and final in str(err)


@pytest.mark.parametrize(
    ("sig", "state", "cause"),
    [
        (11, "OUT_OF_MEMORY", "signal"),  # SIGSEGV: the task's own doing, whatever the job did
        (6, "TIMEOUT", "signal"),  # SIGABRT
        (7, "CANCELLED", "signal"),  # SIGBUS
        (9, "OUT_OF_MEMORY", "out_of_memory"),  # SIGKILL: the scheduler's
        (15, "TIMEOUT", "time_limit"),  # SIGTERM
        (10, "PREEMPTED", "preempted"),  # SIGUSR1 (sbatch --signal)
        (24, "TIMEOUT", "time_limit"),  # SIGXCPU
    ],
)
def test_only_the_schedulers_signals_take_the_jobs_cause(sig, state, cause):
    r = from_record(rec("failed", "signal", signal=sig), "1", state, None)
    assert r.error.cause == cause
