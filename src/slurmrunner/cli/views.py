"""What the CLI's watching and printing need of a run, local (runner.Run) or on a service
(remote_run.RemoteRun): one set of writers serves both."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..results import TaskResult
from ..runner import RunStatus


class RunView(Protocol):
    id: str

    @property
    def n_tasks(self) -> int: ...

    @property
    def run_dir(self) -> str: ...

    def status(self) -> RunStatus: ...

    def results(self) -> list[TaskResult]:
        """Finished tasks' results, in input order."""
        ...

    def wait(self, progress: Callable[[RunStatus], None]) -> object:
        """Until every task has ended, `progress` told after each look."""
        ...

    def cancel(self) -> int:
        """Cancel the unfinished jobs; how many."""
        ...
