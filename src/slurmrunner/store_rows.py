"""The rows the run store hands out: plain, frozen values (store.py, store_queries.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# jobs' columns in JobRow's order.
JOB_COLUMNS = ("idx", "first_task", "n_tasks", "job_id", "state", "reason", "done", "claim")


@dataclass(frozen=True)
class JobRow:
    idx: int
    first_task: int
    n_tasks: int
    job_id: str | None
    state: str
    reason: str
    done: bool
    claim: str = ""  # who is submitting it (state SUBMITTING), see Store.claim_job

    @property
    def task_range(self) -> range:
        return range(self.first_task, self.first_task + self.n_tasks)


@dataclass(frozen=True)
class RunRow:
    id: str
    created: float
    state: str
    spec: dict[str, Any]
    n_tasks: int
    # The service's (None for a CLI run): see store_schema.runs.
    user_id: int | None = None
    resource_id: int | None = None
    profile_id: int | None = None
    message: str | None = None  # why it failed as a whole


def job_row(r: Any) -> JobRow:
    return JobRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7])


def run_row(r: Any) -> RunRow:
    """A row of every column of `runs`, in RunRow's order."""
    return RunRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], r[8])
