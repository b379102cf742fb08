"""Admin user management: CRUD, the Profile link, and the last superuser kept."""

from __future__ import annotations

from tests.service.conftest import loc_msgs

U = "/api/v1/admin/users"


def test_user_crud(client, admin, sudo_resource):
    created = client.post(U, json={"email": "New@Example.org"}, headers=admin)
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["email"] == "new@example.org" and user["is_superuser"] is False
    assert user["is_active"] is True and user["profile_id"] is None
    assert client.post(U, json={"email": "NEW@example.org"}, headers=admin).status_code == 409
    for email in ("nope", "a\u0000b@x.org", "a\nb@x.org"):
        assert "body.email" in dict(loc_msgs(client.post(U, json={"email": email}, headers=admin)))
    assert "body.profile_id" in dict(
        loc_msgs(client.post(U, json={"email": "a@b.c", "profile_id": 77}, headers=admin))
    )
    profile = {
        "name": "p",
        "resource_id": sudo_resource["id"],
        "username": "nobody",
        "jobs_remote_dir": "/tmp/nobody",
    }
    pid = client.post("/api/v1/admin/profiles", json=profile, headers=admin).json()["id"]
    linked = client.patch(f"{U}/{user['id']}", json={"profile_id": pid}, headers=admin)
    assert linked.status_code == 200 and linked.json()["profile_id"] == pid
    assert client.get(f"{U}/{user['id']}", headers=admin).json()["profile_id"] == pid
    assert len(client.get(U, headers=admin).json()) == 2
    assert client.delete(f"{U}/{user['id']}", headers=admin).status_code == 204
    assert client.get(f"{U}/{user['id']}", headers=admin).status_code == 404
    assert client.get(f"{U}/{user['id']}/tokens", headers=admin).status_code == 404


def test_deleting_a_user_deletes_their_tokens(client, admin, make_user):
    user, headers = make_user()
    assert client.delete(f"{U}/{user.id}", headers=admin).status_code == 204
    assert client.get("/api/v1/me", headers=headers).status_code == 401


def test_the_last_superuser_is_kept(client, admin, make_user):
    me = client.get("/api/v1/me", headers=admin).json()
    for change in ({"is_superuser": False}, {"is_active": False}):
        response = client.patch(f"{U}/{me['id']}", json=change, headers=admin)
        assert response.status_code == 409 and "last active superuser" in response.text
    assert client.delete(f"{U}/{me['id']}", headers=admin).status_code == 409
    make_user(is_superuser=True)
    assert (
        client.patch(f"{U}/{me['id']}", json={"is_superuser": False}, headers=admin).status_code
        == 200
    )
    assert client.get(U, headers=admin).status_code == 403  # no longer a superuser


def test_null_for_a_required_field_is_422(client, admin, make_user):
    user, _ = make_user()
    assert "body" in dict(
        loc_msgs(client.patch(f"{U}/{user.id}", json={"email": None}, headers=admin))
    )
    assert client.get(f"{U}/{user.id}/tokens/999999", headers=admin).status_code == 405
    assert client.delete(f"{U}/{user.id}/tokens/999999", headers=admin).status_code == 404


def test_user_cannot_revoke_through_someone_elses_id(client, admin, make_user):
    a, _ = make_user()
    b, _ = make_user()
    b_token = client.get(f"{U}/{b.id}/tokens", headers=admin).json()[0]["id"]
    assert client.delete(f"{U}/{a.id}/tokens/{b_token}", headers=admin).status_code == 404
