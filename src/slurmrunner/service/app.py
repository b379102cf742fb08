"""The FastAPI application: `create_app()` wires the database, the routers and error answers.

Errors: a refused request is 4xx with a `detail` (422s in FastAPI's list shape, naming the
field); a database that does not answer is 503 (a restarted PostgreSQL must not look like a
bug); nothing a client sends is meant to produce a 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..errors import ConfigError, HostError, PolicyError, SchedulerError
from ..pacing import PollPolicy
from ..store import Store
from . import metrics, migrate, web
from .bodylimit import BodyLimit
from .db import make_engine, make_sessionmaker, parse_db_url
from .errors import ServiceError
from .headers import SecurityHeaders, headers_for
from .routers import api_v1, operations
from .watching import LocalJobsOnStop, ServiceWatcher

log = logging.getLogger("slurmrunner.service")


def _version() -> str:
    try:
        return version("slurmrunner")
    except PackageNotFoundError:
        return "unknown"


def open_database(db_url: str | None) -> Engine:
    """An engine on the database, migrated to this version's schema (`alembic upgrade head`)."""
    engine = make_engine(parse_db_url(db_url))
    migrate.upgrade(engine)
    return engine


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> PlainTextResponse:
        # Sent from outside every middleware: the security headers are added here. Starlette
        # logs the exception itself.
        headers = headers_for(request.url.path)
        return PlainTextResponse("Internal Server Error", 500, headers=headers)

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail()}, exc.status_code)

    @app.exception_handler(ConfigError)
    async def config_error(_: Request, exc: ConfigError) -> JSONResponse:
        # The core's refusals (a task's resources, a policy rule) name the key themselves.
        detail = [{"loc": ["body"], "msg": str(exc), "type": "config"}]
        return JSONResponse({"detail": detail}, 422)

    @app.exception_handler(IntegrityError)
    async def integrity_error(_: Request, exc: IntegrityError) -> JSONResponse:
        # The checks before a write make this a race between two requests (same name twice).
        log.info("integrity error (concurrent change): %s", exc.orig)
        return JSONResponse({"detail": "conflicts with a concurrent change; try again"}, 409)

    @app.exception_handler(DataError)
    async def data_error(_: Request, exc: DataError) -> JSONResponse:
        # The schemas bound every value; this is the net under them (a value the database
        # cannot hold is the client's, not a server error).
        log.warning("database refused a value: %s", exc.orig)
        detail = [{"loc": ["body"], "msg": "a value cannot be stored", "type": "data_error"}]
        return JSONResponse({"detail": detail}, 422)

    @app.exception_handler(HostError)
    async def cluster_unreachable(_: Request, exc: HostError) -> JSONResponse:
        # sudo or SSH to the cluster failed (a cancel, a log): not the client's fault.
        log.warning("cluster call failed: %s", exc)
        return JSONResponse({"detail": "the cluster did not answer; try again"}, 503)

    @app.exception_handler(PolicyError)
    async def policy_refused(_: Request, exc: PolicyError) -> JSONResponse:
        # The run's account is no longer one the policy allows (an admin's change).
        return JSONResponse({"detail": str(exc)}, 403)

    @app.exception_handler(SchedulerError)
    async def scheduler_refused(_: Request, exc: SchedulerError) -> JSONResponse:
        log.warning("scheduler refused: %s", exc)
        return JSONResponse({"detail": f"the scheduler refused: {str(exc)[:500]}"}, 502)

    @app.exception_handler(PoolTimeout)
    async def pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
        # Every database connection stayed busy for the pool's timeout: overload, not a bug.
        log.warning("database pool exhausted: %s", exc)
        return JSONResponse({"detail": "server busy; try again"}, 503, headers={"Retry-After": "5"})

    @app.exception_handler(OperationalError)
    async def database_down(_: Request, exc: DBAPIError) -> JSONResponse:
        log.warning("database unavailable: %s", exc.orig)
        return JSONResponse(
            {"detail": "database unavailable; try again"}, 503, headers={"Retry-After": "5"}
        )


def create_app(
    db_url: str | None = None,
    *,
    engine: Engine | None = None,
    watch: bool = True,
    poll: PollPolicy | None = None,
    local_jobs_on_stop: LocalJobsOnStop = "keep",
) -> FastAPI:
    """The service. `db_url` (default: SQLite under the state folder) is opened and migrated
    now, so a bad URL or an unreachable database fails here, before anything listens; or pass
    an `engine` that is already migrated.

    `watch`: run the watcher thread while the app runs (its lifespan), resuming every
    unfinished run at start; without it runs are stored but not driven (a second API process
    beside the one that watches). `poll`: the watcher's pace; `local_jobs_on_stop`: what a
    clean stop does to the jobs of `local` Resources (see watching.py)."""
    engine = engine if engine is not None else open_database(db_url)
    store = Store(engine)
    watching = ServiceWatcher(store, poll, local_jobs_on_stop)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if watch:
            watching.start()
        try:
            yield
        finally:
            watching.stop()
            store.close()
            engine.dispose()

    app = FastAPI(
        title="slurmrunner",
        version=_version(),
        summary="Run many tasks on a SLURM cluster on behalf of the users of a multi-user server",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.store = store
    app.state.watching = watching
    app.state.sessionmaker = make_sessionmaker(engine)
    _error_handlers(app)
    app.include_router(operations())
    app.include_router(api_v1())
    web.install(app)  # the web pages under /web (service/web)
    app.add_middleware(BodyLimit)  # before anything reads a body, token or not
    app.add_middleware(SecurityHeaders)  # outside BodyLimit: on its 413 too
    metrics.install(app)  # GET /metrics and the request timings
    return app
