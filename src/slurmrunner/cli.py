"""The `slurmrunner` command: parse, call the runner, print. Nothing else lives here."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .config import SlurmRunnerConfig, load_config_file, load_json_or_toml, parse_resources
from .errors import ConfigError, SlurmRunnerError
from .profiles import Profile, load_profile_file
from .results import TaskResult
from .runner import Run, Runner, RunStatus
from .store import Store

app = typer.Typer(
    help="Run a command over many inputs on SLURM (or locally), on behalf of a user.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check admin config files.", no_args_is_help=True)
app.add_typer(config_app, name="config")
err = Console(stderr=True)
if not err.is_terminal:  # a log or a pipe: one line per row, for whoever greps it
    err = Console(stderr=True, width=200)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Admin SLURM config (JSON or TOML).")
]
ProfileOpt = Annotated[
    Path | None,
    typer.Option("--profile", "-p", help="User Profile (JSON or TOML); default: local backend."),
]
InputsOpt = Annotated[
    Path, typer.Option("--inputs", "-i", help="JSON lines: one object of arguments per task.")
]
ResourcesOpt = Annotated[
    str | None,
    typer.Option(
        "--resources", "-r", help="Per-task overrides: a JSON object or a .json/.toml file."
    ),
]
CallOpt = Annotated[
    str,
    typer.Option(
        help="How a task is called: 'fractal' (CMD --args-json A --out-json B) or 'stdin' "
        "(arguments on standard input, result path in $SLURMRUNNER_OUT_JSON)."
    ),
]
WorkdirOpt = Annotated[
    str | None,
    typer.Option(help="Tasks' working directory (default: here for local, the run folder else)."),
]
StoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--store", envvar="SLURMRUNNER_STORE", help="Run store (SQLite); default in ~/.local/state."
    ),
]
CommandArg = Annotated[list[str], typer.Argument(help="The task's command, after --.")]
RunArg = Annotated[str, typer.Argument(help="Run id, as printed by submit.")]
ResultsOpt = Annotated[
    Path | None, typer.Option("--results", "-o", help="Write results here (JSON lines).")
]


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _read_inputs(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        _fail(f"{path}: cannot read: {exc.strerror}")
    inputs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            _fail(f"{path}:{n}: not JSON: {exc.msg}")
        if not isinstance(value, dict):
            _fail(f"{path}:{n}: each line must be a JSON object of arguments")
        inputs.append(value)
    if not inputs:
        _fail(f"{path}: no inputs")
    return inputs


def _resources(value: str | None) -> Any:
    if value is None:
        return None
    if Path(value).is_file():
        return parse_resources(load_json_or_toml(value))
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--resources: neither a file nor JSON ({exc.msg})") from None
    return parse_resources(data)


def _runner(config: Path | None, profile: Path | None, store: Path | None) -> Runner:
    cfg = load_config_file(config) if config else SlurmRunnerConfig()
    prof = load_profile_file(profile) if profile else Profile()
    return Runner(cfg, prof, Store(store) if store else None)


def _default_workdir(runner: Runner, workdir: str | None) -> str | None:
    if workdir is None and runner.profile.backend == "local":
        return os.getcwd()
    return workdir


def _write_results(results: list[TaskResult], path: Path | None) -> None:
    lines = "".join(json.dumps(r.to_dict()) + "\n" for r in results)
    if path is None:
        sys.stdout.write(lines)
        sys.stdout.flush()
    else:
        path.write_text(lines)


def _summary(run: Run, status: RunStatus, elapsed: float | None = None) -> None:
    results = run.results()
    causes = Counter(r.error.cause for r in results if r.error)
    table = Table(title=f"run {run.id}", show_header=False, title_justify="left")
    table.add_row("tasks", f"{status.n_tasks}")
    for key in ("ok", "failed", "cancelled"):
        if status.counts.get(key):
            table.add_row(key, str(status.counts[key]))
    if causes:
        table.add_row("causes", ", ".join(f"{c}: {n}" for c, n in causes.most_common()))
    pending = status.n_tasks - status.finished
    if pending:
        table.add_row("unfinished", str(pending))
    table.add_row("jobs", ", ".join(f"{s}: {n}" for s, n in sorted(status.jobs.items())))
    calls = status.calls
    table.add_row(
        "calls",
        ", ".join(f"{name}: {n}" for name, n in sorted(calls.items())) or "none",
    )
    if status.warnings:
        table.add_row("warnings", f"{len(set(status.warnings))} (printed as they came)")
    if elapsed is not None:
        table.add_row("wall", f"{elapsed:.1f} s")
    table.add_row("run folder", run.run_dir)
    err.print(table)
    for r in results:
        if r.error and r.status == "failed":
            err.print(
                f"[red]task {r.index} failed[/] ({escape(r.error.cause)}): "
                + escape(r.error.message),
                highlight=False,
            )
            break


LOG_PROGRESS_EVERY_S = 30.0


def _progress_line(st: RunStatus) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(st.counts.items()))
    jobs = ", ".join(f"{k} {v}" for k, v in sorted(st.jobs.items()))
    done = f"{st.finished}/{st.n_tasks} finished ({counts or 'none yet'})"
    return f"run {st.run_id}: {done}; jobs: {jobs}"


def _print_new_warnings(st: RunStatus, said: set[str]) -> None:
    """Each warning once, as it comes (above the progress bar when there is one)."""
    for warning in st.warnings:
        if warning not in said:
            said.add(warning)
            err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


def _watch(run: Run) -> RunStatus:
    said: set[str] = set()
    if not err.is_terminal:
        # A log, not a screen: a progress line now and then, and each new warning once.
        last = [time.monotonic()]

        def log_progress(st: RunStatus) -> None:
            _print_new_warnings(st, said)
            if time.monotonic() - last[0] >= LOG_PROGRESS_EVERY_S and not st.done:
                last[0] = time.monotonic()
                err.print(_progress_line(st), highlight=False)

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
        task = bar.add_task(f"run {run.id}", total=run.n_tasks, detail="")

        def show(st: RunStatus) -> None:
            detail = " ".join(f"{k}:{v}" for k, v in sorted(st.counts.items()))
            bar.update(task, completed=st.finished, detail=detail)
            _print_new_warnings(st, said)

        run.wait(show)
    return run.status()


def _finish(run: Run, status: RunStatus, results_path: Path | None, t0: float) -> None:
    _write_results(run.results(), results_path)
    _summary(run, status, time.monotonic() - t0)
    bad = status.counts.get("failed", 0) + status.counts.get("cancelled", 0)
    raise typer.Exit(1 if bad or not status.done else 0)


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="Config file to check.")]) -> None:
    """Exit 0 if FILE is a valid admin config, else print what is wrong (key named)."""
    try:
        cfg = load_config_file(file)
    except SlurmRunnerError as exc:
        _fail(str(exc))
    parts = cfg.default_slurm_config.partition or "(cluster default)"
    err.print(
        f"[green]ok[/]: {escape(str(file))} (partition {escape(parts)}, gpu config: "
        f"{'yes' if cfg.gpu_slurm_config else 'no'})",
        highlight=False,
    )


@app.command()
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
    try:
        runner = _runner(config, profile, Path(":memory:"))
        scripts = runner.render(
            command,
            _read_inputs(inputs),
            _resources(resources),
            call,
            _default_workdir(runner, workdir),
        )
    except SlurmRunnerError as exc:
        _fail(str(exc))
    for k, script in enumerate(scripts):
        sys.stdout.write(f"# ===== job {k} of {len(scripts)} =====\n{script}")


def _start(
    config: Path | None,
    profile: Path | None,
    store: Path | None,
    inputs: Path,
    command: list[str],
    resources: str | None,
    call: str,
    workdir: str | None,
) -> Run:
    try:
        runner = _runner(config, profile, store)
        return runner.submit(
            command,
            _read_inputs(inputs),
            _resources(resources),
            call,
            _default_workdir(runner, workdir),
        )
    except SlurmRunnerError as exc:
        _fail(str(exc))


def _plan_line(run: Run) -> str:
    plan = run.spec.plan
    jobs = f"{plan.num_jobs} job" + ("s" if plan.num_jobs != 1 else "")
    line = f"run {run.id}: {run.n_tasks} tasks in {jobs}, {plan.parallel_tasks_per_job} at a time"
    if plan.fitted_from:
        line += f" ({plan.fitted_from} planned, but only {plan.num_jobs} fit side by side)"
    return line


@app.command()
def run(
    inputs: InputsOpt,
    command: CommandArg,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    resources: ResourcesOpt = None,
    results: ResultsOpt = None,
    call: CallOpt = "fractal",
    workdir: WorkdirOpt = None,
    store: StoreOpt = None,
) -> None:
    """Run COMMAND once per input and wait; results as JSON lines, summary on stderr.

    Exit status: 0 all ok, 1 some task failed or was cancelled, 2 bad input.
    """
    t0 = time.monotonic()
    started = _start(config, profile, store, inputs, command, resources, call, workdir)
    err.print(_plan_line(started), highlight=False, soft_wrap=True)
    try:
        status = _watch(started)
    except KeyboardInterrupt:
        n = started.cancel()
        err.print(f"interrupted: cancelled {n} jobs of run {started.id}")
        raise typer.Exit(130) from None
    except SlurmRunnerError as exc:
        _fail(str(exc))
    _finish(started, status, results, t0)


@app.command()
def submit(
    inputs: InputsOpt,
    command: CommandArg,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    resources: ResourcesOpt = None,
    call: CallOpt = "fractal",
    workdir: WorkdirOpt = None,
    store: StoreOpt = None,
) -> None:
    """Submit and return at once; prints the run id for status/wait/results/cancel."""
    started = _start(config, profile, store, inputs, command, resources, call, workdir)
    err.print(_plan_line(started), highlight=False, soft_wrap=True)
    if started.spec.profile.backend == "local":
        err.print("note: local jobs belong to this process; use `run` for the local backend")
    print(started.id)


def _attach(run_id: str, store: Path | None) -> Run:
    try:
        return Runner.attach(run_id, Store(store) if store else None)
    except SlurmRunnerError as exc:
        _fail(str(exc))


@app.command()
def status(run_id: RunArg, store: StoreOpt = None) -> None:
    """Check the run once and print its counts."""
    attached = _attach(run_id, store)
    try:
        st = attached.poll()
    except SlurmRunnerError as exc:
        _fail(str(exc))
    _summary(attached, st)


@app.command()
def wait(run_id: RunArg, results: ResultsOpt = None, store: StoreOpt = None) -> None:
    """Watch a submitted run (from any process) until every task has ended."""
    t0 = time.monotonic()
    attached = _attach(run_id, store)
    try:
        st = _watch(attached)
    except SlurmRunnerError as exc:
        _fail(str(exc))
    _finish(attached, st, results, t0)


@app.command("results")
def results_cmd(run_id: RunArg, results: ResultsOpt = None, store: StoreOpt = None) -> None:
    """Print the results stored so far (JSON lines, input order)."""
    attached = _attach(run_id, store)
    _write_results(attached.results(), results)


@app.command()
def cancel(run_id: RunArg, store: StoreOpt = None) -> None:
    """scancel the run's unfinished jobs as the user; their tasks become `cancelled`."""
    attached = _attach(run_id, store)
    try:
        n = attached.cancel()
    except SlurmRunnerError as exc:
        _fail(str(exc))
    err.print(f"cancelled {n} jobs of run {run_id}")


@app.command()
def runs(store: StoreOpt = None) -> None:
    """List the runs in the store, newest first."""
    st = Store(store) if store else Store()
    table = Table("run", "created", "state", "tasks", "backend", "user")
    for row in st.runs():
        prof = row.spec.get("profile", {})
        table.add_row(
            row.id,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.created)),
            row.state,
            str(row.n_tasks),
            prof.get("backend", "local"),
            prof.get("username") or "-",
        )
    Console().print(table)
