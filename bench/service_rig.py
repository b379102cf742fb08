"""bench/service.py's tools: a PostgreSQL database of its own, `slurmrunner serve` as the server
user, and a small HTTP client. Standard library only, like bench.py (run by /usr/bin/python3
as root; the server runs with the server venv's Python as slurmsrv).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def env_file(name: str) -> dict[str, str]:
    """KEY=VALUE lines of scripts/rig.env or scripts/pg.env (plain literals by contract)."""
    return {
        k: v.strip('"')
        for k, _, v in (
            line.partition("=")
            for line in (REPO / "scripts" / name).read_text().splitlines()
            if "=" in line and not line.lstrip().startswith("#")
        )
    }


PG_ENV = env_file("pg.env")


# ------------------------------------------------------------------------------ database


def fresh_database(name: str) -> str:
    """A new empty database on the rig's PostgreSQL (scripts/pg-up --fresh-db); its URL."""
    proc = subprocess.run(
        [str(REPO / "scripts/pg-up"), "--fresh-db", name], capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"pg-up --fresh-db {name} failed: {proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def drop_database(name: str) -> None:
    sql = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    where = ["-h", PG_ENV["RIG_PG_SOCKET_DIR"], "-p", PG_ENV["RIG_PG_PORT"], "-d", "postgres"]
    psql = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", *where]
    subprocess.run([*psql, "-c", sql], capture_output=True, check=True)


# ------------------------------------------------------------------------------- server


class Server:
    """`python -m slurmrunner serve` (and `admin ...`) as `user` with `python`, on `db_url`."""

    def __init__(
        self, python: str, user: str, db_url: str, log_path: Path, log_level: str = "warning"
    ) -> None:
        self.python, self.user, self.db_url, self.log_path = python, user, db_url, log_path
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def env(self) -> dict[str, str]:
        # The URL holds the password: in the environment, never on a command line.
        return {
            "HOME": f"/home/{self.user}",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "SLURMRUNNER_DB": self.db_url,
        }

    def admin(self, *args: str) -> str:
        proc = subprocess.run(
            [self.python, "-m", "slurmrunner", "admin", *args],
            user=self.user,
            group=self.user,
            extra_groups=[],
            env=self.env(),
            cwd="/",
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode:
            raise RuntimeError(f"admin {' '.join(args)}: {proc.stderr[-2000:]}")
        return proc.stdout

    def start(self, timeout: float = 60) -> None:
        # --log-level warning by default: no access-log line per request (it would be most
        # of the server's CPU under the latency probe's 40 requests a second).
        argv = [self.python, "-m", "slurmrunner", "serve", "--host", "127.0.0.1", "--port", "0"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*argv, "--log-level", self.log_level],
                user=self.user,
                group=self.user,
                extra_groups=[],
                env=self.env(),
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not (m := re.search(r"listening on (http://\S+)", self.log_path.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        self.url = m.group(1)
        health = Http(self.url, None)
        while True:
            try:
                if health.call("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("serve does not answer /healthz")
            time.sleep(0.05)

    def cpu(self) -> tuple[float, float]:
        """(its own CPU s: every thread, user + system; its reaped children's: sudo, ...)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        return (utime + stime) / tick, (cutime + cstime) / tick

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it does not leave within 45 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(45)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


# --------------------------------------------------------------------------------- HTTP


class Http:
    """JSON over HTTP/1.1 keep-alive, one connection per thread; a dropped connection is
    opened again once. Returns (status, body)."""

    def __init__(self, base: str, token: str | None) -> None:
        parts = urllib.parse.urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        return conn

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=self.headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, data = self.call(method, path, body)
        if status != expect:
            raise RuntimeError(f"{method} {path} -> {status}: {data[:500]!r}")
        return json.loads(data)


class Probe(threading.Thread):
    """GET /api/v1/runs/{id} and GET /api/v1/runs, a pair every ~50 ms, round the users; each
    request's latency as the client sees it."""

    def __init__(
        self, clients: dict[str, Http], runs: dict[str, list[str]], users: list[str]
    ) -> None:
        super().__init__(daemon=True)
        self.clients, self.runs, self.users = clients, runs, users
        self.latencies: list[float] = []
        self.by_kind: dict[str, list[float]] = {"detail": [], "list": []}
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        k = 0
        while not self.halt.is_set():
            start = time.perf_counter()
            user = self.users[k % len(self.users)]
            run_id = self.runs[user][(k // len(self.users)) % len(self.runs[user])]
            for kind, path in (("detail", f"/api/v1/runs/{run_id}"), ("list", "/api/v1/runs")):
                t = time.perf_counter()
                status, _ = self.clients[user].call("GET", path)
                self.latencies.append(time.perf_counter() - t)
                self.by_kind[kind].append(self.latencies[-1])
                self.errors += status != 200
            k += 1
            self.halt.wait(max(0.0, 0.05 - (time.perf_counter() - start)))


# ------------------------------------------------------------------------------ metrics

_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format -> (name, labels, value) samples."""
    out = []
    for line in text.splitlines():
        if not line.startswith("#") and (m := _SAMPLE.match(line)):
            out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def metric(samples: list[tuple[str, dict[str, str], float]], name: str, **match: str) -> list:
    """The values of `name` whose labels include `match`."""
    return [
        v
        for n, labels, v in samples
        if n == name and all(labels.get(k) == x for k, x in match.items())
    ]


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else float("nan")


def at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every callable in its own thread, released together; their results (or the
    exception each raised) in order."""
    gate = threading.Barrier(len(calls) + 1)
    out: list[Any] = [None] * len(calls)

    def one(k: int) -> None:
        gate.wait(60)
        try:
            out[k] = calls[k]()
        except Exception as exc:  # reported by the caller, never lost in a thread
            out[k] = exc

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(calls))]
    for t in threads:
        t.start()
    gate.wait(60)
    for t in threads:
        t.join()
    return out
