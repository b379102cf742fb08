"""Forms of the web pages: the urlencoded body read within bounds, and a refusal (the request
schemas' or the admin operations') turned into messages beside the fields they name.

Forms are parsed here with urllib, not by FastAPI's Form, which needs python-multipart: a few
small forms do not justify a dependency. The validation is never done here: the page builds
the API's own request schema (schemas/) from the fields and calls the API's operation
(accounts.py, clusters.py); only the errors' placement is the web's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from ..errors import Invalid, ServiceError

#: A sign-in, a cancel, a user: small. The admin's forms carry a runner config (the web's
#: request bodies are bounded at 64 KiB by bodylimit.py in any case).
MAX_FORM_BYTES = 16 << 10
MAX_ADMIN_FORM_BYTES = 60 << 10
MAX_FIELDS = 20
#: Where an error that names no field of the form is shown: above the form.
FORM = "_form"


async def read_form(request: Request, max_bytes: int = MAX_FORM_BYTES) -> dict[str, str]:
    """The form's fields (the first value of each); {} for a body that is not one of ours
    (too big, too many fields), which then fails its CSRF check."""
    body = await request.body()
    if len(body) > max_bytes:
        return {}
    try:
        fields = parse_qs(
            body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FIELDS
        )
    except ValueError:  # more fields than any of our forms has
        return {}
    return {k: v[0] for k, v in fields.items()}


async def _form(request: Request) -> dict[str, str]:
    return await read_form(request)


async def _admin_form(request: Request) -> dict[str, str]:
    return await read_form(request, MAX_ADMIN_FORM_BYTES)


# The body is read by these (async) dependencies on the event loop; the handlers that take
# them are plain functions, which FastAPI runs in its worker threads: what they do (the
# database, a scancel over SSH) never stalls every other request, as in an async handler.
FormFields = Annotated[dict[str, str], Depends(_form)]
AdminFormFields = Annotated[dict[str, str], Depends(_admin_form)]


def see_other(url: str) -> RedirectResponse:
    """A form's answer: 303, so the browser follows it with a GET (a reload sends no form
    twice)."""
    return RedirectResponse(url, status_code=303)


def optional(form: dict[str, str], *names: str) -> dict[str, Any]:
    """Text fields, a blank one as None (the schema's "not set")."""
    return {n: (form.get(n, "").strip() or None) for n in names}


def checkbox(form: dict[str, str], name: str) -> bool:
    return form.get(name) in ("on", "true", "1")


@dataclass
class Problems:
    """Messages by field name; FORM holds those of no field. `paths` keeps each message's
    key path inside a field (the runner config's `default_slurm_config.mem`)."""

    by_field: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    paths: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, name: str, message: str, path: str = "") -> None:
        self.by_field[name].append(message)
        self.paths[name].append(path)

    def __bool__(self) -> bool:
        return bool(self.by_field)

    def of(self, name: str) -> list[str]:
        return self.by_field.get(name, [])

    def path_of(self, name: str) -> list[str]:
        return self.paths.get(name, [])


def _place(problems: Problems, loc: Iterable[Any], message: str, fields: set[str]) -> None:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    if parts and parts[0] in fields:
        problems.add(parts[0], message, ".".join(parts[1:]))
    elif parts and parts[0] == "resource":  # a Profile refused for its Resource's sake
        problems.add(FORM, f"the Resource's {'.'.join(parts[1:]) or 'settings'}: {message}")
    else:
        problems.add(FORM, message)


def problems_of(exc: ValidationError | ServiceError, fields: Iterable[str]) -> Problems:
    """A refusal's messages, each beside the field its location names."""
    names = set(fields)
    problems = Problems()
    if isinstance(exc, ValidationError):
        for err in exc.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            _place(problems, err["loc"], msg, names)
    elif isinstance(exc, Invalid):
        for loc, msg in exc.problems:
            _place(problems, loc, msg, names)
    else:  # Conflict, NotFound: a sentence about the whole form
        problems.add(FORM, exc.message)
    return problems
