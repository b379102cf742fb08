"""The local backend through the real CLI, one process per command, as people use it.

Each test gets its own run store and local queue (so its own supervisor). Processes of a run
are found by the job name every local job carries in its environment (tasks inherit it), and
by the process groups the queue recorded: "no process left" means both are empty.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from slurmrunner.store import Store
from tests.conftest import EXAMPLES
from tests.helpers_cli import write_inputs

TASK = str(EXAMPLES / "task.py")
REPO = Path(__file__).resolve().parents[1]
RUN_ID_RE = re.compile(r"\b(\d{8}-\d{6}-[0-9a-f]{6})\b")


@pytest.fixture
def env(tmp_path):
    values = dict(os.environ)
    values["SLURMRUNNER_STORE"] = str(tmp_path / "state" / "runs.sqlite")
    values["SLURMRUNNER_LOCAL_QUEUE"] = str(tmp_path / "state" / "local-queue.sqlite")
    values["SLURMRUNNER_TEST_CWD"] = str(tmp_path)  # where the commands run: runs go below
    values["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")  # no default files of the machine's user
    for key in ("SLURMRUNNER_CONFIG", "SLURMRUNNER_PROFILE"):
        values.pop(key, None)
    return values


def command(*args):
    return [sys.executable, "-m", "slurmrunner", *[str(a) for a in args]]


def cli(env, *args, cwd=None, timeout=120):
    return subprocess.run(
        command(*args),
        env=env,
        cwd=cwd or env["SLURMRUNNER_TEST_CWD"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Background:
    """A CLI process whose stdout and stderr are collected as they come (two threads: neither
    pipe ever fills, and nothing is read twice)."""

    def __init__(self, env, *args, cwd=None):
        self.proc = subprocess.Popen(
            command(*args),
            env=env,
            cwd=cwd or env["SLURMRUNNER_TEST_CWD"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A suite started in the background passes SIGINT down ignored; the CLI keeps
            # an ignored signal ignored, so give it the defaults a terminal would.
            preexec_fn=_default_signals,
        )
        self.err: list[str] = []
        self.out: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line)

    def run_id(self, timeout=30.0) -> str:
        def found():
            for line in self.err:
                if m := RUN_ID_RE.search(line):
                    return m[1]
            return None

        wait_until(lambda: found() is not None, timeout, f"no run id in {self.err}")
        return str(found())

    def finish(self, timeout=120):
        self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return self.proc.returncode, "".join(self.out), "".join(self.err)


def _default_signals():
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def wait_until(condition, timeout, message="condition not met"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{message} after {timeout}s")


def processes_of(run_id: str) -> list[int]:
    """Every live process that carries one of the run's job names in its environment."""
    marker = f"SLURMRUNNER_JOB_NAME=sr-{run_id}-".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_bytes()
        except OSError:
            continue
        if marker in environ and state[state.rfind(b")") + 2 :][:1] != b"Z":
            pids.append(int(entry.name))
    return pids


def job_groups(env, run_id: str) -> list[int]:
    db = sqlite3.connect(env["SLURMRUNNER_LOCAL_QUEUE"])
    rows = db.execute(
        "SELECT pid FROM jobs WHERE name LIKE ? AND pid IS NOT NULL", (f"sr-{run_id}-%",)
    ).fetchall()
    db.close()
    return [r[0] for r in rows]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_nothing_left(env, run_id: str) -> None:
    groups = job_groups(env, run_id)
    wait_until(
        lambda: not processes_of(run_id) and not any(map(group_alive, groups)),
        30,
        f"processes of run {run_id} still alive: {processes_of(run_id)}",
    )


def write_config(path: Path, jobs: int) -> Path:
    path.write_text(
        json.dumps(
            {
                "batching_config": {
                    "target_num_jobs": jobs,
                    "max_num_jobs": jobs,
                    "target_cpus_per_job": 1,
                    "max_cpus_per_job": 1,
                    "cap_jobs_to_partition": False,
                }
            }
        )
    )
    return path


def results_of(env, run_id):
    return Store(env["SLURMRUNNER_STORE"]).results(run_id)


# a second process looks at a run


