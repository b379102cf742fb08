"""The web pages of `slurmrunner serve`, under /web: server-rendered HTML on the same store and
accounts as the API; `install(app)` is the one call create_app makes.

pages.py (sign-in, the runs page), run_pages.py (a run, its tasks, logs, scripts, timeline),
admin_users.py, admin_clusters.py, admin_health.py (superusers only).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from . import admin_clusters, admin_health, admin_users, pages, run_pages, views
from .session import CsrfRefused, PageForbidden, PageNotFound, SignInRequired

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    # pages first: its /web/runs/fragment before run_pages' /web/runs/{run_id}
    for module in (pages, run_pages, admin_users, admin_clusters, admin_health):
        app.include_router(module.router)
    app.mount("/web/static", StaticFiles(directory=STATIC), name="web-static")

    @app.exception_handler(SignInRequired)
    async def sign_in_first(_: Request, __: SignInRequired) -> RedirectResponse:
        return RedirectResponse("/web/login", status_code=303)

    @app.exception_handler(CsrfRefused)
    async def csrf_refused(request: Request, _: CsrfRefused) -> HTMLResponse:
        message = (
            "This form has expired or did not come from this site. Reload the page and try again."
        )
        return views.render(request, "error.html", 403, title="Refused", message=message)

    @app.exception_handler(PageNotFound)
    async def not_found(request: Request, exc: PageNotFound) -> HTMLResponse:
        return views.render(request, "error.html", 404, title="Not found", message=str(exc))

    @app.exception_handler(PageForbidden)
    async def forbidden(request: Request, exc: PageForbidden) -> HTMLResponse:
        return views.render(request, "error.html", 403, title="Forbidden", message=str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        """A page's address or query that its route refuses (/web/runs/x/tasks/abc/log, a
        sort that does not exist): the 404 page, not the API's JSON; the API keeps its own."""
        if not request.url.path.startswith("/web"):
            return await request_validation_exception_handler(request, exc)
        message = "There is no such page (its address holds a value it cannot take)."
        return views.render(request, "error.html", 404, title="Not found", message=message)


__all__ = ["install"]
