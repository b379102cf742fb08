"""The run store's tables, as SQLAlchemy Core `Table`s: one definition for the CLI's own SQLite
file (made here with `metadata.create_all`) and for the service's database (SQLite or
PostgreSQL, made by its Alembic migrations, `service/migrations/versions/0002_runs.py`).

The core knows nothing of the service's tables: `runs.user_id`, `resource_id` and `profile_id`
are plain nullable integers, and the service keeps them pointing at its users, Resources and
Profiles. A CLI run has none of them.

Changing a table here needs a migration for the service's databases, and an entry in
`upgrade_sqlite_file` for the CLI's files written by an earlier version.

Below the tables: the database plumbing of store.Store (engines, upserts, compiled statements).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlalchemy import (
    URL,
    Column,
    Connection,
    Double,
    Engine,
    Executable,
    Index,
    Insert,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    create_engine,
    inspect,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.pool import StaticPool

# Named constraints, so that a later migration can name what it alters on both databases.
# The service's own tables (service/models.py) take this convention too.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# Run states a run never leaves (see run.py, submission.py): every other one is watched.
FINAL_RUN_STATES = ("done", "cancelled", "failed")

runs = Table(
    "runs",
    metadata,
    Column("id", Text, nullable=False),
    Column("created", Double, nullable=False),  # unix time
    Column("state", Text, nullable=False),
    Column("spec", Text, nullable=False),  # RunSpec.to_dict() as JSON
    Column("n_tasks", Integer, nullable=False),
    # The service's: who owns the run, on which Resource, as which Profile (no foreign keys,
    # see above). Last, so that a file upgraded with ALTER TABLE has them in the same place.
    Column("user_id", Integer, nullable=True),
    Column("resource_id", Integer, nullable=True),
    Column("profile_id", Integer, nullable=True),
    # Why a run failed as a whole (its start was refused, its first sbatch failed): shown to
    # its user beside the state.
    Column("message", Text, nullable=True),
    PrimaryKeyConstraint("id"),
)
# A user's runs, newest first (GET /runs).
Index("ix_runs_user_id_created", runs.c.user_id, runs.c.created)
# The unfinished runs (a watcher's start, the per-user limit, /metrics).
Index("ix_runs_state", runs.c.state)

jobs = Table(
    "jobs",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("first_task", Integer, nullable=False),
    Column("n_tasks", Integer, nullable=False),
    Column("job_id", Text, nullable=True),  # the scheduler's, once sbatch answered
    Column("state", Text, nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    # 0/1 as today (an integer, not a Boolean: old files and callers pass done=1).
    Column("done", Integer, nullable=False, server_default="0"),
    Column("claim", Text, nullable=False, server_default=""),  # see store.new_claim
    # A retry's job (retrying.py): its tasks, a JSON list of indices (first_task and n_tasks
    # then give the first and the count), and its plan, JSON: the resources, the number of
    # tasks and jobs it was planned with. NULL for a run's first jobs, whose tasks are a range.
    Column("task_list", Text, nullable=True),
    Column("retry_plan", Text, nullable=True),
    PrimaryKeyConstraint("run_id", "idx"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("args", Text, nullable=False),  # the task's input as JSON
    Column("result", Text, nullable=True),  # TaskResult.to_dict() as JSON, written once
    # The result's status and error cause, written with it: a run's failures are found and
    # counted by cause without reading every result (GET /runs/{id}, ?status=failed).
    Column("status", Text, nullable=True),
    Column("cause", Text, nullable=True),
    # A retried task's earlier attempts and the resources of the one under way, JSON (see
    # store_retries.py); copied into its next result when that is saved.
    Column("history", Text, nullable=True),
    PrimaryKeyConstraint("run_id", "idx"),
)

counters = Table(
    "counters",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("n", Integer, nullable=False),
    PrimaryKeyConstraint("run_id", "name"),
)

# Finished tasks by status, moved in the same transaction as the results (Store.save_results),
# so a run's status costs the same at task 10 and at task 150,000.
status_counts = Table(
    "status_counts",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("n", Integer, nullable=False),
    PrimaryKeyConstraint("run_id", "status"),
)

# PRAGMA user_version of a CLI store file at this schema: a file at it is opened with one
# PRAGMA, an older one (0: the raw-sqlite3 versions never set it) is upgraded once.
SQLITE_SCHEMA_VERSION = 3


def upgrade_sqlite_file(conn: Connection) -> None:
    """Bring a CLI store file to this schema, inside the caller's write transaction (BEGIN
    IMMEDIATE: two processes opening an old file at once upgrade it once).

    New files get every table from `create_all`; a file of an earlier version gets what it
    lacks: the `claim` column, the service's columns and index, and `status_counts` counted
    once from the results already saved; each saved result's status and cause in its row;
    the retries' columns.
    """
    had_status_counts = inspect(conn).has_table("status_counts")
    metadata.create_all(conn)  # only the missing tables (checkfirst)
    columns = {
        name: {c["name"] for c in inspect(conn).get_columns(name)}
        for name in ("jobs", "runs", "tasks")
    }
    if "claim" not in columns["jobs"]:
        conn.execute(text("ALTER TABLE jobs ADD COLUMN claim TEXT NOT NULL DEFAULT ''"))
    for name in ("task_list", "retry_plan"):
        if name not in columns["jobs"]:
            conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {name} TEXT"))
    if "history" not in columns["tasks"]:
        conn.execute(text("ALTER TABLE tasks ADD COLUMN history TEXT"))
    for name in ("user_id", "resource_id", "profile_id"):
        if name not in columns["runs"]:
            conn.execute(text(f"ALTER TABLE runs ADD COLUMN {name} INTEGER"))
    if "message" not in columns["runs"]:
        conn.execute(text("ALTER TABLE runs ADD COLUMN message TEXT"))
    if "status" not in columns["tasks"]:
        conn.execute(text("ALTER TABLE tasks ADD COLUMN status TEXT"))
        conn.execute(text("ALTER TABLE tasks ADD COLUMN cause TEXT"))
        conn.execute(
            text(
                "UPDATE tasks SET status = json_extract(result, '$.status'), "
                "cause = json_extract(result, '$.error.cause') WHERE result IS NOT NULL"
            )
        )
    for index in runs.indexes:
        index.create(conn, checkfirst=True)
    if not had_status_counts:
        conn.execute(
            text(
                "INSERT INTO status_counts (run_id, status, n) "
                "SELECT run_id, json_extract(result, '$.status'), COUNT(*) "
                "FROM tasks WHERE result IS NOT NULL GROUP BY 1, 2"
            )
        )
    conn.execute(text(f"PRAGMA user_version = {SQLITE_SCHEMA_VERSION}"))


SQLITE_BUSY_TIMEOUT_S = 30.0


class Compiled:
    """A Core statement compiled once for one database, for the driver's own cursor.

    SQLAlchemy's execution costs ~60-150 µs a call and ~5 µs a row of an executemany on top of
    the driver (measured on SQLite, where a whole status_counts query costs ~12 µs): the
    frequent reads of the CLI's file and the executemany of tasks and results skip it. Only for
    columns needing no type conversion (text, integers, floats)."""

    def __init__(self, stmt: Executable, dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        # sqlite3 takes values by position (?), psycopg by name (%(name)s).
        names = list(compiled.positiontup or ()) if compiled.positional else None
        self._pick: Callable[[dict[str, Any]], tuple[Any, ...]] | None = None
        if names and len(names) == 1:
            self._pick = lambda values: (values[names[0]],)
        elif names:
            self._pick = itemgetter(*names)

    def args(self, **values: Any) -> tuple[Any, ...] | dict[str, Any]:
        return values if self._pick is None else self._pick(values)


def adding_upsert(dialect: str, table: Any, key: tuple[str, ...]) -> Insert:
    """INSERT a count, or add it to the one there (ON CONFLICT exists on both databases)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql  # here: ~0.1 s off every CLI's start

        stmt = postgresql.insert(table)
    else:
        stmt = sqlite.insert(table)
    return stmt.on_conflict_do_update(
        index_elements=list(key), set_={"n": table.c.n + stmt.excluded.n}
    )