def test_status_and_wait_from_another_process_change_nothing(tmp_path, env):
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": i, "sleep": 1} for i in range(8)])
    config = write_config(tmp_path / "c.json", 2)
    main = Background(env, "run", "-c", config, "-i", inputs, "--", sys.executable, TASK)
    run_id = main.run_id()
    wait_until(lambda: len(processes_of(run_id)) >= 2, 30, "tasks never started")
    looked = cli(env, "status", run_id)
    assert looked.returncode == 0, looked.stderr
    assert "lost" not in looked.stdout + looked.stderr
    assert "RUNNING" in looked.stdout + looked.stderr
    assert results_of(env, run_id) == {} or all(
        r.status == "ok" for r in results_of(env, run_id).values()
    )
    second = cli(env, "wait", run_id)
    code, out, err = main.finish()
    assert code == 0, err
    assert second.returncode == 0, second.stderr
    for text in (out, second.stdout):
        results = [json.loads(line) for line in text.splitlines()]
        assert [r["status"] for r in results] == ["ok"] * 8
    assert Store(env["SLURMRUNNER_STORE"]).run(run_id).state == "done"


def test_submit_then_wait_from_another_process(tmp_path, env):
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": i} for i in range(50)])
    config = write_config(tmp_path / "c.json", 10)
    submitted = cli(env, "submit", "-c", config, "-i", inputs, "--", sys.executable, TASK)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip().splitlines()[-1]
    assert RUN_ID_RE.fullmatch(run_id)
    waited = cli(env, "wait", run_id)
    assert waited.returncode == 0, waited.stderr
    results = [json.loads(line) for line in waited.stdout.splitlines()]
    assert [r["status"] for r in results] == ["ok"] * 50
    assert [r["result"]["square"] for r in results] == [i * i for i in range(50)]
    # 10 jobs on a machine of fewer CPUs: the later ones started as CPUs freed up
    assert len({r["job_id"] for r in results}) == 10


def test_cancel_from_another_process_leaves_no_process(tmp_path, env):
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": i, "sleep": 300} for i in range(6)])
    config = write_config(tmp_path / "c.json", 3)
    submitted = cli(env, "submit", "-c", config, "-i", inputs, "--", sys.executable, TASK)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip().splitlines()[-1]
    wait_until(lambda: len(processes_of(run_id)) >= 2, 30, "tasks never started")
    cancelled = cli(env, "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert_nothing_left(env, run_id)
    results = results_of(env, run_id)
    assert sorted(results) == list(range(6))
    assert {r.status for r in results.values()} == {"cancelled"}
    assert Store(env["SLURMRUNNER_STORE"]).run(run_id).state == "cancelled"


# signals to `run`

SIGNALS = [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)]


@pytest.mark.parametrize(("signum", "code"), SIGNALS, ids=["TERM", "HUP", "INT"])
def test_signal_to_run_cancels_everything(tmp_path, env, signum, code):
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": i, "sleep": 300} for i in range(4)])
    config = write_config(tmp_path / "c.json", 2)
    main = Background(env, "run", "-c", config, "-i", inputs, "--", sys.executable, TASK)
    run_id = main.run_id()
    wait_until(lambda: len(processes_of(run_id)) >= 2, 30, "tasks never started")
    main.proc.send_signal(signum)
    returncode, _, err = main.finish(timeout=60)
    assert returncode == code, err
    assert_nothing_left(env, run_id)
    assert Store(env["SLURMRUNNER_STORE"]).run(run_id).state == "cancelled"
    assert {r.status for r in results_of(env, run_id).values()} == {"cancelled"}


@pytest.mark.parametrize(("signum", "code"), SIGNALS, ids=["TERM", "HUP", "INT"])
def test_signal_during_submission_cancels_what_went_through(tmp_path, env, signum, code):
    # 400 one-task jobs: submitting them takes long enough to be interrupted half-way.
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": i, "sleep": 300} for i in range(400)])
    config = write_config(tmp_path / "c.json", 400)
    main = Background(env, "run", "-c", config, "-i", inputs, "--", sys.executable, TASK)
    run_id = main.run_id()  # printed before the first job is submitted
    main.proc.send_signal(signum)
    returncode, _, err = main.finish(timeout=60)
    assert returncode == code, err
    jobs = Store(env["SLURMRUNNER_STORE"]).jobs(run_id)
    assert all(j.done and j.state == "CANCELLED" for j in jobs)
    assert any(j.job_id is None for j in jobs), "the signal came after the last submission"
    assert_nothing_left(env, run_id)
    assert Store(env["SLURMRUNNER_STORE"]).run(run_id).state == "cancelled"
    # Nothing of it starts later either: no job of the run is left waiting in the queue.
    db = sqlite3.connect(env["SLURMRUNNER_LOCAL_QUEUE"])
    waiting = db.execute(
        "SELECT COUNT(*) FROM jobs WHERE name LIKE ? AND state IN ('PENDING', 'RUNNING')",
        (f"sr-{run_id}-%",),
    ).fetchone()[0]
    assert waiting == 0


