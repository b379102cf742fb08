"""Bearer tokens: missing, malformed, unknown, revoked, inactive -> 401; stored hashed."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import Depends

from slurmrunner.service.auth import PREFIX_SHOWN, token_hash
from slurmrunner.service.deps import NO_PROFILE, current_user_with_profile
from slurmrunner.service.models import ApiToken
from tests.service.conftest import bearer


def test_no_header_is_401_with_challenge(client):
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json()["detail"]


@pytest.mark.parametrize(
    "header",
    ["Bearer sr_not-a-real-token", "Bearer ", "Basic dXNlcjpwdw==", "Bearer " + "x" * 5000],
)
def test_bad_token_is_401(client, make_user, header):
    make_user()
    response = client.get("/api/v1/me", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_good_token_is_me(client, make_user):
    user, headers = make_user("Someone@Example.org")
    response = client.get("/api/v1/me", headers=headers)
    assert response.status_code == 200, response.text
    me = response.json()
    assert me["email"] == "someone@example.org" and me["id"] == user.id
    assert me["profile_name"] is None and me["resource_name"] is None


def test_revoked_token_is_401_at_once(client, admin, make_user):
    user, headers = make_user()
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    tokens = client.get(f"/api/v1/admin/users/{user.id}/tokens", headers=admin).json()
    assert len(tokens) == 1 and "token" not in tokens[0]
    revoked = client.delete(
        f"/api/v1/admin/users/{user.id}/tokens/{tokens[0]['id']}", headers=admin
    )
    assert revoked.status_code == 204
    response = client.get("/api/v1/me", headers=headers)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    listed = client.get(f"/api/v1/admin/users/{user.id}/tokens", headers=admin).json()
    assert listed[0]["revoked_at"] is not None


def test_inactive_user_is_401(client, admin, make_user):
    user, headers = make_user()
    patched = client.patch(
        f"/api/v1/admin/users/{user.id}", json={"is_active": False}, headers=admin
    )
    assert patched.status_code == 200
    response = client.get("/api/v1/me", headers=headers)
    assert response.status_code == 401 and "deactivated" in response.json()["detail"]


def test_issued_token_works_and_is_shown_once(client, admin, make_user):
    user, _ = make_user()
    issued = client.post(
        f"/api/v1/admin/users/{user.id}/tokens", json={"name": "laptop"}, headers=admin
    )
    assert issued.status_code == 201, issued.text
    secret = issued.json()["token"]
    assert secret.startswith("sr_") and len(secret) >= 43  # 32 bytes in URL-safe base64
    assert issued.json()["prefix"] == secret[:PREFIX_SHOWN]
    assert client.get("/api/v1/me", headers=bearer(secret)).json()["id"] == user.id
    listed = client.get(f"/api/v1/admin/users/{user.id}/tokens", headers=admin).json()
    assert all("token" not in t for t in listed)
    assert {t["name"] for t in listed} == {"test", "laptop"}
    used = next(t for t in listed if t["name"] == "laptop")
    assert used["last_used_at"] is not None


def test_token_is_hashed_at_rest(app, db, client, make_user, db_url):
    _, headers = make_user()
    secret = headers["Authorization"].removeprefix("Bearer ")
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    stored = db.query(ApiToken).one()
    assert stored.token_hash == token_hash(secret) and secret not in stored.token_hash
    if db_url.startswith("sqlite"):
        app.state.engine.dispose()
        path = Path(db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert secret.encode() not in raw
        assert token_hash(secret).encode() in raw  # the file was read: the hash is there


def test_route_needing_a_profile_is_403_without_one(app, client, make_user):
    @app.get("/api/v1/needs-profile", dependencies=[Depends(current_user_with_profile)])
    def needs_profile() -> dict[str, str]:
        return {"ok": "yes"}

    _, headers = make_user()
    response = client.get("/api/v1/needs-profile", headers=headers)
    assert response.status_code == 403
    assert response.json()["detail"] == NO_PROFILE
    assert client.get("/api/v1/needs-profile").status_code == 401
