"""The store's part of retries (store.Store inherits it): failed tasks go back to unfinished,
their failed attempt kept, and the jobs that run them again are added, in one transaction.

A retried task's row keeps its history as JSON, {"attempts": [earlier results...],
"resources": {...this attempt's...}}; each earlier result carries the "resources" it ran with.
When the next attempt's result is saved (Store.save_results) the history goes into it, so every
reader of results sees a task's every attempt with no other query.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from . import store_schema as schema
from .errors import SlurmRunnerError
from .results import TaskResult

_tasks, _jobs, _runs = schema.tasks, schema.jobs, schema.runs
_CHUNK = 1000  # indices per statement (bound-parameter limits)

# The failed tasks among these, locked until the retry's transaction ends (FOR UPDATE on
# PostgreSQL; SQLite's write transaction holds the database's lock from its BEGIN IMMEDIATE).
_FAILED = (
    select(_tasks.c.idx, _tasks.c.result)
    .where(
        _tasks.c.run_id == bindparam("run_id"),
        _tasks.c.idx.in_(bindparam("indices", expanding=True)),
        _tasks.c.status == "failed",
    )
    .order_by(_tasks.c.idx)
    .with_for_update()
)
_STATE = select(_runs.c.state).where(_runs.c.id == bindparam("run_id")).with_for_update()
_REOPEN = (
    update(_tasks)
    .where(_tasks.c.run_id == bindparam("rid"), _tasks.c.idx == bindparam("i"))
    .values(result=None, status=None, cause=None, history=bindparam("h"))
)


class RetryConflictError(SlurmRunnerError):
    """The tasks changed since they were chosen (another process retried or saved them)."""


def attempts_of(history: str) -> dict[str, Any]:
    """What a task's history adds to its next result: "attempts" and "resources"."""
    data = json.loads(history)
    return {"attempts": data.get("attempts") or [], "resources": data.get("resources")}


class RetryStore:
    if TYPE_CHECKING:
        _save_counts: Any

        def _read(self) -> AbstractContextManager[Connection]: ...

        def _tx(self) -> AbstractContextManager[Connection]: ...

    def failed_results(
        self,
        run_id: str,
        indices: Collection[int] | None = None,
        causes: Collection[str] | None = None,
    ) -> list[TaskResult]:
        """The run's failed tasks' results as stored (their earlier attempts in them), by
        index; only those among `indices`, of `causes`, when given."""
        c = _tasks.c
        query = select(c.result).where(c.run_id == run_id, c.status == "failed").order_by(c.idx)
        if causes is not None:
            query = query.where(c.cause.in_(sorted(causes)))
        wanted = sorted(indices) if indices is not None else None
        with self._read() as conn:
            if wanted is None:
                rows = list(conn.execute(query).scalars())
            else:
                rows = []
                for k in range(0, len(wanted), _CHUNK):
                    part = query.where(c.idx.in_(wanted[k : k + _CHUNK]))
                    rows.extend(conn.execute(part).scalars())
        return [TaskResult.from_dict(json.loads(r)) for r in rows]

    def start_retry(
        self,
        run_id: str,
        shapes: Mapping[int, tuple[dict[str, Any], dict[str, Any]]],
        jobs: Sequence[tuple[list[int], str]],
        states: Collection[str] = ("running",),
    ) -> list[int]:
        """Make the failed tasks of `shapes` (index -> (the resources their failed attempt ran
        with, unless its result says; those of the next)) unfinished again, keeping the failed
        attempt in their history, and add `jobs` ((task indices, retry plan JSON) each, state
        NEW) with the next indices of the run's jobs, which it returns; the run is `running`
        again. All or nothing, and only from a run in one of `states` (the policy's retries
        only while it runs: a cancelled run's last failures are not retried): else, or when a
        task is no longer failed, RetryConflictError."""
        order = sorted(shapes)
        with self._tx() as conn:
            # The run's row locked first (PostgreSQL; SQLite holds the database's write lock):
            # two retries of one run wait for each other, so job indices never collide.
            state = conn.execute(_STATE, {"run_id": run_id}).scalar()
            if state not in states:
                raise RetryConflictError(f"run {run_id} is {state}: not retried")
            found: dict[int, str] = {}
            for k in range(0, len(order), _CHUNK):
                params = {"run_id": run_id, "indices": order[k : k + _CHUNK]}
                found.update((i, r) for i, r in conn.execute(_FAILED, params))
            if len(found) != len(order):
                gone = sorted(set(order) - set(found))[:10]
                raise RetryConflictError(
                    f"task(s) {', '.join(map(str, gone))} are no longer failed: retried or "
                    "ended by another process; look at the run again"
                )
            rows = []
            for i in order:
                before, after = shapes[i]
                old = json.loads(found[i])
                earlier = old.pop("attempts", None) or []
                ran_with = old.pop("resources", None) or before
                history = {"attempts": [*earlier, {**old, "resources": ran_with}]}
                history["resources"] = after
                rows.append({"rid": run_id, "i": i, "h": json.dumps(history)})
            conn.execute(_REOPEN, rows)
            counts = [{"run_id": run_id, "status": "failed", "n": -len(order)}]
            conn.execute(self._save_counts, counts)
            c = _jobs.c
            last = conn.execute(select(func.max(c.idx)).where(c.run_id == run_id)).scalar()
            first = -1 if last is None else int(last)
            new = []
            for k, (tasks, plan) in enumerate(jobs):
                new.append(
                    {
                        "run_id": run_id,
                        "idx": first + 1 + k,
                        "first_task": tasks[0],
                        "n_tasks": len(tasks),
                        "task_list": json.dumps(tasks),
                        "retry_plan": plan,
                    }
                )
            if new:
                conn.execute(insert(_jobs).values(state="NEW"), new)
            if state != "running":
                conn.execute(update(_runs).where(_runs.c.id == run_id).values(state="running"))
            return [row["idx"] for row in new]
