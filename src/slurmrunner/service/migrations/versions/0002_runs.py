"""the run store: runs, jobs, tasks, counters, status_counts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

The tables of slurmrunner/store_schema.py, the same ones the CLI keeps in its own SQLite file,
so that store.Store works on the service's database. Written out in full rather than with
`store_schema.metadata.create_all(bind=op.get_bind())`: a revision must create the same tables
whatever store_schema becomes later (a later change there gets a revision of its own), and
create_all would skip a table that exists instead of failing loudly.

`runs.user_id`, `resource_id` and `profile_id` carry no foreign key: the core's schema does
not know the service's tables; the service keeps them right.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("created", sa.Double(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("n_tasks", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("resource_id", sa.Integer(), nullable=True),
        sa.Column("profile_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index("ix_runs_user_id_created", "runs", ["user_id", "created"])
    op.create_table(
        "jobs",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("first_task", sa.Integer(), nullable=False),
        sa.Column("n_tasks", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("claim", sa.Text(), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("run_id", "idx", name=op.f("pk_jobs")),
    )
    op.create_table(
        "tasks",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "idx", name=op.f("pk_tasks")),
    )
    op.create_table(
        "counters",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "name", name=op.f("pk_counters")),
    )
    op.create_table(
        "status_counts",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "status", name=op.f("pk_status_counts")),
    )


def downgrade() -> None:
    op.drop_table("status_counts")
    op.drop_table("counters")
    op.drop_table("tasks")
    op.drop_table("jobs")
    op.drop_index("ix_runs_user_id_created", table_name="runs")
    op.drop_table("runs")
