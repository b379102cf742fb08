"""retries: a retry job's task list and plan; a retried task's earlier attempts

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

`jobs.task_list` and `jobs.retry_plan` (JSON, NULL for a run's first jobs): the jobs that run
failed tasks again (retrying.py) hold any set of tasks, with resources of their own.
`tasks.history` (JSON, NULL for a task run once): a retried task's earlier attempts, copied
into its result when the next attempt's is saved.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("task_list", sa.Text(), nullable=True))
        batch.add_column(sa.Column("retry_plan", sa.Text(), nullable=True))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("history", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("history")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retry_plan")
        batch.drop_column("task_list")
