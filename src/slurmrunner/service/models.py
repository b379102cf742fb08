"""The service's tables: users and their API tokens, Resources (clusters) and Profiles (who a
user is on a cluster). Shaped after fractal-server 2.24's `Resource` and `Profile` so that its
admins recognise the fields; the runs tables are added by their own migration.

Every change here needs a migration in `migrations/versions/` (the service never creates
tables from these classes: `alembic upgrade head` does).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints (Alembic's batch mode on SQLite and later migrations name what they alter):
# the run tables' convention, one for the whole database.
from ..store_schema import NAMING

RESOURCE_TYPES = ("local", "slurm_sudo", "slurm_ssh")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both databases (SQLite hands back naive ones otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# JSONB on PostgreSQL (indexable, compact); SQLite stores JSON text.
JSONDocument = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Resource(Base):
    """A cluster (or this machine) the service runs on, and the admin's runner config for it."""

    __tablename__ = "resources"
    __table_args__ = (
        CheckConstraint(f"type IN {RESOURCE_TYPES!r}", name="type"),
        CheckConstraint("jobs_poll_interval >= 1", name="poll_interval"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(16))  # local | slurm_sudo | slurm_ssh
    # The SSH host and port (slurm_ssh); for the others, informative only.
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=22)
    # The admin's SlurmRunnerConfig as the admin wrote it (validated on the way in).
    jobs_runner_config: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    jobs_poll_interval: Mapped[int] = mapped_column(Integer, default=5)  # seconds
    prevent_new_submissions: Mapped[bool] = mapped_column(default=False)
    # Per-user limits; None: no limit.
    max_active_runs_per_user: Mapped[int | None] = mapped_column(Integer)
    max_tasks_per_run: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    profiles: Mapped[list[Profile]] = relationship(back_populates="resource")


class Profile(Base):
    """Who a user is on a Resource: the cluster account to act as and where their files go."""

    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    # RESTRICT: a Resource is not deleted from under its Profiles.
    resource_id: Mapped[int] = mapped_column(
        ForeignKey("resources.id", ondelete="RESTRICT"), index=True
    )
    username: Mapped[str | None] = mapped_column(String(64))
    ssh_key_path: Mapped[str | None] = mapped_column(String(4096))
    # The user's own folder on the cluster (the core Profile's project_dir); runs go below it.
    jobs_remote_dir: Mapped[str | None] = mapped_column(String(4096))
    known_hosts: Mapped[str | None] = mapped_column(String(4096))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    resource: Mapped[Resource] = relationship(back_populates="profiles", lazy="joined")
    users: Mapped[list[User]] = relationship(back_populates="profile")

    @property
    def resource_type(self) -> str:
        """The backend this Profile is for (fractal-server keeps it as a column)."""
        return self.resource.type


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored lower-cased
    is_superuser: Mapped[bool] = mapped_column(default=False)
    is_active: Mapped[bool] = mapped_column(default=True)
    # No Profile: the user may sign in (GET /me) but runs nothing.
    profile_id: Mapped[int | None] = mapped_column(
        ForeignKey("profiles.id", ondelete="RESTRICT"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    profile: Mapped[Profile | None] = relationship(back_populates="users", lazy="joined")
    tokens: Mapped[list[ApiToken]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )


class ApiToken(Base):
    """A bearer token. Only its SHA-256 is kept: a token is 32 random bytes, so nobody can
    search its space and a fast hash is enough (a slow one, as for passwords, would only cost
    every request time). The prefix is kept to tell tokens apart in lists."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # hex SHA-256
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship(back_populates="tokens", lazy="joined")
