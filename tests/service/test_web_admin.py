"""The admin pages (service/web/admin_*.py) through the test client: superusers only, CSRF on
every form, the API's own checks with their errors beside the fields, a token shown once."""

from __future__ import annotations

import re

from tests.service import web_fixtures
from tests.service.conftest import TestClient
from tests.service.test_web import _csrf, sign_in

# The web tests' fixtures (web_fixtures.py), by name.
app = web_fixtures.app
_own_state = web_fixtures._own_state

ADMIN_PAGES = [
    "/web/admin/users",
    "/web/admin/resources",
    "/web/admin/resources/new",
    "/web/admin/profiles",
    "/web/admin/profiles/new",
    "/web/admin/health",
]


def _field_error(html: str, name: str) -> str:
    found = re.search(rf'<ul class="field-error" id="{name}-error"[^>]*>(.*?)</ul>', html, re.S)
    assert found, f"no error beside {name}"
    return re.sub(r"<[^>]+>", " ", found.group(1))


def test_admin_pages_are_for_superusers_only(client, admin, make_user):
    _, user = make_user("plain@example.org")
    sign_in(client, user)
    for url in ADMIN_PAGES:
        page = client.get(url)
        assert page.status_code == 403 and "administrators only" in page.text, url
        assert page.headers["content-type"].startswith("text/html")
    assert 'id="nav-users"' not in client.get("/web/runs").text
    csrf = _csrf(client.get("/web/runs").text)
    refused = client.post("/web/admin/users", data={"csrf": csrf, "email": "x@example.org"})
    assert refused.status_code == 403
    assert client.get("/api/v1/admin/users", headers=admin).json()[-1]["email"] != "x@example.org"

    out = TestClient(client.app)  # not signed in: to the sign-in page
    assert out.get("/web/admin/users", follow_redirects=False).status_code == 303

    boss = TestClient(client.app)
    sign_in(boss, admin)
    for url in ADMIN_PAGES:
        assert boss.get(url).status_code == 200, url
    assert 'id="nav-users"' in boss.get("/web/runs").text
    # a page address its route refuses is the 404 page, not the API's JSON
    bad = boss.get("/web/admin/users/abc")
    assert bad.status_code == 404 and "Not found" in bad.text
    assert boss.get("/web/admin/users/99999").status_code == 404


def test_create_a_user_link_a_profile_issue_and_revoke_a_token(client, admin):
    csrf = sign_in(client, admin)
    # a Resource and a Profile through the forms
    made = client.post(
        "/web/admin/resources",
        data={"csrf": csrf, "name": "here", "type": "local", "port": "22",
              "jobs_poll_interval": "5", "jobs_runner_config": "{}"},
        follow_redirects=False,
    )  # fmt: skip
    assert made.status_code == 303, made.text
    resource_id = int(made.headers["location"].split("/")[-1].split("?")[0])
    made = client.post(
        "/web/admin/profiles",
        data={"csrf": csrf, "name": "alice-here", "resource_id": str(resource_id),
              "jobs_remote_dir": "/tmp/alice"},
        follow_redirects=False,
    )  # fmt: skip
    assert made.status_code == 303, made.text
    profile_id = int(made.headers["location"].split("/")[-1].split("?")[0])

    page = client.get("/web/admin/users").text
    for field in ('id="create-user"', 'id="email"', 'id="is_superuser"', 'id="profile_id"'):
        assert field in page
    assert f'<option value="{profile_id}">alice-here (on here)</option>' in page

    # without the CSRF value: refused; a bad e-mail: shown beside the field, text kept
    assert client.post("/web/admin/users", data={"email": "a@b.c"}).status_code == 403
    bad = client.post("/web/admin/users", data={"csrf": csrf, "email": "not-an-address"})
    assert bad.status_code == 422
    assert "not an e-mail address" in _field_error(bad.text, "email")
    assert 'value="not-an-address"' in bad.text and 'aria-invalid="true"' in bad.text

    made = client.post(
        "/web/admin/users",
        data={"csrf": csrf, "email": "Alice@Example.org", "profile_id": str(profile_id)},
        follow_redirects=False,
    )
    assert made.status_code == 303, made.text
    user_url = made.headers["location"]
    user = client.get(user_url).text
    assert "alice@example.org" in user and "No tokens yet" in user
    twice = client.post("/web/admin/users", data={"csrf": csrf, "email": "alice@example.org"})
    assert twice.status_code == 422 and "exists already" in twice.text

    # a token, shown once; it signs alice in; revoked, it does not
    issued = client.post(f"{user_url}/tokens", data={"csrf": csrf, "name": "laptop"})
    assert issued.status_code == 200 and issued.headers["cache-control"] == "no-store"
    token = re.search(r'<code id="new-token" class="token">([^<]+)</code>', issued.text)
    assert token and token.group(1).startswith("sr_")
    assert token.group(1) not in client.get(user_url).text  # never shown again
    alice = TestClient(client.app)
    sign_in(alice, {"Authorization": f"Bearer {token.group(1)}"})
    assert alice.get("/web/runs").status_code == 200
    token_id = re.search(r'id="revoke-token-(\d+)"', client.get(user_url).text)
    assert token_id
    revoke = f"{user_url}/tokens/{token_id.group(1)}/revoke"
    assert client.post(revoke, data={}).status_code == 403
    gone = client.post(revoke, data={"csrf": csrf}, follow_redirects=False)
    assert gone.status_code == 303
    assert "revoked" in client.get(user_url).text
    assert alice.get("/web/runs", follow_redirects=False).status_code == 303

    # unlink the Profile; make alice an admin: the API sees the same account
    saved = client.post(
        user_url,
        data={"csrf": csrf, "email": "alice@example.org", "is_superuser": "on",
              "is_active": "on", "profile_id": ""},
        follow_redirects=False,
    )  # fmt: skip
    assert saved.status_code == 303
    users = client.get("/api/v1/admin/users", headers=admin).json()
    alice_row = next(u for u in users if u["email"] == "alice@example.org")
    assert alice_row["profile_id"] is None and alice_row["is_superuser"] is True


