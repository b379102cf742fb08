"""What a task ended as, and how that is decided from the worker's record and the job's end.

Success comes only from the worker's record (records.TaskRecord, validated). A task without one
gets the scheduler's reason for its job's end, never "completed"; `bad_record` when the job
wrote lines that were not valid records (one of them may have been this task's).
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict, dataclass, fields
from json.encoder import encode_basestring_ascii
from typing import Any, Literal

from .records import TaskRecord

Status = Literal["ok", "failed", "cancelled"]

#: Job end states (SLURM's names; the local backend uses the same) -> the task's cause.
STATE_CAUSES = {
    "OUT_OF_MEMORY": "out_of_memory",
    "TIMEOUT": "time_limit",
    "DEADLINE": "time_limit",
    "CANCELLED": "cancelled",
    "NODE_FAIL": "node_failure",
    "BOOT_FAIL": "node_failure",
    "PREEMPTED": "preempted",
    "FAILED": "job_failed",
    "SPECIAL_EXIT": "job_failed",
    "REVOKED": "cancelled",
}

#: Signals a scheduler kills with (scancel, time limit, OOM, preemption, `--signal=USR1`): a
#: task dead of one of them takes its job's end cause. Any other (SIGSEGV, SIGABRT, SIGBUS,
#: ...) is the task's own doing and stays `signal`, whatever became of the job.
SCHEDULER_SIGNALS = frozenset(
    int(s)
    for s in (
        signal.SIGKILL,
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGXCPU,
        signal.SIGUSR1,
        signal.SIGUSR2,
    )
)


# Slots: a run's results are held together at its end (Run.results), 100,000 of them at a time.
@dataclass(frozen=True, slots=True)
class TaskError:
    cause: str
    message: str
    log_tail: str = ""


@dataclass(frozen=True, slots=True)
class TaskResult:
    index: int
    status: Status
    result: Any = None
    error: TaskError | None = None
    duration_s: float | None = None
    max_rss_mb: float | None = None
    job_id: str | None = None
    log: str | None = None
    # When the task ended (unix time, the node's clock; None for results of older workers):
    # it started at t_end - duration_s. Drawn on the run's timeline; never trusted beyond that.
    t_end: float | None = None
    # A retried task's earlier attempts, oldest first (each a result's dict, with the
    # "resources" it ran with), and this attempt's resources; None for a task run once.
    attempts: list[dict[str, Any]] | None = None
    resources: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies the result, only for it to be serialized.
        data = {name: getattr(self, name) for name in _RESULT_FIELDS}
        data["error"] = asdict(self.error) if self.error else None
        for name in _ONLY_IF_SET:
            if data[name] is None:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        err = data.get("error")
        # The same few statuses, job ids and causes over a whole run: one string each.
        status, job_id = data.get("status"), data.get("job_id")
        return cls(
            **{
                **data,
                "status": sys.intern(status) if isinstance(status, str) else status,
                "job_id": sys.intern(job_id) if isinstance(job_id, str) else job_id,
                "error": TaskError(**{**err, "cause": sys.intern(str(err.get("cause")))})
                if err
                else None,
            }
        )

    def to_json(self) -> str:
        """json.dumps(self.to_dict()), the very same text: what the run store keeps. Built
        field by field (the dict, and the encoder's walk over it, cost as much again as the
        result's own JSON); anything unusual is left to json.dumps."""
        try:
            if (
                self.attempts is not None
                or self.resources is not None
                or type(self.index) is not int
            ):
                raise _Unusual
            err = self.error
            error = (
                "null"
                if err is None
                else f'{{"cause": {_str(err.cause)}, "message": {_str(err.message)}, '
                f'"log_tail": {_str(err.log_tail)}}}'
            )
            result = "null" if self.result is None else json.dumps(self.result)
            return (
                f'{{"index": {self.index}, "status": {_str(self.status)}, "result": {result}, '
                f'"error": {error}, "duration_s": {_float(self.duration_s)}, '
                f'"max_rss_mb": {_float(self.max_rss_mb)}, "job_id": {_str(self.job_id)}, '
                f'"log": {_str(self.log)}, "t_end": {_float(self.t_end)}}}'
            )
        except _Unusual:
            return json.dumps(self.to_dict())


class _Unusual(Exception):
    """A value to_json leaves to json.dumps."""


def _str(value: str | None) -> str:
    if type(value) is str:
        return encode_basestring_ascii(value)  # json.dumps's own escaping (ensure_ascii)
    if value is None:
        return "null"
    raise _Unusual


def _float(value: float | None) -> str:
    if value is None:
        return "null"
    if type(value) is float and value - value == 0.0:  # json.dumps spells inf and NaN itself
        return float.__repr__(value)
    raise _Unusual


_RESULT_FIELDS = tuple(f.name for f in fields(TaskResult))
# Left out of a result's dict when unset: most tasks run once, and results keep their shape.
_ONLY_IF_SET = ("attempts", "resources")


def _failed(index: int, cause: str, message: str, **kw: Any) -> TaskResult:
    status: Status = "cancelled" if cause == "cancelled" else "failed"
    return TaskResult(index, status, error=TaskError(cause, message, kw.pop("log_tail", "")), **kw)


def awaits_scheduler(record: TaskRecord) -> bool:
    """Whether the record's cause is the job's end cause, which only the scheduler knows: an
    interrupted task, or one killed by a signal the scheduler sends (or by an unnamed one)."""
    if record.error is None:
        return False
    cause = record.error.cause
    return cause == "interrupted" or (
        cause == "signal" and (record.signal is None or record.signal in SCHEDULER_SIGNALS)
    )


def from_record(
    record: TaskRecord, job_id: str | None, end_state: str | None, log: str | None
) -> TaskResult:
    """A worker record; an interruption or a death by the scheduler's signal takes the job's
    end cause (see awaits_scheduler).

    `log` is the server's own path of the task's log, never the record's word.
    """
    # By position, no dict of the common fields: this runs for every result the server reads.
    if record.status == "ok":
        return TaskResult(
            record.i,
            "ok",
            record.result,
            None,
            record.duration_s,
            record.max_rss_mb,
            job_id,
            log,
            record.t_end,
        )
    assert record.error is not None  # the schema requires one unless ok
    cause, message = record.error.cause, record.error.message
    if awaits_scheduler(record) and end_state in STATE_CAUSES:
        cause = STATE_CAUSES[end_state]
        message = f"{message}; job {job_id} ended {end_state}"
    common = {
        "duration_s": record.duration_s,
        "max_rss_mb": record.max_rss_mb,
        "t_end": record.t_end,
        "job_id": job_id,
        "log": log,
    }
    return _failed(record.i, cause, message, log_tail=record.error.log_tail, **common)


def without_record(
    index: int,
    job_id: str | None,
    end_state: str,
    reason: str = "",
    job_output: str = "",
    bad_lines: int = 0,
) -> TaskResult:
    """A task whose job ended before the worker reported it (or whose report was unreadable:
    `bad_lines` lines of the job's results were not valid records)."""
    cause = STATE_CAUSES.get(end_state) or ("bad_record" if bad_lines else "lost")
    why = f" ({reason})" if reason and reason != "None" else ""
    if cause == "bad_record":
        message = (
            f"job {job_id} wrote {bad_lines} line(s) that are not valid records, "
            "and no valid record of this task (see the run's warnings)"
        )
    elif end_state in ("", "UNKNOWN"):
        message = f"job {job_id} left the scheduler without a record of this task{why}"
    else:
        message = f"job {job_id} ended {end_state}{why} before this task reported"
    return _failed(index, cause, message, log_tail=job_output, job_id=job_id)


def cancelled(index: int, job_id: str | None) -> TaskResult:
    return _failed(index, "cancelled", "the run was cancelled", job_id=job_id)
