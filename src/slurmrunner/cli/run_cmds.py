"""Commands that start or stop work: render, run, submit, wait, cancel (retry: retry_cmds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape

from ..config import TaskResources
from ..errors import SlurmRunnerError
from ..runner import Run, Runner
from .driving import Driving, on_signal, run_to_end, watching_line
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
    ServerOpt,
    StoreOpt,
    TokenOpt,
    WorkdirOpt,
)
from .output import fail, plan_line, say, submitted

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
    ask_cluster: Annotated[
        bool,
        typer.Option(
            "--ask-cluster",
            help="plan with the partition's shape and time limit, as `run` does (one sinfo; "
            "read-only)",
        ),
    ] = False,
) -> None:
    """Print the job scripts the limits plan; nothing is submitted.

    The plan and its checks are `run`'s: more jobs when a script would exceed
    max_script_bytes (large payloads are compressed), and a refusal naming the numbers when
    the tasks cannot fit. The cluster is not asked unless --ask-cluster: then the partition's
    time limit is applied too, and `run`'s fewer, bigger jobs when the partition cannot run
    these side by side (batching_config.cap_jobs_to_partition).
    """
    runner = make_runner(config, profile, Path(":memory:"))
    tasks = read_inputs(inputs)
    try:
        scripts = runner.render(
            command, tasks, read_resources(resources), call, workdir, ask_partition=ask_cluster
        )
    except SlurmRunnerError as exc:
        fail(str(exc))
    for k, script in enumerate(scripts):
        typer.echo(f"# ===== job {k} of {len(scripts)} =====\n{script}", nl=False)


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
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Run COMMAND once per input and wait; results as JSON lines, summary on stderr.

    Failures are printed as they happen (cause, message, last lines of the log, its path).
    Ctrl-C, SIGTERM and SIGHUP cancel the run's jobs before exiting.
    """
    if server:
        from . import remote

        client = remote.connect(server, token, config=config, profile=profile, store=store)
        return remote.run(client, inputs, command, resources, results, call, workdir, max_failures)
    t0 = time.monotonic()
    check_results_path(results)
    runner, tasks, res = _request(config, profile, store, inputs, resources)

    def begin(driving: Driving) -> Run:
        # The id is on screen before the first job exists.
        started = driving.run = runner.prepare(command, tasks, res, call, workdir)
        say(escape(plan_line(started)))
        started.start()
        return started

    run_to_end(begin, results, t0, max_failures, call)


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
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Submit and return at once; prints the run id for status/wait/results/cancel/logs."""
    if server:
        from . import remote

        client = remote.connect(server, token, config=config, profile=profile, store=store)
        return remote.submit(client, inputs, command, resources, call, workdir, json_out)
    runner, tasks, res = _request(config, profile, store, inputs, resources)
    with on_signal() as driving:
        started = driving.run = runner.prepare(command, tasks, res, call, workdir)
        say(escape(plan_line(started)))
        started.start()
    submitted(started.id, started.n_tasks, started.spec.plan.num_jobs, started.run_dir, json_out)


def wait(
    run_id: RunArg,
    results: ResultsOpt = None,
    max_failures: MaxFailuresOpt = None,
    store: StoreOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Watch a submitted run (from any process) until every task has ended; then as `run`.

    Ctrl-C, SIGTERM and SIGHUP stop the watching only: the run goes on (`cancel` stops it).
    `--max-failures` does cancel the rest of the run: that is what it asks for.
    """
    if server:
        from . import remote

        return remote.wait(
            remote.connect(server, token, store=store), run_id, results, max_failures
        )
    t0 = time.monotonic()
    check_results_path(results)
    attached = attach(run_id, store)

    def opening() -> None:
        done = sum(attached.store.status_counts(attached.id).values())
        say(escape(watching_line(attached.id, done, attached.n_tasks)))

    watch_run(attached, results, max_failures, t0, opening)


def watch_run(
    attached: Run,
    results: Path | None,
    max_failures: int | None,
    t0: float,
    opening: Callable[[], None],
) -> NoReturn:
    """`wait`'s watching of a stored run to its end (`retry`'s too): `opening` first (the
    first line; the retry), then as `run`. A signal stops the watching, never the run."""

    def begin(driving: Driving) -> Run:
        driving.run = attached
        opening()
        return attached

    run_to_end(begin, results, t0, max_failures, attached.spec.call, cancel=False)


def cancel(
    run_id: RunArg, store: StoreOpt = None, server: ServerOpt = None, token: TokenOpt = None
) -> None:
    """Cancel the run's unfinished jobs (scancel as the user); their tasks become `cancelled`."""
    if server:
        from . import remote

        return remote.cancel(remote.connect(server, token, store=store), run_id)
    attached = attach(run_id, store)
    try:
        n = attached.cancel()
    except SlurmRunnerError as exc:
        fail(str(exc))
    say(escape(f"cancelled {n} jobs of run {attached.id}"))
