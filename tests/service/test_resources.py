"""Resources: the runner config is checked by SlurmRunnerConfig (422 naming the field)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DOC_SNIPPET_1, DOC_SNIPPET_2, EXAMPLES
from tests.service.conftest import loc_msgs

R = "/api/v1/admin/resources"

DOC_CONFIGS = {
    "doc-snippet-1": DOC_SNIPPET_1,
    "doc-snippet-2": DOC_SNIPPET_2,
    "doc-both": {**DOC_SNIPPET_1, **DOC_SNIPPET_2},
    "examples/config.json": json.loads((EXAMPLES / "config.json").read_text()),
    "empty": {},
}


@pytest.mark.parametrize("name", list(DOC_CONFIGS))
def test_reference_configs_are_accepted_as_they_are(client, admin, name):
    body = {"name": name, "type": "slurm_sudo", "jobs_runner_config": DOC_CONFIGS[name]}
    response = client.post(R, json=body, headers=admin)
    assert response.status_code == 201, response.text
    assert response.json()["jobs_runner_config"] == DOC_CONFIGS[name]  # kept as written
    again = client.get(f"{R}/{response.json()['id']}", headers=admin).json()
    assert again == response.json()


def test_unknown_key_and_bad_memory_are_named(client, admin):
    config = {"default_slurm_config": {"partiton": "main", "mem": "4X"}}
    body = {"name": "bad", "type": "slurm_sudo", "jobs_runner_config": config}
    problems = dict(loc_msgs(client.post(R, json=body, headers=admin)))
    key = "body.jobs_runner_config.default_slurm_config"
    assert "did you mean 'partition'" in problems[f"{key}.partiton"]
    assert "malformed memory '4X'" in problems[f"{key}.mem"]
    assert client.get(R, headers=admin).json() == []


@pytest.mark.parametrize(
    ("config", "where", "says"),
    [
        ({"user_local_exports": {"X": "/abs"}}, "user_local_exports", "relative path"),
        ({"user_local_exports": {"X": "a\u0000b"}}, "user_local_exports.X", "NUL"),
        (
            {"default_slurm_config": {"partition": "a", "extra_lines": ["#SBATCH -p b"]}},
            "default_slurm_config",
            "extra_lines",
        ),
        ({"batching_config": {"target_num_jobs": 0}}, "batching_config.target_num_jobs", ""),
        ({"nope": 1}, "nope", "unknown key"),
    ],
)
def test_bad_configs_are_422(client, admin, config, where, says):
    body = {"name": "bad", "type": "slurm_sudo", "jobs_runner_config": config}
    problems = loc_msgs(client.post(R, json=body, headers=admin))
    assert any(
        loc.startswith(f"body.jobs_runner_config.{where}") and says in msg for loc, msg in problems
    ), problems


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"name": "x", "type": "pbs"}, "body.type"),
        ({"name": "x", "type": "slurm_ssh"}, "body.host"),
        ({"name": "x", "type": "local", "port": 70000}, "body.port"),
        ({"name": "x", "type": "local", "jobs_poll_interval": 0}, "body.jobs_poll_interval"),
        ({"name": "x", "type": "local", "surprise": 1}, "body.surprise"),
        ({"name": "a\nb", "type": "local"}, "body.name"),
        ({"name": "x", "type": "slurm_ssh", "host": "a\u0000b"}, "body.host"),
        ({"name": "x", "type": "local", "max_tasks_per_run": 2**40}, "body.max_tasks_per_run"),
    ],
)
def test_bad_fields_are_422(client, admin, body, where):
    assert where in dict(loc_msgs(client.post(R, json=body, headers=admin)))


def test_crud(client, admin):
    body = {"name": "c1", "type": "slurm_ssh", "host": "login.example.org", "port": 2222}
    created = client.post(R, json=body, headers=admin)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    assert created.json()["jobs_poll_interval"] == 5
    assert created.json()["prevent_new_submissions"] is False
    assert client.post(R, json=body, headers=admin).status_code == 409
    patch = {"prevent_new_submissions": True, "max_active_runs_per_user": 3}
    patched = client.patch(f"{R}/{rid}", json=patch, headers=admin)
    assert patched.status_code == 200, patched.text
    assert patched.json()["max_active_runs_per_user"] == 3
    assert patched.json()["prevent_new_submissions"] is True
    assert patched.json()["host"] == "login.example.org"  # untouched
    cleared = client.patch(f"{R}/{rid}", json={"max_active_runs_per_user": None}, headers=admin)
    assert cleared.json()["max_active_runs_per_user"] is None
    assert "body" in dict(loc_msgs(client.patch(f"{R}/{rid}", json={"name": None}, headers=admin)))
    bad = {"jobs_runner_config": {"default_slurm_config": {"mem": "lots"}}}
    assert "body.jobs_runner_config.default_slurm_config.mem" in dict(
        loc_msgs(client.patch(f"{R}/{rid}", json=bad, headers=admin))
    )
    assert [r["id"] for r in client.get(R, headers=admin).json()] == [rid]
    assert client.delete(f"{R}/{rid}", headers=admin).status_code == 204
    assert client.get(f"{R}/{rid}", headers=admin).status_code == 404
    assert client.delete(f"{R}/{rid}", headers=admin).status_code == 404
    assert client.patch(f"{R}/{rid}", json={}, headers=admin).status_code == 404


@pytest.mark.parametrize("rid", ["0", "-1", "abc", str(2**63)])
def test_bad_ids_are_422_not_500(client, admin, rid):
    assert client.get(f"{R}/{rid}", headers=admin).status_code == 422


def test_resource_with_profiles_is_not_deleted(client, admin, sudo_resource):
    profile = {
        "name": "p",
        "resource_id": sudo_resource["id"],
        "username": "nobody",
        "jobs_remote_dir": "/tmp/nobody",
    }
    assert client.post("/api/v1/admin/profiles", json=profile, headers=admin).status_code == 201
    response = client.delete(f"{R}/{sudo_resource['id']}", headers=admin)
    assert response.status_code == 409 and "Profile" in response.json()["detail"]


def test_type_change_that_breaks_a_profile_is_refused(client, admin, sudo_resource):
    profile = {
        "name": "p",
        "resource_id": sudo_resource["id"],
        "username": "nobody",
        "jobs_remote_dir": "/tmp/nobody",
    }
    client.post("/api/v1/admin/profiles", json=profile, headers=admin)
    change = {"type": "slurm_ssh", "host": "login.example.org"}
    problems = loc_msgs(client.patch(f"{R}/{sudo_resource['id']}", json=change, headers=admin))
    assert "Profile 'p'" in problems[0][1] and "ssh_key_path" in problems[0][1]
    assert client.get(f"{R}/{sudo_resource['id']}", headers=admin).json()["type"] == "slurm_sudo"
