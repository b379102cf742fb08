"""/api/v1/admin/resources: clusters and their runner config (superusers only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from .. import clusters
from ..deps import DbSession
from ..schemas.clusters import ResourceCreate, ResourceRead, ResourceUpdate
from ..schemas.common import MAX_ID

router = APIRouter(prefix="/resources", tags=["admin: resources"])
ResourceId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.post("", status_code=201, response_model=ResourceRead)
def create_resource(body: ResourceCreate, db: DbSession) -> object:
    """`jobs_runner_config` is the admin config JSON (as in `slurmrunner config check`)."""
    return clusters.create_resource(db, body)


@router.get("", response_model=list[ResourceRead])
def list_resources(db: DbSession) -> object:
    return clusters.list_resources(db)


@router.get("/{resource_id}", response_model=ResourceRead)
def get_resource(resource_id: ResourceId, db: DbSession) -> object:
    return clusters.get_resource(db, resource_id)


@router.patch("/{resource_id}", response_model=ResourceRead)
def update_resource(resource_id: ResourceId, body: ResourceUpdate, db: DbSession) -> object:
    return clusters.update_resource(db, clusters.get_resource(db, resource_id), body)


@router.delete("/{resource_id}", status_code=204, responses={409: {"description": "has Profiles"}})
def delete_resource(resource_id: ResourceId, db: DbSession) -> Response:
    clusters.delete_resource(db, clusters.get_resource(db, resource_id))
    return Response(status_code=204)
