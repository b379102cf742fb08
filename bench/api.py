#!/usr/bin/env python3
"""CPU per request of the run routes (issue 11): `GET /api/v1/runs/{id}` and `GET
/api/v1/runs` of a user with 5 runs of 500 tasks (half of them finished), and `/healthz`
with `GET /api/v1/me` as the framework's floor, served by uvicorn in a child process; its
CPU from /proc, the latency as one keep-alive client sees it. No SLURM needed.

    .venv/bin/python bench/api.py                              # SQLite
    .venv/bin/python bench/api.py --db "$(cat /etc/slurmrunner-rig/pg.url)"   # PostgreSQL
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/api.py     # another tree, same bench

Each figure is the median of --repeats rounds of --requests requests per route pair.
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")  # Starlette's test client asks for httpx2

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

import slurmrunner  # noqa: E402
from slurmrunner.results import TaskResult  # noqa: E402
from slurmrunner.service import accounts  # noqa: E402
from slurmrunner.service.app import create_app  # noqa: E402
from slurmrunner.service.schemas.users import UserCreate  # noqa: E402


def database(url: str | None, tmp: Path) -> str:
    if not url:
        return f"sqlite:///{tmp / 'bench.sqlite'}"
    schema = f"bench_{secrets.token_hex(4)}"  # a schema of its own, dropped by nobody: small
    with create_engine(url).begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    return (
        make_url(url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )


def seed(db: str, tmp: Path) -> tuple[dict[str, str], list[str]]:
    """A local Resource, a user with a Profile on it, 5 runs of 500 tasks, 250 finished."""
    app = create_app(db, watch=False)
    with TestClient(app) as client, app.state.sessionmaker() as s:
        admin = accounts.create_user(s, UserCreate(email="a@x.org", is_superuser=True))
        head = {"Authorization": f"Bearer {accounts.issue_token(s, admin, 't')[1]}"}
        body = {"name": "here", "type": "local", "jobs_runner_config": {}}
        resource = client.post("/api/v1/admin/resources", json=body, headers=head).json()
        (tmp / "u").mkdir(mode=0o700)
        body = {"name": "u", "resource_id": resource["id"], "jobs_remote_dir": str(tmp / "u")}
        profile = client.post("/api/v1/admin/profiles", json=body, headers=head).json()
        user = accounts.create_user(s, UserCreate(email="u@x.org", profile_id=profile["id"]))
        headers = {"Authorization": f"Bearer {accounts.issue_token(s, user, 't')[1]}"}
        ids = []
        for _ in range(5):
            body = {"command": ["/bin/true"], "inputs": [{"i": i} for i in range(500)]}
            made = client.post("/api/v1/runs", json=body, headers=headers)
            assert made.status_code == 201, made.text
            ids.append(made.json()["id"])
            results = [TaskResult(index=i, status="ok", duration_s=0.1) for i in range(250)]
            app.state.store.save_results(ids[-1], results)
    return headers, ids


def serve(db: str, port: int) -> subprocess.Popen[bytes]:
    code = (
        "import uvicorn; from slurmrunner.service.app import create_app; "
        f"uvicorn.run(create_app({db!r}, watch=False), host='127.0.0.1', port={port}, "
        "log_level='warning', access_log=False)"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="a PostgreSQL URL (default: a SQLite file)")
    ap.add_argument("--requests", type=int, default=200, help="per route, per round")
    ap.add_argument("--repeats", type=int, default=3)
    opts = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sr-bench-api-"))
    db = database(opts.db, tmp)
    headers, ids = seed(db, tmp)
    port = 20000 + os.getpid() % 20000
    server = serve(db, port)
    try:
        for _ in range(200):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port)
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                break
            except OSError:
                time.sleep(0.1)
        pairs = {
            "runs": (lambda k: f"/api/v1/runs/{ids[k % 5]}", lambda k: "/api/v1/runs"),
            "floor": (lambda k: "/healthz", lambda k: "/api/v1/me"),
        }
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in pairs}
        for _ in range(opts.repeats):
            for name, paths in pairs.items():
                c0, t0 = cpu_s(server.pid), time.perf_counter()
                for k in range(opts.requests):
                    for path in paths:
                        conn.request("GET", path(k), headers=headers)
                        got = conn.getresponse()
                        got.read()
                        assert got.status == 200, (path(k), got.status)
                n = 2 * opts.requests
                cpu = (cpu_s(server.pid) - c0) / n * 1000
                rows[name].append((cpu, (time.perf_counter() - t0) / n * 1000))
    finally:
        server.terminate()
        server.wait()
    where = Path(slurmrunner.__file__).parent.parent
    print(f"slurmrunner from {where}; {'PostgreSQL' if opts.db else 'SQLite'}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, got in rows.items():
        cpu = statistics.median(c for c, _ in got)
        wall = statistics.median(w for _, w in got)
        label = "run detail + list" if name == "runs" else "healthz + me (floor)"
        print(f"  {label:22} {cpu:6.2f} ms CPU/request  {wall:6.2f} ms wall/request")


if __name__ == "__main__":
    main()
