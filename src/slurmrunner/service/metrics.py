"""GET /metrics: the service in Prometheus' text format (`install(app)` wires it).

Like /healthz it needs no token (a scraper has none) and lives outside /api/v1. It names
Resources, cluster accounts (the watcher's groups) and routes, and tells how busy the service
is: the admin restricts it at the reverse proxy (nginx: `location /metrics { allow
10.0.0.0/8; deny all; }`), or keeps the service on 127.0.0.1 with the scraper beside it.

Each app has a registry of its own (never prometheus_client's global one): two apps in one
process (the tests make many) count apart. Values are read when scraped:

  slurmrunner_active_runs{resource,state}       gauge   runs not done/cancelled/failed (the
                                                         database: every process's runs)
  slurmrunner_active_run_tasks{status}          gauge   their tasks: ok, failed, cancelled,
                                                         unfinished
  slurmrunner_database_up                       gauge   0 when the database did not answer
  slurmrunner_watcher_up                        gauge   1 while this process's watcher runs
  slurmrunner_watcher_runs                      gauge   runs this process's watcher drives
  slurmrunner_watcher_calls_total{kind,group}   counter calls to clusters (watchstats.py:
                                                         poll=squeue, history=sacct, cat,
                                                         job_output, submit=sbatch)
  slurmrunner_watcher_most_calls_per_cycle{kind,group}  gauge  the most calls of a kind to
                                                         one group in any one cycle since start
                                                         (the "one squeue per cycle" claim)
  slurmrunner_watcher_cycles_total              counter
  slurmrunner_watcher_cycle_seconds             histogram  each cycle's duration
  slurmrunner_watcher_cpu_seconds_total         counter the watcher thread's own CPU
  slurmrunner_watcher_run_errors_total          counter run steps that failed (retried)
  slurmrunner_watcher_shared_cat_fallbacks_total{group}  counter
  slurmrunner_http_request_duration_seconds{method,route}  histogram  to the last byte
  slurmrunner_http_requests_total{method,route,status}     counter
  process_*                                     the process's CPU, memory, open files

`route` is the matched route's template (`/api/v1/runs/{run_id}`), never the raw path, and
`unmatched` for a path no route has: what a client sends cannot grow the label set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..store_schema import FINAL_RUN_STATES, runs, status_counts
from ..watchstats import CycleStats
from .models import Resource
from .watching import ServiceWatcher

log = logging.getLogger("slurmrunner.service")

CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
TASK_STATUSES = ("ok", "failed", "cancelled")

_resources = Resource.__table__
# Three aggregates per scrape, of the active runs: the runs table's state column (read whole,
# as store.active_runs does) and the active runs' status_counts rows (a few per run), never
# a row per task.
_ACTIVE = runs.c.state.not_in(FINAL_RUN_STATES)
# A run of the CLI (no Resource) has no name: "".
_RUNS_BY_RESOURCE = (
    select(func.coalesce(_resources.c.name, ""), runs.c.state, func.count())
    .select_from(runs.outerjoin(_resources, _resources.c.id == runs.c.resource_id))
    .where(_ACTIVE)
    .group_by(_resources.c.name, runs.c.state)
)
_FINISHED_TASKS = (
    select(status_counts.c.status, func.sum(status_counts.c.n))
    .select_from(status_counts.join(runs, runs.c.id == status_counts.c.run_id))
    .where(_ACTIVE)
    .group_by(status_counts.c.status)
)
_ALL_TASKS = select(func.coalesce(func.sum(runs.c.n_tasks), 0)).where(_ACTIVE)

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request) -> Response:
    """The service's metrics in Prometheus' text format; no authentication (restrict it at
    the reverse proxy)."""
    registry: CollectorRegistry = request.app.state.metrics
    # As prometheus_client's own handlers: OpenMetrics when the scraper asks for it.
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(registry), media_type=content_type)


def install(app: FastAPI) -> CollectorRegistry:
    """Give `app` (made by create_app: its engine and watcher are in app.state) its registry,
    the request timing middleware and GET /metrics. Call it before the app starts."""
    registry = CollectorRegistry()
    watching: ServiceWatcher = app.state.watching
    registry.register(_ServiceCollector(app.state.engine, watching))
    ProcessCollector(registry=registry)
    cycles = Histogram(
        "slurmrunner_watcher_cycle_seconds",
        "How long each watcher cycle took.",
        buckets=CYCLE_BUCKETS,
        registry=registry,
    )

    def observe(cycle: CycleStats) -> None:
        cycles.observe(cycle.duration_s)

    watching.watcher.stats.listeners.append(observe)
    app.state.metrics = registry
    app.add_middleware(RequestMetrics, http=_HttpMetrics(registry))
    app.include_router(router)
    return registry


class _HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "slurmrunner_http_request_duration_seconds",
            "Time to answer an HTTP request (to its last byte), by route template.",
            ["method", "route"],
            registry=registry,
        )
        self.requests = Counter(
            "slurmrunner_http_requests",
            "HTTP requests answered, by route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )


class RequestMetrics:
    """ASGI middleware: each HTTP request's duration and status, by its route's template."""

    def __init__(self, app: ASGIApp, http: _HttpMetrics) -> None:
        self.app = app
        self.http = http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception no handler answered: the server answers 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - start
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = route_template(scope)
            self.http.latency.labels(method, route).observe(elapsed)
            self.http.requests.labels(method, route, str(status)).inc()


def route_template(scope: Scope) -> str:
    """The template of the route that took the request (`/api/v1/runs/{run_id}`; a 405's
    route too), `unmatched` when none did: never a value the client chose."""
    route = scope.get("route")
    if route is None:  # a Starlette that does not say: match as the router does
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            if candidate.matches(scope)[0] != Match.NONE:
                route = candidate
                break
    if isinstance(route, Mount):  # static files: the mount, never the file asked for
        return route.path
    template = getattr(route, "path", None)
    if not isinstance(template, str) or not template.startswith("/"):
        return UNMATCHED
    tail = template[1:].split("/")
    raw = str(scope.get("path", "")).split("/")
    if ":path}" in template or len(tail) >= len(raw):
        return template
    # Recent FastAPI leaves the route as its own router declared it, without the prefixes
    # of the routers that include it: those are the request path's first segments (a
    # parameter of a prefix, were there one, is put back as its name).
    params = {str(v): k for k, v in dict(scope.get("path_params") or {}).items()}
    prefix = [f"{{{params[s]}}}" if s in params else s for s in raw[: len(raw) - len(tail)]]
    rebuilt = "/".join(prefix + tail)
    return _bounded(scope.get("app"), rebuilt)


#: Route labels one app may have: its routes number a few dozen. The prefix of a rebuilt
#: template comes from the request's own path, so past this bound a new one is `unmatched`.
MAX_ROUTE_LABELS = 200


def _bounded(app: Any, template: str) -> str:
    state = getattr(app, "state", None)
    if state is None:
        return UNMATCHED
    seen: set[str] | None = getattr(state, "route_labels", None)
    if seen is None:
        seen = state.route_labels = set()
    if template in seen:
        return template
    if len(seen) >= MAX_ROUTE_LABELS:
        return UNMATCHED
    seen.add(template)  # a race may add one more than the bound: harmless
    return template


class _ServiceCollector(Collector):
    """What the database and this process's watcher say, read at each scrape."""

    def __init__(self, engine: Engine, watching: ServiceWatcher) -> None:
        self.engine = engine
        self.watching = watching

    def collect(self) -> Iterator[Metric]:
        yield from self._database()
        yield from self._watcher()

    def _database(self) -> list[Metric]:
        up = GaugeMetricFamily("slurmrunner_database_up", "1 when the database answered.")
        try:
            with self.engine.connect() as conn:
                by_resource = conn.execute(_RUNS_BY_RESOURCE).all()
                finished = {str(s): n for s, n in conn.execute(_FINISHED_TASKS)}
                total = int(conn.execute(_ALL_TASKS).scalar() or 0)
        except SQLAlchemyError as exc:
            log.warning("metrics: the database did not answer: %s", exc)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        active = GaugeMetricFamily(
            "slurmrunner_active_runs",
            "Runs not yet done, cancelled or failed, by Resource and state.",
            labels=["resource", "state"],
        )
        for resource, state, n in by_resource:
            active.add_metric([str(resource), str(state)], int(n))
        tasks = GaugeMetricFamily(
            "slurmrunner_active_run_tasks",
            "Tasks of the active runs by status (unfinished: no result yet).",
            labels=["status"],
        )
        counted = {s: int(finished.get(s) or 0) for s in TASK_STATUSES}
        for status, n in counted.items():
            tasks.add_metric([status], n)
        tasks.add_metric(["unfinished"], max(total - sum(counted.values()), 0))
        return [up, active, tasks]

    def _watcher(self) -> Iterator[Metric]:
        watcher = self.watching.watcher
        snap: dict[str, Any] = watcher.stats.snapshot()
        yield _gauge(
            "slurmrunner_watcher_up",
            "1 while the watcher thread runs.",
            [],
            [((), int(self.watching.running))],
        )
        yield _gauge(
            "slurmrunner_watcher_runs",
            "Runs this process's watcher drives.",
            [],
            [((), len(watcher.runs()))],
        )
        calls = CounterMetricFamily(
            "slurmrunner_watcher_calls",
            "Calls to the clusters by kind (poll=squeue, history=sacct, cat, job_output, "
            "submit=sbatch) and group (scheduler or cluster identity).",
            labels=["kind", "group"],
        )
        for (kind, group), n in sorted(snap["calls"].items()):
            calls.add_metric([kind, group], n)
        yield calls
        yield _gauge(
            "slurmrunner_watcher_most_calls_per_cycle",
            "The most calls of a kind to one group in any single cycle since the start.",
            ["kind", "group"],
            sorted(snap["most_per_cycle"].items()),
        )
        yield _counter("slurmrunner_watcher_cycles", "Watcher cycles.", snap["cycles"])
        yield _counter(
            "slurmrunner_watcher_cpu_seconds",
            "CPU of the watcher thread itself (its cycles).",
            snap["cpu_s_total"],
        )
        yield _counter(
            "slurmrunner_watcher_run_errors",
            "Run steps that failed (the run is retried after a pause).",
            sum(snap["errors"].values()),
        )
        fallbacks = CounterMetricFamily(
            "slurmrunner_watcher_shared_cat_fallbacks",
            "Shared cats of an identity that had to be read again run by run.",
            labels=["group"],
        )
        for group, n in sorted(snap["fallbacks"].items()):
            fallbacks.add_metric([group], n)
        yield fallbacks


def _gauge(
    name: str, doc: str, labels: list[str], values: Sequence[tuple[Sequence[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in values:
        family.add_metric(list(key), value)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
