"""The run routes on a `local` Resource, with the service's watcher thread driving the runs:
results right, scoped to their owner, the Resource's limits, and a restart that resumes."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from slurmrunner.pacing import PollPolicy
from slurmrunner.service.app import create_app
from tests.service.conftest import TestClient

FAST = PollPolicy(read_min_s=0.05, read_max_s=0.3, squeue_min_s=0.1, squeue_max_s=0.5)
# A task of the `fractal` call form: reads its input's JSON, writes its result's JSON.
SQUARE = [
    sys.executable,
    "-c",
    "import json,sys; a=sys.argv[sys.argv.index('--args-json')+1];"
    "o=sys.argv[sys.argv.index('--out-json')+1]; x=json.load(open(a))['x'];"
    "print('task', x); sys.exit(3) if x < 0 else json.dump(x*x, open(o,'w'))",
]
FINAL = ("done", "cancelled", "failed")


@pytest.fixture
def app(db_url: str) -> Any:
    return create_app(db_url, poll=FAST)


@pytest.fixture
def local_resource(client: TestClient, admin: dict[str, str]) -> dict[str, Any]:
    body = {"name": "here", "type": "local", "jobs_runner_config": {}}
    response = client.post("/api/v1/admin/resources", json=body, headers=admin)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def with_profile(
    client: TestClient,
    admin: dict[str, str],
    local_resource: dict[str, Any],
    make_user: Callable[..., Any],
    tmp_path: Path,
) -> Callable[[str], dict[str, str]]:
    """A user with a Profile on the local Resource: their token's headers."""

    def make(name: str) -> dict[str, str]:
        folder = tmp_path / name
        folder.mkdir(mode=0o700)
        body = {"name": name, "resource_id": local_resource["id"], "jobs_remote_dir": str(folder)}
        response = client.post("/api/v1/admin/profiles", json=body, headers=admin)
        assert response.status_code == 201, response.text
        return make_user(f"{name}@example.org", profile_id=response.json()["id"])[1]

    return make


def wait_done(client: TestClient, run_id: str, headers: dict[str, str], timeout: float = 60) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = client.get(f"/api/v1/runs/{run_id}", headers=headers).json()
        if got["state"] in FINAL:
            return got
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} not finished: {got}")


def post_run(client: TestClient, headers: dict[str, str], xs: list[int], **extra: Any) -> Any:
    body = {"command": SQUARE, "inputs": [{"x": x} for x in xs], **extra}
    return client.post("/api/v1/runs", json=body, headers=headers)


def test_a_run_end_to_end(client, with_profile):
    alice = with_profile("alice")
    response = post_run(client, alice, [1, 2, -1, 3], resources={"tasks_per_job": 2})
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["n_tasks"] == 4 and run["n_jobs"] == 2
    done = wait_done(client, run["id"], alice)
    assert done["state"] == "done"
    assert done["counts"] == {"ok": 3, "failed": 1}
    assert done["causes"] == {"exit_code": 1}
    assert [j["done"] for j in done["jobs"]] == [True, True]

    page = client.get(f"/api/v1/runs/{run['id']}/results", headers=alice).json()
    assert page["total"] == 4 and page["next_after"] is None
    assert [(r["index"], r["result"]) for r in page["items"]] == [
        (0, 1),
        (1, 4),
        (2, None),
        (3, 9),
    ]
    failed = client.get(
        f"/api/v1/runs/{run['id']}/results", params={"status": "not_ok"}, headers=alice
    ).json()
    assert [r["index"] for r in failed["items"]] == [2] and failed["total"] == 1
    assert failed["items"][0]["error"]["cause"] == "exit_code"

    # Paged by index: two pages of two, then nothing.
    first = client.get(
        f"/api/v1/runs/{run['id']}/results", params={"limit": 2}, headers=alice
    ).json()
    assert [r["index"] for r in first["items"]] == [0, 1] and first["next_after"] == 1
    rest = client.get(
        f"/api/v1/runs/{run['id']}/results",
        params={"limit": 2, "after": first["next_after"]},
        headers=alice,
    ).json()
    assert [r["index"] for r in rest["items"]] == [2, 3]

    streamed = client.get(
        f"/api/v1/runs/{run['id']}/results",
        headers={**alice, "Accept": "application/x-ndjson"},
    )
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert [r["index"] for r in lines] == [0, 1, 2, 3]

    log = client.get(f"/api/v1/runs/{run['id']}/tasks/2/log", headers=alice)
    assert log.status_code == 200 and "task -1" in log.text
    assert int(log.headers["X-Log-Size"]) >= len(log.content)
    tail = client.get(
        f"/api/v1/runs/{run['id']}/tasks/2/log", params={"tail_bytes": 3}, headers=alice
    )
    assert len(tail.content) == 3
    assert client.get(f"/api/v1/runs/{run['id']}/tasks/9/log", headers=alice).status_code == 404

    listed = client.get("/api/v1/runs", headers=alice).json()
    assert [r["id"] for r in listed] == [run["id"]]
    assert client.get("/api/v1/runs/last", headers=alice).json()["id"] == run["id"]
    assert client.get(f"/api/v1/runs/{run['id'][:10]}", headers=alice).status_code == 200


