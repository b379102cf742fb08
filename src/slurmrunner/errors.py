"""Typed errors of the public API: catch SlurmRunnerError to catch them all."""

from __future__ import annotations

from typing import Any


class SlurmRunnerError(Exception):
    """Base class of every error slurmrunner raises on purpose."""


class ConfigError(SlurmRunnerError, ValueError):
    """The admin config, a Profile or a task's resources are invalid (message names the key)."""


class BatchingError(SlurmRunnerError, ValueError):
    """The tasks cannot be planned into jobs within the admin's limits."""


class HostError(SlurmRunnerError):
    """A command could not be run on the host at all (not: it ran and failed)."""


class ImpersonationError(HostError):
    """sudo refused to run the command as the user (not allowed, needs a password, ...)."""


class PolicyError(ImpersonationError):
    """The admin's impersonation policy refuses this identity (root, a system account, a user
    not allowed, a key outside ssh_keys_dir, ...): nothing was run as it."""


class SSHError(HostError):
    """Base of SSH connection problems."""


class SSHKeyError(SSHError):
    """The Profile's private key is missing, unreadable, badly protected or not a key."""


class SSHHostKeyError(SSHError):
    """The server's host key is unknown or differs from known_hosts."""


class SSHAuthError(SSHError):
    """The server refused authentication with the Profile's key."""


class SSHConnectError(SSHError):
    """The host could not be reached (refused, timed out, name not resolved)."""


class SchedulerError(SlurmRunnerError):
    """The scheduler refused or failed an action (e.g. sbatch rejected the job)."""


class TransientSchedulerError(SchedulerError):
    """The scheduler did not answer this time (e.g. 'Socket timed out'): retry, never conclude."""


class SubmitLimitError(SchedulerError):
    """The user's limit on jobs in the queue is reached (QOS/association MaxSubmitJobs):
    the job is submitted later, when some of the user's jobs have left."""


class TaskFailedError(SlurmRunnerError):
    """Some tasks of a run did not end ok (Runner.run(..., raise_on_failure=True))."""

    def __init__(self, run_id: str, failed: list[Any], results: list[Any]) -> None:
        self.run_id = run_id
        self.failed = failed  # the TaskResults that are not ok, in input order
        self.results = results  # every TaskResult, in input order
        first = failed[0]
        why = f"{first.error.cause}: {first.error.message}" if first.error else first.status
        super().__init__(
            f"run {run_id}: {len(failed)} of {len(results)} tasks did not end ok "
            f"(first: task {first.index}, {why})"
        )


class RunNotFoundError(SlurmRunnerError, LookupError):
    """No run with that id in the store."""


# The service's client (slurmrunner.Client, and the CLI with --server): what an answer of the
# service means, whatever the HTTP status behind it.


class ClientError(SlurmRunnerError):
    """The service answered with an error, or could not be reached. `status_code` is the
    HTTP status (None: no answer), `detail` the service's `detail` as it came."""

    def __init__(self, message: str, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class ClientAuthError(ClientError):
    """The token was refused (401), or does not allow this (403: no Profile, not an admin)."""


class ClientNotFoundError(ClientError, LookupError):
    """No such run (or task log) among those the token's user may see (404)."""


class ClientRefusedError(ClientError, ValueError):
    """The request was refused before anything ran (409 conflict, 422 invalid): the message
    names each field; `problems` holds them as (field path, message)."""

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        detail: Any = None,
        problems: list[tuple[list[str | int], str]] | None = None,
    ) -> None:
        super().__init__(message, status_code, detail)
        self.problems = problems or []


class ClientUnavailableError(ClientError):
    """The service, or the cluster behind it, did not answer (502, 503, 504, a refused or
    broken connection, a time-out): try again later."""


class ClientTimeoutError(ClientError, TimeoutError):
    """Client.wait(..., timeout=) ran out before the run ended (the run goes on)."""
