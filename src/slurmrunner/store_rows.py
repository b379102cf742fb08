"""The rows the run store hands out: plain, frozen values (store.py, store_queries.py)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

# jobs' columns in JobRow's order.
JOB_COLUMNS = (
    "idx",
    "first_task",
    "n_tasks",
    "job_id",
    "state",
    "reason",
    "done",
    "claim",
    "task_list",
    "retry_plan",
)


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
    # A retry's job (retrying.py): its tasks' indices, and its plan as stored (JSON).
    task_list: tuple[int, ...] | None = None
    retry_plan: str | None = None

    @property
    def task_range(self) -> range | frozenset[int]:
        """Its tasks' indices: a range for a run's first jobs, a set for a retry's."""
        if self.task_list is not None:
            return frozenset(self.task_list)
        return range(self.first_task, self.first_task + self.n_tasks)

    @property
    def tasks(self) -> list[int]:
        """Its tasks' indices in the order the job runs them."""
        return list(self.task_list if self.task_list is not None else self.task_range)


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


@dataclass(frozen=True)
class RunView:
    """What GET /runs/{id} shows of a run, read at once (Store.run_view)."""

    run: RunRow
    counts: Counter[str]  # finished tasks by status, as status_counts keeps them
    causes: Counter[str]  # tasks not ok, by cause
    calls: dict[str, int]  # the run's counters, by name
    jobs: list[JobRow]


def job_row(r: Any) -> JobRow:
    tasks = tuple(json.loads(r[8])) if r[8] else None
    return JobRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], tasks, r[9])


def run_row(r: Any) -> RunRow:
    """A row of every column of `runs`, in RunRow's order."""
    return RunRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], r[8])
