"""Admin page: the service's health, read from what the watcher already counts (watchstats:
its recent cycles, calls by kind and group) and the runs table (active runs by user). It makes
no call to any cluster: looking at it costs the controller nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from ...watchstats import CycleStats
from ..watching import ServiceWatcher
from . import charts, queries, views
from .session import WebSession, current_admin

router = APIRouter(prefix="/web/admin", include_in_schema=False)
Admin = Annotated[WebSession, Depends(current_admin)]
#: The window of "calls per minute": the cycles of the last five minutes (of the watcher's
#: own clock), at most watchstats.RECENT_CYCLES of them.
WINDOW_S = 300.0
KINDS = {
    "poll": "squeue (or the local queue)",
    "history": "sacct",
    "cat": "cat of results files",
    "job_output": "job output read",
    "submit": "sbatch",
}


@dataclass(frozen=True)
class Rate:
    kind: str
    what: str
    group: str
    per_minute: float
    total: int
    most_per_cycle: int


@dataclass(frozen=True)
class Health:
    running: bool
    runs_watched: int
    cycles: int
    last_cycle_s: float | None
    mean_cycle_s: float | None
    max_cycle_s: float
    window_s: float
    rates: list[Rate]
    errors: list[tuple[str, int]]
    recent: charts.Histogram | None


def health_of(watching: ServiceWatcher) -> Health:
    watcher = watching.watcher
    snap: dict[str, Any] = watcher.stats.snapshot()
    recent: list[CycleStats] = list(watcher.stats.recent)  # a copy: the thread appends
    window: list[CycleStats] = []
    if recent:
        newest = recent[-1]
        window = [c for c in recent if c.started >= newest.started - WINDOW_S]
    span_s = (window[-1].started + window[-1].duration_s - window[0].started) if window else 0.0
    minutes = max(span_s, 1.0) / 60
    in_window: Counter[tuple[str, str]] = Counter()
    for cycle in window:
        in_window.update(cycle.calls)
    totals: dict[tuple[str, str], int] = snap["calls"]
    most: dict[tuple[str, str], int] = snap["most_per_cycle"]
    rates = [
        Rate(kind, KINDS.get(kind, kind), group, in_window[(kind, group)] / minutes, n,
             most.get((kind, group), 0))
        for (kind, group), n in sorted(totals.items())
    ]  # fmt: skip
    cycles = int(snap["cycles"])
    last: CycleStats | None = snap["last_cycle"]
    errors = sorted(snap["errors"].items(), key=lambda e: -e[1])[:20]
    return Health(
        running=watching.running,
        runs_watched=len(watcher.runs()),
        cycles=cycles,
        last_cycle_s=last.duration_s if last else None,
        mean_cycle_s=snap["cycle_s_total"] / cycles if cycles else None,
        max_cycle_s=float(snap["cycle_s_max"]),
        window_s=span_s,
        rates=rates,
        errors=errors,
        recent=charts.histogram(c.duration_s for c in window),
    )


@router.get("/health", response_class=HTMLResponse)
def health_page(request: Request, session: Admin) -> HTMLResponse:
    health = health_of(request.app.state.watching)
    active = queries.active_runs_by_user(views.store_of(request))
    by_kind: dict[str, float] = {}
    for rate in health.rates:
        by_kind[rate.kind] = by_kind.get(rate.kind, 0.0) + rate.per_minute
    return views.render(
        request,
        "admin_health.html",
        session=session,
        health=health,
        by_kind=sorted(by_kind.items()),
        kinds=KINDS,
        active=active,
        active_total=sum(a.n for a in active),
        width=charts.WIDTH,
        height=charts.HEIGHT,
    )
