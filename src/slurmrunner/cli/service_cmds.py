"""`slurmrunner serve`, and what it shares with `slurmrunner admin ...` (admin_cmds.py): the
database option, opening (and migrating) the database, errors as messages with exit 2.

The service's modules are imported inside each command, so the CLI's other commands do not
pay for FastAPI and SQLAlchemy at start.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.markup import escape

from ..config import describe_validation_error
from ..errors import SlurmRunnerError
from .output import fail, say

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="SLURMRUNNER_DB",
        help="Service database: sqlite:///PATH or postgresql+psycopg://USER:PW@HOST/DB "
        "(default: service.sqlite in $SLURMRUNNER_STATE_DIR or ~/.local/state/slurmrunner).",
        show_default=False,
    ),
]
T = TypeVar("T")


class LocalJobs(StrEnum):
    keep = "keep"
    cancel = "cancel"


# A request field -> the option that sets it, to name it in errors.
_OPTION = {
    "email": "EMAIL",
    "name": "NAME",
    "profile_id": "--profile",
    "resource_id": "--resource",
    "jobs_poll_interval": "--poll-interval",
}


def _option(field: str) -> str:
    return _OPTION.get(field, "--" + field.replace("_", "-"))


def _refused(problems: list[tuple[list[Any], str]]) -> NoReturn:
    lines = []
    for loc, msg in problems:
        where = (
            _option(str(loc[1])) if len(loc) > 1 and loc[0] == "body" else ".".join(map(str, loc))
        )
        lines.append(f"{where}: {msg}")
    fail("\n".join(lines))


def request(model: type[T], **fields: Any) -> T:
    """The same request schema the API uses, so the same rules apply."""
    try:
        return model(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        _refused([(["body", *e["loc"]], line) for e, line in _split(exc)])


def _split(exc: ValidationError) -> list[tuple[Any, str]]:
    lines = describe_validation_error(exc).split("\n")
    errors = exc.errors()
    if len(lines) != len(errors):
        lines = [e["msg"] for e in errors]
    # Each line starts with its own path: keep only the message after it.
    return [(e, line.split(": ", 1)[-1]) for e, line in zip(errors, lines, strict=True)]


def open_db(db: str | None) -> Engine:
    """The database, migrated to this version's schema; or a message and exit 2."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..service.app import open_database

    try:
        return open_database(db)
    except SlurmRunnerError as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(f"cannot open the database: {getattr(exc, 'orig', None) or exc}")


@contextmanager
def database(db: str | None) -> Iterator[Session]:
    """A session on the migrated database; every refusal becomes a message and exit 2."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..service.db import make_sessionmaker
    from ..service.errors import Invalid

    engine = open_db(db)
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    except Invalid as exc:
        _refused(exc.problems)
    except SlurmRunnerError as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(f"database error: {getattr(exc, 'orig', None) or exc}")
    finally:
        engine.dispose()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every response waited ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    sock.listen(2048)
    return sock


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")
    ] = 8000,
    db: DbOpt = None,
    log_level: Annotated[
        str,
        typer.Option(
            help="Log level of uvicorn and of the service's own lines (runs, jobs, watcher): "
            "critical, error, warning, info, debug."
        ),
    ] = "info",
    local_jobs_on_stop: Annotated[
        LocalJobs,
        typer.Option(
            help="At a clean stop (SIGTERM), the jobs of `local` Resources run on this machine: "
            "keep them running (resumed at the next start) or cancel them. "
            "Cluster jobs always keep running.",
        ),
    ] = LocalJobs.keep,
) -> None:
    """Start the multi-user service (HTTP API under /api/v1, docs at /docs, /healthz).

    The database is created or upgraded to this version's schema first.
    Put it behind a reverse proxy for TLS.
    Prometheus metrics are at /metrics, with no token: restrict it at the reverse proxy.
    The first admin: `slurmrunner admin create-user EMAIL --superuser`.
    """
    import uvicorn

    from ..service.app import create_app
    from ..service.db import describe_db, parse_db_url
    from ..service.logs import log_to_stderr

    engine = open_db(db)
    where = describe_db(parse_db_url(db))
    sock = _bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}"
    say(f"slurmrunner service listening on {escape(url)} (API docs: {escape(url)}/docs)")
    say(f"database: {escape(where)}")
    log_to_stderr(log_level)  # the service's own lines (runs, jobs, watcher), with their time
    app = create_app(engine=engine, local_jobs_on_stop=local_jobs_on_stop.value)
    config = uvicorn.Config(app, log_level=log_level)
    uvicorn.Server(config).run(sockets=[sock])