def test_another_users_run_is_not_found(client, with_profile, make_user, admin):
    alice, bob = with_profile("alice"), with_profile("bob")
    run = post_run(client, alice, [1]).json()
    for path in ("", "/results", "/tasks/0/log"):
        assert client.get(f"/api/v1/runs/{run['id']}{path}", headers=bob).status_code == 404
    assert client.post(f"/api/v1/runs/{run['id']}/cancel", headers=bob).status_code == 404
    # A prefix of alice's id does not resolve among bob's runs either, nor does `last`.
    assert client.get(f"/api/v1/runs/{run['id'][:6]}", headers=bob).status_code == 404
    assert client.get("/api/v1/runs/last", headers=bob).status_code == 404
    assert client.get("/api/v1/runs", headers=bob).json() == []
    # Without a Profile: 403 on every run route, whatever the run.
    _, nobody = make_user("nobody@example.org")
    assert client.get("/api/v1/runs", headers=nobody).status_code == 403
    assert client.post("/api/v1/runs", json={}, headers=nobody).status_code == 403
    assert client.get(f"/api/v1/runs/{run['id']}", headers=nobody).status_code == 403
    wait_done(client, run["id"], alice)


def test_cancel(client, with_profile):
    alice = with_profile("alice")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    run = client.post(
        "/api/v1/runs", json={"command": sleeper, "inputs": [1, 2]}, headers=alice
    ).json()
    got = client.post(f"/api/v1/runs/{run['id']}/cancel", headers=alice)
    assert got.status_code == 200, got.text
    assert got.json()["state"] == "cancelled"
    done = wait_done(client, run["id"], alice)
    assert done["state"] == "cancelled"


def test_bad_requests_name_the_field(client, with_profile):
    alice = with_profile("alice")
    bad = [
        ({"command": [], "inputs": [1]}, "command"),
        ({"command": ["x"], "inputs": []}, "inputs"),
        ({"command": ["x\n"], "inputs": [1]}, "command"),
        ({"command": ["x"], "inputs": [1], "resources": {"mem": "lots"}}, "mem"),
        ({"command": ["x"], "inputs": [1], "call": "shell"}, "call"),
        ({"command": ["x"], "inputs": [1], "extra": 1}, "extra"),
    ]
    for body, field in bad:
        response = client.post("/api/v1/runs", json=body, headers=alice)
        assert response.status_code == 422, (body, response.text)
        assert field in response.text, (body, response.text)
    assert client.get("/api/v1/runs", params={"state": "odd"}, headers=alice).status_code == 422


def test_resource_limits_are_named(client, admin, with_profile, local_resource):
    alice = with_profile("alice")
    rid = local_resource["id"]
    limits = {"max_tasks_per_run": 2, "max_active_runs_per_user": 1}
    assert (
        client.patch(f"/api/v1/admin/resources/{rid}", json=limits, headers=admin).status_code
        == 200
    )
    too_many = post_run(client, alice, [1, 2, 3])
    assert too_many.status_code == 422 and "max_tasks_per_run (2)" in too_many.text
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    first = client.post("/api/v1/runs", json={"command": sleeper, "inputs": [1]}, headers=alice)
    assert first.status_code == 201
    second = post_run(client, alice, [1])
    assert second.status_code == 409 and "max_active_runs_per_user is 1" in second.text
    client.post(f"/api/v1/runs/{first.json()['id']}/cancel", headers=alice)
    assert post_run(client, alice, [1]).status_code == 201  # room again

    body = {"prevent_new_submissions": True}
    assert client.patch(f"/api/v1/admin/resources/{rid}", json=body, headers=admin).is_success
    refused = post_run(client, alice, [1])
    assert refused.status_code == 409 and "prevent_new_submissions" in refused.text


def test_a_restart_resumes_every_run(db_url, tmp_path, app, client, with_profile):
    """The first app stops (as at SIGTERM) with a run half done; a second on the same database
    takes it back and finishes it; every result is there, each task ran once."""
    alice = with_profile("alice")
    marks = tmp_path / "marks"
    marks.mkdir()
    slow = [
        sys.executable,
        "-c",
        "import json,sys,time,os; a=sys.argv[sys.argv.index('--args-json')+1];"
        "o=sys.argv[sys.argv.index('--out-json')+1]; x=json.load(open(a));"
        f"open(os.path.join({str(marks)!r}, str(x)), 'x'); time.sleep(1.5 if x else 0);"
        "json.dump(x, open(o,'w'))",
    ]
    body = {"command": slow, "inputs": list(range(6)), "resources": {"tasks_per_job": 2}}
    run = client.post("/api/v1/runs", json=body, headers=alice).json()
    time.sleep(0.5)
    app.state.watching.stop()  # as at the lifespan's end (SIGTERM): the jobs go on
    with TestClient(create_app(db_url, poll=FAST)) as again:
        done = wait_done(again, run["id"], alice)
        assert done["state"] == "done" and done["counts"] == {"ok": 6}
        results = again.get(f"/api/v1/runs/{run['id']}/results", headers=alice).json()
        assert [r["result"] for r in results["items"]] == list(range(6))
    assert sorted(p.name for p in marks.iterdir()) == [str(i) for i in range(6)]


