"""/api/v1/runs: a user's runs. Every route needs a Profile (403 without one, deps.py); another
user's run is 404 (runs.owned_run)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, TypeAdapter

from ...store import Store
from ...tasklogs import LogUnreadable
from ..deps import Credentials, CurrentCaller, UserWithProfile, check_caller
from ..errors import Invalid, ServiceError
from ..run_reads import detail_of, listed_runs, run_read
from ..runs import (
    cancel_run,
    create_run,
    owned_run,
    owned_run_view,
    result_pages,
    retry_run,
    task_log,
)
from ..schemas.common import MAX_ID
from ..schemas.runs import (
    DEFAULT_LOG_BYTES,
    MAX_LOG_BYTES,
    MAX_PAGE,
    Cancelled,
    ResultsPage,
    ResultsStatus,
    Retried,
    RetryCreate,
    RunCreate,
    RunDetail,
    RunRead,
    RunState,
)
from ..watching import ServiceWatcher

router = APIRouter(prefix="/runs", tags=["runs"])
NDJSON = "application/x-ndjson"
RunId = Annotated[str, "a run id, a unique prefix of one, or `last`"]
_RUN_LIST = TypeAdapter(list[RunRead])  # GET /runs's answer, serialised as FastAPI would


class LogNotReadable(ServiceError):
    status_code = 502  # the cluster (or the file) did not give it: not the client's fault


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def _watching(request: Request) -> ServiceWatcher:
    return request.app.state.watching  # type: ignore[no-any-return]


def _json(model: BaseModel, status_code: int = 200) -> Response:
    """The answer of a sync route, serialised here. A model returned as it is would be
    validated again by FastAPI against the route's response_model, in one more worker thread
    (the hop costs more than the validation): these routes build their model themselves, so it
    is valid, and the bytes are those FastAPI would send."""
    return Response(model.model_dump_json(), status_code, media_type="application/json")


@router.post("", status_code=201, response_model=RunRead)
def post_run(body: RunCreate, user: UserWithProfile, request: Request) -> Response:
    """Run `command` once per input as your Profile says; returns at once (201) with the run,
    whose jobs are submitted by the service's watcher."""
    store = _store(request)
    return _json(run_read(store, create_run(store, _watching(request), user, body)), 201)


@router.get("", response_model=list[RunRead])
def list_runs(
    user: CurrentCaller,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    state: RunState | None = None,
    all_users: Annotated[bool, Query(description="every user's runs (superusers)")] = False,
) -> Response:
    """Your runs, newest first."""
    user_id = None if all_users and user.is_superuser else user.id
    found = listed_runs(_store(request), limit, user_id, state)
    return Response(_RUN_LIST.dump_json(found), media_type="application/json")


@router.get("/{run_id}", response_model=RunDetail)
def get_run(run_id: RunId, credentials: Credentials, request: Request) -> Response:
    """The run: counts by status and by cause, its jobs, its calls to the cluster."""
    user = check_caller(request, credentials)  # no parameter of its own can be refused first
    return _json(detail_of(owned_run_view(_store(request), user, run_id)))


@router.get(
    "/{run_id}/results",
    response_model=ResultsPage,
    responses={200: {"content": {NDJSON: {}}}},
)
def get_results(
    run_id: RunId,
    user: CurrentCaller,
    request: Request,
    status: ResultsStatus | None = None,
    after: Annotated[int, Query(ge=-1, le=MAX_ID, description="the last index seen")] = -1,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
) -> Response:
    """Finished tasks' results by index, a page at a time (`after`: the previous page's
    `next_after`); `status=not_ok` for every failed or cancelled task. With
    `Accept: application/x-ndjson`, every result after `after` as JSON lines in one stream."""
    store = _store(request)
    row = owned_run(store, user, run_id)
    if NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(result_pages(store, row.id, status, after), media_type=NDJSON)
    found = store.results_page(row.id, status, after, limit)
    page = ResultsPage(
        run_id=row.id,
        total=store.count_results(row.id, status),
        items=[r.to_dict() for r in found],
        next_after=found[-1].index if len(found) == limit else None,
    )
    return _json(page)  # up to 5,000 results: validated once, not twice


@router.get(
    "/{run_id}/tasks/{index}/log",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def get_task_log(
    run_id: RunId,
    index: Annotated[int, "the task's index (0: the first input)"],
    user: CurrentCaller,
    request: Request,
    tail_bytes: Annotated[int, Query(ge=1, le=MAX_LOG_BYTES)] = DEFAULT_LOG_BYTES,
    skip_bytes: Annotated[
        int,
        Query(ge=0, le=MAX_LOG_BYTES, description="leave out the log's last bytes: a page back"),
    ] = 0,
    from_start: Annotated[bool, Query(description="the log's first `tail_bytes`")] = False,
) -> Response:
    """The last `tail_bytes` of a task's log (standard output and error), or of what is
    before its last `skip_bytes` (`tail_bytes + skip_bytes` ≤ 1 MiB), or with `from_start`
    its first `tail_bytes`. The whole log's size is in `X-Log-Size`, where the bytes sent
    start in `X-Log-Offset`, its path in `X-Log-Path`."""
    if not from_start and tail_bytes + skip_bytes > MAX_LOG_BYTES:
        raise Invalid.one(
            ("query", "skip_bytes"),
            f"tail_bytes + skip_bytes is at most {MAX_LOG_BYTES} (1 MiB from the log's end); "
            "use from_start for the log's beginning",
            "limit",
        )
    store = _store(request)
    row = owned_run(store, user, run_id)
    if not 0 <= index <= MAX_ID:
        index = -1  # reported as out of range below
    try:
        found = task_log(store, row, index, tail_bytes, skip_bytes, from_start)
    except LogUnreadable as exc:
        raise LogNotReadable(str(exc)) from None
    headers = {
        "X-Log-Size": str(found.size),
        "X-Log-Offset": str(found.offset),
        "X-Log-Path": found.path,
    }
    return Response(found.data, media_type="text/plain; charset=utf-8", headers=headers)


@router.post("/{run_id}/cancel", response_model=Cancelled)
def post_cancel(run_id: RunId, user: CurrentCaller, request: Request) -> Cancelled:
    """Cancel the run's unfinished jobs (scancel as its user); a finished run keeps its state."""
    store = _store(request)
    row = owned_run(store, user, run_id)
    n = cancel_run(store, _watching(request), user, row)
    return Cancelled(run_id=row.id, cancelled_jobs=n, state=store.run(row.id).state)


@router.post("/{run_id}/retry", response_model=Retried)
def post_retry(run_id: RunId, body: RetryCreate, user: CurrentCaller, request: Request) -> Retried:
    """Run failed tasks again, in new jobs of the same run: those of `causes` (default: every
    failed task), or only `indices`, with `mem` (`2x`, `+2G`, `8G`) and `time` (`2x`, `+30:00`,
    `2:00:00`) grown from what their last attempt had. The jobs are planned and stored here
    (422 naming the field when the choice names no failed task or cannot be planned within the
    admin's bounds, e.g. over max_mem_per_job) and submitted by the service's watcher. 409 for
    a cancelled run, a Resource that takes no new runs, or tasks another request retried first.
    Each retried task's result then carries its earlier `attempts`."""
    store = _store(request)
    row = owned_run(store, user, run_id)
    sessions = request.app.state.sessionmaker
    return retry_run(store, _watching(request), sessions, user, row, body)
