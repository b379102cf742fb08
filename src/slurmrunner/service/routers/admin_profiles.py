"""/api/v1/admin/profiles: who a user is on a Resource (superusers only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from .. import clusters
from ..deps import DbSession
from ..schemas.clusters import ProfileCreate, ProfileRead, ProfileUpdate
from ..schemas.common import MAX_ID

router = APIRouter(prefix="/profiles", tags=["admin: profiles"])
ProfileId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.post("", status_code=201, response_model=ProfileRead)
def create_profile(body: ProfileCreate, db: DbSession) -> object:
    """Checked against its Resource's type and impersonation policy (422 naming the rule)."""
    return clusters.create_profile(db, body)


@router.get("", response_model=list[ProfileRead])
def list_profiles(
    db: DbSession, resource_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None
) -> object:
    return clusters.list_profiles(db, resource_id)


@router.get("/{profile_id}", response_model=ProfileRead)
def get_profile(profile_id: ProfileId, db: DbSession) -> object:
    return clusters.get_profile(db, profile_id)


@router.patch("/{profile_id}", response_model=ProfileRead)
def update_profile(profile_id: ProfileId, body: ProfileUpdate, db: DbSession) -> object:
    return clusters.update_profile(db, clusters.get_profile(db, profile_id), body)


@router.delete("/{profile_id}", status_code=204, responses={409: {"description": "has users"}})
def delete_profile(profile_id: ProfileId, db: DbSession) -> Response:
    clusters.delete_profile(db, clusters.get_profile(db, profile_id))
    return Response(status_code=204)
