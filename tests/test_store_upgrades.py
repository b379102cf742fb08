"""The run store's schema over time: CLI files written by the raw-sqlite3 versions open and keep
working (upgraded once, even by processes opening them at once), and the service's migration
makes the very tables of store_schema, on which a Store works end to end.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from slurmrunner import store_schema
from slurmrunner.results import TaskResult
from slurmrunner.service import migrate
from slurmrunner.service.db import make_engine
from slurmrunner.store import Store
from tests.test_store import pg_schema_url

# The schema of the raw-sqlite3 store, as the version before the port made it.
RAW_TABLES = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, created REAL NOT NULL, state TEXT NOT NULL, spec TEXT NOT NULL,
    n_tasks INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, first_task INTEGER NOT NULL,
    n_tasks INTEGER NOT NULL, job_id TEXT, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0, claim TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, args TEXT NOT NULL, result TEXT,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS counters (
    run_id TEXT NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (run_id, name)
);
"""
RAW_STATUS_COUNTS = (
    "CREATE TABLE status_counts (run_id TEXT NOT NULL, status TEXT NOT NULL, "
    "n INTEGER NOT NULL, PRIMARY KEY (run_id, status))"
)


def raw_file(path: Path, *, claim: bool = True, status_counts: bool = True) -> None:
    """A store as the raw-sqlite3 versions wrote it: the last one (claim, status_counts) or an
    earlier one (neither). Run `old`, 4 tasks, 3 with results (2 ok, 1 failed), one job claimed."""
    db = sqlite3.connect(path)
    tables = RAW_TABLES if claim else RAW_TABLES.replace(", claim TEXT NOT NULL DEFAULT ''", "")
    db.executescript(tables)
    if status_counts:
        db.execute(RAW_STATUS_COUNTS)
    with db:
        db.execute("INSERT INTO runs VALUES ('old', 1.5, 'running', '{\"v\": 1}', 4)")
        for i, status in enumerate(["ok", "failed", "ok", None]):
            res = json.dumps(TaskResult(i, status).to_dict()) if status else None
            db.execute("INSERT INTO tasks VALUES ('old', ?, ?, ?)", (i, json.dumps(i), res))
        db.execute("INSERT INTO jobs (run_id, idx, first_task, n_tasks, state) "
                   "VALUES ('old', 0, 0, 4, 'RUNNING')")  # fmt: skip
        if claim:
            db.execute("UPDATE jobs SET claim = 'h|1|n|0'")
        if status_counts:
            db.executemany(
                "INSERT INTO status_counts VALUES ('old', ?, ?)", [("ok", 2), ("failed", 1)]
            )
        db.execute("INSERT INTO counters VALUES ('old', 'squeue', 3)")
    db.close()


def check_upgraded(path: Path) -> None:
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == store_schema.SQLITE_SCHEMA_VERSION
    columns = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
    assert {"user_id", "resource_id", "profile_id"} <= columns
    indexes = {r[1] for r in db.execute("PRAGMA index_list(runs)")}
    assert "ix_runs_user_id_created" in indexes
    db.close()


@pytest.mark.parametrize("version", ["last raw", "earlier raw"])
def test_a_file_of_the_raw_sqlite_store_opens_and_keeps_working(
    tmp_path: Path, version: str
) -> None:
    path = tmp_path / "runs.sqlite"
    last = version == "last raw"
    raw_file(path, claim=last, status_counts=last)
    for _ in range(2):  # upgraded once: a second opening changes nothing
        store = Store(path)
        check_upgraded(path)
        assert store.status_counts("old") == Counter(ok=2, failed=1)  # counted once
        run = store.run("old")
        assert (run.state, run.spec, run.n_tasks, run.user_id) == ("running", {"v": 1}, 4, None)
        assert store.jobs("old")[0].claim == ("h|1|n|0" if last else "")
        assert store.counters("old") == {"squeue": 3}
        assert store.resolve_run_id("ol") == "old"
        store.close()
    store = Store(path)
    store.save_results("old", [TaskResult(2, "cancelled"), TaskResult(3, "cancelled")])
    assert store.status_counts("old") == Counter(ok=2, failed=1, cancelled=1)
    store.create_run("new", {}, [1, 2], [2], user_id=5)
    assert [r.id for r in store.runs(user_id=5)] == ["new"]
    assert store.claim_job("new", store.jobs("new")[0], "me|1|x|0")
    store.close()


def test_processes_opening_an_earlier_file_at_once_count_it_once(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    raw_file(path, claim=False, status_counts=False)
    code = "import sys; from slurmrunner.store import Store; Store(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)]) for _ in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    check_upgraded(path)
    assert Store(path).status_counts("old") == Counter(ok=2, failed=1)


# The service's database: its migrations make the run tables.


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'service.sqlite'}"
    else:
        yield from pg_schema_url(request)


def test_the_migration_makes_store_schema_and_a_store_works_on_it(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    migrate.upgrade(engine)
    assert set(store_schema.metadata.tables) <= set(inspect(engine).get_table_names())

    def run_tables_only(name: str | None, type_: str, parent: dict) -> bool:
        table = name if type_ == "table" else parent.get("table_name")
        return type_ == "schema" or table in store_schema.metadata.tables

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": run_tables_only})
        assert compare_metadata(context, store_schema.metadata) == []

    store = Store(engine)
    store.create_run("r", {"c": 1}, [{"x": i} for i in range(6)], [3, 3], user_id=1)
    store.create_run("s", {"c": 2}, [{}], [1], user_id=2, resource_id=3, profile_id=4)
    assert store.run_owner("r") == 1 and store.run("s").profile_id == 4
    assert [r.id for r in store.runs(user_id=1)] == ["r"]
    assert store.active_runs() == ["r", "s"]
    job = store.jobs("r")[0]
    assert store.claim_job("r", job, "me|1|x|0")
    assert not store.claim_job("r", job, "you|2|y|0")
    store.update_job("r", 0, job_id="9", state="PENDING")
    store.save_results("r", [TaskResult(i, "ok") for i in range(3)])
    store.save_results("r", [TaskResult(i, "failed") for i in range(2, 6)])
    assert store.status_counts("r") == Counter(ok=3, failed=3)
    store.add_counters("r", Counter(squeue=1))
    assert store.counters("r") == {"squeue": 1}
    store.set_run_state("r", "done")
    assert store.active_runs() == ["s"]
    store.close()  # the engine is the caller's: still usable
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM tasks").scalar() == 7

    command.downgrade(migrate.alembic_config(engine), "0001")
    assert not set(store_schema.metadata.tables) & set(inspect(engine).get_table_names())
    migrate.upgrade(engine)
    assert Store(engine).runs() == []
    engine.dispose()


def test_a_store_leaves_a_service_engine_as_it_was(tmp_path: Path) -> None:
    # The BEGIN IMMEDIATE hook belongs to the store's own view of the engine: the service's
    # transactions on the same engine ask for no write lock (this read would wait for it).
    path = tmp_path / "service.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    store = Store(engine)
    store.create_run("r", {}, [1], [1])
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM runs").scalar() == 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    store.close()
    engine.dispose()
