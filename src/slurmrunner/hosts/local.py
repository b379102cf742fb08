"""Commands as this process's own user."""

from __future__ import annotations

import subprocess
from collections import Counter

from ..errors import HostError
from .base import CallCounter, CommandResult


class LocalHost:
    # Files that commands create (sbatch's job output among them: SLURM applies the submitter's
    # umask) are private to the user; sudo keeps the stricter of its own and ours.
    umask = 0o077

    def __init__(self) -> None:
        self._counter = CallCounter()

    @property
    def calls(self) -> Counter[str]:
        return self._counter.calls

    def _prefix(self) -> list[str]:
        return []

    def run(
        self, argv: list[str], stdin: str | None = None, timeout: float | None = 60.0
    ) -> CommandResult:
        self._counter.count(argv)
        full = [*self._prefix(), *argv]
        try:
            proc = subprocess.run(
                full,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                umask=self.umask,
            )
        except FileNotFoundError as exc:
            raise HostError(f"cannot run {full[0]!r}: not found on PATH") from exc
        except subprocess.TimeoutExpired as exc:
            raise HostError(f"{' '.join(full[:3])}... did not finish within {timeout}s") from exc
        return self._check(CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr))

    def _check(self, result: CommandResult) -> CommandResult:
        return result

    def close(self) -> None:
        pass
