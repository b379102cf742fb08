"""The API's routers, put together: `/api/v1/...` and `/healthz`.

Built by a function, not at import: FastAPI copies routes when a router is included, so each
app gets the whole set. The run routes need a Profile (403 without one).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..deps import current_superuser
from . import admin_profiles, admin_resources, admin_users, health, me, runs


def api_v1() -> APIRouter:
    admin = APIRouter(prefix="/admin", dependencies=[Depends(current_superuser)])
    for module in (admin_users, admin_resources, admin_profiles):
        admin.include_router(module.router)
    api = APIRouter(prefix="/api/v1")
    api.include_router(me.router)
    api.include_router(admin)
    # No router-wide caller check: each run route checks its caller itself, first (a second
    # check would cost every request a worker thread's hop and a query more).
    api.include_router(runs.router)
    return api


def operations() -> APIRouter:
    return health.router


__all__ = ["api_v1", "operations"]
