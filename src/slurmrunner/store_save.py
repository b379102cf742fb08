"""How Store.save_results writes a batch of results: its statements, compiled once per
database, and the rows it binds.

The watcher saves what each look at a run brought, often a few results at a time, so what a
batch costs (statements through SQLAlchemy, psycopg's pipeline per row) weighed more than the
rows themselves. Each step is one statement on the driver's cursor, its text fixed:

- which tasks are still unsaved: the indices as one array (PostgreSQL) or one JSON list
  (SQLite), not one bound parameter each (SQLAlchemy rendered those anew for every batch, and
  psycopg parsed each new text);
- the results: on PostgreSQL one UPDATE for up to SAVE_CHUNK of them, each row's values
  looked up by its index in one jsonb object (not an executemany, whose pipeline cost ~25 µs
  of our CPU per row; not a join with the values either, which a planner with stale statistics
  ran as a nested loop over the whole run); on SQLite, sqlite3's own executemany, in-process;
- the status counts: one statement on PostgreSQL too.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

from sqlalchemy import Connection, bindparam, update
from sqlalchemy.engine import Dialect

from . import store_schema as schema
from .results import TaskResult
from .store_retries import attempts_of

_tasks = schema.tasks
#: Indices per statement: far below SQLite's (32,766) and PostgreSQL's (65,535) bound-parameter
#: limits, and a jsonb object of this many results is parsed once per statement.
SAVE_CHUNK = 1000

# Which of these tasks have no result yet. Run inside the write transaction that saves them:
# on SQLite the transaction holds the database's write lock from its BEGIN IMMEDIATE; on
# PostgreSQL FOR UPDATE locks the rows (in index order, so two savers cannot deadlock), and a
# row another transaction is writing is waited for, then re-read and left out if written.
# SQLite looks each index up in the primary key ("SEARCH tasks USING INDEX ... (run_id=? AND
# idx=?)", as for an IN list); on PostgreSQL, BETWEEN keeps the scan to the batch's span of the
# run when stale statistics leave the array out of the index condition.
_UNSAVED_PG = (
    "SELECT idx, history FROM tasks WHERE run_id = %(run_id)s AND idx BETWEEN %(lo)s AND %(hi)s "
    "AND idx = ANY(%(indices)s::integer[]) AND result IS NULL ORDER BY idx FOR UPDATE"
)
_UNSAVED_SQLITE = (
    "SELECT idx, history FROM tasks WHERE run_id = ? "
    "AND idx IN (SELECT value FROM json_each(?)) AND result IS NULL ORDER BY idx"
)
# One task's result (SQLite, by executemany).
_SAVE = update(_tasks).values(
    result=bindparam("result"), status=bindparam("status"), cause=bindparam("cause")
)
_SAVE = _SAVE.where(
    _tasks.c.run_id == bindparam("rid"), _tasks.c.idx == bindparam("i"), _tasks.c.result.is_(None)
)
# Many results (PostgreSQL): `v` maps each index (as text) to [result, status, cause], and
# each row finds its values by a binary search of the object's keys. psycopg sends a str
# untyped, so the cast types the parameter itself and the server parses the object once, when
# it is bound (measured: 1,000 results of 500 B in 13 ms; 18 ms even with the parameter typed
# text, whose cast PostgreSQL folds). The rows are found by the primary key, as _UNSAVED_PG
# found them: nothing to join, so no plan to get wrong.
_SAVE_MANY_PG = (
    "UPDATE tasks SET result = (%(v)s::jsonb -> idx::text) ->> 0, "
    "status = (%(v)s::jsonb -> idx::text) ->> 1, cause = (%(v)s::jsonb -> idx::text) ->> 2 "
    "WHERE run_id = %(rid)s AND idx BETWEEN %(lo)s AND %(hi)s "
    "AND idx = ANY(%(i)s::integer[]) AND result IS NULL"
)

# The status counts moved by a batch (PostgreSQL), in one statement rather than psycopg's
# pipelined executemany; rows are locked in status order, as everywhere (see write).
_COUNT_PG = (
    "INSERT INTO status_counts (run_id, status, n) SELECT %(run_id)s, t.s, t.n "
    "FROM unnest(%(s)s::text[], %(n)s::integer[]) AS t(s, n) ORDER BY t.s "
    "ON CONFLICT (run_id, status) DO UPDATE SET n = status_counts.n + excluded.n"
)


class Saver:
    """save_results's statements for one database."""

    def __init__(self, dialect: Dialect) -> None:
        self.postgresql = dialect.name == "postgresql"
        self._save = schema.Compiled(_SAVE, dialect)
        counts = schema.adding_upsert(dialect.name, schema.status_counts, ("run_id", "status"))
        self._counts = schema.Compiled(counts, dialect)

    def unsaved(self, conn: Connection, run_id: str, order: list[int]) -> dict[int, str | None]:
        """The tasks among `order` (sorted) without a result, locked, in index order, each
        with its history (a retried task's earlier attempts, which go in its result)."""
        found: dict[int, str | None] = {}
        for k in range(0, len(order), SAVE_CHUNK):
            chunk = order[k : k + SAVE_CHUNK]
            if self.postgresql:
                params = {"run_id": run_id, "indices": chunk, "lo": chunk[0], "hi": chunk[-1]}
                rows = conn.exec_driver_sql(_UNSAVED_PG, params)
            else:
                rows = conn.exec_driver_sql(_UNSAVED_SQLITE, (run_id, json.dumps(chunk)))
            for i, h in rows:
                found[i] = h
        return found

    def write(
        self, conn: Connection, run_id: str, results: list[TaskResult], history: list[str | None]
    ) -> None:
        """Save `results` (unsaved, locked; `history` is each one's) and count them."""
        if self.postgresql:
            for k in range(0, len(results), SAVE_CHUNK):
                part = zip(results[k : k + SAVE_CHUNK], history[k : k + SAVE_CHUNK], strict=True)
                values = {
                    str(r.index): [stored_json(r, h), r.status, r.error.cause if r.error else None]
                    for r, h in part
                }
                indices = [r.index for r in results[k : k + SAVE_CHUNK]]
                params = {"v": json.dumps(values), "rid": run_id, "i": indices}
                params.update(lo=indices[0], hi=indices[-1])
                conn.exec_driver_sql(_SAVE_MANY_PG, params)
        else:
            args = self._save.args
            rows = [
                args(
                    rid=run_id,
                    i=r.index,
                    result=stored_json(r, h),
                    status=r.status,
                    cause=r.error.cause if r.error else None,
                )
                for r, h in zip(results, history, strict=True)
            ]
            conn.exec_driver_sql(self._save.sql, rows)  # type: ignore[arg-type]
        self.count(conn, run_id, (r.status for r in results))

    def count(self, conn: Connection, run_id: str, statuses: Iterable[str]) -> None:
        # Sorted: two savers on PostgreSQL lock the count rows in one order.
        counts = sorted(Counter(statuses).items())
        if self.postgresql:
            params = {"run_id": run_id, "s": [s for s, _ in counts], "n": [n for _, n in counts]}
            conn.exec_driver_sql(_COUNT_PG, params)
            return
        args = self._counts.args
        rows = [args(run_id=run_id, status=s, n=n) for s, n in counts]
        conn.exec_driver_sql(self._counts.sql, rows)  # type: ignore[arg-type]


def stored_json(r: TaskResult, history: str | None) -> str:
    """A result as the store keeps it: its dict as JSON, with its task's history in it."""
    if not history:
        return r.to_json()
    data = r.to_dict()
    data.update(attempts_of(history))
    return json.dumps(data)
