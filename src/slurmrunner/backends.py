"""From a Profile to the hosts and scheduler that act for it (one per profile per process).

Sharing matters: every run of the same SSH profile uses one connection, and every local run
shares the one local scheduler that guards this machine's CPUs. The admin's impersonation
policy is checked before a backend is built (and the SSH host checks the remote uid on each
connection), so no host exists for an identity the policy refuses.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .config import ImpersonationPolicy
from .hosts.base import Host
from .hosts.local import LocalHost
from .hosts.sudo import SudoHost
from .jobstate import Scheduler
from .local_jobs import LocalScheduler
from .local_queue import default_queue_path
from .policy import check_profile, uid_checker
from .profiles import Profile
from .slurm import SharedSqueue, SlurmScheduler


@dataclass
class Backend:
    user_host: Host  # mkdir and cat as the cluster user
    scheduler: Scheduler

    def connections_opened(self) -> int | None:
        """SSH connections opened so far (None for backends without a connection)."""
        value = getattr(self.user_host, "connections_opened", None)
        return value if isinstance(value, int) else None


_lock = threading.Lock()
_cache: dict[str, Backend] = {}
_queries: dict[str, SharedSqueue] = {}


def _shared_squeue(key: str, host: Host) -> SharedSqueue:
    if key not in _queries:
        _queries[key] = SharedSqueue(host)
    return _queries[key]


def _build(profile: Profile, local_queue: str | None, policy: ImpersonationPolicy) -> Backend:
    check_profile(profile, policy)  # before any host exists that could act as the user
    if profile.backend == "local":
        return Backend(LocalHost(), LocalScheduler(local_queue))
    assert profile.username is not None
    if profile.backend == "slurm_sudo":
        sudo = SudoHost(profile.username, sudo=policy.sudo_path)
        # squeue runs as the server user itself: one query for the jobs of every user.
        query = _shared_squeue("local", LocalHost())
        return Backend(sudo, SlurmScheduler(sudo, query, profile.username))
    from .hosts.ssh import SSHHost

    ssh = SSHHost.for_profile(profile, check_uid=uid_checker(policy))
    query = _shared_squeue(f"ssh:{profile.username}@{profile.host}:{profile.port}", ssh)
    return Backend(ssh, SlurmScheduler(ssh, query, profile.username))


def backend_for(
    profile: Profile,
    local_queue: str | None = None,
    policy: ImpersonationPolicy | None = None,
) -> Backend:
    """The shared backend of `profile`; for the local backend, of that queue file (default:
    local_queue.default_queue_path(), the one all of this user's runs share).

    `policy` is checked whenever it is given (and when the backend is first built: the
    default policy then). Without it, a backend already built for the profile is returned
    as it is: Runner and Run of one process share it, checked once by the Runner.
    """
    if profile.backend == "local":
        local_queue = str(local_queue or default_queue_path())
    key = f"{profile.model_dump_json()}|{local_queue}"
    if policy is not None:
        check_profile(profile, policy)
    with _lock:
        if key not in _cache:
            _cache[key] = _build(profile, local_queue, policy or ImpersonationPolicy())
        return _cache[key]