# failures where the user looks


def test_every_failure_is_printed_with_its_log(tmp_path, env):
    inputs = [{"x": i} for i in range(10)]
    for i in (2, 5, 7):
        inputs[i] = {"x": i, "fail": 3}
    path = write_inputs(tmp_path / "in.jsonl", inputs)
    code, _, err = Background(env, "run", "-i", path, "--", sys.executable, TASK).finish()
    assert code == 1
    flat = re.sub(r"\s+", " ", err)
    run_id = RUN_ID_RE.search(err)[1]
    for i in (2, 5, 7):
        assert re.search(rf"task {i}\b", flat), flat
        assert f"logs/{i}.log" in flat
    assert flat.count("failing on purpose with status 3") >= 3
    assert "3 failed" in flat and f"slurmrunner results {run_id} --failed" in flat
    listed = cli(env, "results", run_id, "--failed")
    assert listed.returncode == 0, listed.stderr
    failed = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["index"] for r in failed] == [2, 5, 7]


def test_max_failures_stops_the_run_early(tmp_path, env):
    inputs = [{"x": i, "sleep": 0.5} for i in range(100)]
    inputs[0] = {"x": 0, "fail": 2}
    path = write_inputs(tmp_path / "in.jsonl", inputs)
    main = Background(env, "run", "--max-failures", "1", "-i", path, "--", sys.executable, TASK)
    code, out, err = main.finish()
    assert code == 1, err
    results = [json.loads(line) for line in out.splitlines()]
    statuses = [r["status"] for r in results]
    assert statuses[0] == "failed"
    assert statuses.count("cancelled") >= 50, statuses
    run_id = RUN_ID_RE.search(err)[1]
    assert_nothing_left(env, run_id)


# paths as people have them


def _readme_python_blocks() -> tuple[str, list[str]]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    api = text[text.index("## Python API") :]
    api = api[: api.index("\n## ", 4)]
    return blocks[0], re.findall(r"```python\n(.*?)```", api, re.S)


def test_readme_python_example_in_a_folder_with_space_and_accent(tmp_path, env):
    square, api_blocks = _readme_python_blocks()
    folder = tmp_path / "My Project é"
    folder.mkdir()
    (folder / "square.py").write_text(square)
    assert api_blocks
    for block in api_blocks:
        proc = subprocess.run(
            [sys.executable, "-c", block],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
    first = subprocess.run(
        [sys.executable, "-c", api_blocks[0]], cwd=folder, env=env, capture_output=True, text=True
    )
    assert first.stdout.split("\n")[:2] == [
        "0 True {'x': 0, 'square': 0}",
        "1 True {'x': 1, 'square': 1}",
    ]


def test_cli_run_from_a_folder_with_space_and_accent(tmp_path, env):
    folder = tmp_path / "My Project é"
    folder.mkdir()
    (folder / "task.py").write_text(Path(TASK).read_text())
    inputs = write_inputs(folder / "in puts.jsonl", [{"x": i} for i in range(5)])
    proc = cli(env, "run", "-i", inputs.name, "--", "python3", "task.py", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["result"]["square"] for r in results] == [0, 1, 4, 9, 16]
    assert all(r["log"].startswith(str(folder)) for r in results)


def test_local_jobs_inherit_the_submitters_environment(tmp_path, env):
    # As a command typed in that shell would: the submitting shell's variables, not those of
    # the process that happens to watch or start the job later.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, os, sys\n"
        "args = sys.argv[sys.argv.index('--out-json') + 1]\n"
        "json.dump({'v': os.environ.get('MY_SETTING')}, open(args, 'w'))\n"
    )
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": 1}])
    submitted = cli(
        {**env, "MY_SETTING": "from the submitting shell"},
        "submit",
        "-i",
        inputs,
        "--",
        sys.executable,
        probe,
    )
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip().splitlines()[-1]
    waited = cli(env, "wait", run_id)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["result"] == {"v": "from the submitting shell"}
