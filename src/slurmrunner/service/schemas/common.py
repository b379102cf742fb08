"""Types shared by the request and response schemas.

Every text a request carries is bounded and free of control characters: PostgreSQL refuses a
NUL in text (that would be a 500, not a 422), and a line break in a name or path would end up
in logs or scripts.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

# Ids are bounded to what every database column (PostgreSQL's 32-bit integer) can hold: a larger
# one is a 422, not an overflow inside the driver.
MAX_ID = 2**31 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]


def no_control(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters (line breaks, tabs, NUL)")
    return value


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    return value


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=255),
    AfterValidator(no_control),
]
AbsolutePath = Annotated[
    str,
    StringConstraints(min_length=1, max_length=4096),
    AfterValidator(no_control),
    AfterValidator(_absolute),
]


def find_nul(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where a JSON document holds a NUL character, in a key or a string (None: nowhere)."""
    if isinstance(value, str):
        return path if "\0" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\0" in str(key):
                return (*path, str(key))
            if (found := find_nul(item, (*path, str(key)))) is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := find_nul(item, (*path, i))) is not None:
                return found
    return None


class Request(BaseModel):
    """A request body: unknown keys are refused (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class Patch(Request):
    """A partial update: only the keys sent are changed. A key listed in NOT_NULL may be left
    out but not sent as null (its column has no empty value)."""

    NOT_NULL: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _not_null(self) -> Patch:
        for key in self.NOT_NULL:
            if key in self.model_fields_set and getattr(self, key) is None:
                raise ValueError(f"{key} may not be null (leave it out to keep it)")
        return self

    def changes(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.model_fields_set}


class Response(BaseModel):
    model_config = ConfigDict(from_attributes=True)
