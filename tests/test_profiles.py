"""Profiles: backends and what each needs; usernames and paths that are refused."""

from __future__ import annotations

import json

import pytest

from slurmrunner.errors import ConfigError
from slurmrunner.profiles import Profile, load_profile_file, parse_profile
from slurmrunner.quoting import cluster_path, posix_username
from tests.conftest import EXAMPLES

SUDO = {"backend": "slurm_sudo", "username": "alice", "project_dir": "/home/alice/proj"}
SSH = {
    "backend": "slurm_ssh",
    "username": "svc_fractal",
    "project_dir": "/home/svc_fractal/proj",
    "host": "login.cluster.example",
    "ssh_key_path": "/etc/keys/svc_fractal",
}


def refused(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_profile(data)
    return str(info.value)


def test_local_profile_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    profile = parse_profile({"backend": "local"})
    assert profile == Profile(backend="local")
    assert profile.resolved_project_dir() == f"{tmp_path}/.slurmrunner-work"
    assert profile.cache_base() == f"{tmp_path}/.slurmrunner-work/.fractal_cache"


def test_cache_base_default_and_override():
    assert parse_profile(SUDO).cache_base() == "/home/alice/proj/.fractal_cache"
    custom = parse_profile({**SUDO, "cache_dir": "/scratch/alice/cache/"})
    assert custom.cache_base() == "/scratch/alice/cache"


def test_sudo_profile_loads():
    profile = parse_profile(SUDO)
    assert (profile.backend, profile.username, profile.project_dir) == (
        "slurm_sudo",
        "alice",
        "/home/alice/proj",
    )


@pytest.mark.parametrize("key", ["username", "project_dir"])
def test_sudo_needs_username_and_project_dir(key):
    data = {k: v for k, v in SUDO.items() if k != key}
    msg = refused(data)
    assert "slurm_sudo" in msg and key in msg


def test_ssh_profile_loads():
    profile = parse_profile({**SSH, "port": 2222, "known_hosts": "/etc/ssh/known"})
    assert (profile.host, profile.port, profile.ssh_key_path) == (
        "login.cluster.example",
        2222,
        "/etc/keys/svc_fractal",
    )
    assert parse_profile(SSH).port == 22


@pytest.mark.parametrize("key", ["host", "ssh_key_path", "username", "project_dir"])
def test_ssh_needs_its_keys(key):
    data = {k: v for k, v in SSH.items() if k != key}
    msg = refused(data)
    assert "slurm_ssh" in msg and key in msg


@pytest.mark.parametrize("port", [0, 70000, "ssh"])
def test_bad_port_refused(port):
    assert "port" in refused({**SSH, "port": port})


def test_unknown_backend_refused():
    assert "backend" in refused({"backend": "slurm_magic"})


def test_unknown_key_refused():
    msg = refused({**SUDO, "user": "bob"})
    assert "user" in msg and "unknown key" in msg


@pytest.mark.parametrize(
    "name", ["alice;rm", "$(id)", "-x", "a b", "a" * 40, "", "1alice", "al/ice", "alice\n", "ali`"]
)
def test_bad_usernames_refused_naming_username(name):
    msg = refused({**SUDO, "username": name})
    assert "username" in msg


@pytest.mark.parametrize("name", ["alice", "bob_2", "_svc", "a-b", "a" * 32, "Alice", "svc$"])
def test_good_usernames_accepted(name):
    assert parse_profile({**SUDO, "username": name}).username == name
    assert posix_username(name) == name


@pytest.mark.parametrize(
    "path",
    [
        "relative/proj",
        "proj",
        "/home/alice/../bob",
        "/home/alice/./proj",
        "/home/a b",
        "/x;y",
        "",
        "/home/alice\n",
    ],
)
@pytest.mark.parametrize("key", ["project_dir", "cache_dir"])
def test_bad_paths_refused_naming_key(key, path):
    msg = refused({**SUDO, key: path})
    assert key in msg


def test_cluster_path_normalises_trailing_slash():
    assert cluster_path("/home/alice/proj/", "project_dir") == "/home/alice/proj"
    assert cluster_path("/", "project_dir") == "/"


def test_json_profile_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(SSH))
    assert load_profile_file(path).host == "login.cluster.example"


def test_toml_profile_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(
        'backend = "slurm_ssh"\n'
        'username = "svc_fractal"\n'
        'project_dir = "/home/svc_fractal/proj"\n'
        'host = "login.cluster.example"\n'
        "port = 2222\n"
        'ssh_key_path = "/etc/keys/svc_fractal"\n'
    )
    profile = load_profile_file(path)
    assert (profile.backend, profile.port, profile.username) == ("slurm_ssh", 2222, "svc_fractal")


def test_profile_file_errors_name_file_and_key(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('backend = "slurm_sudo"\nusername = "alice;rm"\nproject_dir = "/p"\n')
    with pytest.raises(ConfigError) as info:
        load_profile_file(path)
    assert "p.toml" in str(info.value) and "username" in str(info.value)
    bad = tmp_path / "bad.toml"
    bad.write_text("backend = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_profile_file(bad)


def test_example_profile_loads():
    profile = load_profile_file(EXAMPLES / "profile-local.json")
    assert profile.backend == "local" and profile.project_dir


@pytest.mark.parametrize("data", [{}, {"username": "alice", "project_dir": "/home/alice/proj"}])
def test_a_profile_must_name_its_backend(data):
    # A Profile naming a user but no backend once ran that user's work here, as the server.
    assert "backend: Field required" in refused(data)
