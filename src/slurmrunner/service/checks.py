"""A Resource's runner config and a Profile, checked by the core's own models and policy.

The same rules as the config and Profile files of the CLI: `SlurmRunnerConfig` for the
config, the core `Profile` for the identity, `slurmrunner.policy` for whom the server may act
as. Problems become `Invalid` (422) with the field path, e.g.
`body.jobs_runner_config.default_slurm_config.mem`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from ..config import SlurmRunnerConfig, describe_validation_error
from ..errors import ConfigError, PolicyError
from ..policy import check_profile
from ..profiles import Profile as CoreProfile
from . import models
from .errors import Invalid
from .schemas.common import find_nul

Loc = tuple[str | int, ...]

# The fields each backend needs and allows (besides name and resource_id). fractal-server's
# ValidProfile{Local,SlurmSudo,SlurmSSH} draw the same lines.
NEEDS = {
    "local": (),
    "slurm_sudo": ("username", "jobs_remote_dir"),
    "slurm_ssh": ("username", "jobs_remote_dir", "ssh_key_path"),
}
SSH_ONLY = ("ssh_key_path", "known_hosts")
# Core Profile field -> (where it lives: "profile" or "resource", our column)
_CORE_FIELD = {
    "username": ("profile", "username"),
    "project_dir": ("profile", "jobs_remote_dir"),
    "ssh_key_path": ("profile", "ssh_key_path"),
    "known_hosts": ("profile", "known_hosts"),
    "host": ("resource", "host"),
    "port": ("resource", "port"),
    "backend": ("resource", "type"),
}


def _problems(exc: ValidationError, loc: Loc) -> list[tuple[Loc, str]]:
    """Each pydantic error at its full path; the message is the core's own line, which names
    the key and suggests the right one for a typo."""
    lines = describe_validation_error(exc).split("\n")
    errors = exc.errors()
    if len(lines) != len(errors):  # a message with a line break of its own: keep pydantic's
        lines = [e["msg"] for e in errors]
    return [((*loc, *e["loc"]), line) for e, line in zip(errors, lines, strict=True)]


def validate_runner_config(data: Any, loc: Loc = ("body", "jobs_runner_config")) -> None:
    """The admin's SlurmRunnerConfig JSON, as the config file would be checked."""
    if (where := find_nul(data)) is not None:
        raise Invalid.one((*loc, *where), "must not contain a NUL character")
    try:
        SlurmRunnerConfig.model_validate(data)
    except ValidationError as exc:
        raise Invalid(_problems(exc, loc), "runner_config") from None
    except ConfigError as exc:  # a check that raises outside pydantic's wrapping
        raise Invalid.one(loc, str(exc), "runner_config") from None


def runner_config(resource: models.Resource) -> SlurmRunnerConfig:
    try:
        return SlurmRunnerConfig.model_validate(resource.jobs_runner_config)
    except ValidationError as exc:
        # Stored configs were validated on the way in; a newer, stricter core may refuse one.
        raise Invalid(_problems(exc, ("resource", "jobs_runner_config")), "runner_config") from None


def _check_fields(profile: models.Profile, resource: models.Resource, loc: Loc) -> None:
    missing = [key for key in NEEDS[resource.type] if getattr(profile, key) is None]
    if missing:
        raise Invalid(
            [((*loc, key), f"required for a {resource.type} Resource") for key in missing],
            "missing",
        )
    if resource.type != "slurm_ssh":
        given = [key for key in SSH_ONLY if getattr(profile, key) is not None]
        if given:
            raise Invalid(
                [
                    ((*loc, key), f"only for slurm_ssh Resources, not {resource.type}")
                    for key in given
                ],
                "not_allowed",
            )
    if resource.type == "slurm_ssh" and not resource.host:
        raise Invalid.one(("resource", "host"), "a slurm_ssh Resource needs a host")


def _core_error_loc(err_loc: Sequence[Any], loc: Loc) -> Loc:
    if err_loc and str(err_loc[0]) in _CORE_FIELD:
        owner, column = _CORE_FIELD[str(err_loc[0])]
        return (*loc, column) if owner == "profile" else ("resource", column)
    return loc


def core_profile(
    profile: models.Profile, resource: models.Resource, *, loc: Loc = ("profile",)
) -> tuple[CoreProfile, SlurmRunnerConfig]:
    """The core Profile and runner config a run of this Profile uses, after the Resource's
    impersonation policy has accepted the Profile. Call it before every run: the policy, the
    config or the accounts of this server may have changed since the Profile was saved.

    Raises `Invalid` (422 by default) naming the field or the policy rule that refuses it;
    `loc` is the path its fields are reported under (("body",) when the Profile is a request).
    """
    config = runner_config(resource)
    _check_fields(profile, resource, loc)
    ssh = resource.type == "slurm_ssh"
    fields: dict[str, Any] = {
        "backend": resource.type,
        "username": profile.username,
        "project_dir": profile.jobs_remote_dir,
    }
    if ssh:
        fields |= {
            "host": resource.host,
            "port": resource.port,
            "ssh_key_path": profile.ssh_key_path,
            "known_hosts": profile.known_hosts,
        }
    try:
        core = CoreProfile.model_validate(fields)
    except ValidationError as exc:
        problems = [
            (_core_error_loc(e["loc"], loc), e["msg"].removeprefix("Value error, "))
            for e in exc.errors()
        ]
        raise Invalid(problems, "profile") from None
    try:
        check_profile(core, config.impersonation)
    except PolicyError as exc:
        # The rule is named in the message (impersonation.min_uid, .denied_users, ...).
        field = "ssh_key_path" if "ssh_key_path" in str(exc) else "username"
        raise Invalid.one((*loc, field), str(exc), "impersonation_policy") from None
    return core, config
