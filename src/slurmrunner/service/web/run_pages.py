"""A run's pages: the run (counts, failures by cause, the tasks table, the jobs and the first
job's script, histograms), its live progress fragment, a task's log, a job's script, the
timeline, and the cancel and retry forms.

Every read is bounded: counts come from kept counters, the table is one page from the store
(queries.task_page), the charts a sample (Store.results_sample), the timeline's spans one
aggregate (queries.job_spans) on a page of its own.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from ...retries import RETRYABLE_CAUSES
from ...store import JobRow, RunRow, Store
from ...tasklogs import LogUnreadable
from ..errors import NotFound, ServiceError
from ..run_reads import run_read
from ..runs import cancel_run, owned_run, retry_run, task_log
from ..schemas.common import MAX_ID
from ..schemas.runs import MAX_LOG_BYTES, RetryCreate
from . import charts, queries, scripts, timeline, views
from .forms import FORM, FormFields, optional, problems_of, see_other
from .session import PageNotFound, WebSession, check_csrf, current_session

router = APIRouter(prefix="/web/runs", include_in_schema=False)
Signed = Annotated[WebSession, Depends(current_session)]
TASKS_PAGE = 100
LOG_BYTES = 64 << 10
# Pages back from a log's end: as far as one read may hold (the API's MAX_LOG_BYTES).
LOG_PAGES = MAX_LOG_BYTES // LOG_BYTES
#: Failed tasks read for the timeline besides the sample: the ones people look for.
TIMELINE_FAILURES = 50
MAX_PAGE = MAX_ID // 1000


def _owned(request: Request, session: WebSession, run_id: str) -> RunRow:
    try:
        return owned_run(views.store_of(request), session.user, run_id)
    except NotFound as exc:
        raise PageNotFound(str(exc)) from None


def _job_finder(jobs: list[JobRow]) -> Callable[[int], JobRow | None]:
    """A task's newest job: its retry's latest, else the run's job whose range holds it."""
    retried = {i: j for j in jobs if j.task_list is not None for i in j.task_list}
    plain = [j for j in jobs if j.task_list is None]
    starts = [j.first_task for j in plain]

    def job_of(index: int) -> JobRow | None:
        if index in retried:
            return retried[index]
        k = bisect.bisect_right(starts, index) - 1
        return plain[k] if k >= 0 else None

    return job_of


def _unfinished_status(job: JobRow | None) -> str:
    """What a task without a result is doing, from its job's last known state."""
    return "running" if job is not None and job.state == "RUNNING" else "pending"


