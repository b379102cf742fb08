"""users, API tokens, Resources and Profiles

Revision ID: 0001
Revises:
Create Date: 2026-11-30

Written out in full (no import of models.py): a revision must keep creating the same tables
whatever the models become later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("port", sa.Integer(), nullable=False, server_default="22"),
        sa.Column("jobs_runner_config", JSON_DOCUMENT, nullable=False),
        sa.Column("jobs_poll_interval", sa.Integer(), nullable=False, server_default="5"),
        sa.Column(
            "prevent_new_submissions", sa.Boolean(), nullable=False, server_default=sa.false()
        ),
        sa.Column("max_active_runs_per_user", sa.Integer(), nullable=True),
        sa.Column("max_tasks_per_run", sa.Integer(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.CheckConstraint(
            "type IN ('local', 'slurm_sudo', 'slurm_ssh')", name=op.f("ck_resources_type")
        ),
        sa.CheckConstraint("jobs_poll_interval >= 1", name=op.f("ck_resources_poll_interval")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resources")),
        sa.UniqueConstraint("name", name=op.f("uq_resources_name")),
    )
    op.create_table(
        "profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("resource_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(64), nullable=True),
        sa.Column("ssh_key_path", sa.String(4096), nullable=True),
        sa.Column("jobs_remote_dir", sa.String(4096), nullable=True),
        sa.Column("known_hosts", sa.String(4096), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.ForeignKeyConstraint(
            ["resource_id"],
            ["resources.id"],
            name=op.f("fk_profiles_resource_id_resources"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profiles")),
        sa.UniqueConstraint("name", name=op.f("uq_profiles_name")),
    )
    op.create_index(op.f("ix_profiles_resource_id"), "profiles", ["resource_id"])
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("is_superuser", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("profile_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["profiles.id"],
            name=op.f("fk_users_profile_id_profiles"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_index(op.f("ix_users_profile_id"), "users", ["profile_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("last_used_at", _when(), nullable=True),
        sa.Column("revoked_at", _when(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_api_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_api_tokens_user_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_index(op.f("ix_users_profile_id"), table_name="users")
    op.drop_table("users")
    op.drop_index(op.f("ix_profiles_resource_id"), table_name="profiles")
    op.drop_table("profiles")
    op.drop_table("resources")
