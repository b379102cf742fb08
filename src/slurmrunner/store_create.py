"""A new run in the store (store.Store inherits it): its row, its tasks' inputs and its jobs,
written in one transaction.

Apart from store.py, which keeps a run's reads and its later writes: this is the one write of
every task at once, with a statement of its own on PostgreSQL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, insert

from . import store_schema as schema

_runs, _jobs = schema.runs, schema.jobs
# A run's tasks on PostgreSQL: many rows per statement, from two arrays (Store.create_run).
_ADD_TASKS_PG = (
    "INSERT INTO tasks (run_id, idx, args) SELECT %(rid)s, t.i, t.a "
    "FROM unnest(%(i)b::integer[], %(a)b::text[]) AS t(i, a)"
)
_INSERT_CHUNK = 5000


class RunCreation:
    if TYPE_CHECKING:  # defined by store.Store
        _engine: Engine
        _add_task: schema.Compiled

        def _tx(self) -> AbstractContextManager[Connection]: ...

    def create_run(
        self,
        run_id: str,
        spec: dict[str, Any],
        args: list[Any],
        job_sizes: Iterable[int],
        user_id: int | None = None,
        resource_id: int | None = None,
        profile_id: int | None = None,
    ) -> None:
        run = {"id": run_id, "created": time.time(), "state": "submitting"}
        run.update(spec=json.dumps(spec), n_tasks=len(args), user_id=user_id)
        run.update(resource_id=resource_id, profile_id=profile_id)
        add = self._add_task
        texts = [json.dumps(a) for a in args]
        first, jobs = 0, []
        for k, size in enumerate(job_sizes):
            jobs.append({"run_id": run_id, "idx": k, "first_task": first, "n_tasks": size})
            first += size
        with self._tx() as conn:
            conn.execute(insert(_runs), run)
            if self._engine.dialect.name == "postgresql":
                # A statement per 5,000 tasks, not one per task: the executemany's pipeline
                # cost ~50 µs of our CPU per row, most of a POST of 500 tasks.
                for k in range(0, len(texts), _INSERT_CHUNK):
                    chunk = texts[k : k + _INSERT_CHUNK]
                    rows = {"rid": run_id, "i": list(range(k, k + len(chunk))), "a": chunk}
                    conn.exec_driver_sql(_ADD_TASKS_PG, rows)
            elif texts:
                tasks = [add.args(rid=run_id, i=i, a=a) for i, a in enumerate(texts)]
                conn.exec_driver_sql(add.sql, tasks)  # type: ignore[arg-type]
            if jobs:
                conn.execute(insert(_jobs).values(state="NEW"), jobs)
