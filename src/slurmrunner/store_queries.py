"""The service's questions about runs, answered by the store (store.Store inherits them): one
result, results by page and status, failures by cause, a user's active runs.

Each is one query over the columns kept beside every result (tasks.status, tasks.cause), so
none reads a whole run's results.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, func, select

from . import store_schema as schema
from .results import TaskResult
from .store_rows import JOB_COLUMNS, JobRow, job_row

_runs, _tasks, _jobs = schema.runs, schema.tasks, schema.jobs
# Which results a page holds: one status, or every task that did not end ok.
StatusFilter = Literal["ok", "failed", "cancelled", "not_ok"] | None
_IDS_PER_QUERY = 500


class RunQueries:
    if TYPE_CHECKING:

        def _read(self) -> AbstractContextManager[Connection]: ...

    def result(self, run_id: str, index: int) -> TaskResult | None:
        """One task's result (None: not finished yet)."""
        c = _tasks.c
        query = select(c.result).where(c.run_id == run_id, c.idx == index)
        with self._read() as conn:
            found = conn.execute(query).scalar()
        return TaskResult.from_dict(json.loads(found)) if found else None

    def results_page(
        self, run_id: str, status: StatusFilter = None, after: int = -1, limit: int = 1000
    ) -> list[TaskResult]:
        """Up to `limit` finished tasks' results with index > `after`, by index; only those of
        `status` when given ("not_ok": failed or cancelled). Paged by index, not OFFSET: each
        page costs the same, however deep."""
        c = _tasks.c
        query = select(c.result).where(c.run_id == run_id, c.idx > after, c.result.is_not(None))
        query = _status_filter(query, status).order_by(c.idx).limit(limit)
        with self._read() as conn:
            return [TaskResult.from_dict(json.loads(r)) for r in conn.execute(query).scalars()]

    def count_results(self, run_id: str, status: StatusFilter = None) -> int:
        c = _tasks.c
        query = select(func.count()).where(c.run_id == run_id, c.result.is_not(None))
        with self._read() as conn:
            return int(conn.execute(_status_filter(query, status)).scalar() or 0)

    def results_sample(self, run_id: str, n_tasks: int, size: int) -> tuple[list[TaskResult], int]:
        """Up to `size` finished tasks, every k-th index, and k (the stride): a 20,000-task
        run's charts cost one bounded query."""
        stride = max(1, math.ceil(n_tasks / size))
        c = _tasks.c
        query = select(c.result).where(c.run_id == run_id, c.result.is_not(None))
        if stride > 1:
            query = query.where(c.idx % stride == 0)
        with self._read() as conn:
            rows = conn.execute(query.order_by(c.idx).limit(size)).scalars()
            return [TaskResult.from_dict(json.loads(r)) for r in rows], stride

    def live_jobs_of(self, run_ids: list[str]) -> dict[str, list[JobRow]]:
        """The submitted, unfinished jobs of many runs in one query (the watcher's cycle:
        one read for every run it steps, not one per run)."""
        c = _jobs.c
        query = select(c.run_id, *c[JOB_COLUMNS]).where(c.done == 0, c.job_id.is_not(None))
        found: dict[str, list[JobRow]] = {run_id: [] for run_id in run_ids}
        with self._read() as conn:
            # In slices: SQLite takes at most 32,766 parameters a statement.
            for k in range(0, len(run_ids), _IDS_PER_QUERY):
                ids = run_ids[k : k + _IDS_PER_QUERY]
                for r in conn.execute(query.where(c.run_id.in_(ids)).order_by(c.run_id, c.idx)):
                    found[r[0]].append(job_row(r[1:]))
        return found

    def status_counts_of(self, run_ids: list[str]) -> dict[str, Counter[str]]:
        """Store.status_counts of many runs in one query (a list of runs: at most 1,000)."""
        c = schema.status_counts.c
        query = select(c.run_id, c.status, c.n).where(c.run_id.in_(run_ids), c.n > 0)
        found: dict[str, Counter[str]] = {run_id: Counter() for run_id in run_ids}
        if run_ids:
            with self._read() as conn:
                for run_id, status, n in conn.execute(query):
                    found[run_id][status] = n
        return found

    def cause_counts(self, run_id: str) -> Counter[str]:
        """Tasks that did not end ok, by cause (out_of_memory, time_limit, exit_code, ...)."""
        c = _tasks.c
        query = select(c.cause, func.count()).where(c.run_id == run_id, c.cause.is_not(None))
        with self._read() as conn:
            return Counter({cause: n for cause, n in conn.execute(query.group_by(c.cause))})

    def count_active_runs(self, user_id: int, resource_id: int | None = None) -> int:
        """A user's runs not yet done, cancelled or failed (the per-user limit), on one
        Resource when given."""
        query = select(func.count()).where(
            _runs.c.user_id == user_id, _runs.c.state.not_in(schema.FINAL_RUN_STATES)
        )
        if resource_id is not None:
            query = query.where(_runs.c.resource_id == resource_id)
        with self._read() as conn:
            return int(conn.execute(query).scalar() or 0)


def _status_filter(query: Any, status: StatusFilter) -> Any:
    if status == "not_ok":
        return query.where(_tasks.c.status != "ok")
    if status is not None:
        return query.where(_tasks.c.status == status)
    return query