def test_a_user_with_runs_is_not_deleted(client, admin, with_profile):
    alice = with_profile("alice")
    run = post_run(client, alice, [1]).json()
    me = client.get("/api/v1/me", headers=alice).json()
    refused = client.delete(f"/api/v1/admin/users/{me['id']}", headers=admin)
    assert refused.status_code == 409 and "owns 1 run" in refused.text
    wait_done(client, run["id"], alice)


@pytest.fixture(autouse=True)
def _own_local_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local backend's queue file of this test alone."""
    monkeypatch.setenv("SLURMRUNNER_LOCAL_QUEUE", str(tmp_path / "queue.sqlite"))


def test_a_run_that_cannot_start_says_why(client, with_profile, tmp_path):
    """Its project folder became writable by others after the Profile was saved: the run is
    refused at its start, in the watcher, and the run says so."""
    alice = with_profile("alice")
    (tmp_path / "alice").chmod(0o777)
    run = post_run(client, alice, [1]).json()
    done = wait_done(client, run["id"], alice)
    assert done["state"] == "failed"
    assert done["message"].startswith("could not start:")
    assert "written by other users" in done["message"]
    assert done["call"] == "fractal"


def test_bodies_over_the_bound_are_refused_before_auth(client):
    big = b"x" * (65 << 10)
    assert client.post("/web/login", content=big).status_code == 413
    headers = {"Content-Length": str(300 << 20), "Content-Type": "application/json"}
    refused = client.post("/api/v1/runs", content=b"{}", headers=headers)
    assert refused.status_code == 413 and "KiB" in refused.text


def test_log_reads_are_bounded(client, with_profile):
    from slurmrunner.service import runs as ops

    alice = with_profile("alice")
    run = post_run(client, alice, [1]).json()
    wait_done(client, run["id"], alice)
    taken = [ops._log_reads.acquire(blocking=False) for _ in range(ops.LOG_READS_AT_ONCE)]
    try:
        assert all(taken)
        busy = client.get(f"/api/v1/runs/{run['id']}/tasks/0/log", headers=alice)
        assert busy.status_code == 503 and "log reads" in busy.text
    finally:
        for _ in taken:
            ops._log_reads.release()
    assert client.get(f"/api/v1/runs/{run['id']}/tasks/0/log", headers=alice).status_code == 200


# A task whose log is 330,000 bytes of numbered lines.
LONG_LOG = [
    sys.executable,
    "-c",
    "import sys; sys.stdout.write(''.join('line %06d\\n' % i for i in range(30000)))",
]


def test_a_log_read_a_page_at_a_time(client, with_profile):
    alice = with_profile("alice")
    body = {"command": LONG_LOG, "inputs": [{}], "call": "stdin"}
    run = client.post("/api/v1/runs", json=body, headers=alice).json()
    assert wait_done(client, run["id"], alice)["state"] == "done"
    whole = "".join(f"line {i:06d}\n" for i in range(30000)).encode()
    k64 = 64 << 10
    url = f"/api/v1/runs/{run['id']}/tasks/0/log"

    def page(**params: Any) -> tuple[bytes, int]:
        got = client.get(url, params=params, headers=alice)
        assert got.status_code == 200, got.text
        assert int(got.headers["X-Log-Size"]) == len(whole)
        return got.content, int(got.headers["X-Log-Offset"])

    assert page() == (whole[-k64:], len(whole) - k64)
    assert page(skip_bytes=k64) == (whole[-2 * k64 : -k64], len(whole) - 2 * k64)
    assert page(from_start=True, tail_bytes=1000) == (whole[:1000], 0)
    too_far = client.get(url, params={"skip_bytes": 1 << 20}, headers=alice)
    assert [(d["loc"], d["type"]) for d in too_far.json()["detail"]] == [
        (["query", "skip_bytes"], "limit")
    ]
    # The web page pages the same log: its end first, then earlier, and its start.
    from tests.service.test_web import sign_in

    sign_in(client, alice)
    web = f"/web/runs/{run['id']}/tasks/0/log"
    last = client.get(web).text
    assert "line 029999" in last and 'id="log-earlier"' in last and 'id="log-later"' not in last
    earlier = client.get(web, params={"page": 1}).text
    assert "line 029999" not in earlier and 'id="log-later"' in earlier
    assert "line 000000" in client.get(web, params={"start": "true"}).text
    assert client.get(web, params={"page": 99}).status_code in (404, 422)
