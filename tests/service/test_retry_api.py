"""POST /api/v1/runs/{id}/retry on a `local` Resource, the service's watcher thread driving the
runs: failed tasks run again in new jobs of the same run, their results keep every attempt;
refusals name the field (422), another user's run is not found (404), a cancelled run or a
Resource that takes no new runs is a conflict (409); slurmrunner.Client.retry the same; the web
run page's Retry form and attempt counts."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from slurmrunner import Client, ClientNotFoundError, ClientRefusedError
from slurmrunner.service.schemas.runs import Retried
from tests.service import test_runs, web_fixtures
from tests.service.conftest import TestClient, loc_msgs
from tests.service.test_runs import wait_done
from tests.service.test_web import sign_in

# Fixtures by name: a fast watcher, this test's own local queue and web secret (web_fixtures),
# a local Resource and users with Profiles on it (test_runs).
app = web_fixtures.app
_own_state = web_fixtures._own_state
local_resource = test_runs.local_resource
with_profile = test_runs.with_profile


def flaky(marks: Path) -> list[str]:
    """A task (fractal call form) that fails with status 3 the first time it runs for an input
    (it leaves a mark), then succeeds: a retry makes it ok."""
    code = (
        "import json,os,sys; a=sys.argv[sys.argv.index('--args-json')+1];"
        "o=sys.argv[sys.argv.index('--out-json')+1]; x=json.load(open(a))['x'];"
        f"m=os.path.join({str(marks)!r}, str(x));"
        "ok=os.path.exists(m); open(m,'a').close();"
        "print('attempt', 'again' if ok else 'first', x);"
        "(x < 0 or not ok) and sys.exit(3); json.dump(x*x, open(o,'w'))"
    )
    return [sys.executable, "-c", code]


def post(client: TestClient, headers: dict[str, str], command: list[str], xs: list[int]) -> str:
    body = {"command": command, "inputs": [{"x": x} for x in xs], "resources": {"mem": "1G"}}
    response = client.post("/api/v1/runs", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def retry(client: TestClient, run_id: str, headers: dict[str, str], **body: Any) -> Any:
    return client.post(f"/api/v1/runs/{run_id}/retry", json=body, headers=headers)


@pytest.fixture
def failed_run(client: TestClient, with_profile: Any, tmp_path: Path) -> tuple[str, Any]:
    """A run of alice whose tasks 1 and 2 (x = 5 and -1) failed with exit_code; task 0 is ok
    (its mark was there), task 2 fails at every attempt."""
    alice = with_profile("alice")
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "4").touch()
    run_id = post(client, alice, flaky(marks), [4, 5, -1])
    done = wait_done(client, run_id, alice)
    assert done["counts"] == {"ok": 1, "failed": 2}, done
    return run_id, alice


def test_retry_runs_failed_tasks_again_and_keeps_attempts(client, failed_run):
    run_id, alice = failed_run
    jobs_before = len(client.get(f"/api/v1/runs/{run_id}", headers=alice).json()["jobs"])
    got = retry(client, run_id, alice, causes=["exit_code"], indices=[1], mem="2x")
    assert got.status_code == 200, got.text
    answer = got.json()
    assert answer["run_id"] == run_id and answer["n_tasks"] == 1 and answer["n_jobs"] == 1
    assert answer["indices"] == [1] and answer["causes"] == {"exit_code": 1}
    assert answer["state"] == "running"
    done = wait_done(client, run_id, alice)
    assert done["state"] == "done" and done["counts"] == {"ok": 2, "failed": 1}, done
    assert done["retried_tasks"] == 1 and done["calls"]["retried_tasks"] == 1
    assert len(done["jobs"]) == jobs_before + 1  # the run's jobs, then the retry's
    items = client.get(f"/api/v1/runs/{run_id}/results", headers=alice).json()["items"]
    again = items[1]
    assert again["status"] == "ok" and again["resources"]["mem_mb"] == 2048
    [first] = again["attempts"]
    assert first["status"] == "failed" and first["error"]["cause"] == "exit_code"
    assert first["resources"]["mem_mb"] == 1024
    assert "attempts" not in items[0] and "attempts" not in items[2]

    # Every failed task by default: task 2 fails again, and has two attempts before its third.
    assert retry(client, "last", alice).json()["indices"] == [2]
    wait_done(client, run_id, alice)
    assert retry(client, run_id, alice).json()["indices"] == [2]
    done = wait_done(client, run_id, alice)
    assert done["counts"] == {"ok": 2, "failed": 1} and done["retried_tasks"] == 3
    last = client.get(f"/api/v1/runs/{run_id}/results", headers=alice).json()["items"][2]
    assert len(last["attempts"]) == 2 and last["status"] == "failed"


def test_refusals_name_the_field(client, failed_run):
    run_id, alice = failed_run
    bad = [
        ({"mem": "3q"}, "mem", "'3q' is not 2x, +2G or 8G"),
        ({"time": "soon"}, "time", "is not 2x, +30:00 or 2:00:00"),
        ({"causes": ["bored"]}, "causes.0", "Input should be"),
        ({"indices": [-1]}, "indices.0", "greater than or equal to 0"),
        ({"indices": []}, "indices", "at least 1"),
        ({"tasks": [1]}, "tasks", "Extra inputs"),
        ({"indices": [0]}, "indices", "task(s) 0 did not fail"),
        ({"causes": ["out_of_memory"]}, "causes", "no failed task of cause out_of_memory"),
        ({"mem": "32G"}, "mem", "max_mem_per_job is 16000MB"),
    ]
    for body, field, words in bad:
        problems = loc_msgs(retry(client, run_id, alice, **body))
        assert any(loc == f"body.{field}" and words in msg for loc, msg in problems), (
            body,
            problems,
        )
    over = retry(client, run_id, alice, indices=list(range(100_001)))
    assert over.status_code == 422 and "indices" in over.text
    # Nothing was retried by any of these: the run is as it was.
    after = client.get(f"/api/v1/runs/{run_id}", headers=alice).json()
    assert after["counts"] == {"ok": 1, "failed": 2} and after["retried_tasks"] == 0


def test_another_users_run_is_not_found_and_a_cancelled_one_conflicts(
    client, with_profile, failed_run, admin, local_resource
):
    run_id, alice = failed_run
    bob = with_profile("bob")
    assert retry(client, run_id, bob).status_code == 404
    assert retry(client, run_id[:8], bob).status_code == 404

    rid = local_resource["id"]
    stop = {"prevent_new_submissions": True}
    assert client.patch(f"/api/v1/admin/resources/{rid}", json=stop, headers=admin).is_success
    refused = retry(client, run_id, alice)
    assert refused.status_code == 409 and "prevent_new_submissions" in refused.text
    go = {"prevent_new_submissions": False}
    assert client.patch(f"/api/v1/admin/resources/{rid}", json=go, headers=admin).is_success

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    other = post(client, alice, sleeper, [1, 2])
    assert client.post(f"/api/v1/runs/{other}/cancel", headers=alice).status_code == 200
    cancelled = retry(client, other, alice)
    assert cancelled.status_code == 409 and "cancelled" in cancelled.text


def test_client_retry_is_typed(client, failed_run):
    run_id, alice = failed_run
    token = alice["Authorization"].removeprefix("Bearer ")
    with Client("http://testserver", token, transport=client._transport) as service:
        with pytest.raises(ClientRefusedError) as refused:
            service.retry(run_id, mem="3q")
        assert "mem: '3q' is not 2x, +2G or 8G" in str(refused.value)
        with pytest.raises(ClientRefusedError) as nothing:
            service.retry(run_id, causes=["time_limit"])
        assert "no failed task of cause time_limit" in str(nothing.value)
        with pytest.raises(ClientNotFoundError):
            service.retry("nope")
        got = service.retry(run_id, indices=[1], time="1:00:00")
        assert isinstance(got, Retried) and got.indices == [1] and got.n_jobs == 1
        end = time.monotonic() + 60
        while service.run(run_id).counts != {"ok": 2, "failed": 1}:
            assert time.monotonic() < end, service.run(run_id)
            time.sleep(0.1)


def test_the_run_page_retries_and_shows_attempts(client, failed_run):
    run_id, alice = failed_run
    csrf = sign_in(client, alice)
    page = client.get(f"/web/runs/{run_id}").text
    assert 'id="retry-form"' in page and '<option value="exit_code">' in page
    assert "attempt 2" not in page

    form = f"/web/runs/{run_id}/retry"
    assert client.post(form, data={"cause": "", "csrf": "nope"}).status_code == 403
    bad = client.post(form, data={"cause": "", "mem": "3q", "csrf": csrf})
    assert bad.status_code == 422 and "mem: &#39;3q&#39; is not 2x, +2G or 8G" in bad.text
    assert f'href="/web/runs/{run_id}"' in bad.text
    none = client.post(form, data={"cause": "time_limit", "csrf": csrf})
    assert none.status_code == 422 and "no failed task of cause time_limit" in none.text

    sent = client.post(form, data={"cause": "exit_code", "csrf": csrf}, follow_redirects=False)
    assert sent.status_code == 303 and sent.headers["location"] == f"/web/runs/{run_id}"
    wait_done(client, run_id, alice)
    page = client.get(f"/web/runs/{run_id}").text
    assert '<tr id="task-1" data-status="ok">' in page
    assert 'data-status="failed">' in page and "attempt 2" in page  # tasks 1 and 2
    assert "retry of 1" in page  # the retry's job(s) in the jobs table
    assert 'id="failure-2"' in page and page.count('class="attempt">attempt 2') == 3
