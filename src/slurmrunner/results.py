"""What a task ended as, and how that is decided from the worker's record and the job's end.

Success comes only from the worker's record. A task without one gets the scheduler's reason
for its job's end, never "completed".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

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


@dataclass(frozen=True)
class TaskError:
    cause: str
    message: str
    log_tail: str = ""


@dataclass(frozen=True)
class TaskResult:
    index: int
    status: Status
    result: Any = None
    error: TaskError | None = None
    duration_s: float | None = None
    max_rss_mb: float | None = None
    job_id: str | None = None
    log: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        err = data.get("error")
        return cls(**{**data, "error": TaskError(**err) if err else None})


def _failed(index: int, cause: str, message: str, **kw: Any) -> TaskResult:
    status: Status = "cancelled" if cause == "cancelled" else "failed"
    return TaskResult(index, status, error=TaskError(cause, message, kw.pop("log_tail", "")), **kw)


def from_record(record: dict[str, Any], job_id: str | None, end_state: str | None) -> TaskResult:
    """A worker record; a death by signal or an interruption takes the job's end cause."""
    common = {
        "duration_s": record.get("duration_s"),
        "max_rss_mb": record.get("max_rss_mb"),
        "job_id": job_id,
        "log": record.get("log"),
    }
    index = record["i"]
    if record["status"] == "ok":
        return TaskResult(index, "ok", result=record.get("result"), **common)
    err = record.get("error") or {}
    cause, message = err.get("cause", "unknown"), err.get("message", "")
    if cause in ("signal", "interrupted") and end_state in STATE_CAUSES:
        cause = STATE_CAUSES[end_state]
        message = f"{message}; job {job_id} ended {end_state}"
    return _failed(index, cause, message, log_tail=err.get("log_tail", ""), **common)


def without_record(
    index: int, job_id: str | None, end_state: str, reason: str = "", job_output: str = ""
) -> TaskResult:
    """A task whose job ended before the worker reported it."""
    cause = STATE_CAUSES.get(end_state, "lost")
    why = f" ({reason})" if reason and reason != "None" else ""
    if end_state in ("", "UNKNOWN"):
        message = f"job {job_id} left the scheduler without a record of this task"
    else:
        message = f"job {job_id} ended {end_state}{why} before this task reported"
    return _failed(index, cause, message, log_tail=job_output, job_id=job_id)


def cancelled(index: int, job_id: str | None) -> TaskResult:
    return _failed(index, "cancelled", "the run was cancelled", job_id=job_id)
