"""Watching a run to its end and stopping on a signal: what `run` and `wait` do, whether the
run is local or on a service (a RunView either way)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import typer
from rich.markup import escape

from ..errors import SlurmRunnerError
from ..runner import RunStatus
from .output import fail, say, summary, write_results
from .signals import SignalGuard, quiet_dead_streams
from .views import RunView
from .watch import TooManyFailures, watch


def _stop_on_signal(run: RunView | None, signum: int) -> NoReturn:
    """Cancel what was submitted, then exit 128+signum. Printing may fail after SIGHUP (the
    terminal is gone): that must never stop the cancel nor change the exit status."""
    name = signal.Signals(signum).name
    if run is None:
        message = f"interrupted ({name}) before anything was submitted"
    else:
        try:
            n = run.cancel()
            message = f"interrupted ({name}): cancelled {n} jobs of run {run.id}"
        except Exception as exc:  # still leave with the signal's status, and say how to finish
            message = (
                f"interrupted ({name}): cancelling run {run.id} failed ({exc}); "
                f"finish with `slurmrunner cancel {run.id}`"
            )
    say(escape(message))  # never raises: see output.say
    quiet_dead_streams()
    raise typer.Exit(128 + signum)


def drive(run: RunView, max_failures: int | None, call: str | None) -> RunStatus:
    try:
        return watch(run, max_failures, call)
    except TooManyFailures as exc:
        say(f"[red]stopping:[/] {escape(f'{exc}; cancelling the rest of run {run.id}')}")
        run.cancel()
        return run.status()


def finish(run: RunView, status: RunStatus, results_path: Path | None, t0: float) -> NoReturn:
    write_results(run.results(), results_path, run.id)
    summary(run, status, time.monotonic() - t0)
    bad = status.counts.get("failed", 0) + status.counts.get("cancelled", 0)
    raise typer.Exit(1 if bad or not status.done else 0)


@dataclass
class Driving:
    run: RunView | None = None


def _stop_watching(run: RunView | None, signum: int) -> NoReturn:
    """`wait` only watches: a signal stops the watching, never the run someone submitted."""
    name = signal.Signals(signum).name
    if run is not None:
        say(
            escape(
                f"interrupted ({name}): stopped watching; run {run.id} goes on "
                f"(`slurmrunner wait {run.id}` to watch again, `slurmrunner cancel {run.id}` "
                "to stop it)"
            )
        )
    quiet_dead_streams()
    raise typer.Exit(128 + signum)


@contextmanager
def on_signal(cancel: bool = True) -> Iterator[Driving]:
    """Put the run in the yielded holder as soon as it exists: a signal at any point after
    that (submission included) cancels what was sent (or, for a mere watcher, stops
    watching), then exits 128+N."""
    driving = Driving()
    with SignalGuard() as guard:
        try:
            yield driving
        except BaseException as exc:
            if guard.signum is not None:
                if not cancel:
                    _stop_watching(driving.run, guard.signum)
                _stop_on_signal(driving.run, guard.signum)
            if isinstance(exc, SlurmRunnerError):
                fail(str(exc))
            raise


def run_to_end(
    begin: Callable[[Driving], RunView],
    results: Path | None,
    t0: float,
    max_failures: int | None,
    call: str | None,
    cancel: bool = True,
) -> NoReturn:
    """`begin` submits (or finds) the run and puts it in the holder; then watch it until every
    task has ended, write its results and summary, and exit 0 (all ok) or 1. `call` is the
    run's calling form, for the hint about it (None: not known, no hint)."""
    with on_signal(cancel) as driving:
        started = begin(driving)
        status = drive(started, max_failures, call)
    finish(started, status, results, t0)


def watching_line(run_id: str, finished: int, n_tasks: int) -> str:
    return f"watching run {run_id}: {finished}/{n_tasks} tasks finished so far"
