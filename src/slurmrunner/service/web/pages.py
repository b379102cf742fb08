"""The web pages' routes: sign-in and out, the runs page, a run's page, a task's log, cancel.

Forms are parsed here from the urlencoded body (urllib), not by FastAPI's Form, which needs
python-multipart: three small forms do not justify a dependency.
"""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ...store import RunRow
from ...tasklogs import LogUnreadable
from ..auth import Refusal
from ..errors import NotFound
from ..runs import cancel_run, owned_run, run_read, task_log
from ..schemas.common import MAX_ID
from ..schemas.runs import RunState
from . import charts, views
from .session import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    WebSession,
    check_csrf,
    cookie_flags,
    current_session,
    sign_in,
)

router = APIRouter(prefix="/web", include_in_schema=False)
Signed = Annotated[WebSession, Depends(current_session)]
MAX_FORM_BYTES = 16 << 10
TASKS_PAGE = 100
LOG_BYTES = 64 << 10
RUNS_SHOWN = 100


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
    except ValueError:  # more fields than any of our forms has: not one of ours
        return {}
    return {k: v[0] for k, v in fields.items()}


def _see_other(url: str) -> RedirectResponse:
    # 303: the browser follows a POST's answer with a GET (no form sent twice on reload).
    return RedirectResponse(url, status_code=303)


@router.get("", include_in_schema=False)
def home() -> RedirectResponse:
    return _see_other("/web/runs")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return _login_form(request, None, 200)


def _login_form(request: Request, error: str | None, status: int) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    page = views.render(request, "login.html", status, csrf=nonce, error=error)
    page.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, **cookie_flags(request))  # type: ignore[arg-type]
    return page


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    # Double submit: the form's value must match the cookie set with it, which another site
    # can neither read nor set (SameSite=Strict, HttpOnly).
    check_csrf(request.cookies.get(LOGIN_COOKIE, ""), form.get("csrf"))
    found = sign_in(request, form.get("token", "").strip())
    if isinstance(found, Refusal):
        return _login_form(request, found.value, 401)
    value, _ = found
    response = _see_other("/web/runs")
    response.set_cookie(SESSION_COOKIE, value, max_age=12 * 3600, **cookie_flags(request))  # type: ignore[arg-type]
    response.delete_cookie(LOGIN_COOKIE, path="/web")
    return response


@router.post("/logout")
async def logout(request: Request, session: Signed) -> Response:
    check_csrf(session.csrf, (await _form(request)).get("csrf"))
    response = _see_other("/web/login")
    response.delete_cookie(SESSION_COOKIE, path="/web")
    return response


def _run_lines(request: Request, session: Signed, state: str | None) -> list[views.RunLine]:
    store = views.store_of(request)
    user = session.user
    user_id = None if user.is_superuser else user.id
    rows = store.runs(limit=RUNS_SHOWN, user_id=user_id, state=state)
    with request.app.state.sessionmaker() as db:
        return views.run_lines(store, db, rows)


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request, session: Signed, state: RunState | None = None) -> HTMLResponse:
    lines = _run_lines(request, session, state)
    return views.render(
        request,
        "runs.html",
        session=session,
        runs=lines,
        state=state,
        states=("submitting", "running", "done", "cancelled", "failed"),
    )


@router.get("/runs/fragment", response_class=HTMLResponse)
def runs_fragment(request: Request, session: Signed, state: RunState | None = None) -> HTMLResponse:
    """The runs table's rows alone: what the page's script fetches every few seconds."""
    lines = _run_lines(request, session, state)
    return views.render(request, "_run_rows.html", session=session, runs=lines)


class PageNotFound(Exception):
    """A run (or task) the user may not see or that does not exist: the 404 page, never the
    API's JSON."""


def _owned(request: Request, session: WebSession, run_id: str) -> RunRow:
    try:
        return owned_run(views.store_of(request), session.user, run_id)
    except NotFound as exc:
        raise PageNotFound(str(exc)) from None


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(
    request: Request,
    session: Signed,
    run_id: str,
    after: Annotated[int, Query(ge=-1, le=MAX_ID)] = -1,
) -> HTMLResponse:
    store = views.store_of(request)
    row = _owned(request, session, run_id)
    read = run_read(store, row)
    causes = dict(store.cause_counts(row.id))
    page = store.results_page(row.id, None, after, TASKS_PAGE)
    jobs = store.jobs(row.id)
    sample, stride = store.results_sample(row.id, row.n_tasks, views.SAMPLE_SIZE)
    by_job = views.durations_by_job(sample, [(j.first_task, j.n_tasks) for j in jobs])
    lanes = [(j.job_id or f"#{j.idx}", j.state) for j in jobs]
    mem = views.requested_mem_mb(row)
    return views.render(
        request,
        "run.html",
        session=session,
        run=read,
        final=row.state in views.FINAL_STATES,
        bar=charts.progress(read.counts, row.n_tasks),
        groups=views.failure_groups(store, row.id, causes),
        end_of=views.end_of,
        tasks=page,
        after=after,
        next_after=page[-1].index if len(page) == TASKS_PAGE else None,
        jobs=jobs,
        timeline=charts.timeline(lanes, by_job),
        durations=charts.histogram(r.duration_s for r in sample),  # type: ignore[misc]
        memory=charts.histogram((r.max_rss_mb for r in sample), marker=mem),  # type: ignore[misc]
        requested_mem=mem,
        sampled=len(sample),
        stride=stride,
        width=charts.WIDTH,
        height=charts.HEIGHT,
    )


@router.get("/runs/{run_id}/fragment", response_class=HTMLResponse)
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
    )


@router.get("/runs/{run_id}/tasks/{index}/log", response_class=HTMLResponse)
def log_page(request: Request, session: Signed, run_id: str, index: int) -> HTMLResponse:
    store = views.store_of(request)
    row = _owned(request, session, run_id)
    result = store.result(row.id, index) if 0 <= index <= MAX_ID else None
    try:
        found = task_log(store, row, index if 0 <= index <= MAX_ID else -1, LOG_BYTES)
    except NotFound as exc:
        raise PageNotFound(str(exc)) from None
    except LogUnreadable as exc:
        return views.render(
            request, "log.html", 502, session=session, run=row, index=index,
            result=result, log=None, error=str(exc),
        )  # fmt: skip
    text = found.data.decode("utf-8", "replace")
    return views.render(
        request, "log.html", session=session, run=row, index=index, result=result,
        log=text, size=found.size, shown=len(found.data), path=found.path, error=None,
    )  # fmt: skip


@router.post("/runs/{run_id}/cancel")
async def cancel(request: Request, session: Signed, run_id: str) -> Response:
    check_csrf(session.csrf, (await _form(request)).get("csrf"))
    store = views.store_of(request)
    row = _owned(request, session, run_id)
    cancel_run(store, request.app.state.watching, session.user, row)
    return _see_other(f"/web/runs/{row.id}")


__all__ = ["PageNotFound", "router"]
