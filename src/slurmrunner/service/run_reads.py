"""What the service shows of a run: the RunRead of a list and the RunDetail of GET /runs/{id},
with the per-process cache of parsed specs they are built from.

Apart from runs.py (finding, creating, cancelling and retrying runs, their results and logs):
the API's and the web pages' lists and views of runs are built here, changing nothing.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from ..runspec import RunSpec
from ..store import RunRow, Store
from ..store_rows import RunView
from .schemas.runs import JobRead, RunDetail, RunRead


def run_reads(store: Store, rows: list[RunRow]) -> list[RunRead]:
    """Many runs at once (a list): their counts in one query."""
    counts = store.status_counts_of([row.id for row in rows])
    return [run_read(store, row, counts.get(row.id, Counter())) for row in rows]


def listed_runs(store: Store, limit: int, user_id: int | None, state: str | None) -> list[RunRead]:
    """GET /runs: the runs and their counts, read on one connection."""
    return [
        run_read(store, row, counts)
        for row, counts in store.runs_with_counts(limit=limit, user_id=user_id, state=state)
    ]


def run_read(store: Store, row: RunRow, counts: Counter[str] | None = None) -> RunRead:
    if counts is None:
        counts = store.status_counts(row.id)
    return RunRead(**_read_fields(row, counts))


def _read_fields(row: RunRow, counts: Counter[str]) -> dict[str, Any]:
    fixed = _fixed(row)
    return {
        "id": row.id,
        "state": row.state,
        "created": row.created,
        "n_tasks": row.n_tasks,
        "n_jobs": fixed.n_jobs,
        "finished": sum(counts.values()),
        "counts": dict(counts),
        "user_id": row.user_id,
        "resource_id": row.resource_id,
        "profile_id": row.profile_id,
        "run_dir": fixed.run_dir,
        "call": fixed.call,
        "message": row.message,
    }


@dataclass(frozen=True, slots=True)
class _Fixed:
    """What a run's read shows of its spec: fixed once the run is stored."""

    spec: RunSpec
    n_jobs: int  # spec.plan's: batching computed again on every call of the property
    run_dir: str
    call: str


# A run's spec never changes once stored: parsed once per process, not on every GET (the
# pydantic models of a spec cost ~0.3 ms, its plan as much again). Bounded; an entry is a few
# KB.
_SPECS_KEPT = 1024
_specs: OrderedDict[str, _Fixed] = OrderedDict()
_specs_lock = threading.Lock()


def _fixed(row: RunRow) -> _Fixed:
    with _specs_lock:
        fixed = _specs.get(row.id)
        if fixed is not None:
            _specs.move_to_end(row.id)
            return fixed
    spec = RunSpec.from_dict(row.spec)
    fixed = _Fixed(spec, spec.plan.num_jobs, spec.run_dir, spec.call)
    with _specs_lock:
        _specs[row.id] = fixed
        while len(_specs) > _SPECS_KEPT:
            _specs.popitem(last=False)
    return fixed


def stored_spec(row: RunRow) -> RunSpec:
    return _fixed(row).spec


def detail_of(view: RunView) -> RunDetail:
    """GET /runs/{id}'s answer, built once (not a RunRead dumped into a RunDetail)."""
    jobs = [
        JobRead(
            index=j.idx,
            job_id=j.job_id,
            state=j.state,
            reason=j.reason,
            first_task=j.first_task,
            n_tasks=j.n_tasks,
            done=j.done,
        )
        for j in view.jobs
    ]
    return RunDetail(
        **_read_fields(view.run, view.counts),
        causes=dict(view.causes),
        jobs=jobs,
        calls=view.calls,
        retried_tasks=view.calls.get("retried_tasks", 0),
    )
