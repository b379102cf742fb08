"""/api/v1/admin/users: users, and each user's API tokens (superusers only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from .. import accounts
from ..deps import DbSession
from ..schemas.common import MAX_ID
from ..schemas.users import TokenCreate, TokenIssued, TokenRead, UserCreate, UserRead, UserUpdate

router = APIRouter(prefix="/users", tags=["admin: users"])
UserId = Annotated[int, Path(ge=1, le=MAX_ID)]
TokenId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.post("", status_code=201, response_model=UserRead)
def create_user(body: UserCreate, db: DbSession) -> object:
    """A user (no token yet: issue one with POST /users/{id}/tokens)."""
    return accounts.create_user(db, body)


@router.get("", response_model=list[UserRead])
def list_users(db: DbSession) -> object:
    return accounts.list_users(db)


@router.get("/{user_id}", response_model=UserRead)
def get_user(user_id: UserId, db: DbSession) -> object:
    return accounts.get_user(db, user_id)


@router.patch("/{user_id}", response_model=UserRead)
def update_user(user_id: UserId, body: UserUpdate, db: DbSession) -> object:
    """Change e-mail, is_superuser, is_active, or the linked Profile (profile_id; null unlinks)."""
    return accounts.update_user(db, accounts.get_user(db, user_id), body)


@router.delete("/{user_id}", status_code=204)
def delete_user(user_id: UserId, db: DbSession) -> Response:
    accounts.delete_user(db, accounts.get_user(db, user_id))
    return Response(status_code=204)


@router.post("/{user_id}/tokens", status_code=201, response_model=TokenIssued)
def issue_token(user_id: UserId, body: TokenCreate, db: DbSession) -> TokenIssued:
    """A new API token. Its secret is in this answer only: the server keeps its hash."""
    row, secret = accounts.issue_token(db, accounts.get_user(db, user_id), body.name)
    return TokenIssued(**TokenRead.model_validate(row).model_dump(), token=secret)


@router.get("/{user_id}/tokens", response_model=list[TokenRead])
def list_tokens(user_id: UserId, db: DbSession) -> object:
    return accounts.list_tokens(db, accounts.get_user(db, user_id))


@router.delete("/{user_id}/tokens/{token_id}", status_code=204)
def revoke_token(user_id: UserId, token_id: TokenId, db: DbSession) -> Response:
    """Revoke the token (at once; it stays listed with its revoked_at)."""
    user = accounts.get_user(db, user_id)
    accounts.revoke_token(db, accounts.get_token(db, user, token_id))
    return Response(status_code=204)
