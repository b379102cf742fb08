"""The admin's policy: whom the server may act as, and what a task's resources may ask for.
Each refusal comes before anything is created or run, and names the rule."""

from __future__ import annotations

import json
import os
import pwd
import sys

import pytest
from typer.testing import CliRunner

from slurmrunner.backends import backend_for
from slurmrunner.cli import app
from slurmrunner.config import ImpersonationPolicy, parse_config, parse_resources
from slurmrunner.errors import ConfigError, ImpersonationError, PolicyError
from slurmrunner.policy import (
    check_profile,
    check_ssh_key,
    check_task_resources,
    current_user,
    uid_checker,
)
from slurmrunner.profiles import Profile
from slurmrunner.runner import Runner
from slurmrunner.store import Store
from tests.helpers_cli import isolate_cli_env

DEFAULT = ImpersonationPolicy()


def uid_of(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def rig_user(name: str = "alice") -> str:
    """A rig user (scripts/cluster-up) of this machine, or skip."""
    uid = uid_of(name)
    if uid is None or uid < DEFAULT.min_uid:
        pytest.skip(f"no ordinary account {name!r} on this machine (the rig creates it)")
    return name


def sudo(username: str, project_dir: str = "/home/x/proj") -> Profile:
    return Profile(backend="slurm_sudo", username=username, project_dir=project_dir)


def ssh(username: str = "svc", key: str = "/srv/keys/svc") -> Profile:
    return Profile(
        backend="slurm_ssh",
        username=username,
        project_dir="/home/svc/proj",
        host="127.0.0.1",
        ssh_key_path=key,
    )


# --------------------------------------------------------------------------- whom


def test_root_is_never_impersonated_even_if_listed():
    policy = ImpersonationPolicy(allowed_users=["root"], min_uid=1)
    for profile in (sudo("root"), ssh("root")):
        with pytest.raises(PolicyError, match="'root' is never impersonated"):
            check_profile(profile, policy)


def test_a_system_account_is_refused_by_uid():
    if uid_of("daemon") is None:
        pytest.skip("no user 'daemon' on this machine")
    with pytest.raises(PolicyError, match=r"uid 1 .*min_uid=1000 \(a system account\)"):
        check_profile(sudo("daemon"), DEFAULT)


def test_a_uid_below_min_uid_is_refused():
    name = rig_user()
    policy = ImpersonationPolicy(min_uid=uid_of(name) + 1)
    with pytest.raises(PolicyError, match=f"below impersonation.min_uid={uid_of(name) + 1}"):
        check_profile(sudo(name), policy)
    check_profile(sudo(name), DEFAULT)  # an ordinary account passes the default policy


def test_allowed_and_denied_users():
    name = rig_user()
    with pytest.raises(PolicyError, match=r"not in impersonation.allowed_users"):
        check_profile(sudo(name), ImpersonationPolicy(allowed_users=["bob"]))
    with pytest.raises(PolicyError, match=r"in impersonation.denied_users"):
        check_profile(sudo(name), ImpersonationPolicy(denied_users=[name]))
    check_profile(sudo(name), ImpersonationPolicy(allowed_users=[name]))
    # The name rules hold for the SSH service user too (its uid is checked on the host).
    with pytest.raises(PolicyError, match="allowed_users"):
        check_profile(ssh("svc"), ImpersonationPolicy(allowed_users=["alice"]))


def test_an_unknown_user_is_refused_for_sudo():
    with pytest.raises(PolicyError, match="not a user of this server"):
        check_profile(sudo("no-such-user-sr"), DEFAULT)


def test_the_uid_an_ssh_host_reports_is_checked():
    check = uid_checker(DEFAULT)
    check("svc", 1004)
    with pytest.raises(PolicyError, match="uid 0 on the SSH host"):
        check("svc", 0)
    with pytest.raises(PolicyError, match=r"uid 999 on the SSH host .*min_uid=1000"):
        check("svc", 999)


def test_policy_config_refuses_bad_values():
    for data, where in (
        ({"allowed_users": ["ok", "not ok"]}, "impersonation.allowed_users"),
        ({"ssh_keys_dir": "keys"}, "impersonation.ssh_keys_dir"),
        ({"sudo_path": "sudo"}, "impersonation.sudo_path"),
        ({"min_uid": 0}, "impersonation.min_uid"),
        ({"allowed": "*"}, "impersonation.allowed"),
    ):
        with pytest.raises(ConfigError, match=where):
            parse_config({"impersonation": data})


# --------------------------------------------------------------------------- keys


def test_key_must_lie_under_ssh_keys_dir(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "svc").write_text("key")
    outside = tmp_path / "elsewhere"
    outside.write_text("key")
    policy = ImpersonationPolicy(ssh_keys_dir=str(keys))
    check_ssh_key(str(keys / "svc"), policy)
    check_profile(ssh(key=str(keys / "svc")), policy)
    check_ssh_key(str(outside), DEFAULT)  # no ssh_keys_dir: no rule
    for path in (str(outside), f"{keys}/../elsewhere", str(keys)):
        with pytest.raises(PolicyError, match=r"not under impersonation.ssh_keys_dir"):
            check_ssh_key(path, policy)


def test_a_symlink_in_the_keys_dir_cannot_point_out_of_it(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    secret = tmp_path / "someone_elses_key"
    secret.write_text("key")
    (keys / "link").symlink_to(secret)
    with pytest.raises(PolicyError, match=f"resolved: {secret}"):
        check_ssh_key(str(keys / "link"), ImpersonationPolicy(ssh_keys_dir=str(keys)))


# --------------------------------------------------------------------------- local


def test_local_runs_only_as_the_current_user():
    check_profile(Profile(backend="local"), DEFAULT)
    check_profile(Profile(backend="local", username=current_user()), DEFAULT)
    other = "bob" if current_user() != "bob" else "alice"
    with pytest.raises(PolicyError, match="backend 'local' runs as this process's user"):
        check_profile(Profile(backend="local", username=other), DEFAULT)


# --------------------------------------------------------------------------- task resources


def config(**top):
    base = {
        "default_slurm_config": {"partition": "main", "account": "lab"},
        "gpu_slurm_config": {"partition": "gpu", "gres": "gpu:1"},
    }
    return parse_config({**base, **top})


@pytest.mark.parametrize(
    ("resources", "key"),
    [
        ({"extra_lines": ["export A=1"]}, "resources.extra_lines"),
        ({"partition": "big"}, "resources.partition"),
        ({"account": "other-lab"}, "resources.account"),
        ({"qos": "high"}, "resources.qos"),
        ({"gres": "gpu:8"}, "resources.gres"),
        ({"gpus": "8"}, "resources.gpus"),
        ({"constraint": "a100"}, "resources.constraint"),
        ({"needs_gpu": True, "partition": "main"}, "resources.partition"),
    ],
)
def test_task_resources_outside_the_admins_lists_are_refused_naming_the_key(resources, key):
    with pytest.raises(ConfigError, match=f"^{key}: .*(allow_task_extra_lines|lists: none)"):
        check_task_resources(config(), parse_resources(resources))


@pytest.mark.parametrize(
    "resources",
    [
        {"mem": "8G", "time": "02:00:00", "cpus_per_task": 2},
        {"needs_gpu": True, "tasks_per_job": 3, "parallel_tasks_per_job": 1},
        {"partition": "main", "account": "lab"},  # what the admin gives anyway
        {"needs_gpu": True, "partition": "gpu", "gres": "gpu:1"},
        {"exclude": "node7", "nodelist": "node1"},
    ],
)
def test_task_resources_the_admin_did_not_restrict_pass(resources):
    check_task_resources(config(), parse_resources(resources))


def test_listed_values_and_extra_lines_when_the_admin_allows_them():
    cfg = config(
        allow_task_extra_lines=True,
        task_allowed_values={"partition": ["big", "small"], "qos": "*"},
    )
    check_task_resources(cfg, parse_resources({"extra_lines": ["export A=1"]}))
    check_task_resources(cfg, parse_resources({"partition": "big", "qos": "anything"}))
    with pytest.raises(ConfigError, match=r"resources.partition: 'huge' .*lists: big, small"):
        check_task_resources(cfg, parse_resources({"partition": "huge"}))
    with pytest.raises(ConfigError, match=r"task_allowed_values.mem: unknown key"):
        parse_config({"task_allowed_values": {"mem": "*"}})


# --------------------------------------------------------------------------- before anything


def test_runner_refuses_before_anything_is_created(tmp_path):
    store = Store(tmp_path / "store.sqlite")
    project = tmp_path / "proj"
    runner = Runner(parse_config({}), sudo("root", str(project)), store)
    for call in (runner.render, runner.plan, runner.submit, runner.run, runner.prepare):
        with pytest.raises(PolicyError, match="never impersonated"):
            call(["true"], [{"x": 1}])
    with pytest.raises(PolicyError):
        backend_for(sudo("root", str(project)))
    task_lines = Runner(parse_config({}), Profile(backend="local", project_dir=str(project)), store)
    with pytest.raises(ConfigError, match=r"resources.extra_lines"):
        task_lines.submit(["true"], [{"x": 1}], {"extra_lines": ["#SBATCH --comment=x"]})
    assert store.runs() == [] and not project.exists()


def write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("profile", "policy", "rule"),
    [
        ({"backend": "slurm_sudo", "username": "root"}, {}, "never impersonated"),
        ({"backend": "slurm_sudo", "username": "daemon"}, {}, "min_uid=1000"),
        ({"backend": "slurm_sudo", "username": "alice"}, {"min_uid": 60000}, "min_uid=60000"),
        ({"backend": "slurm_sudo", "username": "alice"}, {"allowed_users": ["bob"]}, "allowed"),
        (
            {"backend": "slurm_ssh", "username": "svc", "host": "h", "ssh_key_path": "/tmp/k"},
            {"ssh_keys_dir": "/srv/slurmrunner/keys"},
            "ssh_keys_dir",
        ),
        ({"username": "alice"}, {}, "backend: Field required"),
    ],
    ids=["root", "daemon", "min_uid", "not-allowed", "key-outside", "no-backend"],
)
def test_cli_exit_2_before_any_command(tmp_path, monkeypatch, profile, policy, rule):
    name = profile.get("username")
    if "backend" in profile and name in ("alice", "daemon") and uid_of(name) is None:
        pytest.skip(f"no user {profile['username']!r} on this machine")
    isolate_cli_env(monkeypatch, tmp_path)
    project = tmp_path / "proj"
    profile_file = write(tmp_path / "p.json", {**profile, "project_dir": str(project)})
    config_file = write(tmp_path / "c.json", {"impersonation": policy})
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"x": 1}\n')
    files = ["-c", str(config_file), "-p", str(profile_file), "-i", str(inputs)]
    for command in ("run", "render"):
        result = CliRunner().invoke(app, [command, *files, "--", sys.executable, "-c", "pass"])
        assert result.exit_code == 2, result.output
        assert rule in " ".join(result.stderr.split())
    assert not project.exists()
    assert (
        not os.path.exists(tmp_path / "store.sqlite") or not Store(tmp_path / "store.sqlite").runs()
    )


def test_policy_errors_are_impersonation_errors():
    # Callers that stop on an ImpersonationError (never retried) stop on these too.
    assert issubclass(PolicyError, ImpersonationError)
