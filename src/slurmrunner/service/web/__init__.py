"""The web pages of `slurmrunner serve`, under /web: server-rendered HTML on the same store and
accounts as the API (see pages.py); `install(app)` is the one call create_app makes."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from . import views
from .pages import PageNotFound, router
from .session import CsrfRefused, SignInRequired

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    app.include_router(router)
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


__all__ = ["install"]
