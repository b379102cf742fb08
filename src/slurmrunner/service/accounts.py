"""Users and their API tokens: the operations behind the admin routes and `slurmrunner admin`.

Callers pass validated request schemas; the functions check what needs the database (unique
e-mail, existing Profile, not locking the last superuser out) and commit.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import store_schema
from . import models
from .auth import token_row
from .errors import Conflict, Invalid, NotFound
from .lookups import by_id
from .models import ApiToken, User, utcnow
from .schemas.users import UserCreate, UserUpdate


def get_user(db: Session, user_id: int) -> User:
    return by_id(db, User, user_id, "user")


def user_by_email(db: Session, email: str) -> User:
    user = db.scalars(select(User).where(User.email == email.strip().lower())).one_or_none()
    if user is None:
        raise NotFound(f"no user with e-mail {email!r}")
    return user


def list_users(db: Session) -> list[User]:
    return list(db.scalars(select(User).order_by(User.id)))


def _check_email_free(db: Session, email: str) -> None:
    if db.scalars(select(User.id).where(User.email == email)).first() is not None:
        raise Conflict(f"a user with e-mail {email!r} exists already")


def _check_profile_exists(db: Session, profile_id: int | None) -> None:
    if profile_id is not None and db.get(models.Profile, profile_id) is None:
        raise Invalid.one(("body", "profile_id"), f"no Profile with id {profile_id}")


def create_user(db: Session, data: UserCreate) -> User:
    _check_email_free(db, data.email)
    _check_profile_exists(db, data.profile_id)
    user = User(**data.model_dump())
    db.add(user)
    db.commit()
    return user


def _other_active_superusers(db: Session, user: User) -> int:
    query = select(func.count(User.id)).where(
        User.is_superuser.is_(True), User.is_active.is_(True), User.id != user.id
    )
    return db.scalar(query) or 0


def _check_not_last_superuser(db: Session, user: User, what: str) -> None:
    if user.is_superuser and user.is_active and _other_active_superusers(db, user) == 0:
        raise Conflict(f"cannot {what} the last active superuser: make another one first")


def update_user(db: Session, user: User, data: UserUpdate) -> User:
    changes = data.changes()
    if "email" in changes and changes["email"] != user.email:
        _check_email_free(db, changes["email"])
    if "profile_id" in changes:
        _check_profile_exists(db, changes["profile_id"])
    if changes.get("is_superuser") is False:
        _check_not_last_superuser(db, user, "demote")
    if changes.get("is_active") is False:
        _check_not_last_superuser(db, user, "deactivate")
    for key, value in changes.items():
        setattr(user, key, value)
    db.commit()
    return user


def delete_user(db: Session, user: User) -> None:
    """Refused while the user owns runs: their results and the audit of what ran as whom
    outlive an account (deactivate it instead: is_active=false)."""
    _check_not_last_superuser(db, user, "delete")
    owned = db.scalar(select(func.count()).where(store_schema.runs.c.user_id == user.id))
    if owned:
        raise Conflict(
            f"user {user.email} owns {owned} run(s): deactivate the account instead "
            "(is_active=false)"
        )
    db.delete(user)
    db.commit()


def issue_token(db: Session, user: User, name: str) -> tuple[ApiToken, str]:
    row, secret = token_row(user, name)
    db.add(row)
    db.commit()
    return row, secret


def list_tokens(db: Session, user: User) -> list[ApiToken]:
    return list(
        db.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id))
    )


def get_token(db: Session, user: User, token_id: int) -> ApiToken:
    token = db.get(ApiToken, token_id)
    if token is None or token.user_id != user.id:
        raise NotFound(f"user {user.id} has no token with id {token_id}")
    return token


def revoke_token(db: Session, token: ApiToken) -> ApiToken:
    """Revoked tokens are kept (with their time) for the record; revoking twice is a no-op."""
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        db.commit()
    return token
