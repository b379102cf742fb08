"""Watching a run until it ends: a progress bar on a terminal, a line every 30 s in a log;
warnings and failures printed as they come; --max-failures stops it early."""

from __future__ import annotations

import time

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..runner import RunStatus
from .failures import FailureReporter
from .output import err, print_new_warnings, progress_line, say
from .views import RunView

LOG_PROGRESS_EVERY_S = 30.0


class TooManyFailures(Exception):
    def __init__(self, failed: int, limit: int) -> None:
        super().__init__(f"{failed} tasks failed (--max-failures {limit})")
        self.failed = failed


def watch(run: RunView, max_failures: int | None = None, call: str | None = None) -> RunStatus:
    """Wait for every task; raises TooManyFailures (the run still going) at the limit. `call`:
    the run's calling form, for FailureReporter's hint."""
    said: set[str] = set()
    reporter = FailureReporter(run.id, run.n_tasks, call)

    def news(st: RunStatus) -> None:
        print_new_warnings(st, said)
        reporter.feed(st.new_results)
        failed = st.counts.get("failed", 0)
        if max_failures is not None and failed >= max_failures and not st.done:
            raise TooManyFailures(failed, max_failures)

    if not err.is_terminal:
        # A log, not a screen: a progress line now and then.
        last = time.monotonic()

        def log_progress(st: RunStatus) -> None:
            nonlocal last
            news(st)
            if time.monotonic() - last >= LOG_PROGRESS_EVERY_S and not st.done:
                last = time.monotonic()
                say(escape(progress_line(st)))

        run.wait(log_progress)
        return run.status()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(f"run {escape(run.id)}", total=run.n_tasks, detail="")

        def show(st: RunStatus) -> None:
            detail = escape(" ".join(f"{k}:{v}" for k, v in sorted(st.counts.items())))
            bar.update(task, completed=st.finished, detail=detail)
            news(st)

        run.wait(show)
    return run.status()