def test_the_last_admin_cannot_demote_themself(client, admin):
    csrf = sign_in(client, admin)
    me = client.get("/api/v1/me", headers=admin).json()
    refused = client.post(
        f"/web/admin/users/{me['id']}",
        data={"csrf": csrf, "email": "admin@example.org", "is_active": "on"},
    )
    assert refused.status_code == 422 and "last active superuser" in refused.text
    assert client.get("/web/admin/users").status_code == 200


def test_a_bad_runner_config_is_shown_beside_its_field_and_kept(client, admin):
    csrf = sign_in(client, admin)
    form = client.get("/web/admin/resources/new").text
    assert 'id="jobs_runner_config"' in form and '<label for="jobs_runner_config">' in form
    base = {"csrf": csrf, "name": "c1", "type": "slurm_sudo", "port": "22",
            "jobs_poll_interval": "5"}  # fmt: skip

    typo = '{"default_slurm_confg": {"mem": "4G"}}'
    bad = client.post("/web/admin/resources", data={**base, "jobs_runner_config": typo})
    assert bad.status_code == 422
    error = _field_error(bad.text, "jobs_runner_config")
    assert "default_slurm_confg" in error and "did you mean" in error
    # the admin's text is kept as typed (escaped)
    assert "{&#34;default_slurm_confg&#34;: {&#34;mem&#34;: &#34;4G&#34;}}" in bad.text
    assert 'aria-describedby="jobs_runner_config-help jobs_runner_config-error"' in bad.text

    mem = '{"default_slurm_config": {"mem": "lots"}}'
    bad = client.post("/web/admin/resources", data={**base, "jobs_runner_config": mem})
    assert "malformed memory" in _field_error(bad.text, "jobs_runner_config")
    assert 'data-path="default_slurm_config.mem"' in bad.text

    broken = client.post("/web/admin/resources", data={**base, "jobs_runner_config": "{oops"})
    assert "not JSON" in _field_error(broken.text, "jobs_runner_config")
    assert "line 1, column 2" in broken.text

    # other fields' errors beside them too; nothing was saved
    port = client.post(
        "/web/admin/resources", data={**base, "port": "0", "jobs_runner_config": "{}"}
    )
    assert port.status_code == 422 and _field_error(port.text, "port")
    assert client.get("/api/v1/admin/resources", headers=admin).json() == []

    good = '{"default_slurm_config": {"mem": "4G", "partition": "main"}}'
    made = client.post(
        "/web/admin/resources", data={**base, "jobs_runner_config": good}, follow_redirects=False
    )
    assert made.status_code == 303
    saved = client.get("/api/v1/admin/resources", headers=admin).json()[0]
    assert saved["jobs_runner_config"]["default_slurm_config"]["partition"] == "main"

    # editing: the config shown as JSON; a bad edit refused, the stored one unchanged
    url = made.headers["location"].split("?")[0]
    assert "&#34;partition&#34;: &#34;main&#34;" in client.get(url).text
    edit = client.post(url, data={**base, "jobs_runner_config": mem})
    assert edit.status_code == 422 and "malformed memory" in edit.text
    again = client.get("/api/v1/admin/resources", headers=admin).json()[0]
    assert again["jobs_runner_config"] == saved["jobs_runner_config"]
    renamed = client.post(url, data={**base, "name": "c2", "jobs_runner_config": good})
    assert renamed.status_code == 200  # followed to the saved page
    assert client.get("/api/v1/admin/resources", headers=admin).json()[0]["name"] == "c2"


def test_a_profile_refused_by_the_policy_names_the_field(client, admin):
    csrf = sign_in(client, admin)
    config = '{"impersonation": {"min_uid": 1000, "denied_users": ["root"]}}'
    made = client.post(
        "/web/admin/resources",
        data={"csrf": csrf, "name": "sudo", "type": "slurm_sudo", "port": "22",
              "jobs_poll_interval": "5", "jobs_runner_config": config},
        follow_redirects=False,
    )  # fmt: skip
    assert made.status_code == 303, made.text
    rid = made.headers["location"].split("/")[-1].split("?")[0]
    base = {"csrf": csrf, "name": "p", "resource_id": rid, "jobs_remote_dir": "/home/x"}
    missing = client.post("/web/admin/profiles", data=base)
    assert missing.status_code == 422
    assert "required for a slurm_sudo Resource" in _field_error(missing.text, "username")
    root = client.post("/web/admin/profiles", data={**base, "username": "root"})
    assert root.status_code == 422 and "never impersonated" in _field_error(root.text, "username")
    relative = client.post("/web/admin/profiles", data={**base, "jobs_remote_dir": "home"})
    assert "absolute path" in _field_error(relative.text, "jobs_remote_dir")
    assert client.get("/api/v1/admin/profiles", headers=admin).json() == []


def test_health_shows_the_watchers_counts_and_active_runs(client, admin):
    sign_in(client, admin)
    page = client.get("/web/admin/health")
    assert page.status_code == 200
    for element in ('id="watcher-state"', 'id="calls-by-kind"', 'id="active-runs"'):
        assert element in page.text
    assert "running" in page.text
