"""The service's errors: each knows its HTTP status, so the API and the admin CLI (which calls
the same functions without HTTP) report the same thing."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError, SlurmRunnerError


class DatabaseURLError(ConfigError):
    """The database URL cannot be used (not a URL, an unsupported database or driver)."""


class ServiceError(SlurmRunnerError):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def detail(self) -> object:
        return self.message


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class ServiceBusy(ServiceError):
    """A bounded resource of the service is in use (e.g. log reads): try again shortly."""

    status_code = 503


class ClusterUnavailable(ServiceError):
    """The cluster (or the SSH host) did not answer: try again later, not a bug."""

    status_code = 503


class Invalid(ServiceError):
    """A request that is well-formed JSON but refused by a rule: 422 in FastAPI's own shape
    (`detail` is a list of {loc, msg, type}), so clients read one error format."""

    status_code = 422

    def __init__(self, problems: Sequence[tuple[Sequence[str | int], str]], kind: str) -> None:
        self.problems = [(list(loc), msg) for loc, msg in problems]
        self.kind = kind
        super().__init__("\n".join(f"{'.'.join(map(str, loc))}: {m}" for loc, m in self.problems))

    @classmethod
    def one(cls, loc: Sequence[str | int], msg: str, kind: str = "value_error") -> Invalid:
        return cls([(loc, msg)], kind)

    def detail(self) -> object:
        return [{"loc": loc, "msg": msg, "type": self.kind} for loc, msg in self.problems]
