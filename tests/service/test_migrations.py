"""The migrations shipped in the package: a fresh database goes to head, and head matches
the models (a model changed without a migration fails here)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect

from slurmrunner import store_schema
from slurmrunner.service import migrate
from slurmrunner.service.db import make_engine
from slurmrunner.service.models import Base

TABLES = {"users", "api_tokens", "resources", "profiles", "alembic_version"}


def head_metadata() -> MetaData:
    """What head must match: the models' tables and the run store's (store_schema, made by
    revision 0002)."""
    both = MetaData()
    for table in [*Base.metadata.tables.values(), *store_schema.metadata.tables.values()]:
        table.to_metadata(both)
    return both


def test_fresh_database_upgrades_to_head(db_url):
    engine = make_engine(db_url)
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert set(inspect(engine).get_table_names()) >= TABLES
    migrate.upgrade(engine)  # again: nothing to do
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), head_metadata())
    assert diff == []
    engine.dispose()


def test_downgrade_and_upgrade_again(db_url):
    from alembic import command

    engine = make_engine(db_url)
    migrate.upgrade(engine)
    command.downgrade(migrate.alembic_config(engine), "base")
    assert not (TABLES - {"alembic_version"}) & set(inspect(engine).get_table_names())
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()


def test_sqlite_runs_with_wal_and_foreign_keys(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'a' / 'b.sqlite'}")  # the folder is made
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_migrations_ship_with_the_package():
    assert (migrate.MIGRATIONS / "env.py").is_file()
    assert (migrate.MIGRATIONS / "script.py.mako").is_file()
    assert list((migrate.MIGRATIONS / "versions").glob("0001_*.py"))
