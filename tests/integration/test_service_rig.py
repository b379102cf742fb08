"""Issue 11's must-shows for the multi-user service, on the rig: `slurmrunner serve` as the
server user over a PostgreSQL database of its own, 8 cluster users through sudo and the SSH
service user through SSH, every request over HTTP.

One server serves the whole module (starting one costs seconds on 2 CPUs); the test that
kills it with SIGKILL starts it again on the same database and comes last.
"""

from __future__ import annotations

import datetime as dt
import pwd
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import CONFIG, REPO, SHARED, squeue, wait_for
from .service_rig import (
    CLUSTER_USERS,
    KEYS_DIR,
    PG_URL,
    RIG_ENV,
    SSH_USER,
    Api,
    Service,
    admin_cli,
    check_results,
    drop_database,
    fresh_database,
    install_task,
    parse_metrics,
    sacct_job_names,
    samples,
    slurm_job_names,
    wait_runs,
    write_shared,
)

pytestmark = pytest.mark.skipif(
    not PG_URL, reason="SLURMRUNNER_TEST_PG_URL not set (scripts/test sets it after pg-up)"
)

# The rig's config (partition main, 100M and 1 CPU a task, 2 CPUs a job) for both Resources;
# the SSH one also confines keys to the rig's key folder, as a site would.
SSH_CONFIG = {**CONFIG, "impersonation": {"ssh_keys_dir": KEYS_DIR}}


def one_job(n: int) -> dict[str, int]:
    """A run of `n` tasks in one job of one CPU: the node's 2 CPUs run two runs' jobs at once."""
    return {"tasks_per_job": n, "parallel_tasks_per_job": 1}


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


@dataclass
class Rig:
    service: Service
    admin: Api
    users: dict[str, Api]  # cluster user -> their client (sudo Profiles, and the SSH user)
    nobody: Api  # a user without a Profile
    run_ids: list[str]  # every run the module made, for the job-name check


@pytest.fixture(scope="module")
def svc(rig: dict[str, str], request: pytest.FixtureRequest) -> Iterator[Rig]:
    assert len(CLUSTER_USERS) >= 8, f"the rig needs 8 cluster users, has {CLUSTER_USERS}"
    failed_before = request.session.testsfailed
    install_task()
    db = fresh_database(PG_URL)
    tag = db.rsplit("/", 1)[-1]
    service = Service(db, SHARED / f"{tag}.log")
    configs = [SHARED / f"{tag}-sudo.json", SHARED / f"{tag}-ssh.json"]
    try:
        sudo_cfg = write_shared(configs[0].name, CONFIG)
        ssh_cfg = write_shared(configs[1].name, SSH_CONFIG)
        # Bootstrap from the shell as an admin would; the rest goes through the admin API.
        admin_cli(db, "create-resource", "rig-sudo", "--type", "slurm_sudo", "--config", sudo_cfg)
        admin_cli(
            db,
            *("create-resource", "rig-ssh", "--type", "slurm_ssh", "--config", ssh_cfg),
            *("--host", RIG_ENV.get("RIG_SSH_HOST", "127.0.0.1")),
            *("--port", RIG_ENV.get("RIG_SSH_PORT", "2222")),
        )
        token = admin_cli(db, "create-user", "admin@rig.test", "--superuser").split()[-1]
        service.start()
        admin = Api(service, token, "admin@rig.test")
        resources = {r["name"]: r["id"] for r in admin.ok("/api/v1/admin/resources")}
        users: dict[str, Api] = {}
        for name in [*CLUSTER_USERS, SSH_USER]:
            ssh = name == SSH_USER
            profile: dict[str, Any] = {
                "name": f"p-{name}",
                "resource_id": resources["rig-ssh" if ssh else "rig-sudo"],
                "username": name,
                "jobs_remote_dir": f"/home/{name}/service-rig",
            }
            if ssh:
                profile["ssh_key_path"] = f"{KEYS_DIR}/{name}_ed25519"
                profile["known_hosts"] = RIG_ENV.get(
                    "RIG_KNOWN_HOSTS", "/etc/slurmrunner-rig/known_hosts"
                )
            users[name] = new_user(admin, f"{name}@rig.test", profile)
        nobody = new_user(admin, "nobody@rig.test", None)
        yield Rig(service, admin, users, nobody, [])
    finally:
        service.stop()
        drop_database(PG_URL, db)
        for name in [*CLUSTER_USERS, SSH_USER]:
            shutil.rmtree(f"/home/{name}/service-rig", ignore_errors=True)
        # The server's log is kept when a test failed: it is where to look first.
        passed = request.session.testsfailed == failed_before
        for path in [*configs, *([service.log_path] if passed else [])]:
            path.unlink(missing_ok=True)


