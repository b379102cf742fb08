"""slurmrunner: run many tasks on SLURM on behalf of the users of a multi-user server."""

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

__all__ = [
    "BatchingConfig",
    "BatchingError",
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
