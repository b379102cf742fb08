"""A run route holds no database connection of its request while it works through the Store.

Both draw from one pool: a request that kept its session's connection while the Store waited
for another would, with as many requests at once as the pool has connections, leave every
request waiting until the pool's timeout (seen on the rig: 40 runs POSTed at once, a pool of
15, every request a 500 after 30 s). A pool of one connection shows it with a single request.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from slurmrunner.pacing import PollPolicy
from slurmrunner.service import migrate
from slurmrunner.service.app import create_app
from tests.service.conftest import TestClient

FAST = PollPolicy(read_min_s=0.05, read_max_s=0.3, squeue_min_s=0.1, squeue_max_s=0.5)
SQUARE = [
    sys.executable,
    "-c",
    "import json,sys; a=sys.argv[sys.argv.index('--args-json')+1];"
    "o=sys.argv[sys.argv.index('--out-json')+1];"
    "json.dump(json.load(open(a))['x']**2, open(o,'w'))",
]


@pytest.fixture
def app(db_url: str) -> Any:
    extra: dict[str, Any] = {}
    if db_url.startswith("sqlite"):
        extra["connect_args"] = {"check_same_thread": False}
    # pool_timeout: long enough for the watcher thread's brief uses, short enough to fail fast.
    engine = create_engine(db_url, pool_size=1, max_overflow=0, pool_timeout=5, **extra)
    migrate.upgrade(engine)
    return create_app(engine=engine, poll=FAST)


def test_run_routes_work_with_a_pool_of_one_connection(
    client: TestClient, admin: dict[str, str], make_user: Any, tmp_path: Path
) -> None:
    body: dict[str, Any] = {"name": "here", "type": "local", "jobs_runner_config": {}}
    resource = client.post("/api/v1/admin/resources", json=body, headers=admin).json()
    folder = tmp_path / "ann"
    folder.mkdir(mode=0o700)
    body = {"name": "ann", "resource_id": resource["id"], "jobs_remote_dir": str(folder)}
    profile = client.post("/api/v1/admin/profiles", json=body, headers=admin).json()
    user = make_user("ann@example.org", profile_id=profile["id"])[1]

    assert client.get("/api/v1/runs", headers=user).status_code == 200
    posted = client.post(
        "/api/v1/runs", json={"command": SQUARE, "inputs": [{"x": 3}]}, headers=user
    )
    assert posted.status_code == 201, posted.text
    detail = client.get(f"/api/v1/runs/{posted.json()['id']}", headers=user)
    assert detail.status_code == 200, detail.text
