"""Request and response bodies for users, API tokens and /me."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from .common import Id, Name, Patch, Request, Response, no_control

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


def _email(value: str) -> str:
    # Identity, not deliverability: one address per user, compared without case.
    if not _EMAIL_RE.fullmatch(value):
        raise ValueError(f"not an e-mail address: {value!r}")
    return value.lower()


Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=320),
    AfterValidator(no_control),
    AfterValidator(_email),
]


class UserCreate(Request):
    email: Email
    is_superuser: bool = False
    is_active: bool = True
    profile_id: Id | None = None


class UserUpdate(Patch):
    NOT_NULL = ("email", "is_superuser", "is_active")

    email: Email | None = None
    is_superuser: bool | None = None
    is_active: bool | None = None
    profile_id: Id | None = None  # null unlinks the Profile


class UserRead(Response):
    id: int
    email: str
    is_superuser: bool
    is_active: bool
    profile_id: int | None
    created_at: datetime


class Me(UserRead):
    profile_name: str | None
    resource_id: int | None
    resource_name: str | None
    resource_type: str | None


class TokenCreate(Request):
    name: Name = "api"


class TokenRead(Response):
    id: int
    user_id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenIssued(TokenRead):
    token: str  # shown once: only its hash is kept
