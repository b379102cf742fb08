"""The multi-user service on the rig: a PostgreSQL database of its own, `slurmrunner serve` as
the server user (the server venv's Python), and an HTTP client per user.

Used by test_service_rig.py. The tests act as root only to set up (the database, files the
server user reads) and to inspect (squeue, sacct, /proc); every request goes over HTTP to the
server, which acts for the cluster users through sudo or SSH exactly as in production.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from .conftest import PYTHON, RIG_ENV, SERVER, SHARED

PG_URL = os.environ.get("SLURMRUNNER_TEST_PG_URL", "")
CLUSTER_USERS = RIG_ENV.get("RIG_USERS", "alice bob").split()
SSH_USER = RIG_ENV.get("RIG_SSH_USER", "svc")
KEYS_DIR = RIG_ENV.get("RIG_KEYS_DIR", "/etc/slurmrunner-rig/keys")
TASK = SHARED / "service_task.py"
# -S: no site import, the task's own start-up is most of its cost and the rig has 2 CPUs.
COMMAND = ["/usr/bin/python3", "-S", str(TASK)]
TASK_SOURCE = '''#!/usr/bin/python3 -S
"""The service rig's task: {"x": n, "sleep": s} -> {"square": n*n, "uid": the uid it ran as}."""
import json, os, sys, time
argv = sys.argv
with open(argv[argv.index("--args-json") + 1]) as fh:
    args = json.load(fh)
time.sleep(args.get("sleep", 0))
with open(argv[argv.index("--out-json") + 1], "w") as fh:
    json.dump({"square": args["x"] * args["x"], "uid": os.getuid()}, fh)
