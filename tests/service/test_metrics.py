"""GET /metrics (Prometheus text format) and the service's one log line per event: requests
counted by route template, the watcher's calls to a `local` Resource moving, tasks by status,
one registry per app."""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from slurmrunner.pacing import PollPolicy
from slurmrunner.service.app import create_app
from slurmrunner.service.logs import log_to_stderr
from tests.helpers_cli import start_slurmrunner
from tests.service.conftest import TestClient, bearer

FAST = PollPolicy(read_min_s=0.05, read_max_s=0.3, squeue_min_s=0.1, squeue_max_s=0.5)
FINAL = ("done", "cancelled", "failed")
# A task of the fractal call form that, when its input names a file, waits for that file.
TASK = """\
import json, os, sys, time
args = json.load(open(sys.argv[sys.argv.index("--args-json") + 1]))
while args.get("wait") and not os.path.exists(args["wait"]):
    time.sleep(0.05)
json.dump(args["x"], open(sys.argv[sys.argv.index("--out-json") + 1], "w"))
"""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def app(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # The local Resource's queue and supervisor: this test's own.
    monkeypatch.setenv("SLURMRUNNER_LOCAL_QUEUE", str(tmp_path / "local-queue.sqlite"))
    return create_app(db_url, poll=FAST)


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def matching(samples: Samples, name: str, **labels: str) -> dict[frozenset, float]:
    """Every sample of `name` whose labels include `labels`."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= set(lab)}


@pytest.fixture
def user(
    client: TestClient,
    admin: dict[str, str],
    make_user: Callable[..., Any],
    tmp_path: Path,
) -> dict[str, str]:
    """Headers of a user whose Profile is on a `local` Resource named `laptop`."""
    body = {"name": "laptop", "type": "local", "jobs_runner_config": {}}
    resource = client.post("/api/v1/admin/resources", json=body, headers=admin)
    assert resource.status_code == 201, resource.text
    folder = tmp_path / "jobs"
    folder.mkdir(mode=0o700)
    body = {"name": "p", "resource_id": resource.json()["id"], "jobs_remote_dir": str(folder)}
    profile = client.post("/api/v1/admin/profiles", json=body, headers=admin)
    assert profile.status_code == 201, profile.text
    return make_user("ann@example.org", profile_id=profile.json()["id"])[1]  # type: ignore[no-any-return]


def post_run(client: TestClient, headers: dict[str, str], inputs: list[Any], tmp: Path) -> str:
    script = tmp / "task.py"
    script.write_text(TASK)
    body = {
        "command": [sys.executable, str(script)],
        "inputs": inputs,
        "resources": {"tasks_per_job": 1},  # a job per task: one may end while one waits
    }
    response = client.post("/api/v1/runs", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def wait_for(client: TestClient, run_id: str, headers: dict[str, str], done: Callable) -> Any:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        got = client.get(f"/api/v1/runs/{run_id}", headers=headers).json()
        if done(got):
            return got
        time.sleep(0.05)
    raise AssertionError(f"run {run_id}: {got}")


def test_metrics_answers_in_prometheus_format(client: TestClient) -> None:
    samples = scrape(client)
    names = {name for name, _ in samples}
    for name in (
        "slurmrunner_database_up",
        "slurmrunner_active_run_tasks",
        "slurmrunner_watcher_up",
        "slurmrunner_watcher_runs",
        "slurmrunner_watcher_cycles_total",
        "slurmrunner_watcher_cycle_seconds_count",
        "slurmrunner_watcher_cpu_seconds_total",
        "slurmrunner_watcher_run_errors_total",
        "process_cpu_seconds_total",
    ):
        assert name in names, name
    assert value(samples, "slurmrunner_database_up") == 1
    assert value(samples, "slurmrunner_watcher_up") == 1  # the lifespan started it
    assert value(samples, "slurmrunner_active_run_tasks", status="unfinished") == 0
    # Outside the API and its schema's tokens: no header needed, and not under /api/v1.
    assert client.get("/api/v1/metrics").status_code in (401, 404)
    # OpenMetrics for a scraper that asks for it.
    asked = client.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert asked.headers["content-type"].startswith("application/openmetrics-text")
    assert asked.text.endswith("# EOF\n")


def test_requests_are_counted_by_route_template(client: TestClient, admin: dict[str, str]):
    client.get("/healthz")
    client.get("/api/v1/me", headers=admin)
    for run_id in ("SOMEID", "OTHERID", "last"):
        client.get(f"/api/v1/runs/{run_id}", headers=admin)  # 403: the admin has no Profile
    client.get("/api/v1/runs/SOMEID/tasks/7/log")  # 401: no token
    client.get("/no/such/path/4711")
    client.delete("/healthz")  # a route, not this method: 405 under the route's template
    samples = scrape(client)
    counts = matching(samples, "slurmrunner_http_request_duration_seconds_count")
    routes = {dict(labels)["route"] for labels in counts}
    assert {
        "/healthz",
        "/api/v1/me",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/tasks/{index}/log",
        "unmatched",
    } <= routes
    assert not [r for r in routes if "SOMEID" in r or "4711" in r or "last" in r]
    one = "slurmrunner_http_request_duration_seconds_count"
    assert value(samples, one, method="GET", route="/api/v1/runs/{run_id}") == 3
    total = "slurmrunner_http_requests_total"
    assert value(samples, total, method="GET", route="/api/v1/runs/{run_id}", status="403") == 3
    assert value(samples, total, method="GET", route="/healthz", status="200") == 1
    assert value(samples, total, method="DELETE", route="/healthz", status="405") == 1
    assert value(samples, total, method="GET", route="unmatched", status="404") == 1
    log_route = "/api/v1/runs/{run_id}/tasks/{index}/log"
    assert value(samples, total, method="GET", route=log_route, status="401") == 1
    # A method no route knows is one label, whatever the client invents.
    client.request("FROBNICATE", "/healthz")
    assert matching(scrape(client), total, method="other")


def test_two_apps_in_one_process_count_apart(tmp_path: Path) -> None:
    one = create_app(f"sqlite:///{tmp_path / 'one.sqlite'}", watch=False)
    two = create_app(f"sqlite:///{tmp_path / 'two.sqlite'}", watch=False)
    assert one.state.metrics is not two.state.metrics
    with TestClient(one) as a, TestClient(two) as b:
        for _ in range(3):
            a.get("/healthz")
        b.get("/healthz")
        total = "slurmrunner_http_requests_total"
        labels = {"method": "GET", "route": "/healthz", "status": "200"}
        assert value(scrape(a), total, **labels) == 3
        assert value(scrape(b), total, **labels) == 1
        assert value(scrape(b), "slurmrunner_watcher_up") == 0  # watch=False


def test_a_local_run_moves_the_watcher_metrics(
    client: TestClient, user: dict[str, str], tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    run_id = post_run(client, user, [{"x": 1}, {"x": 2, "wait": str(flag)}], tmp_path)
    wait_for(client, run_id, user, lambda r: r["counts"].get("ok") == 1)
    samples = scrape(client)
    assert value(samples, "slurmrunner_active_runs", resource="laptop", state="running") == 1
    tasks = "slurmrunner_active_run_tasks"
    assert value(samples, tasks, status="ok") == 1
    assert value(samples, tasks, status="unfinished") == 1
    assert value(samples, tasks, status="failed") == 0
    calls = "slurmrunner_watcher_calls_total"
    for kind, at_least in (("submit", 2), ("poll", 1), ("cat", 1)):
        assert sum(matching(samples, calls, kind=kind).values()) >= at_least, kind
    # The local queue's poll is one per cycle for every run of its scheduler; one cat per
    # cycle for the cluster identity.
    most = "slurmrunner_watcher_most_calls_per_cycle"
    assert set(matching(samples, most, kind="poll").values()) == {1}
    assert set(matching(samples, most, kind="cat").values()) == {1}
    assert value(samples, "slurmrunner_watcher_cycles_total") >= 1
    assert value(samples, "slurmrunner_watcher_cycle_seconds_count") >= 1
    assert value(samples, "slurmrunner_watcher_runs") == 1
    before = sum(matching(samples, calls, kind="cat").values())

    flag.touch()
    assert wait_for(client, run_id, user, lambda r: r["state"] in FINAL)["state"] == "done"
    after = scrape(client)
    assert not matching(after, "slurmrunner_active_runs")  # no active run left
    assert value(after, tasks, status="ok") == 0  # counted while active only
    assert sum(matching(after, calls, kind="cat").values()) > before
    assert value(after, "slurmrunner_watcher_run_errors_total") == 0


def test_each_event_logs_one_line_with_the_run_and_user(
    client: TestClient, user: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="slurmrunner")
    done = post_run(client, user, [{"x": 1}, {"x": 2}], tmp_path)
    assert wait_for(client, done, user, lambda r: r["state"] in FINAL)["state"] == "done"
    never = tmp_path / "never"
    cancelled = post_run(client, user, [{"x": 1}, {"x": 2, "wait": str(never)}], tmp_path)
    wait_for(client, cancelled, user, lambda r: r["counts"].get("ok") == 1)
    response = client.post(f"/api/v1/runs/{cancelled}/cancel", headers=user)
    assert response.status_code == 200 and response.json()["state"] == "cancelled"

    def lines(run_id: str) -> list[str]:
        prefix = f"run {run_id} "
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]

    def one(found: list[str], words: str) -> str:
        hits = [line for line in found if words in line]
        assert len(hits) == 1, (words, found)
        return hits[0]

    first = lines(done)
    assert "user=ann@example.org" in one(first, "created:")
    assert "jobs=2" in one(first, "submitted: user=local")
    one(first, "job 0 ended: user=local")
    one(first, "job 1 ended: user=local")
    assert "ok=2 failed=0 cancelled=0" in one(first, f"run {done} done: user=local tasks=2")

    second = lines(cancelled)
    one(second, "job 0 ended: user=local")
    assert not [line for line in second if "job 1 ended" in line]
    assert "user=ann@example.org" in one(second, "cancel: ")
    assert "ok=1 failed=0 cancelled=1" in one(second, "cancelled: user=local tasks=2")
    assert not [line for line in second if " done:" in line]


def test_serve_logs_the_service_lines_with_their_time() -> None:
    logger = logging.getLogger("slurmrunner")
    level, propagate = logger.level, logger.propagate
    stream = io.StringIO()
    try:
        handler = log_to_stderr("info", stream)
        assert log_to_stderr("info", stream) is not handler  # replaced, not added twice
        logging.getLogger("slurmrunner.service").info("run abc created: user=x")
        logging.getLogger("slurmrunner").debug("not at info")
    finally:
        for h in [h for h in logger.handlers if getattr(h, "_slurmrunner_serve", False)]:
            logger.removeHandler(h)
        logger.setLevel(level)
        logger.propagate = propagate
    text = stream.getvalue()
    assert text.count("run abc created: user=x") == 1
    assert "not at info" not in text
    # e.g. "2026-11-30 20:31:11,123 INFO slurmrunner.service: run abc created: user=x"
    stamp, rest = text.split(" INFO ", 1)
    assert time.strptime(stamp.split(",")[0], "%Y-%m-%d %H:%M:%S")
    assert rest.startswith("slurmrunner.service: ")


def test_serve_shows_the_service_lines_on_stderr(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLURMRUNNER_STATE_DIR", str(tmp_path / "state"))
    db = f"sqlite:///{tmp_path / 'svc.sqlite'}"
    proc = start_slurmrunner("serve", "--port", "0", "--db", db, "--log-level", "info")
    try:
        end, seen = time.monotonic() + 30, []
        while time.monotonic() < end:
            line = proc.stderr.readline().decode()
            seen.append(line)
            if "watcher started" in line or (not line and proc.poll() is not None):
                break
        started = [line for line in seen if "watcher started" in line]
        assert started, "".join(seen)
        assert " INFO slurmrunner.service: watcher started" in started[0]
        assert time.strptime(started[0].split(",")[0], "%Y-%m-%d %H:%M:%S")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_metrics_needs_no_token(client: TestClient) -> None:
    # /metrics is for a scraper: a bearer token is neither needed nor looked at.
    assert client.get("/metrics", headers=bearer("nonsense")).status_code == 200
