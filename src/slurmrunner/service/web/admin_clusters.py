"""Admin pages: Resources (with their runner config, edited as JSON text) and Profiles
(superusers only).

Thin over the API's operations (clusters.py) and request schemas (schemas/clusters.py): the
same SlurmRunnerConfig and impersonation policy checks refuse the same things, and each
refusal is shown beside the field it names (the config's by its key path, e.g.
`default_slurm_config.mem`), with the admin's text kept as typed.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from .. import clusters
from ..errors import NotFound, ServiceError
from ..models import RESOURCE_TYPES, Profile, Resource
from ..schemas.clusters import ProfileCreate, ProfileUpdate, ResourceCreate, ResourceUpdate
from ..schemas.common import MAX_ID
from . import views
from .forms import AdminFormFields, FormFields, Problems, checkbox, optional, problems_of, see_other
from .session import PageNotFound, WebSession, check_csrf, current_admin

router = APIRouter(prefix="/web/admin", include_in_schema=False)
Admin = Annotated[WebSession, Depends(current_admin)]
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
RESOURCE_FIELDS = (
    "name",
    "type",
    "host",
    "port",
    "jobs_poll_interval",
    "prevent_new_submissions",
    "max_active_runs_per_user",
    "max_tasks_per_run",
    "jobs_runner_config",
)
PROFILE_FIELDS = (
    "name",
    "resource_id",
    "username",
    "jobs_remote_dir",
    "ssh_key_path",
    "known_hosts",
)
CONFIG = "jobs_runner_config"


def _found(get: Any, db: Session, item_id: int) -> Any:
    try:
        return get(db, item_id)
    except NotFound as exc:
        raise PageNotFound(str(exc)) from None


# Resources


def _resource_values(resource: Resource | None) -> dict[str, Any]:
    """The form's text for a Resource (a new one: the API's defaults)."""
    if resource is None:
        return {"type": "local", "port": "22", "jobs_poll_interval": "5", CONFIG: "{}"}
    values = {name: getattr(resource, name) for name in RESOURCE_FIELDS if name != CONFIG}
    values = {k: "" if v is None else v for k, v in values.items()}
    return values | {CONFIG: json.dumps(resource.jobs_runner_config, indent=2)}


def _resource_data(form: dict[str, str], problems: Problems) -> dict[str, Any]:
    """The request body the API would get. Blank optional fields are null; a blank number
    that may not be null stays "" so that the schema names it."""
    data: dict[str, Any] = {
        "name": form.get("name", ""),
        "type": form.get("type", ""),
        "port": form.get("port", "").strip(),
        "jobs_poll_interval": form.get("jobs_poll_interval", "").strip(),
        "prevent_new_submissions": checkbox(form, "prevent_new_submissions"),
        **optional(form, "host", "max_active_runs_per_user", "max_tasks_per_run"),
    }
    text = form.get(CONFIG, "")
    try:
        data[CONFIG] = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        problems.add(CONFIG, f"not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")
    return data


def _resource_form(
    request: Request,
    session: WebSession,
    resource: Resource | None,
    values: dict[str, Any],
    problems: Problems | None = None,
    status: int = 200,
) -> HTMLResponse:
    return views.render(
        request,
        "admin_resource.html",
        status,
        session=session,
        resource=resource,
        values=values,
        types=RESOURCE_TYPES,
        problems=problems or Problems(),
    )


@router.get("/resources", response_class=HTMLResponse)
def resources_page(request: Request, session: Admin) -> HTMLResponse:
    with request.app.state.sessionmaker() as db:
        return views.render(
            request, "admin_resources.html", session=session, resources=clusters.list_resources(db)
        )


@router.get("/resources/new", response_class=HTMLResponse)
def new_resource(request: Request, session: Admin) -> HTMLResponse:
    return _resource_form(request, session, None, _resource_values(None))


@router.get("/resources/{resource_id}", response_class=HTMLResponse)
def resource_page(request: Request, session: Admin, resource_id: Id) -> HTMLResponse:
    with request.app.state.sessionmaker() as db:
        resource = _found(clusters.get_resource, db, resource_id)
        return _resource_form(request, session, resource, _resource_values(resource))


def _save_resource(
    request: Request, session: WebSession, resource_id: int | None, form: dict[str, str]
) -> Response:
    check_csrf(session.csrf, form.get("csrf"))
    values = {name: form.get(name, "") for name in RESOURCE_FIELDS}
    values["prevent_new_submissions"] = checkbox(form, "prevent_new_submissions")
    problems = Problems()
    data = _resource_data(form, problems)
    with request.app.state.sessionmaker() as db:
        resource = None if resource_id is None else _found(clusters.get_resource, db, resource_id)
        if not problems:
            try:
                if resource is None:
                    resource = clusters.create_resource(db, ResourceCreate.model_validate(data))
                else:
                    clusters.update_resource(db, resource, ResourceUpdate.model_validate(data))
                return see_other(f"/web/admin/resources/{resource.id}?saved=1")
            except (ValidationError, ServiceError) as exc:
                db.rollback()
                problems = problems_of(exc, RESOURCE_FIELDS)
        return _resource_form(request, session, resource, values, problems, 422)


@router.post("/resources", response_class=HTMLResponse)
def create_resource(request: Request, session: Admin, form: AdminFormFields) -> Response:
    return _save_resource(request, session, None, form)


@router.post("/resources/{resource_id}", response_class=HTMLResponse)
def update_resource(
    request: Request, session: Admin, resource_id: Id, form: AdminFormFields
) -> Response:
    return _save_resource(request, session, resource_id, form)


# Profiles


def _profile_values(profile: Profile | None) -> dict[str, Any]:
    if profile is None:
        return {}
    values = {name: getattr(profile, name) for name in PROFILE_FIELDS}
    return {k: "" if v is None else v for k, v in values.items()}


def _profile_form(
    request: Request,
    session: WebSession,
    db: Session,
    profile: Profile | None,
    values: dict[str, Any],
    problems: Problems | None = None,
    status: int = 200,
) -> HTMLResponse:
    return views.render(
        request,
        "admin_profile.html",
        status,
        session=session,
        profile=profile,
        values=values,
        resources=clusters.list_resources(db),
        problems=problems or Problems(),
    )


@router.get("/profiles", response_class=HTMLResponse)
def profiles_page(request: Request, session: Admin) -> HTMLResponse:
    with request.app.state.sessionmaker() as db:
        return views.render(
            request, "admin_profiles.html", session=session, profiles=clusters.list_profiles(db)
        )


@router.get("/profiles/new", response_class=HTMLResponse)
def new_profile(request: Request, session: Admin) -> HTMLResponse:
    with request.app.state.sessionmaker() as db:
        return _profile_form(request, session, db, None, {})


@router.get("/profiles/{profile_id}", response_class=HTMLResponse)
def profile_page(request: Request, session: Admin, profile_id: Id) -> HTMLResponse:
    with request.app.state.sessionmaker() as db:
        profile = _found(clusters.get_profile, db, profile_id)
        return _profile_form(request, session, db, profile, _profile_values(profile))


def _save_profile(
    request: Request, session: WebSession, profile_id: int | None, form: dict[str, str]
) -> Response:
    check_csrf(session.csrf, form.get("csrf"))
    values = {name: form.get(name, "") for name in PROFILE_FIELDS}
    data = {"name": form.get("name", ""), "resource_id": form.get("resource_id", "").strip()}
    data |= optional(form, "username", "jobs_remote_dir", "ssh_key_path", "known_hosts")
    with request.app.state.sessionmaker() as db:
        profile = None if profile_id is None else _found(clusters.get_profile, db, profile_id)
        try:
            if profile is None:
                profile = clusters.create_profile(db, ProfileCreate.model_validate(data))
            else:
                clusters.update_profile(db, profile, ProfileUpdate.model_validate(data))
            return see_other(f"/web/admin/profiles/{profile.id}?saved=1")
        except (ValidationError, ServiceError) as exc:
            db.rollback()
            problems = problems_of(exc, PROFILE_FIELDS)
        return _profile_form(request, session, db, profile, values, problems, 422)


@router.post("/profiles", response_class=HTMLResponse)
def create_profile(request: Request, session: Admin, form: FormFields) -> Response:
    return _save_profile(request, session, None, form)


@router.post("/profiles/{profile_id}", response_class=HTMLResponse)
def update_profile(request: Request, session: Admin, profile_id: Id, form: FormFields) -> Response:
    return _save_profile(request, session, profile_id, form)
