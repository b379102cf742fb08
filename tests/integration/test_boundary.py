"""The trust boundary with real users: links planted by another account, the impersonation
policy before any command, and another user's job that bears the run's job name."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    CONFIG,
    PROJECT,
    TASK,
    Srv,
    job_ids,
    jobs_since,
    parse_results,
    profiles,
    squeue,
)

SHARED_PROJECT = Path("/srv/slurmrunner-it-shared")
BOB_TRAP = Path("/srv/slurmrunner-it-bob")


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True)


@pytest.fixture
def shared_folders() -> Iterator[None]:
    for path in (SHARED_PROJECT, BOB_TRAP):
        shutil.rmtree(path, ignore_errors=True)
    SHARED_PROJECT.mkdir()
    BOB_TRAP.mkdir()
    shutil.chown(BOB_TRAP, "bob", "bob")
    BOB_TRAP.chmod(0o777)  # alice could write there, were anything to lead her in
    yield
    for path in (SHARED_PROJECT, BOB_TRAP):
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(
    ("owner", "mode", "word"),
    [
        ("alice", 0o777, "may be written by other users"),  # a project folder bob may write
        ("root", 0o1777, "is a link"),  # a sticky scratch folder: bob's link is there first
    ],
    ids=["writable", "sticky"],
)
def test_a_link_bob_planted_is_never_followed(
    srv: Srv, profile: dict, shared_folders: None, owner: str, mode: int, word: str
) -> None:
    shutil.chown(SHARED_PROJECT, owner, owner)
    SHARED_PROJECT.chmod(mode)
    planted = as_user("bob", "ln", "-s", str(BOB_TRAP), str(SHARED_PROJECT / ".slurmrunner"))
    assert planted.returncode == 0, planted.stderr
    before = job_ids()
    proc, results = srv.run_inputs({**profile, "project_dir": str(SHARED_PROJECT)}, [{"x": 2}])
    assert proc.returncode == 2, proc.stderr
    assert word in proc.stderr and "project_dir" in proc.stderr, proc.stderr
    assert results == []
    assert list(BOB_TRAP.iterdir()) == []  # nothing made, nothing written through the link
    assert not jobs_since(before)


def _policy(**rules: Any) -> dict[str, Any]:
    return {**CONFIG, "impersonation": rules}


SUDO = {"backend": "slurm_sudo", "username": "alice"}
KEYS = "/etc/slurmrunner-rig/keys"
POLICY_CASES = {
    "root": ({**SUDO, "username": "root"}, {}, "never impersonated"),
    "daemon": ({**SUDO, "username": "daemon"}, {}, "below impersonation.min_uid=1000"),
    "uid below min_uid": (SUDO, {"min_uid": 60000}, "below impersonation.min_uid=60000"),
    "not allowed": (SUDO, {"allowed_users": ["bob"]}, "not in impersonation.allowed_users"),
    "denied": (SUDO, {"denied_users": ["alice"]}, "in impersonation.denied_users"),
    "key outside ssh_keys_dir": ("ssh", {"ssh_keys_dir": "/etc/ssh"}, "ssh_keys_dir=/etc/ssh"),
    "no backend": ({"username": "alice"}, {}, "backend"),
}


@pytest.mark.parametrize("case", POLICY_CASES)
def test_the_policy_refuses_before_any_command(srv: Srv, case: str) -> None:
    prof, rules, word = POLICY_CASES[case]
    if prof == "ssh":
        prof = profiles()["ssh"]
    project = f"{PROJECT}/policy-{case.replace(' ', '-')}"  # must never be made
    before = job_ids()
    proc, results = srv.run_inputs({**prof, "project_dir": project}, [{"x": 1}], _policy(**rules))
    assert proc.returncode == 2, proc.stderr
    assert word in proc.stderr, proc.stderr
    assert results == []
    assert not Path(project).exists()
    assert not jobs_since(before)


def test_a_key_under_ssh_keys_dir_is_taken(srv: Srv) -> None:
    proc, results = srv.run_inputs(profiles()["ssh"], [{"x": 4}], _policy(ssh_keys_dir=KEYS))
    assert proc.returncode == 0, proc.stderr
    assert results[0]["result"]["square"] == 16


# As the server user: a run planned and its folder made, then job 0 left SUBMITTING by a
# process that died around its sbatch (a claim of a pid that does not exist).
PREPARE = """
import json, socket, sys
from slurmrunner import Runner, Store
from slurmrunner.config import SlurmRunnerConfig
from slurmrunner.profiles import Profile
config, profile, store, task = sys.argv[1:5]
store = Store(store)
runner = Runner(SlurmRunnerConfig.model_validate(json.load(open(config))),
                Profile.model_validate(json.load(open(profile))), store)
run = runner.prepare([task], [{"x": 7}])
run._make_run_folder()
row = store.jobs(run.id)[0]
assert store.claim_job(run.id, row, f"{socket.gethostname()}|999999999|dead|0")
print(run.id)
"""


def test_bobs_job_named_like_alices_lost_submission_is_never_adopted(srv: Srv) -> None:
    config = srv.write("config.json", CONFIG)
    profile = srv.write("profile.json", profiles()["sudo"])
    prepared = srv.python("-c", PREPARE, config, profile, srv.store, TASK)
    assert prepared.returncode == 0, prepared.stderr
    run_id = prepared.stdout.strip()
    name = f"sr-{run_id}-0"
    # bob's job of that very name waits in the queue (held), as a lost sbatch's job would.
    bobs = as_user(
        "bob",
        "sbatch",
        "--parsable",
        "--hold",
        f"--job-name={name}",
        "--output=/dev/null",
        "--chdir=/tmp",
        "--wrap=sleep 300",
    )
    assert bobs.returncode == 0, bobs.stderr
    bob_job = bobs.stdout.strip()
    try:
        waited = srv("wait", run_id)
        assert waited.returncode == 0, waited.stderr
        [result] = parse_results(waited.stdout)
        assert result["result"]["square"] == 49
        owners = squeue(f"--name={name}", "--format=%i %u").split("\n")
        by_user = dict(line.split()[::-1] for line in owners if line.strip())
        assert by_user["bob"] == bob_job and by_user["alice"] != bob_job, by_user
        assert squeue(f"--jobs={bob_job}", "--format=%T").strip() == "PENDING"
    finally:
        subprocess.run(["scancel", bob_job], capture_output=True)
