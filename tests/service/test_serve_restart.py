"""`serve` as a process, stopped the hard way and the clean way, on a `local` Resource: every run
resumes at the next start, no task runs twice, no result is lost. (The same on the SLURM rig:
tests/integration/test_service_rig.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers_cli import cli, start_slurmrunner
from tests.service.conftest import bearer


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A database with a local Resource and a user with a Profile on it; no serve yet."""
    monkeypatch.setenv("SLURMRUNNER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SLURMRUNNER_LOCAL_QUEUE", str(tmp_path / "queue.sqlite"))
    db = f"sqlite:///{tmp_path / 'svc.sqlite'}"
    config = tmp_path / "here.json"
    config.write_text("{}")
    (tmp_path / "alice").mkdir()
    # The admin commands in this process (tests/service/test_cli.py runs them as processes).
    for args in (
        ("create-resource", "here", "--type", "local", "--config", config),
        ("create-profile", "alice", "--resource", "here", "--jobs-remote-dir", tmp_path / "alice"),
    ):
        made = cli("admin", *args, "--db", db)
        assert made.exit_code == 0, made.stderr
    made = cli("admin", "create-user", "alice@example.org", "--profile", "alice", "--db", db)
    assert made.exit_code == 0, made.stderr
    return {"db": db, "headers": bearer(made.stdout.strip()), "dir": tmp_path}


def start(service: dict[str, Any], name: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    log = service["dir"] / f"{name}.log"
    proc = start_slurmrunner(
        "serve", "--port", "0", "--db", service["db"], stderr=log.open("wb"), stdout=None
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text()
        if "listening on " in text:
            return proc, text.split("listening on ")[1].split()[0], log
        assert proc.poll() is None, text
        time.sleep(0.05)
    raise AssertionError(log.read_text())


def marking_task(marks: Path, seconds: float) -> list[str]:
    """A task that leaves a file per input (a second run of it would fail: 'x' mode)."""
    return [
        sys.executable,
        "-c",
        "import json,sys,time,os; a=sys.argv[sys.argv.index('--args-json')+1];"
        "o=sys.argv[sys.argv.index('--out-json')+1]; x=json.load(open(a));"
        f"open(os.path.join({str(marks)!r}, str(x)), 'x'); time.sleep({seconds});"
        "json.dump(x * 10, open(o,'w'))",
    ]


def wait_final(url: str, run_id: str, headers: dict[str, str], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = httpx.get(f"{url}/api/v1/runs/{run_id}", headers=headers, timeout=10).json()
        if got["state"] in ("done", "cancelled", "failed"):
            return got
        time.sleep(0.2)
    raise AssertionError(got)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_stopped_mid_run_then_started_again(service, how):
    marks = service["dir"] / "marks"
    marks.mkdir()
    headers = service["headers"]
    proc, url, log = start(service, "first")
    try:
        body = {
            "command": marking_task(marks, 1.0),
            "inputs": list(range(4)),
            "resources": {"tasks_per_job": 2},
        }
        posted = httpx.post(f"{url}/api/v1/runs", json=body, headers=headers, timeout=30)
        assert posted.status_code == 201, posted.text
        run_id = posted.json()["id"]
        deadline = time.monotonic() + 30
        while not any(marks.iterdir()):  # the jobs are running
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        t0 = time.monotonic()
        proc.send_signal(how)
        # uvicorn stops cleanly, then raises the signal again: the status says what stopped it.
        assert proc.wait(timeout=30) == -how
        if how == signal.SIGTERM:
            assert time.monotonic() - t0 < 10  # a clean stop does not wait for the run
            assert "unfinished runs resume at the next start" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc, url, log = start(service, "second")
    try:
        done = wait_final(url, run_id, headers)
        assert done["state"] == "done", (done, log.read_text())
        assert done["counts"] == {"ok": 4}
        lines = httpx.get(
            f"{url}/api/v1/runs/{run_id}/results",
            headers={**headers, "Accept": "application/x-ndjson"},
            timeout=30,
        ).text.splitlines()
        assert [json.loads(line)["result"] for line in lines] == [x * 10 for x in range(4)]
        # Each task ran once: a second run of one would have failed on its mark.
        assert sorted(int(p.name) for p in marks.iterdir()) == list(range(4))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
