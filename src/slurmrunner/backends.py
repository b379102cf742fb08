"""From a Profile to the hosts and scheduler that act for it (one per profile per process).

Sharing matters: every run of the same SSH profile uses one connection, and every local run
shares the one local scheduler that guards this machine's CPUs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .hosts.base import Host
from .hosts.local import LocalHost
from .hosts.sudo import SudoHost
from .jobstate import Scheduler
from .local_jobs import LocalScheduler
from .local_queue import default_queue_path
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


def _build(profile: Profile, local_queue: str | None) -> Backend:
    if profile.backend == "local":
        return Backend(LocalHost(), LocalScheduler(local_queue))
    if profile.backend == "slurm_sudo":
        assert profile.username is not None
        sudo = SudoHost(profile.username)
        # squeue runs as the server user itself: one query for the jobs of every user.
        query = _shared_squeue("local", LocalHost())
        return Backend(sudo, SlurmScheduler(submit_host=sudo, query=query))
    from .hosts.ssh import SSHHost

    ssh = SSHHost.for_profile(profile)
    query = _shared_squeue(f"ssh:{profile.username}@{profile.host}:{profile.port}", ssh)
    return Backend(ssh, SlurmScheduler(submit_host=ssh, query=query))


def backend_for(profile: Profile, local_queue: str | None = None) -> Backend:
    """The shared backend of `profile`; for the local backend, of that queue file (default:
    local_queue.default_queue_path(), the one all of this user's runs share)."""
    if profile.backend == "local":
        local_queue = str(local_queue or default_queue_path())
    key = f"{profile.model_dump_json()}|{local_queue}"
    with _lock:
        if key not in _cache:
            _cache[key] = _build(profile, local_queue)
        return _cache[key]
