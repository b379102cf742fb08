"""A typed client of the service's runs API (`slurmrunner serve`), on httpx (sync).

    with Client("https://runner.example.org", token) as service:
        run = service.submit(["python3", "task.py"], [{"x": 1}, {"x": 2}])
        service.wait(run.id)
        for result in service.results(run.id):
            ...

Answers are the service's own response schemas (service/schemas/runs.py), task results the
core's TaskResult, a log the core's LogTail: one definition each, whichever side reads them.
Errors are the subclasses of errors.ClientError. Reads are tried again a few times when the
service does not answer (502, 503, 504, a connection refused or broken); a new run (POST /runs)
never is: a POST whose answer was lost may have made the run, and a second one would run every
task twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import tenacity
from pydantic import BaseModel, ValidationError

from .errors import (
    ClientAuthError,
    ClientError,
    ClientNotFoundError,
    ClientRefusedError,
    ClientTimeoutError,
    ClientUnavailableError,
)
from .results import TaskResult
from .service.schemas.runs import (
    DEFAULT_LOG_BYTES,
    Cancelled,
    ResultsPage,
    Retried,
    RetryCreate,
    RunCreate,
    RunDetail,
    RunRead,
)
from .service.schemas.users import Me
from .store_schema import FINAL_RUN_STATES
from .tasklogs import LogTail

API = "/api/v1"
NDJSON = "application/x-ndjson"
#: Statuses of a service (or of the proxy before it) that is down or restarting.
UNAVAILABLE = frozenset({502, 503, 504})
#: Client.wait's pace: a look every WAIT_MIN_S at first, then a quarter of the time waited so
#: far, up to `poll_s`: a short run is seen to end soon after it does, a long one costs a look
#: every `poll_s`. A look is a few database reads on the service, no cluster call; the default
#: is the service's own slowest pace of reading results (PollPolicy.read_max_s): looking less
#: often would only add to the wait.
WAIT_MIN_S = 0.5
DEFAULT_POLL_S = 2.0

Progress = Callable[[RunDetail], object]
M = TypeVar("M", bound=BaseModel)


def run_ended(run: RunRead) -> bool:
    """The run is in a state it never leaves. Not "every task has a result": the service may
    still retry failures by policy (a retried task's result leaves the counts) or have its
    last step to take, and the run is not over until its watcher says so."""
    return run.state in FINAL_RUN_STATES


class Client:
    """The runs of the token's user on a slurmrunner service.

    `server` is the service's address (`https://host[:port][/prefix]`, with or without the
    trailing `/api/v1`); `transport` an httpx transport to use instead of the network (tests:
    an app in the same process). `attempts`: how often a read is tried when the service does
    not answer, with `retry_wait_s` doubling between tries."""

    def __init__(
        self,
        server: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        attempts: int = 3,
        retry_wait_s: float = 0.5,
    ) -> None:
        if not token:
            raise ClientAuthError("no API token given (an admin issues one)")
        if not server.startswith(("http://", "https://")):
            raise ClientError(f"server {server!r}: give its URL, http[s]://host[:port]")
        self.server = server.rstrip("/").removesuffix(API)
        self._attempts = max(1, attempts)
        self._retry_wait_s = retry_wait_s
        self._http = httpx.Client(
            base_url=self.server + API,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "slurmrunner-client"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never the token
        return f"Client({self.server!r})"

    # who

    def me(self) -> Me:
        """The token's user, their Profile and Resource."""
        return self._read(Me, "/me")

    # runs

    def submit(
        self,
        command: Sequence[str],
        inputs: Sequence[Any],
        resources: Mapping[str, Any] | None = None,
        call: str = "fractal",
        workdir: str | None = None,
    ) -> RunRead:
        """Run `command` once per input, as the user's Profile says; returns at once (the
        service submits the jobs). Checked here first with the service's own request schema,
        so a bad request is refused with the same words before it is sent."""
        try:
            body = RunCreate(
                command=list(command),
                inputs=list(inputs),
                # Not a mapping: refused by the schema, which names the field.
                resources=dict(resources) if isinstance(resources, Mapping) else resources,
                call=call,
                workdir=workdir,
            )
        except ValidationError as exc:
            problems = [(list(e["loc"]), e["msg"]) for e in exc.errors()]
            raise _refused(problems, 422, exc.errors(include_url=False)) from None
        # Never tried again: see the module's docstring.
        response = self._send("POST", "/runs", json=body.model_dump(mode="json"))
        return RunRead.model_validate(response.json())

    def runs(
        self, limit: int = 50, state: str | None = None, all_users: bool = False
    ) -> list[RunRead]:
        """The user's runs, newest first (`all_users`: everyone's, for a superuser)."""
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = state
        if all_users:
            params["all_users"] = "true"
        data = self._get("/runs", params=params).json()
        return [RunRead.model_validate(item) for item in data]

    def run(self, run_id: str) -> RunDetail:
        """A run by id, unique prefix or `last`: counts by status and cause, jobs, calls."""
        return self._read(RunDetail, _run_path(run_id))

    def cancel(self, run_id: str) -> Cancelled:
        """Cancel the run's unfinished jobs; their tasks become `cancelled`."""
        # Tried again like a read: cancelling a cancelled run cancels nothing more.
        response = self._retrying()(self._send, "POST", _run_path(run_id) + "/cancel")
        return Cancelled.model_validate(response.json())

    def retry(
        self,
        run_id: str,
        causes: Sequence[str] | None = None,
        indices: Sequence[int] | None = None,
        mem: str | None = None,
        time: str | None = None,
    ) -> Retried:
        """Run the run's failed tasks again, in new jobs of the same run: those of `causes`
        (default: every failed task), or only `indices`, with `mem` (`2x`, `+2G`, `8G`) and
        `time` (`2x`, `+30:00`, `2:00:00`) grown from their last attempt's. Returns at once
        (the service submits the jobs). ClientRefusedError naming the field when nothing
        chosen failed, a growth is malformed or over the admin's bounds (checked here first
        with the service's request schema), when the run was cancelled, or when its tasks
        were retried by someone else first; ClientNotFoundError for a run that is not yours."""
        try:
            body = RetryCreate(
                causes=None if causes is None else list(causes),
                indices=None if indices is None else list(indices),
                mem=mem,
                time=time,
            )
        except ValidationError as exc:
            problems = [(list(e["loc"]), e["msg"]) for e in exc.errors()]
            raise _refused(problems, 422, exc.errors(include_url=False)) from None
        # Never tried again: see the module's docstring.
        path = _run_path(run_id) + "/retry"
        response = self._send("POST", path, json=body.model_dump(mode="json", exclude_none=True))
        return Retried.model_validate(response.json())

    def wait(
        self,
        run_id: str,
        progress: Progress | None = None,
        timeout: float | None = None,
        poll_s: float = DEFAULT_POLL_S,
    ) -> RunDetail:
        """Look at the run until it has ended (done, cancelled or failed) and return its last
        state; `progress` gets each look. ClientTimeoutError after `timeout` seconds (the run
        goes on)."""
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        while True:
            detail = self.run(run_id)
            run_id = detail.id  # `last` or a prefix: the same run until the end
            if progress is not None:
                progress(detail)
            if run_ended(detail):
                return detail
            now = time.monotonic()
            pause = min(max(WAIT_MIN_S, (now - start) / 4), poll_s)
            if deadline is not None:
                left = deadline - now
                if left <= 0:
                    raise ClientTimeoutError(
                        f"run {detail.id} not finished after {timeout} s "
                        f"({detail.finished} of {detail.n_tasks} tasks); it goes on"
                    )
                pause = min(pause, left)
            time.sleep(pause)

    # results and logs

    def results_page(
        self, run_id: str, status: str | None = None, after: int = -1, limit: int = 1000
    ) -> ResultsPage:
        """One page of results by task index (the next: `after=page.next_after`)."""
        params = _results_params(status, after) | {"limit": limit}
        return self._read(ResultsPage, _run_path(run_id) + "/results", params=params)

    def iter_results(
        self, run_id: str, status: str | None = None, after: int = -1
    ) -> Iterator[TaskResult]:
        """Finished tasks' results by index, streamed (JSON lines). `status`: ok, failed,
        cancelled or not_ok. A stream that breaks goes on after the last result received."""
        path = _run_path(run_id) + "/results"
        breaks = 0
        while True:
            response = self._retrying()(self._open, path, _results_params(status, after))
            try:
                for line in response.iter_lines():
                    if line.strip():
                        result = _task_result(line)
                        after = result.index
                        yield result
                return
            except httpx.TransportError as exc:
                breaks += 1
                if breaks >= self._attempts:
                    raise ClientUnavailableError(
                        f"{self.server}: the results stream broke: {exc}"
                    ) from None
            finally:
                response.close()

    def results(self, run_id: str, status: str | None = None) -> list[TaskResult]:
        """Every finished task's result, in input order (see iter_results)."""
        return list(self.iter_results(run_id, status))

    def log(self, run_id: str, index: int, tail_bytes: int = DEFAULT_LOG_BYTES) -> LogTail:
        """The last `tail_bytes` of task `index`'s log (standard output and error); `size` is
        the whole log's. ClientNotFoundError while the task has no log yet."""
        path = f"{_run_path(run_id)}/tasks/{index}/log"
        response = self._get(path, params={"tail_bytes": tail_bytes})
        data = response.content
        size = response.headers.get("X-Log-Size", "")
        return LogTail(
            path=response.headers.get("X-Log-Path", ""),
            data=data,
            size=int(size) if size.isdigit() else len(data),
        )

    # HTTP

    def _retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._attempts),
            wait=tenacity.wait_exponential(multiplier=self._retry_wait_s, max=10.0),
            retry=tenacity.retry_if_exception_type(ClientUnavailableError),
            reraise=True,
        )

    def _read(self, model: type[M], path: str, params: dict[str, Any] | None = None) -> M:
        return model.model_validate(self._get(path, params=params).json())

    def _get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        return self._retrying()(self._send, "GET", path, params=params)

    def _send(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, params=params, json=json)
        except httpx.TransportError as exc:
            raise self._no_answer(method, path, exc) from None
        if response.is_error:
            raise _error(response)
        return response

    def _open(self, path: str, params: dict[str, Any]) -> httpx.Response:
        """A streamed GET, its status checked (the caller closes it)."""
        request = self._http.build_request("GET", path, params=params, headers={"Accept": NDJSON})
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._no_answer("GET", path, exc) from None
        if response.is_error:
            response.read()
            response.close()
            raise _error(response)
        return response

    def _no_answer(self, method: str, path: str, exc: Exception) -> ClientUnavailableError:
        what = f"{method} {API}{path}"
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return ClientUnavailableError(f"cannot reach {self.server}: {exc} ({what})")
        message = f"{self.server} did not answer {what}: {exc or type(exc).__name__}"
        if method == "POST" and path == "/runs":
            message += "; the run may have been made all the same (`runs` lists yours)"
        return ClientUnavailableError(message)


