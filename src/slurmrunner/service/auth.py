"""API tokens: made, hashed, looked up.

A token is `sr_` + 32 random bytes (URL-safe base64). The database keeps its SHA-256 only:
with 256 bits of randomness nobody can guess or search a token, so a slow password hash would
add nothing but a cost to every request, and a stolen database holds no usable token.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from ..store_schema import Compiled
from .models import ApiToken, Profile, User, utcnow

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


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as the run routes need it: plain values read by one query, not ORM
    objects (building those cost more than the rest of a run's GET)."""

    id: int
    email: str
    is_superuser: bool
    profile_id: int | None


# Built once: the statement and its compiled form are reused by every request.
_CALLER = (
    select(
        ApiToken.id,
        ApiToken.token_hash,
        ApiToken.revoked_at,
        ApiToken.last_used_at,
        User.id,
        User.email,
        User.is_superuser,
        User.is_active,
        Profile.id,
    )
    .join(User, ApiToken.user_id == User.id)
    .outerjoin(Profile, User.profile_id == Profile.id)
    .where(ApiToken.token_hash == bindparam("digest"))
)
_TOUCH = (
    update(ApiToken)
    .where(ApiToken.id == bindparam("token_id"))
    .values(last_used_at=bindparam("now"))
)


@functools.cache
def _caller_sql(dialect: Dialect) -> str:
    return Compiled(_CALLER, dialect).sql


def caller(conn: Connection, token: str) -> Caller | Refusal:
    """What `authenticate` checks, on a plain connection (autocommit: the rare last_used_at
    write commits by itself)."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return Refusal.INVALID
    digest = token_hash(token)
    if conn.dialect.name == "postgresql":
        # The driver's own cursor, on SQL compiled once: SQLAlchemy's execution costs as much
        # as the query. (Its datetimes come back aware, as the UTC columns give them; SQLite
        # hands back text, which the columns' type converts: the Core path.)
        sql = _caller_sql(conn.dialect)
        found = conn.exec_driver_sql(sql, {"digest": digest}).all()
        row = found[0] if len(found) == 1 else None
    else:
        row = conn.execute(_CALLER, {"digest": digest}).one_or_none()
    if row is None or not hmac.compare_digest(row[1], digest) or row[2] is not None:
        return Refusal.INVALID
    if not row[7]:
        return Refusal.INACTIVE
    now = utcnow()
    if row[3] is None or now - row[3] >= LAST_USED_RESOLUTION:
        conn.execute(_TOUCH, {"token_id": row[0], "now": now})
        conn.commit()
    return Caller(id=row[4], email=row[5], is_superuser=bool(row[6]), profile_id=row[8])
