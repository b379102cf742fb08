"""Alembic's environment for the service's database (see ../migrate.py for how it is called).

Called from Python with `config.attributes["engine"]`; from the `alembic` command with
`-x db=URL` (or $SLURMRUNNER_DB). SQLite has almost no ALTER TABLE: batch mode rebuilds a
table instead, so the same revisions run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from slurmrunner.service.db import make_engine
from slurmrunner.service.models import Base
from slurmrunner.store_schema import metadata as run_tables

config = context.config
# The service's own tables and the run store's (store_schema): autogenerate must see both, or
# it would propose dropping the run tables.
target_metadata = [Base.metadata, run_tables]


def _engine() -> Engine:
    given = config.attributes.get("engine")
    if given is not None:
        return given
    import os

    url = context.get_x_argument(as_dictionary=True).get("db") or os.environ.get("SLURMRUNNER_DB")
    return make_engine(url)


def run_migrations_offline() -> None:
    url = context.get_x_argument(as_dictionary=True).get("db")
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        # SQLAlchemy 2 does not autocommit: end the connection's transaction explicitly.
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
