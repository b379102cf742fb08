"""The admin's rules on whom the server acts as and what a task may ask for.

Checked before anything is created or run as the user: by Runner planning (prepare, submit,
render), where a backend is built, and by the SSH host on each new connection (the uid of the
service user, which only the cluster knows). Refusals name the rule.

Root and system accounts (uid < min_uid) are always refused, whatever the lists say: an
`allowed_users` of "*" means "any ordinary account", never "anyone".
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable

from .config import (
    GUARDED_TASK_KEYS,
    ImpersonationPolicy,
    SlurmRunnerConfig,
    TaskResources,
)
from .errors import ConfigError, PolicyError
from .profiles import Profile
from .retries import check_asks

ALWAYS_DENIED = frozenset({"root"})


def current_user() -> str:
    """The name of the account this process runs as (its uid when it has no name)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_user_name(username: str, policy: ImpersonationPolicy) -> None:
    """The name rules: root, denied_users, allowed_users."""
    if username in ALWAYS_DENIED:
        raise PolicyError(f"impersonation policy: {username!r} is never impersonated")
    if username in policy.denied_users:
        raise PolicyError(f"impersonation policy: {username!r} is in impersonation.denied_users")
    if policy.allowed_users != "*" and username not in policy.allowed_users:
        raise PolicyError(
            f"impersonation policy: {username!r} is not in impersonation.allowed_users"
        )


def check_uid(username: str, uid: int, policy: ImpersonationPolicy, where: str) -> None:
    """The uid rules: never uid 0, never below min_uid (system accounts)."""
    if uid == 0:
        raise PolicyError(f"impersonation policy: {username!r} has uid 0 {where}: never root")
    if uid < policy.min_uid:
        raise PolicyError(
            f"impersonation policy: {username!r} has uid {uid} {where}, below "
            f"impersonation.min_uid={policy.min_uid} (a system account)"
        )


def check_local_account(username: str, policy: ImpersonationPolicy) -> None:
    """A user of this machine (sudo): named rules, then its uid in the user database."""
    check_user_name(username, policy)
    try:
        uid = pwd.getpwnam(username).pw_uid
    except KeyError:
        raise PolicyError(
            f"impersonation policy: {username!r} is not a user of this server"
        ) from None
    check_uid(username, uid, policy, "on this server")


def uid_checker(policy: ImpersonationPolicy) -> Callable[[str, int], None]:
    """For SSH hosts: check the uid `id -u` reports on each new connection."""

    def check(username: str, uid: int) -> None:
        check_uid(username, uid, policy, "on the SSH host (id -u)")

    return check


def _under(path: str, folder: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real != base and os.path.commonpath([real, base]) == base


def check_ssh_key(key_path: str, policy: ImpersonationPolicy) -> None:
    """The key must lie under ssh_keys_dir once both are resolved (a symlink in the folder
    that points out of it is refused)."""
    if policy.ssh_keys_dir is None:
        return
    path = os.path.abspath(os.path.expanduser(key_path))
    if not _under(path, policy.ssh_keys_dir):
        raise PolicyError(
            f"impersonation policy: ssh_key_path {key_path!r} (resolved: "
            f"{os.path.realpath(path)}) is not under impersonation.ssh_keys_dir="
            f"{policy.ssh_keys_dir}"
        )


def check_profile(profile: Profile, policy: ImpersonationPolicy) -> None:
    """Everything about the Profile's identity that can be known without the cluster."""
    if profile.backend == "local":
        me = current_user()
        if profile.username is not None and profile.username != me:
            raise PolicyError(
                f"profile: backend 'local' runs as this process's user ({me!r}), not as "
                f"{profile.username!r}: use slurm_sudo or slurm_ssh to act for another user"
            )
        return
    assert profile.username is not None  # the Profile's own validation requires it
    if profile.backend == "slurm_sudo":
        check_local_account(profile.username, policy)
        return
    check_user_name(profile.username, policy)
    assert profile.ssh_key_path is not None
    check_ssh_key(profile.ssh_key_path, policy)


def check_task_resources(config: SlurmRunnerConfig, task: TaskResources) -> None:
    """What a task's own resources may ask for: extra_lines only if the admin allows them;
    account, qos, partition, gres, gpus and constraint only values the admin lists (or the
    admin's own value for that task). mem, time, cpus and batching stay the task's, bounded by
    batching_config; retries fewer than the admin's policy allows."""
    if task.extra_lines and not config.allow_task_extra_lines:
        raise ConfigError(
            "resources.extra_lines: not allowed for tasks (the admin config's "
            "allow_task_extra_lines is false)"
        )
    admin = config.default_slurm_config
    gpu = config.gpu_slurm_config if task.needs_gpu else None
    for key in GUARDED_TASK_KEYS:
        value = getattr(task, key)
        if value is None:
            continue
        own = getattr(gpu, key, None) if gpu is not None else None
        if value == (own if own is not None else getattr(admin, key)):
            continue  # what the admin's config gives this task anyway
        allowed = getattr(config.task_allowed_values, key)
        if allowed == "*" or (allowed is not None and value in allowed):
            continue
        listed = ", ".join(allowed) if allowed else "none"
        raise ConfigError(
            f"resources.{key}: {value!r} is not allowed for tasks "
            f"(task_allowed_values.{key} in the admin config lists: {listed})"
        )
    check_asks(config.retry, task.retry)  # fewer retries than the admin's, never more


def check_run(config: SlurmRunnerConfig, profile: Profile, task: TaskResources) -> None:
    """Every check a run must pass before anything is planned into the store or run."""
    check_profile(profile, config.impersonation)
    check_task_resources(config, task)
