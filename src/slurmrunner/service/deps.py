"""FastAPI dependencies: a database session per request, and who is asking.

current_user               any active user with a valid token (else 401)
current_superuser          ... who is a superuser (else 403)
current_caller             ... who has a Profile (else 403), as plain values: every run route
current_user_with_profile  the same as ORM objects, Profile and Resource loaded: POST /runs
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from .auth import Caller, Refusal, authenticate, caller
from .models import User

NO_PROFILE = "no Profile linked to your account; ask an admin"


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


DbSession = Annotated[Session, Depends(get_db)]

# auto_error=False: a missing or malformed header gets our 401 (with WWW-Authenticate), not
# the scheme's own answer; the scheme still puts "Authorize" into /docs.
_bearer = HTTPBearer(auto_error=False, description="an API token: `slurmrunner admin issue-token`")


def _unauthorized(message: str, error: str | None) -> HTTPException:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return HTTPException(401, message, headers={"WWW-Authenticate": challenge})


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _authenticate(db: Session, credentials: HTTPAuthorizationCredentials | None) -> User:
    if credentials is None:
        raise _unauthorized("not authenticated: send 'Authorization: Bearer <token>'", None)
    found = authenticate(db, credentials.credentials)
    if isinstance(found, Refusal):
        raise _unauthorized(found.value, "invalid_token")
    return found


def current_user(db: DbSession, credentials: Credentials) -> User:
    return _authenticate(db, credentials)


CurrentUser = Annotated[User, Depends(current_user)]


def current_superuser(user: CurrentUser) -> User:
    if not user.is_superuser:
        raise HTTPException(403, "superuser only")
    return user


def current_user_with_profile(request: Request, credentials: Credentials) -> User:
    """The user, whose `profile` (and `profile.resource`) is set. Run routes then call
    `checks.core_profile(user.profile, user.profile.resource)` before acting.

    In a session of its own, closed before the handler runs: the run routes work through the
    Store, on the same pool, and requests each holding a connection while waiting for a
    second would, as many at once as the pool holds, leave all of them waiting. One function,
    not a chain of dependencies: FastAPI runs each sync dependency in a worker thread, and the
    hops cost more than the lookup (~0.3 ms of CPU each)."""
    with request.app.state.sessionmaker() as db:
        user = _authenticate(db, credentials)
        # Loaded (joined) now; they stay readable once the session is closed.
        if user.profile is None or user.profile.resource is None:
            raise HTTPException(403, NO_PROFILE)
    return user


def current_caller(request: Request, credentials: Credentials) -> Caller:
    """Who asks a run route, checked by one query on a connection of its own (returned to the
    pool before the handler runs, see current_user_with_profile): the run routes but POST
    need no more than the caller's id and whether they are a superuser."""
    return check_caller(request, credentials)


def check_caller(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    """current_caller, called by a sync handler itself: a route whose other parameters can
    never be refused (422) checks its caller in its own worker thread, not in one more (the
    hop costs ~0.3 ms of CPU, as much as the lookup); 401 and 403 come first all the same."""
    if credentials is None:
        raise _unauthorized("not authenticated: send 'Authorization: Bearer <token>'", None)
    with request.app.state.store.read_engine.connect() as conn:
        found = caller(conn, credentials.credentials)
    if isinstance(found, Refusal):
        raise _unauthorized(found.value, "invalid_token")
    if found.profile_id is None:
        raise HTTPException(403, NO_PROFILE)
    return found


CurrentSuperuser = Annotated[User, Depends(current_superuser)]
UserWithProfile = Annotated[User, Depends(current_user_with_profile)]
CurrentCaller = Annotated[Caller, Depends(current_caller)]
