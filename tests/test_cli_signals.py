"""SIGINT, SIGTERM and SIGHUP to `run` (and `wait`): the run is cancelled and recorded, no
task process is left, and the exit status is 128 + the signal, also during submission and
when the terminal is already gone."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from slurmrunner.store import Store
from tests.helpers_cli import isolate_cli_env, slurmrunner, start_slurmrunner

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
# A task that says where it runs (its pid) and then sleeps for as long as it is left alone.
TASK = """\
import json, os, sys, time
args = json.load(open(sys.argv[sys.argv.index("--args-json") + 1]))
open(os.path.join(args["pids"], str(os.getpid())), "w").close()
time.sleep(args.get("sleep", 120))
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    isolate_cli_env(monkeypatch, tmp_path)


class Stderr:
    """The process's standard error, read as it comes, in a thread (the pipe never fills)."""

    def __init__(self, proc):
        self.proc = proc
        self.text = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        fd = self.proc.stderr.fileno()
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            with self._lock:
                self.text += chunk.decode(errors="replace")

    def wait_for(self, pattern, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = re.search(pattern, self.text, re.MULTILINE)
            if found:
                return found
            if self.proc.poll() is not None and not self._thread.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} in stderr:\n{self.text}")

    def close(self):
        """Stop reading and close our end: the process's next write to stderr fails."""
        self._stop.set()
        self._thread.join()
        self.proc.stderr.close()

    def finish(self):
        self._thread.join(timeout=30)
        return self.text


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def wait_for_pids(folder: Path, n, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(folder.iterdir())
        if len(found) >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"only {len(list(folder.iterdir()))} of {n} tasks started")


def assert_no_task_left(folder: Path, timeout=30.0):
    pids = [int(p.name) for p in folder.iterdir()]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "task processes left running"


def assert_cancelled(run_id, n_tasks):
    store = Store()
    assert store.run(run_id).state == "cancelled"
    results = store.results(run_id)
    assert sorted(results) == list(range(n_tasks))
    assert {r.status for r in results.values()} <= {"cancelled", "failed"}


@pytest.fixture
def setup(tmp_path, project_dir, local_profile_file):
    task = tmp_path / "task.py"
    task.write_text(TASK)
    pids = tmp_path / "pids"
    pids.mkdir()

    def inputs(n, **extra):
        path = tmp_path / f"in-{n}.jsonl"
        path.write_text("".join(json.dumps({"pids": str(pids), **extra}) + "\n" for _ in range(n)))
        return path

    return {"task": task, "pids": pids, "inputs": inputs, "profile": local_profile_file}


def start_run(setup, n, *extra, **popen):
    return start_slurmrunner(
        "run",
        "-p",
        setup["profile"],
        "-i",
        setup["inputs"](n),
        *extra,
        "--",
        sys.executable,
        setup["task"],
        **popen,
    )


def test_sighup_with_the_terminal_gone(setup):
    """After SIGHUP nothing can be printed (here: stderr's reader has left); the run is
    cancelled all the same and the exit status stays 129."""
    proc = start_run(setup, 3)
    err = Stderr(proc)
    run_id = err.wait_for(r"^run (\S+):")[1]
    wait_for_pids(setup["pids"], 1)
    err.close()
    proc.stdout.close()
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 129
    assert_cancelled(run_id, 3)
    assert_no_task_left(setup["pids"])


def test_sigterm_to_wait_stops_watching_only(setup):
    # `wait` is a watcher: the run it looks at belongs to whoever submitted it.
    sub = slurmrunner(
        "submit",
        "-p",
        setup["profile"],
        "-i",
        setup["inputs"](3),
        "--",
        sys.executable,
        setup["task"],
    )
    assert sub.returncode == 0, sub.stderr
    run_id = sub.stdout.strip()
    wait_for_pids(setup["pids"], 1)
    proc = start_slurmrunner("wait", run_id)
    err = Stderr(proc)
    err.wait_for(r"watching run ")  # its signal handlers are in place from here on
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, err.finish()
    assert f"stopped watching; run {run_id} goes on" in re.sub(r"\s+", " ", err.finish())
    assert Store().run(run_id).state == "running"
    assert any(alive(int(p.name)) for p in setup["pids"].iterdir())  # its tasks still run
    assert slurmrunner("cancel", run_id).returncode == 0
    assert_cancelled(run_id, 3)
    assert_no_task_left(setup["pids"])


def test_ignored_hangup_stays_ignored(setup):
    """`nohup slurmrunner run ...` asked for SIGHUP to be ignored: it is."""

    def ignore_hup():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc = start_run(setup, 1, preexec_fn=ignore_hup)
    err = Stderr(proc)
    err.wait_for(r"^run (\S+):")
    wait_for_pids(setup["pids"], 1)
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert proc.poll() is None  # still running
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, err.finish()
    err.finish()
    assert_no_task_left(setup["pids"])
