"""`slurmrunner admin ...` and `slurmrunner serve`: serve and one admin command of each test in
a process of their own (exit codes, streams, no traceback); the other admin commands in this
process (`cli`), as the same Typer app: a process costs seconds of imports each."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from slurmrunner.service.app import create_app
from tests.conftest import DOC_SNIPPET_1
from tests.helpers_cli import cli, flat, slurmrunner, start_slurmrunner
from tests.service.conftest import TestClient, bearer


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURMRUNNER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("SLURMRUNNER_DB", raising=False)


def _code(result) -> int:
    """A process's exit code, or the in-process CLI's."""
    return result.returncode if hasattr(result, "returncode") else result.exit_code


def _ok(result):
    assert _code(result) == 0, result.stderr
    return result


def _refused(result, *words):
    assert _code(result) == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in flat(result.stderr), result.stderr


def test_bootstrap_then_me(db_url, tmp_path):
    config = tmp_path / "cluster.json"
    config.write_text(json.dumps(DOC_SNIPPET_1))
    _ok(
        cli(
            "admin",
            "create-resource",
            "hpc",
            "--type",
            "slurm_sudo",
            "--config",
            config,
            "--db",
            db_url,
        )
    )
    _ok(
        cli(
            "admin", "create-profile", "nob", "--resource", "hpc", "--username", "nobody",
            "--jobs-remote-dir", "/tmp/nobody", "--db", db_url,
        )
    )  # fmt: skip
    made = _ok(
        slurmrunner("admin", "create-user", "Alice@Example.org", "--profile", "nob", "--db", db_url)
    )
    token = made.stdout.strip()
    assert token.startswith("sr_") and "\n" not in token
    assert "shown once" in made.stderr and "alice@example.org" in made.stderr
    with TestClient(create_app(db_url)) as client:
        me = client.get("/api/v1/me", headers=bearer(token))
        assert me.status_code == 200, me.text
        assert me.json()["profile_name"] == "nob" and me.json()["resource_name"] == "hpc"
        assert client.get("/api/v1/admin/users", headers=bearer(token)).status_code == 403
    second = _ok(cli("admin", "issue-token", "alice@example.org", "--name", "two", "--db", db_url))
    listed = _ok(cli("admin", "list-tokens", "alice@example.org", "--db", db_url)).stdout
    assert "cli" in listed and "two" in listed and token not in listed
    _ok(cli("admin", "revoke-token", "alice@example.org", token[:9], "--db", db_url))
    with TestClient(create_app(db_url)) as client:
        assert client.get("/api/v1/me", headers=bearer(token)).status_code == 401
        assert client.get("/api/v1/me", headers=bearer(second.stdout.strip())).status_code == 200
    _ok(cli("admin", "revoke-token", "alice@example.org", "--all", "--db", db_url))
    with TestClient(create_app(db_url)) as client:
        assert client.get("/api/v1/me", headers=bearer(second.stdout.strip())).status_code == 401


def test_admin_errors_are_messages(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.sqlite'}"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"default_slurm_config": {"mem": "4X", "partiton": "a"}}))
    result = slurmrunner(
        "admin", "create-resource", "r", "--type", "slurm_sudo", "--config", bad, "--db", db
    )
    _refused(result, "default_slurm_config.mem", "malformed memory", "did you mean 'partition'")
    _ok(cli("admin", "create-resource", "r", "--type", "slurm_sudo", "--db", db))
    result = cli(
        "admin", "create-profile", "p", "--resource", "r", "--username", "root",
        "--jobs-remote-dir", "/root", "--db", db,
    )  # fmt: skip
    _refused(result, "--username", "never impersonated")
    _refused(
        cli("admin", "create-profile", "p", "--resource", "nope", "--db", db),
        "no Resource named 'nope'",
    )
    _refused(cli("admin", "create-user", "not-an-email", "--db", db), "EMAIL", "not an e-mail")
    _refused(
        cli("admin", "create-user", "a@b.c", "--profile", "ghost", "--db", db),
        "no Profile named",
    )
    _ok(cli("admin", "create-user", "a@b.c", "--db", db))
    _refused(cli("admin", "create-user", "A@b.c", "--db", db), "exists already")
    _refused(cli("admin", "issue-token", "z@b.c", "--db", db), "no user with e-mail")
    _refused(cli("admin", "revoke-token", "a@b.c", "--db", db), "--all")
    _refused(cli("admin", "create-user", "a@b.c", "--db", "mysql://x/y"), "not supported")
    _refused(cli("admin", "create-user", "a@b.c", "--db", "::nonsense"), "not a URL")


def test_help_helps():
    text = flat(_ok(slurmrunner("admin", "--help")).stdout)
    for command in (
        "create-user",
        "issue-token",
        "revoke-token",
        "create-resource",
        "create-profile",
    ):
        assert command in text
    text = flat(_ok(slurmrunner("serve", "--help")).stdout)
    assert "--host" in text and "--port" in text and "--db" in text and "postgresql+psycopg" in text


def _wait_listening(proc, timeout=30.0):
    """The URL `serve` prints, read from its standard error."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        lines.append(line)
        if "listening on" in line:
            return line.split("listening on ")[1].split()[0], lines
        if not line and proc.poll() is not None:
            break
    raise AssertionError("serve did not say where it listens: " + "".join(lines))


def test_serve_prints_where_and_answers(tmp_path):
    db_file = tmp_path / "svc.sqlite"
    made = _ok(
        slurmrunner(
            "admin",
            "create-user",
            "root@example.org",
            "--superuser",
            "--db",
            f"sqlite:///{db_file}",
        )
    )
    proc = start_slurmrunner(
        "serve", "--port", "0", "--db", f"sqlite:///{db_file}", "--log-level", "warning"
    )
    try:
        url, _ = _wait_listening(proc)
        assert url.startswith("http://127.0.0.1:")
        database = proc.stderr.readline().decode()
        assert f"database: SQLite file {db_file}" in database
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
        me = httpx.get(f"{url}/api/v1/me", headers=bearer(made.stdout.strip()), timeout=10)
        assert me.status_code == 200 and me.json()["is_superuser"] is True
        assert httpx.get(f"{url}/openapi.json", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_refuses_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = slurmrunner("serve", "--port", port, "--db", f"sqlite:///{tmp_path / 'x.sqlite'}")
    _refused(result, f"cannot listen on 127.0.0.1:{port}")


def test_serve_default_database_is_under_the_state_dir(tmp_path):
    proc = start_slurmrunner("serve", "--port", "0", "--log-level", "warning")
    try:
        _wait_listening(proc)
        database = proc.stderr.readline().decode()
        assert str(tmp_path / "state" / "service.sqlite") in database
    finally:
        proc.terminate()
        proc.wait(timeout=30)
