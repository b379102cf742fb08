"""Request and response bodies for Resources and Profiles (fractal-server's names)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints

from .common import AbsolutePath, Id, Name, Patch, Request, Response, no_control

ResourceType = Literal["local", "slurm_sudo", "slurm_ssh"]
Host = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=255, pattern=r"^[^\s@/]+$"),
    AfterValidator(no_control),
]
Port = Annotated[int, Field(ge=1, le=65535)]
PollInterval = Annotated[int, Field(ge=1, le=3600, description="seconds between squeue calls")]
RunsLimit = Annotated[int, Field(ge=1, le=1_000_000)]
TasksLimit = Annotated[int, Field(ge=1, le=1_000_000_000)]
# Checked as a POSIX user name by the core Profile (slurmrunner.profiles).
Username = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class ResourceCreate(Request):
    name: Name
    type: ResourceType
    host: Host | None = Field(default=None, description="SSH host (slurm_ssh)")
    port: Port = 22
    jobs_runner_config: dict[str, Any] = Field(
        default_factory=dict, description="the admin's SlurmRunnerConfig (JSON)"
    )
    jobs_poll_interval: PollInterval = 5
    prevent_new_submissions: bool = False
    max_active_runs_per_user: RunsLimit | None = None
    max_tasks_per_run: TasksLimit | None = None


class ResourceUpdate(Patch):
    NOT_NULL = (
        "name",
        "type",
        "port",
        "jobs_runner_config",
        "jobs_poll_interval",
        "prevent_new_submissions",
    )

    name: Name | None = None
    type: ResourceType | None = None
    host: Host | None = None
    port: Port | None = None
    jobs_runner_config: dict[str, Any] | None = None
    jobs_poll_interval: PollInterval | None = None
    prevent_new_submissions: bool | None = None
    max_active_runs_per_user: RunsLimit | None = None
    max_tasks_per_run: TasksLimit | None = None


class ResourceRead(Response):
    id: int
    name: str
    type: str
    host: str | None
    port: int
    jobs_runner_config: dict[str, Any]
    jobs_poll_interval: int
    prevent_new_submissions: bool
    max_active_runs_per_user: int | None
    max_tasks_per_run: int | None
    created_at: datetime


class ProfileCreate(Request):
    name: Name
    resource_id: Id
    username: Username | None = Field(default=None, description="cluster account to act as")
    ssh_key_path: AbsolutePath | None = Field(default=None, description="slurm_ssh only")
    jobs_remote_dir: AbsolutePath | None = Field(
        default=None, description="the user's folder on the cluster; runs go below it"
    )
    known_hosts: AbsolutePath | None = Field(default=None, description="slurm_ssh only")


class ProfileUpdate(Patch):
    NOT_NULL = ("name", "resource_id")

    name: Name | None = None
    resource_id: Id | None = None
    username: Username | None = None
    ssh_key_path: AbsolutePath | None = None
    jobs_remote_dir: AbsolutePath | None = None
    known_hosts: AbsolutePath | None = None


class ProfileRead(Response):
    id: int
    name: str
    resource_id: int
    resource_type: str
    username: str | None
    ssh_key_path: str | None
    jobs_remote_dir: str | None
    known_hosts: str | None
    created_at: datetime
