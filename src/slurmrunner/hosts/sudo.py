"""Commands as another local user through `sudo -n -u USER` (never a password prompt).

The site's sudoers needs only the reference whitelist: sbatch, scancel, cat, ls, mkdir.
sudo is run by absolute path (a PATH of the server's environment cannot substitute it), with
LC_ALL=C so that its refusals are the English texts below whatever the server's locale.
"""

from __future__ import annotations

import os

from ..errors import ImpersonationError
from ..quoting import posix_username
from .base import CommandResult
from .local import LocalHost

DEFAULT_SUDO = "/usr/bin/sudo"

# What sudo prints (before running anything) when it will not run the command, in the C locale.
_REFUSALS = (
    "a password is required",
    "is not allowed to execute",
    "is not in the sudoers file",
    "unknown user",
    "no tty present",
    "a terminal is required",
    "you must have a tty",
    "may not run sudo",
    "not allowed to run sudo",
    "command not allowed",
)


class SudoHost(LocalHost):
    def __init__(self, username: str, sudo: str = DEFAULT_SUDO) -> None:
        super().__init__()
        if not os.path.isabs(sudo):
            raise ValueError(f"sudo must be given by absolute path, got {sudo!r}")
        self.username = posix_username(username)
        self._sudo = sudo

    def _prefix(self) -> list[str]:
        return [self._sudo, "-n", "-u", self.username, "--"]

    def _env(self) -> dict[str, str]:
        # sudo's own messages in the C locale. sudo keeps LC_* for the command by default, so
        # sbatch (and the job it submits) see LC_ALL=C too; SLURM's texts are English anyway.
        return {**os.environ, "LC_ALL": "C"}

    def _check(self, result: CommandResult) -> CommandResult:
        if result.returncode != 0 and result.stderr.startswith("sudo:"):
            first = result.stderr.strip().splitlines()[0]
            if any(text in first.lower() for text in _REFUSALS):
                raise ImpersonationError(
                    f"sudo refused to run {result.argv[0]!r} as {self.username!r}: {first} "
                    "(the server user needs a NOPASSWD sudoers rule for sbatch, scancel, cat, "
                    "ls and mkdir as this user)"
                )
        return result
