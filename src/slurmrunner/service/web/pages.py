"""The web pages' routes: sign-in and out, and the runs page (a run's own pages are in
run_pages.py, the admin's in admin_*.py)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..auth import Refusal
from ..schemas.runs import RunState
from . import views
from .forms import FormFields, see_other
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
RUNS_SHOWN = 100


@router.get("", include_in_schema=False)
def home() -> RedirectResponse:
    return see_other("/web/runs")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return _login_form(request, None, 200)


def _login_form(request: Request, error: str | None, status: int) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    page = views.render(request, "login.html", status, csrf=nonce, error=error)
    page.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, **cookie_flags(request))  # type: ignore[arg-type]
    return page


@router.post("/login")
def login(request: Request, form: FormFields) -> Response:
    # Double submit: the form's value must match the cookie set with it, which another site
    # can neither read nor set (SameSite=Strict, HttpOnly).
    check_csrf(request.cookies.get(LOGIN_COOKIE, ""), form.get("csrf"))
    found = sign_in(request, form.get("token", "").strip())
    if isinstance(found, Refusal):
        return _login_form(request, found.value, 401)
    value, _ = found
    response = see_other("/web/runs")
    response.set_cookie(SESSION_COOKIE, value, max_age=12 * 3600, **cookie_flags(request))  # type: ignore[arg-type]
    response.delete_cookie(LOGIN_COOKIE, path="/web")
    return response


@router.post("/logout")
def logout(request: Request, session: Signed, form: FormFields) -> Response:
    check_csrf(session.csrf, form.get("csrf"))
    response = see_other("/web/login")
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


__all__ = ["router"]
