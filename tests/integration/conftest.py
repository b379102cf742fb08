"""The real rig: SLURM + munge + sshd + sudo, brought up by scripts/test (as root).

Every command of the product runs as the rig's server user (`slurmsrv`) through the CLI of the
copy installed with Debian's python3 (scripts/server-install), never as root: sudo then checks
the real whitelist. The tests act as root only to inspect (squeue, bob's view, killing PIDs).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RIG_ENV = {
    k: v.strip('"')
    for k, _, v in (
        line.partition("=")
        for line in (REPO / "scripts/rig.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
}
SERVER = RIG_ENV.get("RIG_SERVER_USER", "slurmsrv")
SLURMRUNNER = "/opt/slurmrunner/venv/bin/slurmrunner"
PYTHON = "/opt/slurmrunner/venv/bin/python"
SHARED = Path("/opt/slurmrunner/it")  # readable by the server user and the cluster users
TASK = str(SHARED / "task_program.py")
PROJECT = "/home/alice/proj"

CONFIG: dict[str, Any] = {
    "default_slurm_config": {
        "partition": "main",
        "cpus_per_task": 1,
        "mem": "100M",
        "time": "00:05:00",
        "extra_lines": ["export SOMEVARIABLE=123", "export ANOTHERVARIABLE=ABC"],
    },
    "gpu_slurm_config": {"partition": "gpu", "gres": "gpu:1"},
    "batching_config": {
        "target_num_jobs": 4,
        "max_num_jobs": 5,
        "target_cpus_per_job": 2,
        "max_cpus_per_job": 2,
        "target_mem_per_job": "1G",
        "max_mem_per_job": "2G",
    },
    "user_local_exports": {
        "LIBRARY_1_CACHE_DIR": "somewhere/library_1",
        "LIBRARY_2_FILE": "somewhere/else/library_2.json",
    },
    "python": "/usr/bin/python3",
}


def profiles() -> dict[str, dict[str, Any]]:
    keys = RIG_ENV.get("RIG_KEYS_DIR", "/etc/slurmrunner-rig/keys")
    return {
        "sudo": {"backend": "slurm_sudo", "username": "alice", "project_dir": PROJECT},
        "ssh": {
            "backend": "slurm_ssh",
            "host": RIG_ENV.get("RIG_SSH_HOST", "127.0.0.1"),
            "port": int(RIG_ENV.get("RIG_SSH_PORT", "2222")),
            "username": "alice",
            "ssh_key_path": f"{keys}/alice_ed25519",
            "known_hosts": RIG_ENV.get("RIG_KNOWN_HOSTS", "/etc/slurmrunner-rig/known_hosts"),
            "project_dir": PROJECT,
        },
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("SLURMRUNNER_RIG") == "1":
        return
    if os.environ.get("CI"):
        return  # in CI the rig must be there: let the fixtures fail loudly
    skip = pytest.mark.skip(reason="needs the rig: run scripts/test as root")
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(skip)


@dataclass
class Srv:
    """Runs the product's CLI as the server user."""

    workdir: Path
    store: str

    def write(self, name: str, data: Any) -> str:
        path = self.workdir / name
        if isinstance(data, list):
            path.write_text("".join(json.dumps(x) + "\n" for x in data))
        else:
            path.write_text(json.dumps(data))
        path.chmod(0o644)
        return str(path)

    def argv(self, *args: str) -> list[str]:
        return [SLURMRUNNER, *args]

    def env(self) -> dict[str, str]:
        return {
            "HOME": f"/home/{SERVER}",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "SLURMRUNNER_STORE": self.store,
        }

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            user=SERVER,
            group=SERVER,
            extra_groups=[],
            env=self.env(),
            cwd="/",
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kw,
        )

    def python(
        self, *args: str, cwd: str = "/", timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """The server's own Python (scripts/server-install), as the server user."""
        return subprocess.run(
            [PYTHON, *args],
            user=SERVER,
            group=SERVER,
            extra_groups=[],
            env=self.env(),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def __call__(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = self.popen(*args)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"timed out: {shlex.join(args)}\n{err}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def files(
        self, profile: dict[str, Any], inputs: list[Any], config: dict[str, Any] | None = None
    ) -> list[str]:
        """--config, --profile and --inputs options, their files readable by the server."""
        tag = f"{time.monotonic_ns()}"
        return [
            "--config",
            self.write(f"config-{tag}.json", config or CONFIG),
            "--profile",
            self.write(f"profile-{tag}.json", profile),
            "--inputs",
            self.write(f"inputs-{tag}.jsonl", inputs),
        ]

    def run_inputs(
        self,
        profile: dict[str, Any],
        inputs: list[Any],
        config: dict[str, Any] | None = None,
        extra: tuple[str, ...] = (),
    ) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
        proc = self("run", *self.files(profile, inputs, config), *extra, "--", TASK)
        return proc, parse_results(proc.stdout)

    def submit(
        self, profile: dict[str, Any], inputs: list[Any], config: dict[str, Any] | None = None
    ) -> str:
        sub = self("submit", *self.files(profile, inputs, config), "--", TASK)
        assert sub.returncode == 0, sub.stderr
        return sub.stdout.strip()


def parse_results(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def squeue(*args: str) -> str:
    """squeue as root. A failing squeue (e.g. "Socket timed out" while the controller is busy
    on a loaded machine) is asked again for up to 30 s: it is the rig answering late, not an
    outcome of the test."""
    argv = ["squeue", "--noheader", "--states=all", *args]
    deadline = time.monotonic() + 30
    while True:
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"{shlex.join(argv)} failed: {proc.stderr}")
        time.sleep(0.5)


def job_ids() -> set[int]:
    """Every job SLURM still lists (finished ones stay for MinJobAge, then leave the list)."""
    return {int(word) for word in squeue("--format=%i").split()}


def jobs_since(before: set[int]) -> set[int]:
    """Jobs submitted since `before` was taken: ids SLURM lists now that it did not then.
    (Comparing whole listings would also see old jobs age out, which is no submission.)"""
    return job_ids() - before


def run_jobs(run_id: str) -> dict[str, str]:
    """The SLURM state of each job of a run, by job name (`sr-<run id>-<k>`)."""
    jobs = {}
    for line in squeue("--format=%j %T").splitlines():
        name, _, state = line.partition(" ")
        if name.startswith(f"sr-{run_id}-"):
            jobs[name] = state.strip()
    return jobs


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    """Poll `predicate` until it returns something true (returned), or fail after `timeout`
    seconds naming `what`. Tests synchronise on conditions, never on a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} ({value!r})")
        time.sleep(step)


class Running:
    """A CLI process whose stdout and stderr are read by threads as they come, so the test
    can look at its progress lines while it runs (and a full pipe never stalls it)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, into), daemon=True)
            for stream, into in ((proc.stdout, self.out), (proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def ended(self) -> None:
        """Fail, with what it said, if the process has already exited (for wait_for)."""
        if self.proc.poll() is not None:
            for reader in self._readers:
                reader.join(10)
            raise AssertionError(
                f"the process ended early (exit {self.proc.returncode}):\n{''.join(self.err)}"
            )

    def stderr_match(self, pattern: str) -> re.Match[str] | None:
        for line in list(self.err):
            if m := re.search(pattern, line):
                return m
        return None

    def wait(self, timeout: float) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"timed out after {timeout}s:\n{''.join(self.err)}") from None
        for reader in self._readers:
            reader.join(30)
        return self.proc.returncode, "".join(self.out), "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def rig() -> dict[str, str]:
    status = subprocess.run([str(REPO / "scripts/cluster-status")], capture_output=True, text=True)
    assert status.returncode == 0, f"the rig is not up: {status.stdout}{status.stderr}"
    assert Path(SLURMRUNNER).exists(), "run scripts/server-install first (scripts/test does)"
    SHARED.mkdir(parents=True, exist_ok=True)
    SHARED.chmod(0o755)
    shutil.copy(Path(__file__).with_name("task_program.py"), TASK)
    os.chmod(TASK, 0o755)
    return RIG_ENV


@pytest.fixture
def srv(rig: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Srv:
    work = SHARED / f"w-{os.getpid()}-{time.monotonic_ns()}"
    work.mkdir(mode=0o755)
    home = Path(f"/home/{SERVER}")
    store = home / f"store-{time.monotonic_ns()}.sqlite"
    yield Srv(work, str(store))
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(params=["sudo", "ssh"])
def profile(request: pytest.FixtureRequest, rig: dict[str, str]) -> dict[str, Any]:
    return profiles()[request.param]
