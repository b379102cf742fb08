"""A row by id or by name, or NotFound naming what was asked for: one lookup for every model."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import NotFound

Row = TypeVar("Row")


def by_id(db: Session, model: type[Row], ident: int, label: str | None = None) -> Row:
    row = db.get(model, ident)
    if row is None:
        raise NotFound(f"no {label or model.__name__} with id {ident}")
    return row


def by_name(db: Session, model: type[Row], name: str) -> Row:
    column: Any = model.name  # type: ignore[attr-defined]
    row = db.scalars(select(model).where(column == name)).one_or_none()
    if row is None:
        raise NotFound(f"no {model.__name__} named {name!r}")
    return row
