"""The web pages (service/web) through the test client: sign-in and its cookie, CSRF, the runs
page, a run's page with its failures, tasks, log and cancel, and another user's 404."""

from __future__ import annotations

import re
import sys

from slurmrunner.service.web import run_pages
from slurmrunner.service.web.session import LOGIN_COOKIE, SESSION_COOKIE
from tests.service import test_runs, web_fixtures
from tests.service.conftest import TestClient
from tests.service.test_runs import post_run, wait_done

# The web tests' fixtures (web_fixtures.py), by name.
app = web_fixtures.app
_own_state = web_fixtures._own_state

# The run tests' fixtures, by name: a `local` Resource and users with a Profile on it.
local_resource = test_runs.local_resource
with_profile = test_runs.with_profile

SLEEPY = [sys.executable, "-c", "import time; time.sleep(60)"]


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def sign_in(client: TestClient, headers: dict[str, str]) -> str:
    """Signs the client in with the token in `headers`; the pages' CSRF token."""
    token = headers["Authorization"].removeprefix("Bearer ")
    form = client.get("/web/login")
    response = client.post(
        "/web/login", data={"token": token, "csrf": _csrf(form.text)}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    return _csrf(client.get("/web/runs").text)


def test_sign_in_sets_a_safe_cookie_and_sign_out_ends_it(client, make_user, tmp_path):
    _, headers = make_user("carol@example.org")
    token = headers["Authorization"].removeprefix("Bearer ")
    away = client.get("/web/runs", follow_redirects=False)
    assert away.status_code == 303 and away.headers["location"] == "/web/login"

    form = client.get("/web/login")
    assert form.status_code == 200
    assert '<label for="token">' in form.text and 'id="token"' in form.text
    assert 'name="viewport"' in form.text
    nonce = _csrf(form.text)
    assert client.cookies.get(LOGIN_COOKIE) == nonce

    # A good token without the form's CSRF value is refused, and so is a wrong one.
    refused = client.post("/web/login", data={"token": token}, follow_redirects=False)
    assert refused.status_code == 403
    wrong = client.post("/web/login", data={"token": token, "csrf": "x"}, follow_redirects=False)
    assert wrong.status_code == 403

    bad = client.post("/web/login", data={"token": "sr_nope", "csrf": _csrf(form.text)})
    assert bad.status_code == 401 and "invalid or revoked token" in bad.text
    assert client.cookies.get(SESSION_COOKIE) is None

    form = client.get("/web/login")
    good = client.post(
        "/web/login", data={"token": token, "csrf": _csrf(form.text)}, follow_redirects=False
    )
    assert good.status_code == 303 and good.headers["location"] == "/web/runs"
    cookie = next(
        v for v in good.headers.get_list("set-cookie") if v.startswith(SESSION_COOKIE + "=")
    )
    flags = [f.strip().lower() for f in cookie.split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/web" in flags
    assert "secure" not in flags  # plain http (https sets it)
    value = client.cookies.get(SESSION_COOKIE)
    assert value and token not in value and token[3:20] not in value
    secret = tmp_path / "state" / "web-secret"
    assert secret.stat().st_mode & 0o777 == 0o600

    page = client.get("/web/runs")
    assert page.status_code == 200 and "carol@example.org" in page.text
    assert page.headers["cache-control"] == "no-store"

    # A forged or tampered cookie is no session.
    # (Another last hex digit of the MAC: "0" when it was one already forged nothing, 1 in 16.)
    other = "1" if value.endswith("0") else "0"
    forged = TestClient(client.app, cookies={SESSION_COOKIE: value[:-1] + other})
    assert forged.get("/web/runs", follow_redirects=False).status_code == 303

    csrf = _csrf(page.text)
    assert client.post("/web/logout", follow_redirects=False).status_code == 403
    out = client.post("/web/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/web/login"
    assert client.get("/web/runs", follow_redirects=False).status_code == 303


def test_the_cookie_is_secure_over_https(app, make_user):
    _, headers = make_user("erin@example.org")
    with TestClient(app, base_url="https://testserver") as secure:
        token = headers["Authorization"].removeprefix("Bearer ")
        form = secure.get("/web/login")
        good = secure.post(
            "/web/login", data={"token": token, "csrf": _csrf(form.text)}, follow_redirects=False
        )
        cookie = next(
            v for v in good.headers.get_list("set-cookie") if v.startswith(SESSION_COOKIE + "=")
        )
        assert "secure" in [f.strip().lower() for f in cookie.split(";")]


def test_revoking_the_token_ends_the_session(client, admin, make_user):
    user, headers = make_user("dave@example.org")
    sign_in(client, headers)
    tokens = client.get(f"/api/v1/admin/users/{user.id}/tokens", headers=admin)
    assert tokens.status_code == 200, tokens.text
    for t in tokens.json():
        revoked = client.delete(f"/api/v1/admin/users/{user.id}/tokens/{t['id']}", headers=admin)
        assert revoked.status_code in (200, 204), revoked.text
    assert client.get("/web/runs", follow_redirects=False).status_code == 303


def test_runs_and_run_pages_show_progress_failures_tasks_and_logs(
    client, admin, with_profile, monkeypatch
):
    alice = with_profile("alice")
    run = post_run(client, alice, [1, -1, 2, 3], resources={"tasks_per_job": 2}).json()
    wait_done(client, run["id"], alice)
    rid = run["id"]
    sign_in(client, alice)

    runs = client.get("/web/runs")
    assert rid in runs.text and 'class="seg ok" style="width: 75.0%"' in runs.text
    assert 'class="seg failed" style="width: 25.0%"' in runs.text
    assert "here" in runs.text  # the Resource
    assert 'data-refresh="/web/runs/fragment"' in runs.text
    assert rid in client.get("/web/runs", params={"state": "done"}).text
    assert rid not in client.get("/web/runs", params={"state": "running"}).text
    fragment = client.get("/web/runs/fragment")
    assert fragment.status_code == 200 and rid in fragment.text and "<html" not in fragment.text

    monkeypatch.setattr(run_pages, "TASKS_PAGE", 2)  # four tasks: two pages
    page = client.get(f"/web/runs/{rid}")
    assert page.status_code == 200
    text = page.text
    # Failures come first, by cause, with the exit code and the log's last lines.
    assert text.index("Failures by cause") < text.index('id="tasks"')
    assert "<strong>exit_code</strong>: 1 task" in text
    assert "Task 1 — exit code 3" in text
    assert "task -1" in text  # the log tail
    assert f'href="/web/runs/{rid}/tasks/1/log"' in text
    assert "?page=1#tasks" in text and "Cancel this run" not in text
    assert "<svg" in text and "Task durations" in text and "Peak memory" in text
    rows = re.findall(r'/tasks/(\d+)/log">\1</a>', text)
    assert rows == ["0", "1"]
    second = client.get(f"/web/runs/{rid}", params={"page": 1}).text
    assert re.findall(r'/tasks/(\d+)/log">\1</a>', second) == ["2", "3"]
    progress = client.get(f"/web/runs/{rid}/fragment").text
    assert "3 ok, 1 failed" in progress and "data-refresh" not in progress  # ended: no polling

    log = client.get(f"/web/runs/{rid}/tasks/1/log")
    assert log.status_code == 200 and "task -1" in log.text and "exit_code" in log.text
    assert client.get(f"/web/runs/{rid}/tasks/9/log").status_code == 404

    # Bob cannot see it: the same 404 page as a run that does not exist.
    bob = with_profile("bob")
    other = TestClient(client.app)
    sign_in(other, bob)
    hidden = other.get(f"/web/runs/{rid}")
    assert hidden.status_code == 404 and "Not found" in hidden.text
    assert hidden.headers["content-type"].startswith("text/html")
    assert other.get(f"/web/runs/{rid}/tasks/1/log").status_code == 404
    assert rid not in other.get("/web/runs").text

    # The admin sees every user's runs, with whose they are.
    boss = TestClient(client.app)
    sign_in(boss, admin)
    everyone = boss.get("/web/runs").text
    assert rid in everyone and "alice@example.org" in everyone


def test_cancel_through_the_form(client, with_profile):
    alice = with_profile("alice")
    run = client.post("/api/v1/runs", json={"command": SLEEPY, "inputs": [1, 2]}, headers=alice)
    assert run.status_code == 201, run.text
    rid = run.json()["id"]
    csrf = sign_in(client, alice)
    page = client.get(f"/web/runs/{rid}").text
    assert "Cancel this run" in page and f'data-refresh="/web/runs/{rid}/fragment"' in page
    url = f"/web/runs/{rid}/cancel"
    assert client.post(url, follow_redirects=False).status_code == 403
    assert client.post(url, data={"csrf": "nope"}, follow_redirects=False).status_code == 403
    done = client.post(url, data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/web/runs/{rid}"
    assert wait_done(client, rid, alice)["state"] == "cancelled"


def test_static_assets_are_served(client):
    css = client.get("/web/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    script = client.get("/web/static/live.js")
    assert script.status_code == 200 and "data-refresh" in script.text
    assert len(script.content) < 4096  # a few KB, no library
