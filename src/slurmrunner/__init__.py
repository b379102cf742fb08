"""slurmrunner: run many tasks on SLURM on behalf of the users of a multi-user server."""

from typing import TYPE_CHECKING, Any

from .config import (
    BatchingConfig,
    SlurmConfigSet,
    SlurmRunnerConfig,
    TaskResources,
    load_config_file,
    parse_config,
    parse_resources,
)
from .errors import (
    BatchingError,
    ClientAuthError,
    ClientError,
    ClientNotFoundError,
    ClientRefusedError,
    ClientTimeoutError,
    ClientUnavailableError,
    ConfigError,
    HostError,
    ImpersonationError,
    RunNotFoundError,
    SchedulerError,
    SlurmRunnerError,
    SSHAuthError,
    SSHConnectError,
    SSHError,
    SSHHostKeyError,
    SSHKeyError,
    SubmitLimitError,
    TaskFailedError,
    TransientSchedulerError,
)
from .pacing import PollPolicy
from .profiles import Profile, load_profile_file, parse_profile
from .results import TaskError, TaskResult
from .runner import Run, Runner, RunStatus
from .store import Store

if TYPE_CHECKING:
    from .client import Client


def __getattr__(name: str) -> Any:
    # The service's client is loaded on first use: most users of the package (the CLI on a
    # laptop, a job) never talk to a service and need not pay for httpx.
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BatchingConfig",
    "BatchingError",
    "Client",
    "ClientAuthError",
    "ClientError",
    "ClientNotFoundError",
    "ClientRefusedError",
    "ClientTimeoutError",
    "ClientUnavailableError",
    "ConfigError",
    "HostError",
    "ImpersonationError",
    "PollPolicy",
    "Profile",
    "Run",
    "RunNotFoundError",
    "RunStatus",
    "Runner",
    "SSHAuthError",
    "SSHConnectError",
    "SSHError",
    "SSHHostKeyError",
    "SSHKeyError",
    "SchedulerError",
    "SlurmConfigSet",
    "SlurmRunnerConfig",
    "SlurmRunnerError",
    "Store",
    "SubmitLimitError",
    "TaskError",
    "TaskFailedError",
    "TaskResources",
    "TaskResult",
    "TransientSchedulerError",
    "load_config_file",
    "load_profile_file",
    "parse_config",
    "parse_profile",
    "parse_resources",
]
