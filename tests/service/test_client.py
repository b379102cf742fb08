"""slurmrunner.Client against the real app (its watcher thread running local jobs), and its
error handling against a transport that misbehaves on purpose."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from slurmrunner import (
    Client,
    ClientAuthError,
    ClientNotFoundError,
    ClientRefusedError,
    ClientTimeoutError,
    ClientUnavailableError,
    SlurmRunnerError,
)
from slurmrunner.service.schemas.runs import RunDetail
from tests.conftest import EXAMPLES
from tests.service.conftest import TestClient

TASK = [sys.executable, str(EXAMPLES / "task.py")]


def token_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def connect(http: TestClient, token: str) -> Client:
    # The app in this process, its lifespan (the watcher) entered by the `client` fixture.
    return Client("http://testserver", token, transport=http._transport, retry_wait_s=0.01)


@pytest.fixture
def resource(client: TestClient, admin: dict[str, str], tmp_path: Any) -> dict[str, Any]:
    made = client.post(
        "/api/v1/admin/resources", json={"name": "here", "type": "local"}, headers=admin
    )
    assert made.status_code == 201, made.text
    profile = client.post(
        "/api/v1/admin/profiles",
        json={"name": "mine", "resource_id": made.json()["id"], "jobs_remote_dir": str(tmp_path)},
        headers=admin,
    )
    assert profile.status_code == 201, profile.text
    return {"id": made.json()["id"], "profile_id": profile.json()["id"]}


@pytest.fixture
def service(client: TestClient, resource: dict[str, Any], make_user: Any) -> Iterator[Client]:
    _, headers = make_user("alice@example.org", profile_id=resource["profile_id"])
    with connect(client, token_of(headers)) as c:
        yield c


def test_submit_wait_then_read_results_and_logs(service: Client) -> None:
    inputs: list[dict[str, Any]] = [{"x": i} for i in range(6)]
    inputs[4] = {"x": 4, "fail": 3}
    run = service.submit(TASK, inputs)
    assert run.n_tasks == 6 and run.state == "submitting"
    seen: list[RunDetail] = []
    detail = service.wait(run.id, progress=seen.append, poll_s=0.5)
    assert seen[-1] is detail and detail.state == "done"
    assert detail.counts == {"ok": 5, "failed": 1} and detail.causes == {"exit_code": 1}
    assert all(job.done for job in detail.jobs) and detail.calls

    results = service.results(run.id)
    assert [r.index for r in results] == list(range(6))
    assert results[0].ok and results[0].result == {"x": 0, "square": 0}
    assert results[4].error is not None and results[4].error.cause == "exit_code"
    assert [r.index for r in service.results("last", status="not_ok")] == [4]
    assert [r.index for r in service.iter_results(run.id[:-1], after=2)] == [3, 4, 5]
    page = service.results_page(run.id, limit=4)
    assert page.total == 6 and len(page.items) == 4 and page.next_after == 3

    log = service.log(run.id, 4)
    assert b"failing on purpose with status 3" in log.data
    assert log.size == len(log.data) and log.path.endswith("/logs/4.log")
    tail = service.log(run.id, 4, tail_bytes=5)
    assert tail.data == log.data[-5:] and tail.size == log.size

    assert [r.id for r in service.runs()] == [run.id]
    assert service.runs(state="running") == []
    assert service.me().profile_name == "mine"
    assert service.cancel(run.id).cancelled_jobs == 0  # ended: nothing to cancel


def test_cancel_and_wait_timeout(service: Client) -> None:
    run = service.submit(TASK, [{"x": i, "sleep": 30} for i in range(3)])
    with pytest.raises(ClientTimeoutError, match="goes on"):
        service.wait(run.id, timeout=0.3, poll_s=0.1)
    cancelled = service.cancel(run.id)
    assert cancelled.state == "cancelled"
    detail = service.wait(run.id, timeout=30)
    assert detail.state == "cancelled" and detail.counts == {"cancelled": 3}


def test_errors_are_typed_and_name_the_field(
    service: Client, client: TestClient, admin: dict[str, str], resource: dict[str, Any]
) -> None:
    with pytest.raises(ClientNotFoundError, match="no run 'nope'"):
        service.run("nope")
    with pytest.raises(ClientRefusedError, match="workdir: must be an absolute path") as local:
        service.submit(TASK, [{}], workdir="relative")
    assert local.value.problems == [(["workdir"], "must be an absolute path, got 'relative'")]
    with pytest.raises(ClientRefusedError, match=r"resources\.mem") as remote:
        service.submit(TASK, [{}], resources={"mem": "lots"})
    assert remote.value.status_code == 422
    closed = client.patch(
        f"/api/v1/admin/resources/{resource['id']}",
        json={"prevent_new_submissions": True},
        headers=admin,
    )
    assert closed.status_code == 200, closed.text
    with pytest.raises(ClientRefusedError, match="prevent_new_submissions") as conflict:
        service.submit(TASK, [{}])
    assert conflict.value.status_code == 409
    assert service.runs() == []  # nothing was made


def test_token_refused(client: TestClient, make_user: Any) -> None:
    with pytest.raises(ClientAuthError) as bad, connect(client, "sr_not-a-token") as c:
        c.me()
    assert bad.value.status_code == 401
    _, headers = make_user()  # no Profile: may not run
    with pytest.raises(ClientAuthError) as no_profile, connect(client, token_of(headers)) as c:
        c.runs()
    assert no_profile.value.status_code == 403
    assert isinstance(no_profile.value, SlurmRunnerError)


# a service that is down, without the app


class Flaky:
    """A transport answering 503 `failures` times, then as `ok` says; counts the calls."""

    def __init__(self, failures: int, ok: Any) -> None:
        self.failures = failures
        self.ok = ok
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(f"{request.method} {request.url.path}?{request.url.query.decode()}")
        if len(self.calls) <= self.failures:
            return httpx.Response(503, json={"detail": "database unavailable; try again"})
        return self.ok(request)


def flaky_client(flaky: Flaky) -> Client:
    return Client("http://svc/", "t", transport=httpx.MockTransport(flaky), retry_wait_s=0.001)


def test_reads_are_tried_again_a_new_run_never() -> None:
    flaky = Flaky(2, lambda r: httpx.Response(200, json=[]))
    assert flaky_client(flaky).runs() == []
    assert len(flaky.calls) == 3
    posting = Flaky(5, lambda r: httpx.Response(500))
    with pytest.raises(ClientUnavailableError, match="database unavailable"):
        flaky_client(posting).submit(["true"], [{}])
    assert posting.calls == ["POST /api/v1/runs?"]
    down = Flaky(5, lambda r: httpx.Response(200, json=[]))
    with pytest.raises(ClientUnavailableError, match="503"):
        flaky_client(down).runs()
    assert len(down.calls) == 3


def test_connection_refused_is_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused")

    token = "sr_secret"
    c = Client("http://svc", token, transport=httpx.MockTransport(refuse), retry_wait_s=0.001)
    with pytest.raises(ClientUnavailableError, match="cannot reach http://svc") as down:
        c.run("last")
    assert token not in repr(c) and token not in str(down.value)


class Breaking(httpx.SyncByteStream):
    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    def __iter__(self) -> Iterator[bytes]:
        yield from self.lines
        raise httpx.ReadError("connection reset by peer")


def line(index: int) -> bytes:
    return b'{"index": %d, "status": "ok", "result": %d}\n' % (index, index)


def test_broken_results_stream_goes_on_after_the_last_result() -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept"] == "application/x-ndjson"
        if request.url.params["after"] == "-1":
            return httpx.Response(200, stream=Breaking([line(0), line(1), b'{"ind']))
        assert request.url.params["after"] == "1"
        return httpx.Response(200, content=line(2) + line(3))

    flaky = Flaky(1, serve)  # and a 503 before the first answer
    results = flaky_client(flaky).results("r1")
    assert [(r.index, r.result) for r in results] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert [c.split("?")[1] for c in flaky.calls] == ["after=-1", "after=-1", "after=1"]


def test_import_slurmrunner_leaves_httpx_out() -> None:
    import subprocess

    code = "import sys, slurmrunner; assert 'httpx' not in sys.modules; slurmrunner.Client"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_run_with_every_result_is_not_ended_until_its_state_says_so() -> None:
    """Every task has a result while the run is still running: its last failure may yet be
    retried by the admin's policy (its result then leaves the counts), so wait goes on."""
    from slurmrunner.client import run_ended
    from slurmrunner.service.schemas.runs import RunRead

    fields: dict[str, Any] = {
        "id": "r", "created": 0.0, "n_tasks": 2, "n_jobs": 1, "finished": 2,
        "counts": {"ok": 1, "failed": 1}, "user_id": 1, "resource_id": 1, "profile_id": 1,
        "run_dir": "/x", "call": "fractal", "message": None,
    }  # fmt: skip
    assert not run_ended(RunRead(state="running", **fields))
    assert all(run_ended(RunRead(state=s, **fields)) for s in ("done", "cancelled", "failed"))
