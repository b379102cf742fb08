"""Commands as another local user through `sudo -n -u USER` (never a password prompt).

The site's sudoers needs only the reference whitelist: sbatch, scancel, cat, ls, mkdir.
"""

from __future__ import annotations

from ..errors import ImpersonationError
from ..quoting import posix_username
from .base import CommandResult
from .local import LocalHost

# What sudo prints (before running anything) when it will not run the command.
_REFUSALS = (
    "a password is required",
    "is not allowed to execute",
    "is not in the sudoers file",
    "unknown user",
    "sudo: no tty present",
    "may not run sudo",
    "not allowed to run sudo",
)


class SudoHost(LocalHost):
    def __init__(self, username: str, sudo: str = "sudo") -> None:
        super().__init__()
        self.username = posix_username(username)
        self._sudo = sudo

    def _prefix(self) -> list[str]:
        return [self._sudo, "-n", "-u", self.username, "--"]

    def _check(self, result: CommandResult) -> CommandResult:
        if result.returncode != 0 and result.stderr.startswith("sudo:"):
            first = result.stderr.strip().splitlines()[0]
            if any(text in first for text in _REFUSALS):
                raise ImpersonationError(
                    f"sudo refused to run {result.argv[0]!r} as {self.username!r}: {first} "
                    "(the server user needs a NOPASSWD sudoers rule for sbatch, scancel, cat, "
                    "ls and mkdir as this user)"
                )
        return result