def _table(
    store: Store, row: RunRow, jobs: list[JobRow], counts: dict[str, int], params: dict[str, str]
) -> dict[str, object]:
    sort, order, show = params["sort"], params["order"], params["show"] or None
    page = int(params["page"])
    found = queries.task_page(
        store,
        row.id,
        sort,
        order == "desc",
        page * TASKS_PAGE,
        TASKS_PAGE,
        show,  # type: ignore[arg-type]
    )
    lines = []
    job_of = _job_finder(jobs)
    for t in found:
        job = job_of(t.index)
        r = t.result
        lines.append(
            {
                "index": t.index,
                "status": r.status if r else _unfinished_status(job),
                "cause": r.error.cause if r and r.error else "",
                "duration_s": r.duration_s if r else None,
                "max_rss_mb": r.max_rss_mb if r else None,
                "job": (r.job_id if r else None) or (job.job_id if job else None) or "",
                "finished": r is not None,
                # Which attempt the result is, for a task retried (None: its first and only).
                "attempt": len(r.attempts) + 1 if r and r.attempts else None,
            }
        )
    finished = sum(counts.values())
    total = {None: row.n_tasks, "unfinished": max(row.n_tasks - finished, 0)}.get(
        show, counts.get(show or "", 0)
    )
    pages = max(-(-total // TASKS_PAGE), 1)

    def url(**changes: object) -> str:
        query = {**params, **{k: str(v) for k, v in changes.items()}}
        kept = {k: v for k, v in query.items() if v and (k, v) not in DEFAULTS}
        return f"/web/runs/{row.id}" + (f"?{urlencode(kept)}" if kept else "") + "#tasks"

    return {
        "lines": lines,
        "sort": sort,
        "order": order,
        "show": show,
        "page": page,
        "pages": pages,
        "total": total,
        "url": url,
    }


DEFAULTS = {("sort", "index"), ("order", "asc"), ("page", "0")}


@router.get("/{run_id}", response_class=HTMLResponse)
def run_page(
    request: Request,
    session: Signed,
    run_id: str,
    sort: queries.Sort = "index",
    order: Literal["asc", "desc"] = "asc",
    show: queries.Shown | Literal[""] = "",
    page: Annotated[int, Query(ge=0, le=MAX_PAGE)] = 0,
) -> HTMLResponse:
    store = views.store_of(request)
    row = _owned(request, session, run_id)
    read = run_read(store, row)
    causes = dict(store.cause_counts(row.id))
    jobs = store.jobs(row.id)
    params = {"sort": sort, "order": order, "show": show, "page": str(page)}
    sample, stride = store.results_sample(row.id, row.n_tasks, views.SAMPLE_SIZE)
    mem = views.requested_mem_mb(row)
    peaks = [r.max_rss_mb for r in sample if r.max_rss_mb is not None]
    script = None
    script_error = None
    if jobs:
        try:
            script = scripts.job_script(store, row, jobs[0])
        except ValueError as exc:
            script_error = str(exc)
    return views.render(
        request,
        "run.html",
        session=session,
        run=read,
        final=row.state in views.FINAL_STATES,
        bar=charts.progress(read.counts, row.n_tasks),
        groups=views.failure_groups(store, row.id, causes),
        retry_causes=[c for c in causes if c in RETRYABLE_CAUSES],
        end_of=views.end_of,
        table=_table(store, row, jobs, read.counts, params),
        sorts=queries.SORTS,
        shows=queries.SHOWN,
        jobs=jobs,
        script=script,
        script_error=script_error,
        durations=charts.histogram(r.duration_s for r in sample),  # type: ignore[misc]
        memory=charts.histogram(peaks, marker=mem),
        requested_mem=mem,
        over_request=sum(1 for p in peaks if mem and p > mem),
        sampled=len(sample),
        stride=stride,
        width=charts.WIDTH,
        height=charts.HEIGHT,
    )


@router.get("/{run_id}/fragment", response_class=HTMLResponse)
def run_fragment(request: Request, session: Signed, run_id: str) -> HTMLResponse:
    """The run's progress bar and counts alone (the live part of its page)."""
    store = views.store_of(request)
    row = _owned(request, session, run_id)
    read = run_read(store, row)
    return views.render(
        request,
        "_run_progress.html",
        run=read,
        final=row.state in views.FINAL_STATES,
        bar=charts.progress(read.counts, row.n_tasks),
        live=True,  # fetched by live.js: an ended run's fragment offers the final page
    )


@router.get("/{run_id}/timeline", response_class=HTMLResponse)
def timeline_page(request: Request, session: Signed, run_id: str) -> HTMLResponse:
    store = views.store_of(request)
    row = _owned(request, session, run_id)
    final = row.state in views.FINAL_STATES
    now = time.time()
    jobs = store.jobs(row.id)
    spans = {s.job_id: s for s in queries.job_spans(store, row.id, row.created, now)}
    sample, stride = store.results_sample(row.id, row.n_tasks, views.SAMPLE_SIZE)
    failures = store.results_page(row.id, "not_ok", -1, TIMELINE_FAILURES)
    lo, hi = row.created - queries.CLOCK_MARGIN_S, now + queries.CLOCK_MARGIN_S
    timed = {
        r.index: timeline.TimedTask(r.index, r.t_end - r.duration_s, r.t_end, r.status)
        for r in [*sample, *failures]
        if r.t_end is not None and r.duration_s is not None and lo <= r.t_end - r.duration_s
        and r.t_end <= hi
    }  # fmt: skip
    lines = []
    for j in jobs:
        span = spans.get(j.job_id or "")
        running = j.state == "RUNNING" and not final
        lines.append(
            timeline.JobLine(
                j.job_id or f"#{j.idx}", j.state, j.first_task,
                (span.start, span.end) if span else None, running,
            )
        )  # fmt: skip
    start = min([row.created, *(s.start for s in spans.values())])
    ends = [s.end for s in spans.values()] + [t.end for t in timed.values()]
    end = now if not final else max(ends, default=start + 1)
    picture = timeline.picture(lines, list(timed.values()), start, end, views.span)
    by_job = views.durations_by_job(sample, [(j.first_task, j.n_tasks) for j in jobs])
    return views.render(
        request,
        "timeline.html",
        session=session,
        run=row,
        jobs=jobs,
        spans=spans,
        picture=picture if spans or timed else None,
        durations=None if spans or timed else charts.timeline(
            [(j.job_id or f"#{j.idx}", j.state) for j in jobs], by_job
        ),
        sampled=len(sample),
        stride=stride,
        width=timeline.WIDTH,
        label_w=timeline.LABEL_W,
        lane_h=timeline.LANE_H,
        axis_h=timeline.AXIS_H,
    )  # fmt: skip


@router.get("/{run_id}/jobs/{k}/script", response_class=HTMLResponse)
def script_page(request: Request, session: Signed, run_id: str, k: int) -> HTMLResponse:
    store = views.store_of(request)
    row = _owned(request, session, run_id)
    job = next((j for j in store.jobs(row.id) if j.idx == k), None)
    if job is None:
        raise PageNotFound(f"run {row.id} has no job {k}")
    try:
        script, error = scripts.job_script(store, row, job), None
    except ValueError as exc:
        script, error = None, str(exc)
    return views.render(
        request, "script.html", session=session, run=row, job=job, script=script, error=error
    )


@router.get("/{run_id}/tasks/{index}/log", response_class=HTMLResponse)
def log_page(
    request: Request,
    session: Signed,
    run_id: str,
    index: int,
    page: Annotated[int, Query(ge=0, lt=LOG_PAGES)] = 0,
    start: bool = False,
) -> HTMLResponse:
    """A page of the log: `page` 0 is its end, 1 the 64 KiB before, ... up to 1 MiB from the
    end (what a log read may hold); `start`: its first 64 KiB, however large it is."""
    store = views.store_of(request)
    row = _owned(request, session, run_id)
    result = store.result(row.id, index) if 0 <= index <= MAX_ID else None
    skip = 0 if start else page * LOG_BYTES
    try:
        found = task_log(
            store, row, index if 0 <= index <= MAX_ID else -1, LOG_BYTES, skip, from_start=start
        )
    except NotFound as exc:
        raise PageNotFound(str(exc)) from None
    except LogUnreadable as exc:
        return views.render(
            request, "log.html", 502, session=session, run=row, index=index,
            result=result, log=None, error=str(exc), end_of=views.end_of,
        )  # fmt: skip
    text = found.data.decode("utf-8", "replace")
    return views.render(
        request, "log.html", session=session, run=row, index=index, result=result,
        log=text, size=found.size, shown=len(found.data), path=found.path, error=None,
        end_of=views.end_of, offset=found.offset, page=page, start=start,
        earlier=None if start or found.offset == 0 or page + 1 >= LOG_PAGES else page + 1,
        later=None if start or page == 0 else page - 1,
    )  # fmt: skip


@router.post("/{run_id}/cancel")
def cancel(request: Request, session: Signed, run_id: str, form: FormFields) -> Response:
    check_csrf(session.csrf, form.get("csrf"))
    store = views.store_of(request)
    row = _owned(request, session, run_id)
    cancel_run(store, request.app.state.watching, session.user, row)
    return see_other(f"/web/runs/{row.id}")


@router.post("/{run_id}/retry", response_model=None)
def retry(request: Request, session: Signed, run_id: str, form: FormFields) -> Response:
    """Every failed task of the cause chosen (blank: of every cause) runs again, with the
    memory and time given (blank: as before); refused on a page saying why."""
    check_csrf(session.csrf, form.get("csrf"))
    store = views.store_of(request)
    row = _owned(request, session, run_id)
    fields = optional(form, "cause", "mem", "time")
    cause = fields.pop("cause")
    try:
        body = RetryCreate(causes=[cause] if cause else None, **fields)
        retry_run(
            store,
            request.app.state.watching,
            request.app.state.sessionmaker,
            session.user,
            row,
            body,
        )
    except (ValidationError, ServiceError) as exc:
        problems = problems_of(exc, ("causes", "mem", "time"))
        said = [m if n == FORM else f"{n}: {m}" for n in problems.by_field for m in problems.of(n)]
        status = exc.status_code if isinstance(exc, ServiceError) else 422
        return views.render(
            request, "error.html", status, session=session, title="Not retried",
            message="; ".join(said), back=f"/web/runs/{row.id}",
        )  # fmt: skip
    return see_other(f"/web/runs/{row.id}")