def sqlite_file_engine(path: Path) -> tuple[Engine, sqlite3.Connection | None]:
    """The CLI's store: an engine on the file, and a connection of its own for the frequent
    reads (see Compiled; None for `:memory:`, where a second connection would be another,
    empty, database: one connection serves all).

    A connection per call from the pool, not one shared by all: SQLAlchemy closes a connection
    that a KeyboardInterrupt hit mid-call (the CLI's signal handlers raise one), and a new one
    must replace it. The driver's own transaction handling is off, as the SQLAlchemy docs
    advise for pysqlite: begin_immediate starts the write transactions."""

    def connect() -> sqlite3.Connection:
        db = sqlite3.connect(
            str(path), timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
        )
        # WAL: readers never wait for the writer; NORMAL is safe with WAL, and much cheaper.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    if str(path) == ":memory:":
        only = connect()
        return create_engine("sqlite://", creator=lambda: only, poolclass=StaticPool), None
    return create_engine(URL.create("sqlite", database=str(path)), creator=connect), connect()


def url_engine(url: URL) -> Engine:
    """An engine on the service's database (its tables made by its migrations)."""
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)  # a restarted PostgreSQL: dead connections
    args = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
    memory = url.database in (None, "", ":memory:")  # a second connection: another database
    return create_engine(url, connect_args=args, poolclass=StaticPool if memory else None)


def begin_immediate(conn: Connection) -> None:
    """Start a write transaction with SQLite's write lock taken (waiting up to the busy
    timeout for another writer), instead of at the transaction's first write."""
    dbapi_connection: Any = conn.connection.driver_connection
    if dbapi_connection.in_transaction:
        # Another hook (a service's engine set up as the docs advise) already sent its plain
        # BEGIN, and nothing ran since; or a transaction interrupted before it was owned was
        # left open. Nothing of either is to be kept.
        dbapi_connection.execute("ROLLBACK")
    dbapi_connection.execute("BEGIN IMMEDIATE")