def new_user(admin: Api, email: str, profile: dict[str, Any] | None) -> Api:
    profile_id = admin.post("/api/v1/admin/profiles", profile)["id"] if profile else None
    user = admin.post("/api/v1/admin/users", {"email": email, "profile_id": profile_id})
    issued = admin.post(f"/api/v1/admin/users/{user['id']}/tokens", {"name": "rig"})
    return Api(admin.service, issued["token"], email)


def submit_all(
    svc: Rig, orders: list[tuple[str, list[int], dict[str, Any] | None, float]]
) -> list[str]:
    """POST every (user, xs, resources, sleep) at once, one thread each; the run ids."""
    start = threading.Barrier(len(orders))

    def post(order: tuple[str, list[int], dict[str, Any] | None, float]) -> str:
        user, xs, resources, sleep = order
        inputs = [{"x": x, "sleep": sleep} for x in xs]
        start.wait(30)
        return svc.users[user].submit(inputs, resources)

    with ThreadPoolExecutor(len(orders)) as pool:
        ids = list(pool.map(post, orders))
    svc.run_ids.extend(ids)
    return ids


def test_alice_and_bob_200_tasks_each_as_themselves(svc: Rig) -> None:
    xs = list(range(200))
    alice_run, bob_run = submit_all(svc, [("alice", xs, None, 0), ("bob", xs, None, 0)])
    alice, bob = svc.users["alice"], svc.users["bob"]
    details = wait_runs({alice_run: alice, bob_run: bob}, timeout=120)
    for run_id, api, user in ((alice_run, alice, "alice"), (bob_run, bob, "bob")):
        assert details[run_id]["state"] == "done", details[run_id]
        assert details[run_id]["counts"] == {"ok": 200}, details[run_id]
        check_results(api, run_id, xs, uid(user))
    # Another user's run is not found, whatever is asked of it (its existence does not leak).
    for path in ("", "/results", "/tasks/0/log"):
        assert bob.get(f"/api/v1/runs/{alice_run}{path}").status_code == 404, path
    assert bob.request("POST", f"/api/v1/runs/{alice_run}/cancel").status_code == 404
    assert alice_run not in {r["id"] for r in bob.ok("/api/v1/runs")}
    assert alice.get(f"/api/v1/runs/{alice_run}/tasks/7/log").status_code == 200


def test_no_profile_and_no_superuser_are_refused(svc: Rig) -> None:
    assert svc.nobody.get("/api/v1/runs").status_code == 403
    body = {"command": ["/bin/true"], "inputs": [1]}
    assert svc.nobody.request("POST", "/api/v1/runs", json=body).status_code == 403
    for api in (svc.users["alice"], svc.nobody):
        assert api.get("/api/v1/admin/users").status_code == 403
        assert api.get("/api/v1/admin/resources").status_code == 403
    assert svc.admin.get("/api/v1/admin/users").status_code == 200


def test_the_ssh_service_user_runs_as_itself(svc: Rig) -> None:
    xs = list(range(20))
    (run_id,) = submit_all(svc, [(SSH_USER, xs, one_job(len(xs)), 0)])
    api = svc.users[SSH_USER]
    detail = wait_runs({run_id: api}, timeout=90)[run_id]
    assert detail["state"] == "done" and detail["counts"] == {"ok": 20}, detail
    check_results(api, run_id, xs, uid(SSH_USER))


def test_forty_runs_of_eight_users_at_once(svc: Rig) -> None:
    users = CLUSTER_USERS[:8]
    orders = [(u, list(range(k, k + 6)), one_job(6), 0.0) for k in range(5) for u in users]
    ids = submit_all(svc, orders)
    by_id = dict(zip(ids, orders, strict=True))
    details = wait_runs({r: svc.users[by_id[r][0]] for r in ids}, timeout=150)
    for run_id, (user, xs, _, _) in by_id.items():
        check_results(svc.users[user], run_id, xs, uid(user))
        assert details[run_id]["counts"] == {"ok": len(xs)}, details[run_id]
    metrics = parse_metrics(svc.admin.text("/metrics"))
    check_calls_per_cycle(metrics, users)