def _run_path(run_id: str) -> str:
    # Quoted whole: an id with a slash or a question mark must not become another route.
    return "/runs/" + quote(run_id, safe="")


def _results_params(status: str | None, after: int) -> dict[str, Any]:
    return {"after": after} | ({"status": status} if status is not None else {})


def _task_result(line: str) -> TaskResult:
    try:
        return TaskResult.from_dict(json.loads(line))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ClientError(f"the service sent a result that is not one: {exc}") from None


def _error(response: httpx.Response) -> ClientError:
    """The service's answer as a typed error whose message says what `detail` says."""
    own = True  # the service's own answer (JSON with a detail), not a proxy's page
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        own, detail = False, response.text[:500] or response.reason_phrase
    status = response.status_code
    if status == 422 and isinstance(detail, list):
        problems = [(list(d.get("loc", [])), str(d.get("msg", d))) for d in detail]
        return _refused(problems, status, detail)
    text = detail if isinstance(detail, str) else json.dumps(detail)
    if status in (401, 403):
        return ClientAuthError(f"the service refused the token: {text}", status, detail)
    if status == 404:
        return ClientNotFoundError(text, status, detail)
    if status in (400, 409, 422):
        return ClientRefusedError(text, status, detail)
    if status in UNAVAILABLE:
        # The service's own 502/503 says what did not answer (the cluster, the database).
        message = f"{text} ({status})" if own else f"the service is unavailable ({status}): {text}"
        return ClientUnavailableError(message, status, detail)
    return ClientError(f"the service answered {status}: {text}", status, detail)


def _refused(problems: list[tuple[list[Any], str]], status: int, detail: Any) -> ClientRefusedError:
    """One line per problem, each naming its field (`workdir: must be an absolute path`); the
    location's first part (body, query) is left out: it says where, not what."""
    named: list[tuple[list[str | int], str]] = []
    for loc, msg in problems:
        where = loc[1:] if loc and loc[0] in ("body", "query", "path") else loc
        named.append((where, msg.removeprefix("Value error, ")))
    lines = [f"{'.'.join(map(str, where))}: {msg}" if where else msg for where, msg in named]
    return ClientRefusedError("\n".join(lines), status, detail, problems=named)
