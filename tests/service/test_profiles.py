"""Profiles: typed by their Resource's backend and checked against its impersonation policy
when saved, and again (core_profile) before every run."""

from __future__ import annotations

import pytest

from slurmrunner.profiles import Profile as CoreProfile
from slurmrunner.service import checks
from slurmrunner.service.errors import Invalid
from slurmrunner.service.models import Profile, Resource
from tests.service.conftest import loc_msgs

P = "/api/v1/admin/profiles"


def _profile(resource, **fields):
    return {"name": "p", "resource_id": resource["id"], **fields}


@pytest.fixture
def ssh_resource(client, admin, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    config = {"impersonation": {"ssh_keys_dir": str(keys), "denied_users": ["mallory"]}}
    body = {
        "name": "ssh",
        "type": "slurm_ssh",
        "host": "127.0.0.1",
        "port": 2222,
        "jobs_runner_config": config,
    }
    response = client.post("/api/v1/admin/resources", json=body, headers=admin)
    assert response.status_code == 201, response.text
    return {**response.json(), "keys": keys}


@pytest.mark.parametrize(
    ("username", "rule"),
    [("root", "never impersonated"), ("daemon", "impersonation.min_uid=1000")],
)
def test_sudo_policy_refusals_name_the_rule(client, admin, sudo_resource, username, rule):
    body = _profile(sudo_resource, username=username, jobs_remote_dir="/home/x")
    problems = dict(loc_msgs(client.post(P, json=body, headers=admin)))
    assert rule in problems["body.username"]
    assert client.get(P, headers=admin).json() == []


def test_sudo_user_unknown_here_is_refused(client, admin, sudo_resource):
    body = _profile(sudo_resource, username="no-such-user-xyz", jobs_remote_dir="/home/x")
    assert (
        "not a user of this server"
        in dict(loc_msgs(client.post(P, json=body, headers=admin)))["body.username"]
    )


def test_key_outside_ssh_keys_dir_is_refused(client, admin, ssh_resource):
    body = _profile(
        ssh_resource, username="svc", jobs_remote_dir="/home/svc", ssh_key_path="/etc/ssh/key"
    )
    problems = dict(loc_msgs(client.post(P, json=body, headers=admin)))
    assert "impersonation.ssh_keys_dir" in problems["body.ssh_key_path"]


def test_denied_user_is_refused(client, admin, ssh_resource):
    key = str(ssh_resource["keys"] / "k")
    body = _profile(ssh_resource, username="mallory", jobs_remote_dir="/h", ssh_key_path=key)
    problems = dict(loc_msgs(client.post(P, json=body, headers=admin)))
    assert "impersonation.denied_users" in problems["body.username"]


def test_accepted_profiles_and_crud(client, admin, sudo_resource, ssh_resource):
    key = str(ssh_resource["keys"] / "svc")
    ssh = _profile(
        ssh_resource, name="svc", username="svc", jobs_remote_dir="/home/svc", ssh_key_path=key
    )
    created = client.post(P, json=ssh, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["resource_type"] == "slurm_ssh"
    sudo = _profile(sudo_resource, name="nob", username="nobody", jobs_remote_dir="/tmp/nobody")
    second = client.post(P, json=sudo, headers=admin)
    assert second.status_code == 201, second.text
    assert client.post(P, json=sudo, headers=admin).status_code == 409
    listed = client.get(P, params={"resource_id": ssh_resource["id"]}, headers=admin).json()
    assert [p["name"] for p in listed] == ["svc"]
    pid = second.json()["id"]
    # A change is checked as a creation is.
    problems = dict(loc_msgs(client.patch(f"{P}/{pid}", json={"username": "root"}, headers=admin)))
    assert "never impersonated" in problems["body.username"]
    assert client.get(f"{P}/{pid}", headers=admin).json()["username"] == "nobody"
    renamed = client.patch(f"{P}/{pid}", json={"name": "nobody-profile"}, headers=admin)
    assert renamed.status_code == 200 and renamed.json()["name"] == "nobody-profile"
    assert client.delete(f"{P}/{pid}", headers=admin).status_code == 204
    assert client.get(f"{P}/{pid}", headers=admin).status_code == 404


@pytest.mark.parametrize(
    ("fields", "where", "says"),
    [
        ({"username": "nobody"}, "body.jobs_remote_dir", "required for a slurm_sudo"),
        ({"jobs_remote_dir": "/x"}, "body.username", "required"),
        (
            {"username": "nobody", "jobs_remote_dir": "/x", "ssh_key_path": "/k"},
            "body.ssh_key_path",
            "only for slurm_ssh",
        ),
        ({"username": "no body", "jobs_remote_dir": "/x"}, "body.username", ""),
        ({"username": "nobody", "jobs_remote_dir": "relative"}, "body.jobs_remote_dir", ""),
        ({"username": "nobody", "jobs_remote_dir": "/x", "extra": 1}, "body.extra", ""),
    ],
)
def test_profile_fields_follow_the_backend(client, admin, sudo_resource, fields, where, says):
    problems = dict(loc_msgs(client.post(P, json=_profile(sudo_resource, **fields), headers=admin)))
    assert where in problems and says in problems[where], problems


def test_unknown_resource_is_422(client, admin):
    body = {"name": "p", "resource_id": 4242, "username": "nobody", "jobs_remote_dir": "/x"}
    assert "body.resource_id" in dict(loc_msgs(client.post(P, json=body, headers=admin)))


def test_profile_linked_to_a_user_is_not_deleted(client, admin, sudo_resource, make_user):
    body = _profile(sudo_resource, username="nobody", jobs_remote_dir="/tmp/nobody")
    pid = client.post(P, json=body, headers=admin).json()["id"]
    user, headers = make_user(profile_id=pid)
    me = client.get("/api/v1/me", headers=headers).json()
    assert me["profile_name"] == "p" and me["resource_name"] == "cluster"
    assert me["resource_type"] == "slurm_sudo"
    assert client.delete(f"{P}/{pid}", headers=admin).status_code == 409
    client.patch(f"/api/v1/admin/users/{user.id}", json={"profile_id": None}, headers=admin)
    assert client.delete(f"{P}/{pid}", headers=admin).status_code == 204


def test_core_profile_rechecks_the_policy_before_a_run(client, admin, sudo_resource, db):
    body = _profile(sudo_resource, username="nobody", jobs_remote_dir="/tmp/nobody")
    pid = client.post(P, json=body, headers=admin).json()["id"]
    profile = db.get(Profile, pid)
    core, config = checks.core_profile(profile, profile.resource)
    assert core == CoreProfile(backend="slurm_sudo", username="nobody", project_dir="/tmp/nobody")
    assert config.default_slurm_config.partition == "main"
    # The admin shuts nobody out: accepted at once (not blocked by the existing Profile) ...
    deny = {**sudo_resource["jobs_runner_config"], "impersonation": {"denied_users": ["nobody"]}}
    rid = sudo_resource["id"]
    patched = client.patch(
        f"/api/v1/admin/resources/{rid}", json={"jobs_runner_config": deny}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    # ... and the next run's check refuses the Profile, naming the rule.
    db.expire_all()
    profile = db.get(Profile, pid)
    with pytest.raises(Invalid) as refused:
        checks.core_profile(profile, db.get(Resource, rid))
    assert refused.value.kind == "impersonation_policy"
    assert refused.value.problems[0][0] == ["profile", "username"]
    assert "impersonation.denied_users" in refused.value.problems[0][1]
