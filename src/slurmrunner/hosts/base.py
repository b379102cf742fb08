"""The one interface every host offers: run an argv, maybe with standard input.

A host is *where and as whom* a command runs (this process's user, another user through
sudo, a service user over SSH). Hosts know nothing of SLURM.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Host(Protocol):
    """Runs commands as one identity. Implementations must be thread-safe."""

    #: How many times each program (argv[0]) was run: the run summary reports these.
    calls: Counter[str]

    def run(
        self, argv: list[str], stdin: str | None = None, timeout: float | None = 60.0
    ) -> CommandResult:
        """Run argv (never through a shell of ours); return its status and output.

        Raises HostError (or a subclass) when the command could not be run at all, e.g. the
        connection is down or sudo refused; a command that ran and failed returns its status.
        """
        ...

    def close(self) -> None: ...


@dataclass
class CallCounter:
    """Counts calls per program; shared by host implementations."""

    calls: Counter[str] = field(default_factory=Counter)

    def count(self, argv: list[str]) -> None:
        self.calls[argv[0].rsplit("/", 1)[-1]] += 1
