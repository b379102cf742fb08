"""Resources and Profiles: the operations behind the admin routes and `slurmrunner admin`.

Nothing is saved that the core would refuse: a Resource's config is checked by
SlurmRunnerConfig, a Profile by the core Profile and its Resource's impersonation policy.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .checks import core_profile, validate_runner_config
from .errors import Conflict, Invalid
from .lookups import by_id, by_name
from .models import Profile, Resource, User
from .schemas.clusters import ProfileCreate, ProfileUpdate, ResourceCreate, ResourceUpdate


def get_resource(db: Session, resource_id: int) -> Resource:
    return by_id(db, Resource, resource_id)


def resource_by_name(db: Session, name: str) -> Resource:
    return by_name(db, Resource, name)


def list_resources(db: Session) -> list[Resource]:
    return list(db.scalars(select(Resource).order_by(Resource.id)))


def _check_name_free(
    db: Session, model: type[Resource | Profile], name: str, own_id: int | None
) -> None:
    clash = db.scalars(select(model.id).where(model.name == name)).first()
    if clash is not None and clash != own_id:
        raise Conflict(f"a {model.__name__} named {name!r} exists already")


def _check_resource_shape(type_: str, host: str | None) -> None:
    if type_ == "slurm_ssh" and not host:
        raise Invalid.one(("body", "host"), "a slurm_ssh Resource needs the SSH host")


def create_resource(db: Session, data: ResourceCreate) -> Resource:
    _check_resource_shape(data.type, data.host)
    validate_runner_config(data.jobs_runner_config)
    _check_name_free(db, Resource, data.name, None)
    resource = Resource(**data.model_dump())
    db.add(resource)
    db.commit()
    return resource


def update_resource(db: Session, resource: Resource, data: ResourceUpdate) -> Resource:
    """Its Profiles are checked again against the changed Resource. Fields a Profile lacks for
    a new type are refused (422 naming the Profile); a policy that now refuses a Profile is
    accepted (an admin must be able to shut an account out at once): that Profile's runs are
    refused at their next check, before anything runs as its user."""
    changes = data.changes()
    if "name" in changes:
        _check_name_free(db, Resource, changes["name"], resource.id)
    if "jobs_runner_config" in changes:
        validate_runner_config(changes["jobs_runner_config"])
    candidate = _resource_copy(resource, changes)
    _check_resource_shape(candidate.type, candidate.host)
    for profile in resource.profiles:
        try:
            core_profile(profile, candidate)
        except Invalid as exc:
            if exc.kind != "impersonation_policy":
                raise Invalid(
                    [(("body",), f"Profile {profile.name!r} would be invalid: {exc}")], exc.kind
                ) from None
    for key, value in changes.items():
        setattr(resource, key, value)
    db.commit()
    return resource


def _resource_copy(resource: Resource, changes: dict[str, Any]) -> Resource:
    """A detached Resource with the changes applied, to check Profiles against."""
    columns = {c.key: getattr(resource, c.key) for c in Resource.__table__.columns}
    return Resource(**(columns | changes))


def delete_resource(db: Session, resource: Resource) -> None:
    count = db.scalar(select(func.count(Profile.id)).where(Profile.resource_id == resource.id))
    if count:
        raise Conflict(
            f"Resource {resource.name!r} has {count} Profile(s): delete or move them first"
        )
    db.delete(resource)
    db.commit()


def get_profile(db: Session, profile_id: int) -> Profile:
    return by_id(db, Profile, profile_id)


def profile_by_name(db: Session, name: str) -> Profile:
    return by_name(db, Profile, name)


def list_profiles(db: Session, resource_id: int | None = None) -> list[Profile]:
    query = select(Profile).order_by(Profile.id)
    if resource_id is not None:
        query = query.where(Profile.resource_id == resource_id)
    return list(db.scalars(query))


def _resource_for(db: Session, resource_id: int) -> Resource:
    resource = db.get(Resource, resource_id)
    if resource is None:
        raise Invalid.one(("body", "resource_id"), f"no Resource with id {resource_id}")
    return resource


def create_profile(db: Session, data: ProfileCreate) -> Profile:
    resource = _resource_for(db, data.resource_id)
    _check_name_free(db, Profile, data.name, None)
    fields = data.model_dump(exclude={"resource_id"})
    profile = Profile(**fields, resource_id=resource.id)
    core_profile(profile, resource, loc=("body",))
    profile.resource = resource
    db.add(profile)
    db.commit()
    return profile


def update_profile(db: Session, profile: Profile, data: ProfileUpdate) -> Profile:
    changes = data.changes()
    if "name" in changes:
        _check_name_free(db, Profile, changes["name"], profile.id)
    resource = _resource_for(db, changes.get("resource_id", profile.resource_id))
    columns = {c.key: getattr(profile, c.key) for c in Profile.__table__.columns}
    candidate = Profile(**(columns | changes))  # detached: nothing is flushed before the check
    core_profile(candidate, resource, loc=("body",))
    for key, value in changes.items():
        setattr(profile, key, value)
    profile.resource = resource
    db.commit()
    return profile


def delete_profile(db: Session, profile: Profile) -> None:
    count = db.scalar(select(func.count(User.id)).where(User.profile_id == profile.id))
    if count:
        raise Conflict(f"Profile {profile.name!r} is linked to {count} user(s): unlink them first")
    db.delete(profile)
    db.commit()
