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
from ..tasklogs import LogUnreadable, log_path, read_log
from .inputs import attach, check_results_path, open_store
from .options import JsonOpt, ResultsOpt, RunArg, StoreOpt
from .output import fail, say, status_dict, summary, write_json, write_results

LOG_LIMIT_BYTES = 1024 * 1024


def status(run_id: RunArg, json_out: JsonOpt = False, store: StoreOpt = None) -> None:
    """Look at the run once (results so far, the scheduler) and print its counts."""
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
) -> None:
    """Print the results stored so far (JSON lines, input order)."""
    check_results_path(results)
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
) -> None:
    """Print a task's log (its standard output and error)."""
    attached = attach(run_id, store)
    if not 0 <= index < attached.n_tasks:
        fail(f"run {attached.id} has tasks 0 to {attached.n_tasks - 1}, not {index}")
    try:
        got = read_log(
            attached.spec, attached.backend.user_host, index, None if whole else LOG_LIMIT_BYTES
        )
    except LogUnreadable as exc:
        fail(str(exc), 1)
    if got is None:
        fail(f"task {index} has no log (yet): {log_path(attached.spec, index)}", 1)
    data, size, path = got.data, got.size, got.path
    if tail is not None:
        data = b"".join(data.splitlines(keepends=True)[-tail:])
    elif len(data) < size:
        say(escape(f"(the last {len(data)} of {size} bytes of {path}; --all for the whole log)"))
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def _run_rows(limit: int, store: Path | None) -> list[dict[str, Any]]:
    return [
        {
            "id": row.id,
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.created)),
            "state": row.state,
            "n_tasks": row.n_tasks,
            "backend": row.spec.get("profile", {}).get("backend", "local"),
            "user": row.spec.get("profile", {}).get("username"),
        }
        for row in open_store(store).runs(limit)
    ]


def runs(
    json_out: JsonOpt = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many runs.")] = 50,
    store: StoreOpt = None,
) -> None:
    """List the runs in the store, newest first (full ids)."""
    rows = _run_rows(limit, store)
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
