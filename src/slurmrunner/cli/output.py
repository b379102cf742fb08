"""What the CLI prints: errors, results, the run summary and progress lines.

Results (JSON lines) go to standard output; everything for a person goes to standard error.
Rich reads `[...]` as markup in what it prints, table cells included: every text that comes
from a record, a file, the store or the scheduler goes through `escape` (a log, a cause or a
message may hold `[/oops]`, which would crash the print, or `[bold red]`, which would style it).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..results import TaskResult
from ..runner import Run, RunStatus
from ..tasklogs import LogTail
from .signals import quiet_dead_streams
from .views import RunView


class _PersonConsole(Console):
    """Standard error, for a person. When nobody reads it any more (a closed terminal,
    `2>&1 | head`), printing stops and the work goes on: rich's default would exit(1) on the
    spot, leaving a run's jobs behind uncancelled."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        quiet_dead_streams()


err = _PersonConsole(stderr=True)
if not err.is_terminal:  # a log or a pipe: one line per row, for whoever greps it
    err = _PersonConsole(stderr=True, width=200)


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def say(markup: str) -> None:
    try:
        err.print(markup, highlight=False, soft_wrap=True)
    except OSError:  # e.g. EIO: the terminal is gone; see _PersonConsole
        err.quiet = True
        quiet_dead_streams()


def write_results(results: list[TaskResult], path: Path | None, run_id: str) -> None:
    lines = "".join(json.dumps(r.to_dict()) + "\n" for r in results)
    if path is not None:
        try:
            path.write_text(lines)
        except OSError as exc:
            fail(
                f"cannot write {path}: {exc.strerror}; the results are kept: "
                f"slurmrunner results {run_id} -o FILE"
            )
        return
    try:
        sys.stdout.write(lines)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head` has read what it wanted: not an error
        quiet_dead_streams()


def write_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def submitted(run_id: str, n_tasks: int, n_jobs: int, run_dir: str, json_out: bool) -> None:
    """What `submit` prints: the run id, or what it is made of as JSON."""
    if json_out:
        write_json({"run_id": run_id, "n_tasks": n_tasks, "n_jobs": n_jobs, "run_dir": run_dir})
    else:
        typer.echo(run_id)


def write_log(got: LogTail, tail: int | None, more: str) -> None:
    """A task's log on standard output: its last `tail` lines, or what was read of it (with a
    word on standard error when that is not the whole log: `more` says how to get it)."""
    data = got.data
    if tail is not None:
        data = b"".join(data.splitlines(keepends=True)[-tail:])
    elif len(data) < got.size:
        say(escape(f"(the last {len(data)} of {got.size} bytes of {got.path}; {more})"))
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def plan_line(run: Run) -> str:
    plan = run.spec.plan
    jobs = f"{plan.num_jobs} job" + ("s" if plan.num_jobs != 1 else "")
    line = f"run {run.id}: {run.n_tasks} tasks in {jobs}, {plan.parallel_tasks_per_job} at a time"
    if plan.fitted_from:
        line += f" ({plan.fitted_from} planned, but only {plan.num_jobs} fit side by side)"
    if plan.raised_for:
        line += f" (more jobs to fit the {' and the '.join(plan.raised_for)})"
    return line


def progress_line(st: RunStatus) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(st.counts.items()))
    jobs = ", ".join(f"{k} {v}" for k, v in sorted(st.jobs.items()))
    done = f"{st.finished}/{st.n_tasks} finished ({counts or 'none yet'})"
    return f"run {st.run_id}: {done}; jobs: {jobs}"


def print_new_warnings(st: RunStatus, said: set[str]) -> None:
    """Each warning once, as it comes (above the progress bar when there is one)."""
    for warning in st.warnings:
        if warning not in said:
            said.add(warning)
            say(f"[yellow]warning:[/] {escape(warning)}")


def failure_causes(results: list[TaskResult]) -> Counter[str]:
    return Counter(r.error.cause for r in results if r.error and r.status == "failed")


#: The run's counter of tasks sent again (`retry`, or the admin's retry policy): a task
#: retried twice counts twice. Shown on a line of its own, not among the cluster calls.
RETRIED = "retried_tasks"


def retried_cell(status: RunStatus, results: list[TaskResult]) -> str | None:
    """`3 (2 ok on a later attempt)`; None for a run never retried."""
    retried = status.calls.get(RETRIED, 0)
    if not retried:
        return None
    ok = sum(1 for r in results if r.attempts and r.status == "ok")
    return f"{retried}" + (f" ({ok} ok on a later attempt)" if ok else "")


def summary(
    run: RunView, status: RunStatus, elapsed: float | None = None, state: str | None = None
) -> None:
    results = run.results()
    causes = failure_causes(results)
    table = Table(title=f"run {escape(run.id)}", show_header=False, title_justify="left")
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # a path is folded, never cut short
    if state:
        table.add_row("state", escape(state))
    table.add_row("tasks", f"{status.n_tasks}")
    for key in ("ok", "failed", "cancelled"):
        if status.counts.get(key):
            table.add_row(key, str(status.counts[key]))
    if causes:
        # Counted with a times sign: "exit_code: 2" would read like an exit status.
        counted = (f"{c} \N{MULTIPLICATION SIGN}{n}" for c, n in causes.most_common())
        table.add_row("failure causes", escape(", ".join(counted)))
    pending = status.n_tasks - status.finished
    if pending:
        table.add_row("unfinished", str(pending))
    retried = retried_cell(status, results)
    if retried:
        table.add_row("retried tasks", retried)
    jobs = ", ".join(f"{s}: {n}" for s, n in sorted(status.jobs.items()))
    table.add_row("jobs", escape(jobs))
    calls = ", ".join(f"{name}: {n}" for name, n in sorted(status.calls.items()) if name != RETRIED)
    table.add_row("calls", escape(calls or "none"))
    if status.warnings:
        table.add_row("warnings", f"{len(set(status.warnings))} (printed as they came)")
    if elapsed is not None:
        table.add_row("wall", f"{elapsed:.1f} s")
    table.add_row("run folder", escape(run.run_dir))
    err.print(table)
    failed, cancelled = status.counts.get("failed", 0), status.counts.get("cancelled", 0)
    if failed or cancelled:
        what = ", ".join(
            f"{n} {word}" for n, word in ((failed, "failed"), (cancelled, "cancelled")) if n
        )
        say(f"[red]{what}[/] — `slurmrunner results {escape(run.id)} --failed`")


def status_dict(run: RunView, st: RunStatus, state: str) -> dict[str, Any]:
    results = run.results()
    return {
        "run_id": run.id,
        "state": state,
        "n_tasks": st.n_tasks,
        "finished": st.finished,
        "done": st.done,
        "counts": dict(st.counts),
        "failure_causes": dict(failure_causes(results)),
        # Tasks sent again so far (a task retried twice counts twice); each retried task's
        # result holds its earlier `attempts`.
        "retried_tasks": st.calls.get(RETRIED, 0),
        "jobs": dict(st.jobs),
        "calls": dict(st.calls),
        "warnings": sorted(set(st.warnings)),
        "run_dir": run.run_dir,
    }
