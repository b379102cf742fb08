"""API tokens: made, hashed, looked up.

A token is `sr_` + 32 random bytes (URL-safe base64). The database keeps its SHA-256 only:
with 256 bits of randomness nobody can guess or search a token, so a slow password hash would
add nothing but a cost to every request, and a stolen database holds no usable token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from enum import Enum

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ApiToken, User, utcnow

TOKEN_PREFIX = "sr_"
TOKEN_BYTES = 32
PREFIX_SHOWN = len(TOKEN_PREFIX) + 6  # "sr_AbCdEf": enough to tell a user's tokens apart
MAX_TOKEN_CHARS = 256  # anything longer is not ours: refused before hashing
# last_used_at is written at most this often per token: a write on every request would make
# each read a write (and serialise the API on SQLite's single writer).
LAST_USED_RESOLUTION = timedelta(minutes=1)


class Refusal(Enum):
    """Why a token was not accepted (each is a 401)."""

    INVALID = "invalid or revoked token"
    INACTIVE = "this account is deactivated; ask an admin"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_row(user: User, name: str) -> tuple[ApiToken, str]:
    """A new token for `user` (not yet added to a session) and its secret, to show once."""
    secret = new_token()
    row = ApiToken(
        user=user, name=name, token_hash=token_hash(secret), prefix=secret[:PREFIX_SHOWN]
    )
    return row, secret


def authenticate(db: Session, token: str) -> User | Refusal:
    """The active user the token belongs to, or why not."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return Refusal.INVALID
    digest = token_hash(token)
    # The lookup is by the hash, an index search whose timing tells nothing about any stored
    # token's secret; the comparison after it is constant-time all the same.
    row = db.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).one_or_none()
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at:
        return Refusal.INVALID
    if not row.user.is_active:
        return Refusal.INACTIVE
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        row.last_used_at = now
        db.commit()
    return row.user
