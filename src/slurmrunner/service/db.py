"""The service's database: an engine and a session factory from a URL.

SQLite (a file under the state folder) by default, PostgreSQL with `postgresql+psycopg://...`.
Sessions are synchronous: the API's handlers run in FastAPI's thread pool, and a sync engine
works the same on both databases with no extra driver.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from .errors import DatabaseURLError

SQLITE_BUSY_TIMEOUT_MS = 10_000


def state_dir() -> Path:
    """$SLURMRUNNER_STATE_DIR, else $XDG_STATE_HOME/slurmrunner, else ~/.local/state/slurmrunner
    (the same base the CLI's run store uses)."""
    if env := os.environ.get("SLURMRUNNER_STATE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "slurmrunner"


def default_db_url() -> str:
    return f"sqlite:///{state_dir() / 'service.sqlite'}"


def parse_db_url(url: str | None) -> URL:
    """The URL, or the default one; a URL SQLAlchemy cannot use is refused with its reason."""
    text = url or default_db_url()
    try:
        parsed = make_url(text)
    except ArgumentError:
        raise DatabaseURLError(
            f"database URL {text!r} is not a URL: give sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB"
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseURLError(
            f"database {parsed.get_backend_name()!r} is not supported: use sqlite or postgresql"
        )
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        # The only PostgreSQL driver we install is psycopg 3; say so rather than fail on import.
        raise DatabaseURLError(
            f"use the psycopg driver for PostgreSQL: postgresql+psycopg://..., got "
            f"{parsed.render_as_string(hide_password=True)!r}"
        )
    return parsed


def describe_db(url: URL) -> str:
    """What to print: the file for SQLite, the URL without its password otherwise."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite file {url.database}" if url.database else "SQLite in memory"
    return f"PostgreSQL {url.render_as_string(hide_password=True)}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers (the API) never wait for the writer (the watcher), and a crash loses no
    # committed transaction. Foreign keys are off by default in SQLite: the schema relies on them.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL, and much cheaper than FULL
    cursor.close()


def make_engine(url: str | URL | None = None) -> Engine:
    parsed = url if isinstance(url, URL) else parse_db_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # Sessions cross threads (the thread pool); each is used by one thread at a time.
        kwargs["connect_args"] = {"check_same_thread": False}
    # No pool_pre_ping: it costs a round trip on every checkout, as much as the query itself.
    # A restarted PostgreSQL is found by the first statement that fails on a dead connection:
    # SQLAlchemy then drops every pooled connection at once, so one request (503) or one
    # watcher step (retried) pays for it, not every request.
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise DatabaseURLError(f"cannot use database URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # Objects stay readable after commit: handlers commit, then build the response from them.
    return sessionmaker(bind=engine, expire_on_commit=False)
