"""A run on a service as the CLI's watching and printing see a run (views.RunView), through
slurmrunner.Client; and the client a command gets from --server and --token.

The service tells counts, not which results are new since the last look. What the watching
prints as it comes is only the failures (the first SHOWN_FAILURES, then a count) and the first
few tasks' ends (for the hint about the calling form), so a look that saw tasks end asks for
those alone: one small page each, and none once all of them were shown.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..client import Client
from ..errors import ClientError
from ..results import TaskResult
from ..runner import RunStatus
from ..service.schemas.runs import RunDetail, RunRead
from .failures import FIRST_FEW, SHOWN_FAILURES
from .output import fail


def connect(server: str, token: str | None, **local_only: object) -> Client:
    """The service's client, for a command given --server (or $SLURMRUNNER_SERVER). Options
    that only mean something on this machine (`local_only`: name -> value) are refused."""
    for name, value in local_only.items():
        if value is None or _from_environment(name, value):
            continue
        fail(
            f"--{name} is for runs on this machine, not with --server or $SLURMRUNNER_SERVER "
            "(there, the service's Resource and your Profile apply)"
        )
    if not token:
        fail(
            "--server needs your API token: $SLURMRUNNER_TOKEN or --token (an admin issues "
            "one: `slurmrunner admin issue-token EMAIL`)"
        )
    try:
        return Client(server, token)
    except ClientError as exc:
        fail(str(exc))


def _from_environment(name: str, value: object) -> bool:
    """Whether an option's value came from its variable (only --store has one): that is set
    for the runs of this machine, not asked for with this command, so it is not refused."""
    env = os.environ.get(f"SLURMRUNNER_{name.upper()}")
    return env is not None and Path(env) == value


@contextmanager
def client_errors() -> Iterator[None]:
    """The service's refusals as the CLI's: a message and exit 2."""
    try:
        yield
    except ClientError as exc:
        fail(str(exc))


class RemoteRun:
    """A run on the service, last seen as `info`."""

    def __init__(self, client: Client, info: RunRead) -> None:
        self.client = client
        self.id = info.id
        self.info = info
        self._fed: set[int] = set()  # indices given to the watching as news
        self._failed_fed = 0
        self._finished_looked = 0  # finished tasks at the last look for news
        self._results: tuple[int, list[TaskResult]] | None = None

    @property
    def n_tasks(self) -> int:
        return self.info.n_tasks

    @property
    def run_dir(self) -> str:
        return self.info.run_dir

    @property
    def state(self) -> str:
        return self.info.state

    def status(self) -> RunStatus:
        return self.status_of(self.client.run(self.id))

    def wait(self, progress: Callable[[RunStatus], None]) -> None:
        self.client.wait(self.id, lambda d: progress(self.status_of(d, news=True)))

    def cancel(self) -> int:
        return self.client.cancel(self.id).cancelled_jobs

    def results(self) -> list[TaskResult]:
        # Read once for as long as no task ends (the results, then the summary, of one end).
        finished = self.info.finished
        if self._results is None or self._results[0] != finished:
            self._results = (finished, self.client.results(self.id))
        return self._results[1]

    def status_of(self, detail: RunDetail, news: bool = False) -> RunStatus:
        """The run's status as the local watching has it; with `news`, the results to print
        now (see the module's docstring)."""
        self.info = detail
        return RunStatus(
            run_id=detail.id,
            n_tasks=detail.n_tasks,
            counts=Counter(detail.counts),
            jobs=Counter(job.state for job in detail.jobs),
            calls=dict(detail.calls),
            new_results=self._news(detail) if news else [],
        )

    def _news(self, detail: RunDetail) -> list[TaskResult]:
        if detail.finished == self._finished_looked:
            return []
        self._finished_looked = detail.finished
        found: list[TaskResult] = []
        if len(self._fed) < FIRST_FEW:
            found += self._page(None, FIRST_FEW)
        failed = detail.counts.get("failed", 0)
        if failed > self._failed_fed and self._failed_fed <= SHOWN_FAILURES:
            found += self._page("failed", SHOWN_FAILURES + 1)
        new = {r.index: r for r in found if r.index not in self._fed}
        self._fed.update(new)
        self._failed_fed += sum(r.status == "failed" for r in new.values())
        return [new[i] for i in sorted(new)]

    def _page(self, status: str | None, limit: int) -> list[TaskResult]:
        page = self.client.results_page(self.id, status, limit=limit)
        return [TaskResult.from_dict(item) for item in page.items]
