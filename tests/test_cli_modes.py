"""One CLI for both: the same commands, output and exit statuses on this machine and on a
service (`--server`/$SLURMRUNNER_SERVER with a token).

Each test runs twice: `local` (a local Profile, this process's store) and `service` (a real
`slurmrunner serve` process on a local Resource, one for the module, made with `slurmrunner
admin ...`). Commands that run or watch a run are processes of their own; the ones that only
look are called in this process (faster; the same code either way).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES
from tests.helpers_cli import (
    cli,
    flat,
    isolate_cli_env,
    slurmrunner,
    start_slurmrunner,
    write_inputs,
    write_json,
)

TASK = [sys.executable, str(EXAMPLES / "task.py")]
RUN_LINE = re.compile(r"^run (\S+):", re.MULTILINE)


@dataclass(frozen=True)
class Served:
    url: str
    token: str
    jobs_dir: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`slurmrunner serve` on a fresh database: a local Resource, a Profile on it, a user."""
    base = tmp_path_factory.mktemp("served")
    db = f"sqlite:///{base / 'service.sqlite'}"
    jobs_dir = base / "jobs"
    for args in (
        ("create-resource", "here", "--type", "local"),
        ("create-profile", "mine", "--resource", "here", "--jobs-remote-dir", jobs_dir),
        ("create-user", "alice@example.org", "--profile", "mine"),
    ):
        # In this process: the same command as `python -m slurmrunner admin ...`, without
        # three interpreters' start (tests/service/test_cli.py runs them as processes).
        made = cli("admin", *args, "--db", db)
        assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    log = base / "serve.log"
    env = {
        **_environ(),
        "SLURMRUNNER_STATE_DIR": str(base / "state"),
        "SLURMRUNNER_LOCAL_QUEUE": str(base / "local-queue.sqlite"),
    }
    with log.open("wb") as sink:
        proc = start_slurmrunner(
            "serve", "--port", "0", "--db", db, "--log-level", "warning", stderr=sink, env=env
        )
    try:
        url = _wait_for(lambda: re.search(r"listening on (\S+)", log.read_text()), 30, log)[1]
        yield Served(url, token, jobs_dir)
    finally:
        proc.terminate()  # by its PID: the server this module started, and only it
        try:
            proc.wait(timeout=30)
        except Exception:
            proc.kill()
            proc.wait(timeout=10)


def _environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("SLURMRUNNER_")}