def check_calls_per_cycle(metrics: dict[Any, float], users: list[str]) -> None:
    """From /metrics: the most calls of one kind to one group in any single cycle, over the
    server's whole life so far: at most one squeue per scheduler group (all sudo users share
    one), at most one cat per cluster identity."""
    most = "slurmrunner_watcher_most_calls_per_cycle"
    polls = samples(metrics, most, kind="poll")
    cats = samples(metrics, most, kind="cat")
    assert polls, f"no {most}{{kind=poll}} in /metrics"
    assert max(polls.values()) <= 1, polls
    assert {f"group=slurm_sudo:{u}" for u in users} <= cats.keys(), cats
    assert max(cats.values()) <= 1, cats
    calls = samples(metrics, "slurmrunner_watcher_calls_total", kind="poll")
    assert sum(calls.values()) >= 1, calls


def test_postgresql_restart_mid_run(svc: Rig) -> None:
    xs = list(range(12))
    slow = {"tasks_per_job": 6, "parallel_tasks_per_job": 1}
    ids = submit_all(svc, [("carol", xs, slow, 0.5), ("dave", xs, slow, 0.5)])
    runs = {r: svc.users[u] for r, u in zip(ids, ("carol", "dave"), strict=True)}
    # Down while the jobs run and results come in: the watcher must carry on after it. Seen
    # in squeue itself: the API's job state follows squeue at the watcher's adaptive pace
    # (up to squeue_max_s), and these 3 s jobs could end before it showed RUNNING (CI, once).
    # The other run may still be starting then (its sbatch), or results being saved: neither
    # may be lost to the outage.
    wait_for(lambda: running_names([f"sr-{r}-" for r in ids]), 60, "a job of the runs running")
    pg("pg-down")
    try:
        down = svc.users["carol"].get(f"/api/v1/runs/{ids[0]}", retry=False)
        assert down.status_code == 503, down.text
        time.sleep(3)  # several watcher cycles with no database
    finally:
        pg("pg-up")
    back = time.monotonic()
    details = wait_runs(runs, timeout=90)
    print(f"runs finished {time.monotonic() - back:.1f}s after pg-up")  # shown with -s
    for run_id, user in zip(ids, ("carol", "dave"), strict=True):
        check_results(svc.users[user], run_id, xs, uid(user))
        assert details[run_id]["counts"] == {"ok": len(xs)}, details[run_id]
    assert svc.service.proc is not None and svc.service.proc.poll() is None


def running_names(prefixes: list[str]) -> list[str]:
    return [
        name
        for name, _, state in (line.partition(" ") for line in squeue("--format=%j %T").split("\n"))
        if name.startswith(tuple(prefixes)) and state.strip() == "RUNNING"
    ]


def pg(script: str) -> None:
    proc = subprocess.run([str(REPO / "scripts" / script)], capture_output=True, text=True)
    assert proc.returncode == 0, f"{script}: {proc.stderr}"


def test_sigkill_mid_load_then_restart_loses_and_repeats_nothing(svc: Rig) -> None:
    since = (dt.datetime.now() - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    users = CLUSTER_USERS[:8]
    xs = list(range(6))
    # Three jobs of two tasks per run: 24 sbatch, so the kill comes with some submitted,
    # some running, and (usually) some not submitted yet.
    per_job = {"tasks_per_job": 2, "parallel_tasks_per_job": 1}
    ids = submit_all(svc, [(u, xs, per_job, 0.3) for u in users])
    prefixes = [f"sr-{r}-" for r in ids]
    wait_for(lambda: running_names(prefixes), 60, "a job of the runs running")
    svc.service.kill()
    submitted = len(set(slurm_job_names(prefixes)))
    print(f"at the SIGKILL: {submitted} of {3 * len(ids)} jobs submitted")  # shown with -s
    svc.service.start()
    runs = {r: svc.users[u] for r, u in zip(ids, users, strict=True)}
    details = wait_runs(runs, timeout=150)
    for run_id, user in zip(ids, users, strict=True):
        check_results(svc.users[user], run_id, xs, uid(user))
        assert details[run_id]["counts"] == {"ok": len(xs)}, details[run_id]
    names = slurm_job_names(prefixes)
    assert len(names) == 3 * len(ids), (submitted, sorted(names))
    # No job of any run of this module was submitted twice, these or the earlier tests'.
    every = slurm_job_names([f"sr-{r}-" for r in svc.run_ids])
    twice = {n: k for n, k in Counter(every).items() if k > 1}
    assert not twice, f"submitted more than once: {twice}"
    # Accounting learns of jobs a moment after they end: wait for all, then no name twice.
    wait_for(
        lambda: len(set(sacct_job_names(prefixes, since))) == len(names), 30, "sacct's records"
    )
    again = {n: k for n, k in Counter(sacct_job_names(prefixes, since)).items() if k > 1}
    assert not again, f"sacct: submitted more than once: {again}"