'''
FINISHED = ("done", "failed", "cancelled")
# A restarted PostgreSQL or server answers within seconds; a minute means it is not coming.
RETRY_S = 60.0


def install_task() -> None:
    TASK.write_text(TASK_SOURCE)
    TASK.chmod(0o755)


# ------------------------------------------------------------------------------ database


def fresh_database(base_url: str) -> str:
    """A new, empty database next to the rig's own (the role has CREATEDB); its URL."""
    name = f"sr_service_rig_{secrets.token_hex(4)}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def drop_database(base_url: str, url: str) -> None:
    name = make_url(url).database
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            # A server killed by a test may have left sessions behind: they are ended first.
            # Not WITH (FORCE): it would also end an autovacuum worker busy there, which a role
            # that is not a superuser may not (CI once: InsufficientPrivilege); a plain DROP
            # stops autovacuum itself and waits up to 5 s for the ended sessions to go.
            ours = (
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND usename = current_user AND pid <> pg_backend_pid()"
            )
            conn.execute(text(ours), {"name": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()


def write_shared(name: str, data: Any) -> str:
    """A file the server user can read (the admin CLI's --config)."""
    path = SHARED / name
    path.write_text(json.dumps(data))
    path.chmod(0o644)
    return str(path)


# ------------------------------------------------------------------------------- server


def server_env(db_url: str) -> dict[str, str]:
    # The URL holds the password: in the environment, never on a command line (ps shows it).
    return {
        "HOME": f"/home/{SERVER}",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "SLURMRUNNER_DB": db_url,
    }


def as_server(db_url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m slurmrunner ARGS` with the server venv's Python, as the server user."""
    return subprocess.run(
        [PYTHON, "-m", "slurmrunner", *args],
        user=SERVER,
        group=SERVER,
        extra_groups=[],
        env=server_env(db_url),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def admin_cli(db_url: str, *args: str) -> str:
    proc = as_server(db_url, "admin", *args)
    assert proc.returncode == 0, f"admin {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@dataclass
class Service:
    """`slurmrunner serve` as the server user on `db_url`; every start logs to `log_path`."""

    db_url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    starts: int = 0

    def start(self, timeout: float = 60) -> None:
        self.starts += 1
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "slurmrunner", "serve", "--host", "127.0.0.1", "--port", "0"],
                user=SERVER,
                group=SERVER,
                extra_groups=[],
                env=server_env(self.db_url),
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not (m := re.search(r"listening on (http://\S+)", self.log_since(offset))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not start:\n{self.log_tail()}")
            time.sleep(0.05)
        self.url = m.group(1)
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve does not answer /healthz:\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, by PID: no shutdown code of the service runs."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(45)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_since(0)[-chars:]


@dataclass
class Api:
    """One user's HTTP client. Follows the service across restarts (its URL is read per
    request); a 503 or a refused connection is asked again for up to RETRY_S seconds."""

    service: Service
    token: str
    email: str = ""
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60))

    def request(self, method: str, path: str, retry: bool = True, **kw: Any) -> httpx.Response:
        deadline = time.monotonic() + RETRY_S
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        while True:
            try:
                resp = self.client.request(
                    method, f"{self.service.url}{path}", headers=headers, **kw
                )
                if resp.status_code != 503 or not retry:
                    return resp
            except httpx.TransportError:
                if not retry:
                    raise
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path}: no answer but 503 for {RETRY_S:.0f}s")
            time.sleep(0.2)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, expect: int = 201) -> Any:
        resp = self.request("POST", path, json=body)
        assert resp.status_code == expect, f"POST {path} -> {resp.status_code}: {resp.text}"
        return resp.json()

    def ok(self, path: str) -> Any:
        resp = self.get(path)
        assert resp.status_code == 200, f"GET {path} -> {resp.status_code}: {resp.text}"
        return resp.json()

    def text(self, path: str) -> str:
        resp = self.get(path)
        assert resp.status_code == 200, f"GET {path} -> {resp.status_code}: {resp.text}"
        return resp.text

    def submit(self, inputs: list[Any], resources: dict[str, Any] | None = None) -> str:
        body = {"command": COMMAND, "inputs": inputs, "resources": resources}
        return str(self.post("/api/v1/runs", body)["id"])

    def results(self, run_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after = -1
        while True:
            page = self.ok(f"/api/v1/runs/{run_id}/results?after={after}&limit=5000")
            items += page["items"]
            if page["next_after"] is None:
                return items
            after = page["next_after"]


def wait_runs(
    runs: dict[str, Api], timeout: float, on_poll: Callable[[], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Each run's detail once it has finished; fails naming the runs still going."""
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    while True:
        for run_id, api in runs.items():
            if run_id not in done:
                detail = api.ok(f"/api/v1/runs/{run_id}")
                if detail["state"] in FINISHED:
                    done[run_id] = detail
        if len(done) == len(runs):
            return done
        if on_poll is not None:
            on_poll()
        if time.monotonic() > deadline:
            left = {r: api.ok(f"/api/v1/runs/{r}")["state"] for r, api in runs.items()}
            raise AssertionError(f"runs not finished after {timeout:.0f}s: {left}")
        time.sleep(0.5)


def check_results(api: Api, run_id: str, xs: list[int], uid: int) -> None:
    """Every task ok, its result the square of its input, computed as `uid`."""
    found = api.results(run_id)
    assert [r["index"] for r in found] == list(range(len(xs))), f"run {run_id}: results missing"
    bad = [r for r in found if r["status"] != "ok"]
    assert not bad, f"run {run_id}: {len(bad)} not ok, first: {bad[0]}"
    assert [r["result"]["square"] for r in found] == [x * x for x in xs]
    assert {r["result"]["uid"] for r in found} == {uid}, f"run {run_id} ran as another uid"


# ------------------------------------------------------------------------------ metrics

Sample = tuple[str, frozenset[tuple[str, str]]]
_LINE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(body: str) -> dict[Sample, float]:
    """The Prometheus text format, as {(name, labels): value}."""
    found: dict[Sample, float] = {}
    for line in body.splitlines():
        if line.startswith("#") or not (m := _LINE.match(line)):
            continue
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        found[(m.group(1), labels)] = float(m.group(3))
    return found


def samples(metrics: dict[Sample, float], name: str, **match: str) -> dict[str, float]:
    """Values of metric `name` whose labels include `match`, keyed by their other labels."""
    out: dict[str, float] = {}
    for (n, labels), value in metrics.items():
        if n != name or not set(match.items()) <= labels:
            continue
        rest = ",".join(f"{k}={v}" for k, v in sorted(labels) if k not in match)
        out[rest] = value
    return out


# ------------------------------------------------------------------------------- SLURM


def slurm_job_names(prefixes: list[str]) -> list[str]:
    """Every job name SLURM lists (finished ones too, for MinJobAge = 300 s) that starts with
    one of `prefixes`, once per job: a name twice is a job submitted twice."""
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%j"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [n for n in out.split() if n.startswith(tuple(prefixes))]


def sacct_job_names(prefixes: list[str], since: str) -> list[str]:
    """The same from accounting (every user's allocations since `since`, no steps)."""
    out = subprocess.run(
        ["sacct", "--allusers", "-X", "-n", "-P", "-o", "JobName", "-S", since],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [n for n in out.split() if n.startswith(tuple(prefixes))]
