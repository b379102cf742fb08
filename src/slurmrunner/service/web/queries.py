"""The web pages' own questions to the run store, each one bounded query on the Store's
connections: a page of a run's tasks in any of four orders, each job's span of time, the
active runs by user.

Duration and peak memory are not columns of `tasks` (they are inside each result's JSON), so
ordering by them reads that JSON in the database: one pass over the run's rows (the
(run_id, idx) primary key bounds it to the run), never a row to Python beyond the page asked
for. Measured on a 20,000-task run: tens of milliseconds on SQLite and PostgreSQL. An indexed
column per measure would make it a range scan (see the report of issue 12).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Float, and_, case, cast, func, select
from sqlalchemy.dialects.postgresql import JSON, JSONB
from sqlalchemy.sql import ColumnElement

from ...results import TaskResult
from ...store import Store
from ...store_schema import FINAL_RUN_STATES, runs, tasks
from ..models import User

Sort = Literal["index", "status", "duration", "memory"]
SORTS: tuple[Sort, ...] = ("index", "status", "duration", "memory")
#: Which tasks a page holds: one status, or those without a result yet.
Shown = Literal["ok", "failed", "cancelled", "unfinished"]
SHOWN: tuple[Shown, ...] = ("ok", "failed", "cancelled", "unfinished")
#: A task's or job's time is drawn only within this margin of its run's life: the worker's
#: clock is the node's, and what a task writes beside its record cannot be trusted.
CLOCK_MARGIN_S = 24 * 3600.0

_t = tasks.c


@contextmanager
def _read(store: Store) -> Iterator[Connection]:
    # The Store's own reads: its pool, and its lock where one connection serves every call
    # (an in-memory database).
    with store._read() as conn:
        yield conn


def _json(dialect: str, name: str, column: Any = _t.result) -> ColumnElement[Any]:
    """A value inside a result's JSON text, as the database reads it (NULL where absent).
    PostgreSQL: `json`, not `jsonb`: read once per row, the plain parse costs half as much."""
    if dialect == "postgresql":
        return cast(column, JSON)[name].astext
    return func.json_extract(column, f"$.{name}")


def _number(dialect: str, name: str, column: Any = _t.result) -> ColumnElement[Any]:
    value = _json(dialect, name, column)
    return cast(value, Float) if dialect == "postgresql" else value


# Failures first, then cancelled, unfinished, ok: what a person looks for first.
_STATUS_RANK = case(
    (_t.status == "failed", 0),
    (_t.status == "cancelled", 1),
    (_t.status.is_(None), 2),
    else_=3,
)


@dataclass(frozen=True)
class TaskRow:
    """One line of the tasks table: the result, or None for a task not finished yet."""

    index: int
    result: TaskResult | None


def task_page(
    store: Store,
    run_id: str,
    sort: Sort = "index",
    descending: bool = False,
    offset: int = 0,
    limit: int = 100,
    shown: Shown | None = None,
) -> list[TaskRow]:
    """Up to `limit` of the run's tasks (finished or not) from `offset` in `sort` order; ties
    by index. Ordered by index, the primary key serves it; the other orders sort the run's
    indices in the database (see the module's note), then read the page's results alone."""
    with _read(store) as conn:
        dialect = conn.dialect.name
        key: ColumnElement[Any] | None = {
            "index": None,
            "status": _STATUS_RANK,
            "duration": _number(dialect, "duration_s"),
            "memory": _number(dialect, "max_rss_mb"),
        }[sort]
        wanted = [_t.idx, _t.result] if key is None else [_t.idx]
        query = select(*wanted).where(_t.run_id == run_id)
        if shown == "unfinished":
            query = query.where(_t.result.is_(None))
        elif shown is not None:
            query = query.where(_t.status == shown)
        order: list[Any] = []
        if key is not None:
            # Tasks without the measure (unfinished, or no record) last, in both directions.
            order.append((key.desc() if descending else key.asc()).nulls_last())
        order.append(_t.idx.desc() if descending and sort == "index" else _t.idx.asc())
        query = query.order_by(*order).offset(max(offset, 0)).limit(limit)
        if key is None:
            rows = conn.execute(query).all()
        else:
            # Sorting the indices alone: the sorter never carries the results' text.
            order_of = list(conn.execute(query).scalars())
            found = select(_t.idx, _t.result).where(_t.run_id == run_id, _t.idx.in_(order_of))
            results = {i: r for i, r in conn.execute(found)}
            rows = [(i, results.get(i)) for i in order_of]
    return [TaskRow(i, TaskResult.from_dict(json.loads(r)) if r else None) for i, r in rows]


@dataclass(frozen=True)
class JobSpan:
    """When a job's tasks ran, from its tasks' records: the first start, the last end."""

    job_id: str
    start: float
    end: float
    n: int  # tasks with a time


def job_spans(store: Store, run_id: str, created: float, now: float | None = None) -> list[JobSpan]:
    """Each job's span from its finished tasks' `t_end - duration_s` and `t_end` (records of
    workers that write t_end). Times outside the run's life (by CLOCK_MARGIN_S) are left out:
    one task's forged time cannot stretch its job's bar."""
    now = time.time() if now is None else now
    with _read(store) as conn:
        dialect = conn.dialect.name
        if dialect == "postgresql":
            # Each row's JSON parsed once, to jsonb (three fields are read; `json` would parse
            # the text again for each), and OFFSET 0 keeps the subquery from being merged
            # into the outer one, which would cast it once per field.
            parsed = (
                select(cast(_t.result, JSONB).label("r"))
                .where(_t.run_id == run_id, _t.result.is_not(None))
                .offset(0)
                .subquery()
            )
            source, r = parsed, parsed.c.r
            fields = [r["job_id"].astext, cast(r["t_end"].astext, Float)]
            fields.append(cast(r["duration_s"].astext, Float))
        else:
            source, r = tasks, _t.result
            fields = [_json(dialect, n) for n in ("job_id", "t_end", "duration_s")]
        inner = select(*(f.label(n) for f, n in zip(fields, ("job", "t_end", "took"), strict=True)))
        if dialect != "postgresql":
            inner = inner.where(_t.run_id == run_id, _t.result.is_not(None))
        c = inner.select_from(source).subquery().c
        sane = and_(
            c.t_end.is_not(None),
            c.took.is_not(None),
            c.job.is_not(None),
            c.t_end >= created - CLOCK_MARGIN_S,
            c.t_end <= now + CLOCK_MARGIN_S,
            c.took >= 0,
            c.took <= c.t_end - created + CLOCK_MARGIN_S,
        )
        query = (
            select(c.job, func.min(c.t_end - c.took), func.max(c.t_end), func.count())
            .where(sane)
            .group_by(c.job)
        )
        rows = conn.execute(query).all()
    return [JobSpan(str(j), float(s), float(e), int(n)) for j, s, e, n in rows]


@dataclass(frozen=True)
class ActiveRuns:
    user: str
    state: str
    n: int


def active_runs_by_user(store: Store) -> list[ActiveRuns]:
    """Runs not done, cancelled or failed, by owner and state (ix_runs_state serves it)."""
    users = User.__table__
    owner = func.coalesce(users.c.email, "(the CLI)")
    query = (
        select(owner, runs.c.state, func.count())
        .select_from(runs.outerjoin(users, users.c.id == runs.c.user_id))
        .where(runs.c.state.not_in(FINAL_RUN_STATES))
        .group_by(owner, runs.c.state)
        .order_by(func.count().desc(), owner)
    )
    with _read(store) as conn:
        return [ActiveRuns(str(u), str(s), int(n)) for u, s, n in conn.execute(query)]
