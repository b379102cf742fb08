"""GET /api/v1/me: who the token belongs to, and where their runs would go."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import CurrentUser
from ..schemas.users import Me, UserRead

router = APIRouter(tags=["me"])


@router.get("/me", response_model=Me)
def me(user: CurrentUser) -> Me:
    profile = user.profile
    resource = profile.resource if profile else None
    return Me(
        **UserRead.model_validate(user).model_dump(),
        profile_name=profile.name if profile else None,
        resource_id=resource.id if resource else None,
        resource_name=resource.name if resource else None,
        resource_type=resource.type if resource else None,
    )
