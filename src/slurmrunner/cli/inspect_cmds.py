"""Commands that look at runs without changing their course: status, results, logs, runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import SlurmRunnerError
from ..tasklogs import LogUnreadable, empty_log, log_path, read_log
from .inputs import attach, check_results_path, open_store
from .options import JsonOpt, ResultsOpt, RunArg, ServerOpt, StoreOpt, TokenOpt
from .output import fail, status_dict, summary, write_json, write_log, write_results

LOG_LIMIT_BYTES = 1024 * 1024


def status(
    run_id: RunArg,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Look at the run once (results so far, the scheduler) and print its counts."""
    if server:
        from . import remote

        return remote.status(remote.connect(server, token, store=store), run_id, json_out)
    attached = attach(run_id, store)
    try:
        st = attached.poll()
    except SlurmRunnerError as exc:
        fail(str(exc))
    state = attached.store.run(attached.id).state
    if json_out:
        write_json(status_dict(attached, st, state))
    else:
        summary(attached, st, state=state)


def results(
    run_id: RunArg,
    failed: Annotated[
        bool, typer.Option("--failed", help="Only the tasks that failed or were cancelled.")
    ] = False,
    results: ResultsOpt = None,
    store: StoreOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print the results stored so far (JSON lines, input order)."""
    check_results_path(results)
    if server:
        from . import remote

        return remote.results(remote.connect(server, token, store=store), run_id, failed, results)
    attached = attach(run_id, store)
    found = attached.results()
    if failed:
        found = [r for r in found if r.status != "ok"]
    write_results(found, results, attached.id)


def logs(
    run_id: RunArg,
    index: Annotated[
        int, typer.Argument(metavar="INDEX", help="The task's index: 0 for the first input.")
    ],
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", min=1, help="Only the last N lines.")
    ] = None,
    whole: Annotated[
        bool, typer.Option("--all", help="The whole log, not only its last 1 MB.")
    ] = False,
    store: StoreOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print a task's log (its standard output and error)."""
    if server:
        from . import remote

        return remote.logs(remote.connect(server, token, store=store), run_id, index, tail, whole)
    attached = attach(run_id, store)
    if not 0 <= index < attached.n_tasks:
        fail(f"run {attached.id} has tasks 0 to {attached.n_tasks - 1}, not {index}")
    try:
        got = read_log(
            attached.spec, attached.backend.user_host, index, None if whole else LOG_LIMIT_BYTES
        )
    except LogUnreadable as exc:
        fail(str(exc), 1)
    if got is None and attached.store.result(attached.id, index) is not None:
        got = empty_log(attached.spec, index)
    if got is None:
        fail(f"task {index} has no log (yet): {log_path(attached.spec, index)}", 1)
    write_log(got, tail, "--all for the whole log")


def run_row(
    run_id: str, created: float, state: str, n_tasks: int, backend: str, user: str | None
) -> dict[str, Any]:
    """A line of `runs` (its --json keys)."""
    return {
        "id": run_id,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)),
        "state": state,
        "n_tasks": n_tasks,
        "backend": backend,
        "user": user,
    }


def _run_rows(limit: int, store: Path | None) -> list[dict[str, Any]]:
    return [
        run_row(
            row.id,
            row.created,
            row.state,
            row.n_tasks,
            row.spec.get("profile", {}).get("backend", "local"),
            row.spec.get("profile", {}).get("username"),
        )
        for row in open_store(store).runs(limit)
    ]


def runs(
    json_out: JsonOpt = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many runs.")] = 50,
    store: StoreOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """List the runs in the store (or yours on the service), newest first (full ids)."""
    if server:
        from . import remote

        rows = remote.run_rows(remote.connect(server, token, store=store), limit)
    else:
        rows = _run_rows(limit, store)
    _show_runs(rows, json_out)


def _show_runs(rows: list[dict[str, Any]], json_out: bool) -> None:
    if json_out:
        write_json(rows)
        return
    if not sys.stdout.isatty():  # for grep, cut and awk: one run per line, nothing cut short
        for r in rows:
            typer.echo(
                f"{r['id']}  {r['created']}  {r['state']:<10}  {r['n_tasks']:>7}  "
                f"{r['backend']:<10}  {r['user'] or '-'}"
            )
        return
    Console().print(runs_table(rows))


def runs_table(rows: list[dict[str, Any]]) -> Table:
    table = Table()
    width = max((len(r["id"]) for r in rows), default=3)
    table.add_column("run", no_wrap=True, min_width=width)  # an id is never cut short
    for name in ("created", "state", "tasks", "backend", "user"):
        table.add_column(name, justify="right" if name == "tasks" else "left")
    for r in rows:
        cells = (r["id"], r["created"], r["state"], str(r["n_tasks"]), r["backend"], r["user"])
        table.add_row(*(escape(c or "-") for c in cells))
    return table
