"""Admin routes: 401 without a token, 403 for a user who is not a superuser, on every one."""

from __future__ import annotations

import pytest


def _admin_routes(app):
    for path, item in app.openapi()["paths"].items():
        if "/admin/" in path:
            for method in item:
                yield (
                    method.upper(),
                    path.format(user_id=1, token_id=1, resource_id=1, profile_id=1),
                )


def test_every_admin_route_is_superuser_only(app, client, make_user):
    _, headers = make_user()
    routes = list(_admin_routes(app))
    assert len(routes) >= 15
    for method, path in routes:
        response = client.request(method, path, headers=headers, json={})
        assert response.status_code == 403, (method, path, response.text)
        assert client.request(method, path, json={}).status_code == 401, (method, path)


@pytest.mark.parametrize("path", ["/api/v1/admin/users", "/api/v1/admin/resources"])
def test_superuser_is_let_in(client, admin, path):
    assert client.get(path, headers=admin).status_code == 200


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_healthz_503_when_the_database_is_gone(tmp_path):

    from slurmrunner.service.app import create_app
    from slurmrunner.service.db import make_engine
    from tests.service.conftest import TestClient

    app = create_app(f"sqlite:///{tmp_path / 'ok.sqlite'}")
    # A database that cannot be opened (its folder does not exist): every connection fails.
    app.state.sessionmaker.configure(bind=make_engine(f"sqlite:///{tmp_path}/gone/x.sqlite"))
    (tmp_path / "gone").rmdir()  # make_engine made it
    with TestClient(app) as client:
        response = client.get("/healthz")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        # An authenticated route answers 503 too (not a 500).
        response = client.get("/api/v1/me", headers={"Authorization": "Bearer sr_x"})
        assert response.status_code == 503


def test_every_run_route_needs_a_caller_with_a_profile(app, client, make_user):
    """Each run route checks its caller itself (no router-wide check: routers/__init__.py):
    a route added without one would answer here (the routes of the OpenAPI schema: this
    FastAPI includes routers lazily, app.routes does not list them)."""
    _, no_profile = make_user()
    routes = [
        (method.upper(), path.format(run_id="last", index=0))
        for path, item in app.openapi()["paths"].items()
        if path.startswith("/api/v1/runs")
        for method in item
    ]
    assert len(routes) >= 7
    for method, path in routes:
        assert client.request(method, path, json={}).status_code == 401, (method, path)
        response = client.request(method, path, headers=no_profile, json={})
        assert response.status_code == 403, (method, path, response.text)
