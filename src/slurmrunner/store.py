"""Persistent run state: a run outlives the process that started it.

The tables (store_schema.py) live either in the CLI's own SQLite file or in the service's
database (SQLite or PostgreSQL), through SQLAlchemy Core: one source of truth for both.

A job row is written *before* sbatch (state `submitting`) and gets its id right after, so a
process killed in between is found out on reattach and the job is looked up, not resubmitted
blindly. Results are written once per task; a second writer cannot overwrite them, and the
count of each status moves in the same transaction, so a status costs the same at task 10 and
at task 150,000.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    bindparam,
    event,
    func,
    insert,
    literal_column,
    make_url,
    select,
    union_all,
    update,
)
from sqlalchemy.pool import StaticPool

from . import store_schema as schema
from .errors import RunNotFoundError, SlurmRunnerError
from .results import TaskResult
from .store_create import RunCreation
from .store_listing import RunListing
from .store_queries import RunQueries
from .store_retries import RetryStore
from .store_rows import JOB_COLUMNS, JobRow, RunRow, RunView, job_row, run_row
from .store_save import SAVE_CHUNK, Saver

_runs, _jobs, _tasks, _counts = schema.runs, schema.jobs, schema.tasks, schema.status_counts
# Indices per SELECT (task_args): far below SQLite's (32,766) and PostgreSQL's (65,535)
# bound-parameter limits.
_SAVE_CHUNK = SAVE_CHUNK


def default_store_path() -> Path:
    if env := os.environ.get("SLURMRUNNER_STORE"):
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "slurmrunner" / "runs.sqlite"


# A claim on an unsubmitted job: "host|pid|nonce|unix time"; the nonce tells apart two runs
# watched by one process.
_FOREIGN_CLAIM_TTL_S = 600.0


def new_claim() -> str:
    return f"{socket.gethostname()}|{os.getpid()}|{secrets.token_hex(4)}|{time.time():.0f}"


def claim_is_live(claim: str, mine: str) -> bool:
    """Whether another, still running, process (or run object) holds `claim`."""
    if not claim or claim == mine:
        return False
    try:
        host, pid_text, _, since = claim.split("|")
        pid = int(pid_text)
        since_s = float(since)
    except ValueError:
        return False
    if host != socket.gethostname():  # cannot look: trust it for a while
        return time.time() - since_s < _FOREIGN_CLAIM_TTL_S
    if pid == os.getpid():
        return True  # another Run of this very process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user
    return True


# The statements of the hot paths, built once. Every column of `runs`, in RunRow's order.
_RUN = select(_runs).where(_runs.c.id == bindparam("run_id"))
_JOBS = select(*_jobs.c[JOB_COLUMNS]).where(_jobs.c.run_id == bindparam("run_id"))
_JOBS = _JOBS.order_by(_jobs.c.idx)
_STATUS_COUNTS = select(_counts.c.status, _counts.c.n).where(
    _counts.c.run_id == bindparam("run_id")
)
_RESULTS = select(_tasks.c.idx, _tasks.c.result).where(
    _tasks.c.run_id == bindparam("run_id"), _tasks.c.result.is_not(None)
)
_ADD_TASK = insert(_tasks).values(run_id=bindparam("rid"), idx=bindparam("i"), args=bindparam("a"))
_RESULTS_IN_ORDER = _RESULTS.order_by(_tasks.c.idx)
# A run's three tallies in one round trip (GET /runs/{id}): finished tasks by status ("s"),
# tasks not ok by cause ("x", from the cause column kept beside each result), calls ("c").
_TALLIES = union_all(
    select(literal_column("'s'"), _counts.c.status, _counts.c.n).where(
        _counts.c.run_id == bindparam("run_id"), _counts.c.n > literal_column("0")
    ),
    select(literal_column("'x'"), _tasks.c.cause, func.count())
    .where(_tasks.c.run_id == bindparam("run_id"), _tasks.c.cause.is_not(None))
    .group_by(_tasks.c.cause),
    select(literal_column("'c'"), schema.counters.c.name, schema.counters.c.n).where(
        schema.counters.c.run_id == bindparam("run_id")
    ),
)
_READS = {
    "run": _RUN,
    "jobs": _JOBS,
    "status_counts": _STATUS_COUNTS,
    "results": _RESULTS,
    "results_in_order": _RESULTS_IN_ORDER,
    "tallies": _TALLIES,
}


def _is_url(target: object) -> bool:
    return isinstance(target, URL) or (isinstance(target, str) and "://" in target)


class Store(RunCreation, RunListing, RunQueries, RetryStore):
    """The run store: `Store()` or `Store(path)` is the CLI's own SQLite file (made and upgraded
    here; `:memory:` works); `Store("sqlite:///...")`, `Store("postgresql+psycopg://...")` or
    `Store(engine)` is the service's database, whose tables its Alembic migrations make.

    Safe to share between threads: each call takes a connection from the pool (an in-memory
    store has one, so its calls queue on an RLock). On SQLite the writers of one process queue
    on that lock rather than on SQLite's busy timeout, and so do the frequent reads of the
    CLI's file, which share one connection of their own (see store_schema.Compiled).
    """

    def __init__(self, path_or_url: str | Path | URL | Engine | None = None) -> None:
        self.path: Path | str
        self._fast: sqlite3.Connection | None = None  # the CLI's file: see store_schema.Compiled
        self._owns_engine = not isinstance(path_or_url, Engine)
        if isinstance(path_or_url, Engine):
            engine = path_or_url
            self.path = engine.url.render_as_string(hide_password=True)
        elif _is_url(path_or_url):
            url = make_url(path_or_url)  # type: ignore[arg-type]
            self.path = url.render_as_string(hide_password=True)
            engine = schema.url_engine(url)
        else:
            self.path = Path(path_or_url) if path_or_url else default_store_path()
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not self.path.exists():
                    self.path.touch(mode=0o600)  # before SQLite makes it with the umask's mode
            engine, self._fast = schema.sqlite_file_engine(self.path)
        self._engine = engine
        dialect = engine.dialect
        self._saver = Saver(dialect)  # save_results's statements
        self._add_task = schema.Compiled(_ADD_TASK, dialect)
        self._save_counts = schema.adding_upsert(dialect.name, _counts, ("run_id", "status"))
        self._add_counters = schema.adding_upsert(dialect.name, schema.counters, ("run_id", "name"))
        # The frequent reads compiled once for this database (the CLI's file, or the service's:
        # the watcher reads jobs every cycle, 0.5 ms of CPU a call through Core on PostgreSQL).
        self._compiled = {name: schema.Compiled(stmt, dialect) for name, stmt in _READS.items()}
        self._lock = threading.RLock()
        self._listings: dict[tuple[bool, bool], schema.Compiled] = {}  # runs_with_counts
        shared = isinstance(engine.pool, StaticPool)  # one connection for every call
        self._read_lock: AbstractContextManager[Any] = self._lock if shared else nullcontext()
        self._write_lock = self._lock if dialect.name == "sqlite" else nullcontext()
        # Writes go through a view of the engine (same pool) whose transactions begin with
        # BEGIN IMMEDIATE on SQLite: the write lock is taken at the start, so what a write
        # transaction reads (save_results: which tasks have no result yet) stays true until it
        # commits, across processes. The hook is the view's own: a service's engine handed in
        # is left as it was for its other users.
        self._writer = engine.execution_options(slurmrunner_store="write")
        # Reads outside a transaction on PostgreSQL: no BEGIN before and no ROLLBACK after,
        # one round trip per query instead of three (SQLite reads start no transaction).
        self.read_engine = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if dialect.name == "postgresql"
            else engine
        )
        if dialect.name == "sqlite":
            event.listen(self._writer, "begin", schema.begin_immediate)
        if isinstance(self.path, Path):  # the CLI's own file: made and upgraded here
            with self._read() as conn:
                version = conn.exec_driver_sql("PRAGMA user_version").scalar()
            if version > schema.SQLITE_SCHEMA_VERSION:
                raise SlurmRunnerError(
                    f"{self.path} was written by a newer slurmrunner (schema {version}, this "
                    f"one knows {schema.SQLITE_SCHEMA_VERSION}): upgrade slurmrunner"
                )
            if version != schema.SQLITE_SCHEMA_VERSION:  # new, or written by an older version
                with self._tx() as conn:
                    schema.upgrade_sqlite_file(conn)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._read_lock, self.read_engine.connect() as conn:
            yield conn

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._write_lock, self._writer.begin() as conn:
            yield conn

    def _rows(self, name: str, **params: Any) -> list[Any]:
        """A frequent read (_READS), on the driver's cursor (store_schema.Compiled)."""
        return self._execute([(self._compiled[name], params)])[0]

    def _reads(self, *reads: tuple[str, dict[str, Any]]) -> list[list[Any]]:
        """Several frequent reads on one connection: one checkout for a request's reads."""
        return self._execute([(self._compiled[name], params) for name, params in reads])

    def _execute(self, reads: list[tuple[schema.Compiled, dict[str, Any]]]) -> list[list[Any]]:
        """Statements compiled once, run in turn on one connection's driver cursor."""
        if self._fast is None:
            with self._read() as conn:
                return [
                    list(conn.exec_driver_sql(c.sql, c.args(**params)).all())  # type: ignore[arg-type]
                    for c, params in reads
                ]
        with self._lock:
            return [self._fast.execute(c.sql, c.args(**p)).fetchall() for c, p in reads]

    def close(self) -> None:
        if self._owns_engine:
            self._engine.dispose()
        if self._fast is not None:
            self._fast.close()

    # runs (made in store_create.py; listed and found in store_listing.py)
    def run(self, run_id: str) -> RunRow:
        rows = self._rows("run", run_id=run_id)
        if not rows:
            raise RunNotFoundError(f"no run {run_id!r} in {self.path}")
        return run_row(rows[0])

    def run_view(
        self, run_id: str, may_see: Callable[[RunRow], bool] = lambda _: True
    ) -> RunView | None:
        """The run, its tallies and its jobs (GET /runs/{id}); None when there is no such run,
        or `may_see` says no: then nothing more than its row is read (another user's big run
        must answer 404 as fast as a missing one, or its existence shows in the timing)."""
        (run,) = self._reads(("run", {"run_id": run_id}))
        if not run or not may_see(row := run_row(run[0])):
            return None
        tallies, jobs = self._reads(("tallies", {"run_id": run_id}), ("jobs", {"run_id": run_id}))
        counts: Counter[str] = Counter()
        causes: Counter[str] = Counter()
        calls: dict[str, int] = {}
        for kind, name, n in tallies:
            if kind == "s":
                counts[name] = n
            elif kind == "x":
                causes[name] = n
            else:
                calls[name] = n
        calls = dict(sorted(calls.items()))  # by name, as counters() gives them
        return RunView(row, counts, causes, calls, [job_row(r) for r in jobs])

    def run_owner(self, run_id: str) -> int | None:
        """The service user who owns the run (None for a run of the CLI)."""
        return self.run(run_id).user_id

    def set_run_state(self, run_id: str, state: str, message: str | None = None) -> None:
        values = {"state": state} if message is None else {"state": state, "message": message}
        with self._tx() as conn:
            conn.execute(update(_runs).where(_runs.c.id == run_id).values(**values))

    # jobs
    def jobs(self, run_id: str) -> list[JobRow]:
        rows = self._rows("jobs", run_id=run_id)
        return [job_row(r) for r in rows]

    def claim_job(self, run_id: str, seen: JobRow, claim: str) -> bool:
        """Mark a job SUBMITTING for `claim` if nobody changed it since `seen` was read.

        Compare-and-set in one UPDATE: of two processes reattaching to a run at the same
        moment, one gets each unsubmitted job, so no job is submitted twice. (The rowcount of
        one UPDATE is exact on every driver; it is executemany's that is not.)
        """
        c = _jobs.c
        stmt = update(_jobs).where(c.run_id == run_id, c.idx == seen.idx, c.job_id.is_(None))
        stmt = stmt.where(c.done == 0, c.state == seen.state, c.claim == seen.claim)
        with self._tx() as conn:
            return conn.execute(stmt.values(state="SUBMITTING", claim=claim)).rowcount == 1

    def update_job(self, run_id: str, idx: int, **fields: Any) -> None:
        stmt = update(_jobs).where(_jobs.c.run_id == run_id, _jobs.c.idx == idx).values(**fields)
        with self._tx() as conn:
            conn.execute(stmt)

    # tasks
    def task_args(self, run_id: str, indices: range | Collection[int]) -> list[Any]:
        """The inputs of these tasks, in index order (a range: a run's first job's; any
        other set: a retry's job's)."""
        c = _tasks.c
        query = select(c.args).where(c.run_id == run_id).order_by(c.idx)
        if isinstance(indices, range):
            parts = [query.where(c.idx >= indices.start, c.idx < indices.stop)]
        else:
            order = sorted(indices)
            parts = [
                query.where(c.idx.in_(order[k : k + _SAVE_CHUNK]))
                for k in range(0, len(order), _SAVE_CHUNK)
            ]
        with self._read() as conn:
            return [json.loads(a) for part in parts for a in conn.execute(part).scalars()]

    def save_results(self, run_id: str, results: Iterable[TaskResult]) -> None:
        """Each task's result, unless one was saved before (by any process); the status
        counts move by what was saved, in the same transaction.

        Which tasks are still unsaved is read under the write lock (SQLite) or row locks
        (PostgreSQL), so what is counted is exactly what is written, even with two processes
        saving overlapping results at once. (Not UPDATE ... RETURNING: a retried task's
        history goes into its result, so it is read first, with the rows locked in index
        order.) Its statements, one per step whatever the batch: store_save.py.
        """
        first: dict[int, TaskResult] = {}
        for r in results:
            first.setdefault(r.index, r)  # as before: the first result given for a task wins
        if not first:
            return
        with self._tx() as conn:
            unsaved = self._saver.unsaved(conn, run_id, sorted(first))
            if unsaved:
                todo = [first[i] for i in unsaved]
                self._saver.write(conn, run_id, todo, list(unsaved.values()))

    def results(self, run_id: str) -> dict[int, TaskResult]:
        rows = self._rows("results", run_id=run_id)
        return {r[0]: TaskResult.from_dict(json.loads(r[1])) for r in rows}

    def results_in_order(self, run_id: str) -> list[TaskResult]:
        """Finished tasks' results by index, built row by row as the cursor gives them: the
        JSON of every row is never held at once (a run's end holds 100,000 results)."""
        params = {"run_id": run_id}
        if self._fast is None:
            with self._read() as conn:
                rows = conn.execute(_RESULTS_IN_ORDER, params)
                return [TaskResult.from_dict(json.loads(r[1])) for r in rows]
        fast = self._compiled["results_in_order"]
        with self._lock:
            cursor = self._fast.execute(fast.sql, fast.args(**params))
            return [TaskResult.from_dict(json.loads(r[1])) for r in cursor]

    def status_counts(self, run_id: str) -> Counter[str]:
        """Finished tasks by status (ok / failed / cancelled), as kept by save_results."""
        rows = self._rows("status_counts", run_id=run_id)
        return Counter({status: n for status, n in rows if n > 0})

    def finished_indices(self, run_id: str) -> set[int]:
        query = select(_tasks.c.idx).where(_tasks.c.run_id == run_id, _tasks.c.result.is_not(None))
        with self._read() as conn:
            return set(conn.execute(query).scalars())

    # counters
    def add_counters(self, run_id: str, counts: Counter[str]) -> None:
        # Sorted, as in save_results.
        rows = [{"run_id": run_id, "name": k, "n": n} for k, n in sorted(counts.items()) if n]
        if rows:
            with self._tx() as conn:
                conn.execute(self._add_counters, rows)

    def counters(self, run_id: str) -> dict[str, int]:
        c = schema.counters.c
        query = select(c.name, c.n).where(c.run_id == run_id).order_by(c.name)
        with self._read() as conn:
            return {r[0]: r[1] for r in conn.execute(query)}
