"""What the pages show, read from the store and the accounts: plain data for the templates,
and the template environment itself.

Nothing here reads a whole run's results: lists are pages by index (store.results_page),
counts come from the kept counters, and the charts use a bounded sample
(Store.results_sample).
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select
from sqlalchemy.orm import Session

from ...results import TaskResult
from ...store import RunRow, Store
from ..models import Resource, User
from ..run_reads import run_reads, stored_spec
from . import charts

TEMPLATES = Path(__file__).parent / "templates"
FINAL_STATES = ("done", "cancelled", "failed")
#: Tasks read for the charts, spread evenly over the run's indices.
SAMPLE_SIZE = 1000
#: Failed tasks read to find examples of each cause (failures come first on the run page).
FAILURES_READ = 200
EXAMPLES_PER_CAUSE = 3

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),  # every value a user or a job wrote is escaped
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(name).render(request=request, **context)
    headers = {"Cache-Control": "no-store"}  # pages hold a user's data and a CSRF token
    return HTMLResponse(html, status_code=status_code, headers=headers)


def store_of(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def span(seconds: float | None) -> str:
    """A duration as people read it: 850 ms, 12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


_env.filters["span"] = span
_env.filters["when"] = when


@dataclass
class RunLine:
    """One run as the runs page lists it."""

    id: str
    state: str
    created: float
    n_tasks: int
    n_jobs: int
    finished: int
    bar: list[charts.Segment]
    resource: str
    user: str
    message: str | None
    # Time since its creation while it is active; an ended run's end time is not stored.
    elapsed: float | None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def run_lines(store: Store, db: Session, rows: list[RunRow]) -> list[RunLine]:
    resources = _names(db, Resource, Resource.name, {r.resource_id for r in rows})
    users = _names(db, User, User.email, {r.user_id for r in rows})
    now = time.time()
    lines = []
    for row, read in zip(rows, run_reads(store, rows), strict=True):
        lines.append(
            RunLine(
                id=row.id,
                state=row.state,
                created=row.created,
                n_tasks=row.n_tasks,
                n_jobs=read.n_jobs,
                finished=read.finished,
                bar=charts.progress(read.counts, row.n_tasks),
                resource=resources.get(row.resource_id, "—"),
                user=users.get(row.user_id, "—"),
                message=row.message,
                elapsed=None if row.state in FINAL_STATES else now - row.created,
            )
        )
    return lines


def _names(db: Session, model: Any, column: Any, ids: set[int | None]) -> dict[int, str]:
    wanted = [i for i in ids if i is not None]
    if not wanted:
        return {}
    query = select(model.id, column).where(model.id.in_(wanted))
    return {i: name for i, name in db.execute(query)}


# What a failure's message says of its end: the worker writes "exited with status 3" and
# "killed by SIGKILL (signal 9)".
_EXIT = re.compile(r"exited with status (-?\d+)")
_SIGNAL = re.compile(r"killed by (\S+) \(signal (\d+)\)")


def end_of(result: TaskResult) -> str:
    """The exit code or signal a failed task's message names, else ""."""
    if result.error is None:
        return ""
    if m := _EXIT.search(result.error.message):
        return f"exit code {m.group(1)}"
    if m := _SIGNAL.search(result.error.message):
        return f"{m.group(1)} (signal {m.group(2)})"
    return ""


@dataclass
class CauseGroup:
    cause: str
    n: int
    examples: list[TaskResult] = field(default_factory=list)


def failure_groups(store: Store, run_id: str, causes: dict[str, int]) -> list[CauseGroup]:
    """Causes, most frequent first, each with a few of its tasks from the first failures
    (by index); a cause seen only further down shows its count alone."""
    groups = {cause: CauseGroup(cause, n) for cause, n in causes.items()}
    for r in store.results_page(run_id, "not_ok", -1, FAILURES_READ):
        cause = r.error.cause if r.error else "unknown"
        group = groups.setdefault(cause, CauseGroup(cause, 0))
        if len(group.examples) < EXAMPLES_PER_CAUSE:
            group.examples.append(r)
    return sorted(groups.values(), key=lambda g: (-g.n, g.cause))


def requested_mem_mb(row: RunRow) -> float | None:
    """Memory requested per task: the job's memory over the tasks it runs at once."""
    try:
        plan = stored_spec(row).plan
    except Exception:  # an old or odd spec: the chart goes without its marker
        return None
    if not plan.mem_per_job_mb:
        return None
    return plan.mem_per_job_mb / max(plan.parallel_tasks_per_job, 1)


def durations_by_job(
    sample: list[TaskResult], jobs: list[tuple[int, int]]
) -> dict[int, list[float]]:
    """Sampled durations by job index; `jobs`: (first_task, n_tasks) by job index."""
    starts = [first for first, _ in jobs]
    found: dict[int, list[float]] = defaultdict(list)
    for r in sample:
        if r.duration_s is None:
            continue
        k = _job_of(starts, r.index)
        if k is not None:
            found[k].append(r.duration_s)
    return found


def _job_of(starts: list[int], index: int) -> int | None:
    k = bisect.bisect_right(starts, index) - 1
    return k if k >= 0 else None
