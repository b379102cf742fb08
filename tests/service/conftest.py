"""Fixtures of the service tests: a fresh database per test, on SQLite and (when
$SLURMRUNNER_TEST_PG_URL names a PostgreSQL database, e.g. from scripts/pg-up) on PostgreSQL.

A PostgreSQL test gets a schema of its own (dropped after it) through the connection's
search_path, so tests never see each other's rows and need no CREATE DATABASE right.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from slurmrunner.service import accounts
from slurmrunner.service.app import create_app
from slurmrunner.service.models import User
from slurmrunner.service.schemas.users import UserCreate

with warnings.catch_warnings():
    # Starlette asks for "httpx2" in its test client; httpx works and is what we ship.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

PG_ENV = "SLURMRUNNER_TEST_PG_URL"


def _pg_schema_url(base: str, schema: str) -> str:
    url = make_url(base)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A URL to an empty database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'service.sqlite'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL: ${PG_ENV} is not set (scripts/pg-up provides it)")
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(base, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def app(db_url: str) -> Any:
    return create_app(db_url)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def db(app: Any) -> Iterator[Session]:
    with app.state.sessionmaker() as session:
        yield session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def make_user(db: Session) -> Callable[..., tuple[User, dict[str, str]]]:
    """A user made directly in the database, and the headers that carry their new token."""

    def make(email: str | None = None, **fields: Any) -> tuple[User, dict[str, str]]:
        email = email or f"u{secrets.token_hex(3)}@example.org"
        user = accounts.create_user(db, UserCreate(email=email, **fields))
        _, secret = accounts.issue_token(db, user, "test")
        return user, bearer(secret)

    return make


@pytest.fixture
def admin(make_user: Callable[..., tuple[User, dict[str, str]]]) -> dict[str, str]:
    """Headers of a superuser."""
    return make_user("admin@example.org", is_superuser=True)[1]


@pytest.fixture
def sudo_resource(client: TestClient, admin: dict[str, str]) -> dict[str, Any]:
    """A slurm_sudo Resource with the reference document's first config example."""
    from tests.conftest import DOC_SNIPPET_1

    body = {"name": "cluster", "type": "slurm_sudo", "jobs_runner_config": DOC_SNIPPET_1}
    response = client.post("/api/v1/admin/resources", json=body, headers=admin)
    assert response.status_code == 201, response.text
    return response.json()


def loc_msgs(response: Any) -> list[tuple[str, str]]:
    """A 422's problems as (dotted field path, message)."""
    assert response.status_code == 422, response.text
    return [(".".join(map(str, d["loc"])), d["msg"]) for d in response.json()["detail"]]
