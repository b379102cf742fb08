"""Web sign-in: a signed session cookie and the CSRF token of its forms.

The cookie is `<token id>.<token hash prefix>.<expiry>.<HMAC>`, signed with the web secret.
It never holds the API token (nor anything that works as one against the API), and the
session is tied to the token it was opened with: revoking that token, or deactivating the
user, ends the session at the next request. Stateless, so no table (and no migration) is
needed; the price is that a session cannot be ended on the server alone before it expires,
except by revoking its token.

The secret is 32 random bytes in `<state dir>/web-secret` (mode 0600), made on first use.
Processes that serve one database from several machines need the same file on each.

CSRF: every form carries a token derived from the session cookie (HMAC of it), checked on
every POST; the sign-in form, which has no session yet, uses a double-submit cookie. The
cookies are SameSite=Strict as well, which alone stops cross-site POSTs in current browsers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from sqlalchemy import select

from ..auth import Refusal, authenticate, token_hash
from ..db import state_dir
from ..models import ApiToken, User

SESSION_COOKIE = "srw_session"
LOGIN_COOKIE = "srw_login"
SESSION_TTL_S = 12 * 3600
SECRET_FILE = "web-secret"
_HASH_PREFIX = 16  # of the token's stored hash: a reused token id does not revive a session

_secret_lock = threading.Lock()


class SignInRequired(Exception):
    """A page asked for without a valid session: answered by a redirect to the sign-in."""


class CsrfRefused(Exception):
    """A POST without its form's CSRF token: answered 403."""


class PageNotFound(Exception):
    """A run, task, user, Resource or Profile the user may not see or that does not exist:
    the 404 page, never the API's JSON."""


class PageForbidden(Exception):
    """An admin page asked for by a user who is not a superuser: the 403 page."""


def load_secret(folder: Path) -> bytes:
    """The web secret, made on first use; refused if others may read it."""
    path = folder / SECRET_FILE
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            raise PermissionError(f"{path} is readable by others: chmod 600 it") from None
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return bytes.fromhex(path.read_text().strip())


def secret_of(request: Request) -> bytes:
    """The app's secret, read once per app (on first use, so an app that never serves a page
    writes no file)."""
    state = request.app.state
    with _secret_lock:
        if getattr(state, "web_secret", None) is None:
            state.web_secret = load_secret(state_dir())
        return state.web_secret  # type: ignore[no-any-return]


def _mac(secret: bytes, text: str) -> str:
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def session_value(secret: bytes, token: ApiToken, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_TTL_S)
    payload = f"{token.id}.{token.token_hash[:_HASH_PREFIX]}.{expires}"
    return f"{payload}.{_mac(secret, payload)}"


def csrf_for(secret: bytes, session: str) -> str:
    return _mac(secret, "csrf|" + session)[:40]


@dataclass(frozen=True)
class WebSession:
    user: User
    csrf: str


def _parse(secret: bytes, value: str) -> tuple[int, str] | None:
    """The token id and hash prefix of a genuine, unexpired cookie."""
    parts = value.split(".")
    if len(parts) != 4:
        return None
    payload, mac = ".".join(parts[:3]), parts[3]
    if not hmac.compare_digest(_mac(secret, payload), mac):
        return None
    try:
        token_id, expires = int(parts[0]), int(parts[2])
    except ValueError:
        return None
    if expires < time.time():
        return None
    return token_id, parts[1]


def current_session(request: Request) -> WebSession:
    """The signed-in user (FastAPI dependency of every page), else SignInRequired."""
    value = request.cookies.get(SESSION_COOKIE, "")
    secret = secret_of(request)
    found = _parse(secret, value) if value else None
    if found is None:
        raise SignInRequired
    token_id, prefix = found
    # A session of its own, closed before the page is built: the page reads through the
    # Store, on the same pool (see deps.current_user_with_profile).
    with request.app.state.sessionmaker() as db:
        row = db.scalars(select(ApiToken).where(ApiToken.id == token_id)).one_or_none()
        if (
            row is None
            or row.revoked_at is not None
            or not row.token_hash.startswith(prefix)
            or not row.user.is_active
        ):
            raise SignInRequired
        user = row.user
        _ = user.profile  # loaded now (joined), readable after the session closes
    return WebSession(user, csrf_for(secret, value))


def sign_in(request: Request, token: str) -> tuple[str, User] | Refusal:
    """The cookie value of a new session for the API token, or why the token was refused."""
    with request.app.state.sessionmaker() as db:
        found = authenticate(db, token)
        if isinstance(found, Refusal):
            return found
        digest = token_hash(token)
        row = db.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).one()
        return session_value(secret_of(request), row), found


def check_csrf(expected: str, given: str | None) -> None:
    if not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise CsrfRefused


def cookie_flags(request: Request) -> dict[str, object]:
    """HttpOnly and SameSite=Strict always; Secure when the page came over https (a plain
    http service on localhost must still be usable)."""
    return {
        "httponly": True,
        "samesite": "strict",
        "secure": request.url.scheme == "https",
        "path": "/web",
    }


def current_admin(request: Request) -> WebSession:
    """The signed-in superuser (dependency of every admin page), else PageForbidden; checked
    on every request, so a demoted admin loses the pages at once."""
    session = current_session(request)
    if not session.user.is_superuser:
        raise PageForbidden("This page is for administrators only.")
    return session