def _wait_for(found: Any, timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := found():
            return value
        time.sleep(0.05)
    raise AssertionError(f"not found after {timeout} s in {log}:\n{log.read_text()}")


@dataclass(frozen=True)
class Mode:
    name: str
    jobs_dir: Path  # where the runs' folders are made


@pytest.fixture(params=["local", "service"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Mode:
    """The environment of both this process and the commands it starts."""
    isolate_cli_env(monkeypatch, tmp_path)  # $SLURMRUNNER_STORE too: the service ignores it
    for name in ("SLURMRUNNER_SERVER", "SLURMRUNNER_TOKEN", "SLURMRUNNER_DB"):
        monkeypatch.delenv(name, raising=False)
    if request.param == "service":
        return _on_service(monkeypatch, request.getfixturevalue("served"))
    jobs_dir = tmp_path / "project"
    profile = write_json(
        tmp_path / "profile.json", {"backend": "local", "project_dir": str(jobs_dir)}
    )
    monkeypatch.setenv("SLURMRUNNER_PROFILE", str(profile))
    monkeypatch.setenv("SLURMRUNNER_LOCAL_QUEUE", str(tmp_path / "local-queue.sqlite"))
    return Mode("local", jobs_dir)


def _on_service(monkeypatch: pytest.MonkeyPatch, served: Served) -> Mode:
    monkeypatch.setenv("SLURMRUNNER_SERVER", served.url)
    monkeypatch.setenv("SLURMRUNNER_TOKEN", served.token)
    return Mode("service", served.jobs_dir)


def read_results(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_id_of(stderr: str) -> str:
    found = RUN_LINE.search(stderr)
    assert found, stderr
    return found[1]


def status_of(run_id: str) -> dict[str, Any]:
    shown = cli("status", run_id, "--json")
    assert shown.exit_code == 0, shown.output
    return json.loads(shown.stdout)


# run


def test_run_all_ok(mode: Mode, tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": i} for i in range(5)])
    proc = slurmrunner("run", "-i", inputs, "--", *TASK)
    assert proc.returncode == 0, proc.stderr
    results = read_results(proc.stdout)
    assert [r["result"] for r in results] == [{"x": i, "square": i * i} for i in range(5)]
    run_id = run_id_of(proc.stderr)
    assert all(r["log"].startswith(f"{mode.jobs_dir}/.slurmrunner/runs/{run_id}/") for r in results)
    assert "run folder" in proc.stderr and "failed" not in proc.stderr


def test_failed_task_shown_counted_listed_and_logged(mode: Mode, tmp_path: Path) -> None:
    inputs = [{"x": i} for i in range(5)]
    inputs[2] = {"x": 2, "fail": 3}
    proc = slurmrunner("run", "-i", write_inputs(tmp_path / "in.jsonl", inputs), "--", *TASK)
    assert proc.returncode == 1, proc.stderr
    assert [r["status"] for r in read_results(proc.stdout)] == ["ok"] * 2 + ["failed"] + ["ok"] * 2
    run_id = run_id_of(proc.stderr)
    err = proc.stderr
    assert "task 2 failed (exit_code): exited with status 3" in err
    assert "failing on purpose with status 3" in err
    assert f"log: {mode.jobs_dir}/.slurmrunner/runs/{run_id}/logs/2.log" in err
    assert re.search("failure causes\\W+exit_code \N{MULTIPLICATION SIGN}1", err)
    assert f"1 failed — `slurmrunner results {run_id} --failed`" in err

    listed = cli("results", run_id[:17], "--failed")
    assert listed.exit_code == 0, listed.output
    assert [r["index"] for r in read_results(listed.stdout)] == [2]
    assert len(read_results(cli("results", "last").stdout)) == 5
    assert cli("logs", run_id, 2, "--tail", 1).stdout == "failing on purpose with status 3\n"
    assert cli("logs", "last", 0).stdout.startswith("task got {'x': 0}")
    out_of_range = cli("logs", "last", 5)
    assert out_of_range.exit_code == 2 and "tasks 0 to 4, not 5" in flat(out_of_range.stderr)
    st = status_of("last")
    assert st["run_id"] == run_id and st["state"] == "done" and st["done"] is True
    assert st["counts"] == {"ok": 4, "failed": 1} and st["failure_causes"] == {"exit_code": 1}
    assert "state" in cli("status", run_id).stderr
    runs = json.loads(cli("runs", "--json", "--limit", 1).stdout)
    assert [(r["id"], r["state"], r["n_tasks"], r["backend"]) for r in runs] == [
        (run_id, "done", 5, "local")
    ]


def test_bad_input_refused_before_anything(mode: Mode, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"x": 1}\nnot json\n')
    bad_line = cli("run", "-i", path, "--", *TASK)
    assert bad_line.exit_code == 2 and "in.jsonl:2:" in flat(bad_line.stderr)
    inputs = write_inputs(tmp_path / "ok.jsonl", [{"x": 1}])
    bad_mem = cli("run", "-i", inputs, "-r", '{"mem": "lots"}', "--", *TASK)
    assert bad_mem.exit_code == 2, bad_mem.output
    assert "resources.mem: malformed memory 'lots'" in flat(bad_mem.stderr)
    assert "Traceback" not in bad_mem.output
    assert cli("status", "nope").exit_code == 2


# submit, then other commands in other processes


def test_submit_then_wait(mode: Mode, tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": i} for i in range(4)])
    sub = slurmrunner("submit", "--json", "-i", inputs, "--", *TASK)
    assert sub.returncode == 0, sub.stderr
    info = json.loads(sub.stdout)
    assert info["n_tasks"] == 4 and info["n_jobs"] >= 1
    assert info["run_dir"] == f"{mode.jobs_dir}/.slurmrunner/runs/{info['run_id']}"
    out = tmp_path / "out.jsonl"
    waited = slurmrunner("wait", info["run_id"][:-2], "-o", out)
    assert waited.returncode == 0, waited.stderr
    assert f"watching run {info['run_id']}" in waited.stderr
    assert [r["index"] for r in read_results(out.read_text())] == [0, 1, 2, 3]
    st = status_of(info["run_id"])
    assert st["state"] == "done" and st["counts"] == {"ok": 4}


def _background(tmp_path: Path, *args: Any) -> tuple[Any, Path]:
    err = tmp_path / f"{args[0]}.err"
    with err.open("wb") as sink:
        proc = start_slurmrunner(*args, stdout=None, stderr=sink)
    return proc, err


def test_signal_to_wait_stops_watching_then_cancel(mode: Mode, tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": i, "sleep": 60} for i in range(2)])
    run_id = cli("submit", "-i", inputs, "--", *TASK).stdout.strip()
    proc, err = _background(tmp_path, "wait", run_id)
    _wait_for(lambda: "watching run" in err.read_text(), 30, err)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert f"stopped watching; run {run_id} goes on" in flat(err.read_text())
    assert status_of(run_id)["state"] in ("submitting", "running")
    cancelled = cli("cancel", run_id)
    assert cancelled.exit_code == 0, cancelled.output
    assert re.search(rf"cancelled \d+ jobs of run {run_id}", flat(cancelled.stderr))
    st = status_of(run_id)
    assert st["state"] == "cancelled" and st["counts"] == {"cancelled": 2}


def test_interrupted_run_is_cancelled(mode: Mode, tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": i, "sleep": 60} for i in range(2)])
    proc, err = _background(tmp_path, "run", "-i", inputs, "--", *TASK)
    run_id = _wait_for(lambda: RUN_LINE.search(err.read_text()), 30, err)[1]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 128 + signal.SIGINT, err.read_text()
    assert re.search(
        rf"interrupted \(SIGINT\): cancelled \d+ jobs of run {run_id}", err.read_text()
    )
    st = status_of(run_id)
    assert st["state"] == "cancelled" and st["counts"] == {"cancelled": 2}


# only with a server


def test_local_options_refused_with_a_server(
    served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    isolate_cli_env(monkeypatch, tmp_path)
    _on_service(monkeypatch, served)
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": 1}])
    for command, option in (("run", "--config"), ("submit", "--profile")):
        refused = cli(command, option, tmp_path / "x.json", "-i", inputs, "--", *TASK)
        assert refused.exit_code == 2
        assert f"{option} is for runs on this machine" in flat(refused.stderr)
    store = cli("status", "last", "--store", tmp_path / "s.sqlite")
    assert store.exit_code == 2 and "--store is for runs on this machine" in flat(store.stderr)
    no_token = cli("runs", "--token", "")
    assert no_token.exit_code == 2 and "needs your API token" in flat(no_token.stderr)
    wrong = cli("runs", "--token", "sr_wrong")
    assert wrong.exit_code == 2 and "refused the token" in flat(wrong.stderr)
