"""A user's Profile: which backend, as whom, where their files live on the cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import describe_validation_error, load_json_or_toml
from .errors import ConfigError
from .quoting import cluster_path, local_path, posix_username

Backend = Literal["local", "slurm_sudo", "slurm_ssh"]


class Profile(BaseModel):
    """backend `local` runs here as this process's user; `slurm_sudo` impersonates `username`
    with `sudo -n -u`; `slurm_ssh` connects as `username` with the key at `ssh_key_path`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # No default: a Profile that names a user but no backend must not run locally as the
    # server's own account. (The CLI and the API build `Profile(backend="local")` themselves
    # when no Profile is given at all.)
    backend: Backend
    username: str | None = None
    project_dir: str | None = Field(
        default=None, description="the user's directory on the cluster; runs go below it"
    )
    cache_dir: str | None = Field(
        default=None, description="base of user_local_exports; default <project_dir>/.fractal_cache"
    )
    host: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    ssh_key_path: str | None = None
    known_hosts: str | None = Field(
        default=None, description="known_hosts file; default ~/.ssh/known_hosts (strict)"
    )
    connect_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("username")
    @classmethod
    def _username(cls, v: str | None) -> str | None:
        return None if v is None else posix_username(v)

    @model_validator(mode="after")
    def _needs(self) -> Profile:
        required = {
            "local": (),
            "slurm_sudo": ("username", "project_dir"),
            "slurm_ssh": ("username", "project_dir", "host", "ssh_key_path"),
        }[self.backend]
        missing = [key for key in required if getattr(self, key) is None]
        if missing:
            raise ValueError(f"backend {self.backend!r} needs {', '.join(missing)}")
        # Local paths may hold any name (they are quoted); cluster paths go into #SBATCH lines.
        check = local_path if self.backend == "local" else cluster_path
        for key in ("project_dir", "cache_dir"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, check(value, key))  # normalised, still frozen
        return self

    def resolved_project_dir(self) -> str:
        """The local backend defaults to ./.slurmrunner-work; cluster backends must say."""
        if self.project_dir:
            return self.project_dir
        return local_path(".slurmrunner-work", "project_dir")

    def cache_base(self) -> str:
        return self.cache_dir or f"{self.resolved_project_dir()}/.fractal_cache"


def parse_profile(data: Any, source: str = "profile") -> Profile:
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}:\n{describe_validation_error(exc)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_profile_file(path: str | Path) -> Profile:
    return parse_profile(load_json_or_toml(path), str(path))
