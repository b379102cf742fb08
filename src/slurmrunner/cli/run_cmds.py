"""Commands that start or stop work: render, run, submit, wait, cancel."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.markup import escape

from ..config import TaskResources
from ..errors import SlurmRunnerError
from ..runner import Run, Runner, RunStatus
from .inputs import attach, check_results_path, make_runner, read_inputs, read_resources
from .options import (
    CallOpt,
    CommandArg,
    ConfigOpt,
    InputsOpt,
    JsonOpt,
    MaxFailuresOpt,
    ProfileOpt,
    ResourcesOpt,
    ResultsOpt,
    RunArg,
    StoreOpt,
    WorkdirOpt,
)
from .output import fail, plan_line, say, summary, write_json, write_results
from .signals import SignalGuard, quiet_dead_streams
from .watch import TooManyFailures, watch

EXIT_CODES = (
    "Exit status: 0 every task ok; 1 a task failed or was cancelled (or --max-failures "
    "stopped the run); 2 bad input; 130, 143, 129: stopped by SIGINT, SIGTERM, SIGHUP "
    "(after cancelling the run)."
)


def render(
    inputs: InputsOpt,
    command: CommandArg,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    resources: ResourcesOpt = None,
    call: CallOpt = "fractal",
    workdir: WorkdirOpt = None,
) -> None:
    """Print the job scripts the limits plan; nothing is submitted, the cluster is not asked.

    `run` may make fewer, bigger jobs when the partition cannot run these side by side
    (batching_config.cap_jobs_to_partition); it says so when it does.
    """
    runner = make_runner(config, profile, Path(":memory:"))
    tasks = read_inputs(inputs)
    try:
        scripts = runner.render(command, tasks, read_resources(resources), call, workdir)
    except SlurmRunnerError as exc:
        fail(str(exc))
    for k, script in enumerate(scripts):
        typer.echo(f"# ===== job {k} of {len(scripts)} =====\n{script}", nl=False)


def _stop_on_signal(run: Run | None, signum: int) -> NoReturn:
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


def _drive(run: Run, max_failures: int | None) -> RunStatus:
    try:
        return watch(run, max_failures)
    except TooManyFailures as exc:
        say(f"[red]stopping:[/] {escape(f'{exc}; cancelling the rest of run {run.id}')}")
        run.cancel()
        return run.status()


def _finish(run: Run, status: RunStatus, results_path: Path | None, t0: float) -> NoReturn:
    write_results(run.results(), results_path, run.id)
    summary(run, status, time.monotonic() - t0)
    bad = status.counts.get("failed", 0) + status.counts.get("cancelled", 0)
    raise typer.Exit(1 if bad or not status.done else 0)


@dataclass
class _Driving:
    run: Run | None = None


def _stop_watching(run: Run | None, signum: int) -> NoReturn:
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
def _on_signal(cancel: bool = True) -> Iterator[_Driving]:
    """Put the run in the yielded holder as soon as it exists: a signal at any point after
    that (submission included) cancels what was sent (or, for a mere watcher, stops
    watching), then exits 128+N."""
    driving = _Driving()
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


def _request(
    config: Path | None,
    profile: Path | None,
    store: Path | None,
    inputs: Path,
    resources: str | None,
) -> tuple[Runner, list[Any], TaskResources | None]:
    runner = make_runner(config, profile, store)
    tasks = read_inputs(inputs)
    try:
        return runner, tasks, read_resources(resources)
    except SlurmRunnerError as exc:
        fail(str(exc))


def run(
    inputs: InputsOpt,
    command: CommandArg,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    resources: ResourcesOpt = None,
    results: ResultsOpt = None,
    call: CallOpt = "fractal",
    workdir: WorkdirOpt = None,
    max_failures: MaxFailuresOpt = None,
    store: StoreOpt = None,
) -> None:
    """Run COMMAND once per input and wait; results as JSON lines, summary on stderr.

    Failures are printed as they happen (cause, message, last lines of the log, its path).
    Ctrl-C, SIGTERM and SIGHUP cancel the run's jobs before exiting.
    """
    t0 = time.monotonic()
    check_results_path(results)
    runner, tasks, res = _request(config, profile, store, inputs, resources)
    with _on_signal() as driving:
        # The id is on screen before the first job exists.
        started = driving.run = runner.prepare(command, tasks, res, call, workdir)
        say(escape(plan_line(started)))
        started.start()
        status = _drive(started, max_failures)
    _finish(started, status, results, t0)


def submit(
    inputs: InputsOpt,
    command: CommandArg,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    resources: ResourcesOpt = None,
    call: CallOpt = "fractal",
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """Submit and return at once; prints the run id for status/wait/results/cancel/logs."""
    runner, tasks, res = _request(config, profile, store, inputs, resources)
    with _on_signal() as driving:
        started = driving.run = runner.prepare(command, tasks, res, call, workdir)
        say(escape(plan_line(started)))
        started.start()
    if json_out:
        write_json(
            {
                "run_id": started.id,
                "n_tasks": started.n_tasks,
                "n_jobs": started.spec.plan.num_jobs,
                "run_dir": started.run_dir,
            }
        )
    else:
        typer.echo(started.id)


def wait(
    run_id: RunArg,
    results: ResultsOpt = None,
    max_failures: MaxFailuresOpt = None,
    store: StoreOpt = None,
) -> None:
    """Watch a submitted run (from any process) until every task has ended; then as `run`.

    Ctrl-C, SIGTERM and SIGHUP stop the watching only: the run goes on (`cancel` stops it).
    `--max-failures` does cancel the rest of the run: that is what it asks for.
    """
    t0 = time.monotonic()
    check_results_path(results)
    attached = attach(run_id, store)
    with _on_signal(cancel=False) as driving:
        driving.run = attached
        done = sum(attached.store.status_counts(attached.id).values())
        say(escape(f"watching run {attached.id}: {done}/{attached.n_tasks} tasks finished so far"))
        status = _drive(attached, max_failures)
    _finish(attached, status, results, t0)


def cancel(run_id: RunArg, store: StoreOpt = None) -> None:
    """Cancel the run's unfinished jobs (scancel as the user); their tasks become `cancelled`."""
    attached = attach(run_id, store)
    try:
        n = attached.cancel()
    except SlurmRunnerError as exc:
        fail(str(exc))
    say(escape(f"cancelled {n} jobs of run {attached.id}"))
