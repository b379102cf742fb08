"""each saved result's status and cause in its task row; runs indexed by state, with a message

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

`tasks.status` and `tasks.cause` are written with each result (store.Store.save_results), so a
run's failures are paged and counted by cause without reading every result. Results saved
before this revision get theirs from their JSON here. `ix_runs_state`: the unfinished runs
are looked up at every start, per-user limit check and metrics scrape. `runs.message`: why a
run failed as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("status", sa.Text(), nullable=True))
        batch.add_column(sa.Column("cause", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        status, cause = "result::json ->> 'status'", "result::json -> 'error' ->> 'cause'"
    else:
        status, cause = "json_extract(result, '$.status')", "json_extract(result, '$.error.cause')"
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("message", sa.Text(), nullable=True))
    op.create_index("ix_runs_state", "runs", ["state"])
    op.execute(f"UPDATE tasks SET status = {status}, cause = {cause} WHERE result IS NOT NULL")


def downgrade() -> None:
    op.drop_index("ix_runs_state", "runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("message")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("cause")
        batch.drop_column("status")
