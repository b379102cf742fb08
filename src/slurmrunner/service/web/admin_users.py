"""Admin pages: users, their Profile and their API tokens (superusers only).

Thin over the API's own operations (accounts.py) and request schemas (schemas/users.py): a
form's fields become a UserCreate or UserUpdate, what they refuse is shown beside the field.
A new token is shown once, in the answer to the form that issued it (no-store; the server
keeps its hash only).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from .. import accounts, clusters
from ..errors import NotFound, ServiceError
from ..models import User
from ..schemas.common import MAX_ID
from ..schemas.users import TokenCreate, UserCreate, UserUpdate
from . import views
from .forms import FormFields, Problems, checkbox, problems_of, see_other
from .session import PageNotFound, WebSession, check_csrf, current_admin

router = APIRouter(prefix="/web/admin/users", include_in_schema=False)
Admin = Annotated[WebSession, Depends(current_admin)]
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
USER_FIELDS = ("email", "is_superuser", "is_active", "profile_id")


def _user(db: Session, user_id: int) -> User:
    try:
        return accounts.get_user(db, user_id)
    except NotFound as exc:
        raise PageNotFound(str(exc)) from None


def _profile_id(form: dict[str, str]) -> str | None:
    # "" is the select's "no Profile"; anything else goes to the schema as given.
    return form.get("profile_id", "").strip() or None


def _profile_options(db: Session) -> list[tuple[int, str]]:
    return [(p.id, f"{p.name} (on {p.resource.name})") for p in clusters.list_profiles(db)]


def _list_page(
    request: Request,
    session: WebSession,
    db: Session,
    values: dict[str, Any] | None = None,
    problems: Problems | None = None,
    status: int = 200,
) -> HTMLResponse:
    return views.render(
        request,
        "admin_users.html",
        status,
        session=session,
        users=accounts.list_users(db),
        profile_options=_profile_options(db),
        values=values or {},
        problems=problems or Problems(),
    )


@router.get("", response_class=HTMLResponse)
def users_page(request: Request, session: Admin) -> HTMLResponse:
    with request.app.state.sessionmaker() as db:
        return _list_page(request, session, db)


@router.post("", response_class=HTMLResponse)
def create_user(request: Request, session: Admin, form: FormFields) -> Response:
    check_csrf(session.csrf, form.get("csrf"))
    values = {
        "email": form.get("email", ""),
        "is_superuser": checkbox(form, "is_superuser"),
        "profile_id": _profile_id(form),
    }
    with request.app.state.sessionmaker() as db:
        try:
            user = accounts.create_user(db, UserCreate.model_validate(values))
        except (ValidationError, ServiceError) as exc:
            return _list_page(request, session, db, values, problems_of(exc, USER_FIELDS), 422)
        return see_other(f"/web/admin/users/{user.id}")


def _user_page(
    request: Request,
    session: WebSession,
    db: Session,
    user: User,
    problems: Problems | None = None,
    status: int = 200,
    **extra: Any,
) -> HTMLResponse:
    return views.render(
        request,
        "admin_user.html",
        status,
        session=session,
        user=user,
        tokens=accounts.list_tokens(db, user),
        profile_options=_profile_options(db),
        problems=problems or Problems(),
        **extra,
    )


@router.get("/{user_id}", response_class=HTMLResponse)
def user_page(request: Request, session: Admin, user_id: Id) -> HTMLResponse:
    with request.app.state.sessionmaker() as db:
        return _user_page(request, session, db, _user(db, user_id))


@router.post("/{user_id}", response_class=HTMLResponse)
def update_user(request: Request, session: Admin, user_id: Id, form: FormFields) -> Response:
    check_csrf(session.csrf, form.get("csrf"))
    values = {
        "email": form.get("email", ""),
        "is_superuser": checkbox(form, "is_superuser"),
        "is_active": checkbox(form, "is_active"),
        "profile_id": _profile_id(form),
    }
    with request.app.state.sessionmaker() as db:
        user = _user(db, user_id)
        try:
            accounts.update_user(db, user, UserUpdate.model_validate(values))
        except (ValidationError, ServiceError) as exc:
            db.rollback()
            problems = problems_of(exc, USER_FIELDS)
            return _user_page(request, session, db, user, problems, 422)
        return see_other(f"/web/admin/users/{user.id}?saved=1")


@router.post("/{user_id}/tokens", response_class=HTMLResponse)
def issue_token(request: Request, session: Admin, user_id: Id, form: FormFields) -> HTMLResponse:
    check_csrf(session.csrf, form.get("csrf"))
    with request.app.state.sessionmaker() as db:
        user = _user(db, user_id)
        try:
            body = TokenCreate.model_validate({"name": form.get("name", "").strip() or "api"})
        except ValidationError as exc:
            return _user_page(request, session, db, user, problems_of(exc, ("name",)), 422)
        row, secret = accounts.issue_token(db, user, body.name)
        # Shown in this answer only (the page is no-store): a reload does not show it again.
        return _user_page(request, session, db, user, new_token=secret, new_token_row=row)


@router.post("/{user_id}/tokens/{token_id}/revoke")
def revoke_token(
    request: Request, session: Admin, user_id: Id, token_id: Id, form: FormFields
) -> Response:
    check_csrf(session.csrf, form.get("csrf"))
    with request.app.state.sessionmaker() as db:
        user = _user(db, user_id)
        try:
            accounts.revoke_token(db, accounts.get_token(db, user, token_id))
        except NotFound as exc:
            raise PageNotFound(str(exc)) from None
    return see_other(f"/web/admin/users/{user_id}#tokens")
