"""The commands on a service (--server or $SLURMRUNNER_SERVER, with your API token): run,
submit, wait, retry, status, results, logs, cancel and runs through slurmrunner.Client, with
the same output and exit statuses as on this machine: the writers of output.py and the watching of
driving.py take a RemoteRun as they take a local Run.

Imported only when a server is given: the other commands do not load httpx.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rich.markup import escape

from ..client import Client
from ..errors import (
    ClientError,
    ClientNotFoundError,
    ClientRefusedError,
    ClientUnavailableError,
    SlurmRunnerError,
)
from ..service.schemas.runs import MAX_LOG_BYTES
from .driving import Driving, on_signal, run_to_end, watching_line
from .inputs import check_results_path, read_inputs, resources_data
from .inspect_cmds import LOG_LIMIT_BYTES, run_row
from .output import fail, say, status_dict, submitted, summary, write_json, write_log, write_results
from .remote_run import RemoteRun, client_errors, connect

if TYPE_CHECKING:
    from .retry_cmds import RetryAsk

# A field of the run request -> the command line's word for it, to name it in a refusal.
_OPTIONS = {
    "command": "COMMAND",
    "inputs": "--inputs",
    "resources": "--resources",
    "call": "--call",
    "workdir": "--workdir",
}
# ... and of a retry's.
_RETRY_OPTIONS = {"causes": "--cause", "indices": "--indices", "mem": "--mem", "time": "--time"}

__all__ = [
    "cancel",
    "connect",
    "logs",
    "results",
    "retry",
    "run",
    "run_rows",
    "status",
    "submit",
    "wait",
]


def _refusal(exc: ClientRefusedError, options: dict[str, str] = _OPTIONS) -> str:
    if not exc.problems:
        return str(exc)
    lines = []
    for loc, msg in exc.problems:
        if not loc:  # the message names its key itself (`resources.mem: ...`)
            lines.append(msg)
            continue
        where = options.get(str(loc[0]), str(loc[0])) + "".join(f"[{p}]" for p in loc[1:])
        lines.append(f"{where}: {msg}")
    return "\n".join(lines)


def _request(inputs: Path, resources: str | None) -> tuple[list[Any], Any]:
    tasks = read_inputs(inputs)
    try:
        return tasks, None if resources is None else resources_data(resources)
    except SlurmRunnerError as exc:
        fail(str(exc))


def _submit(
    client: Client,
    command: list[str],
    tasks: list[Any],
    resources: Any,
    call: str,
    workdir: str | None,
) -> RemoteRun:
    try:
        info = client.submit(command, tasks, resources, call, workdir)
    except ClientRefusedError as exc:
        fail(_refusal(exc))
    jobs = f"{info.n_jobs} job" + ("s" if info.n_jobs != 1 else "")
    say(escape(f"run {info.id}: {info.n_tasks} tasks in {jobs} on {client.server}"))
    return RemoteRun(client, info)


def run(
    client: Client,
    inputs: Path,
    command: list[str],
    resources: str | None,
    results_path: Path | None,
    call: str,
    workdir: str | None,
    max_failures: int | None,
) -> NoReturn:
    t0 = time.monotonic()
    check_results_path(results_path)
    tasks, res = _request(inputs, resources)

    def begin(driving: Driving) -> RemoteRun:
        # Set as soon as the service answered: a signal from then on cancels the run there.
        started = driving.run = _submit(client, command, tasks, res, call, workdir)
        return started

    run_to_end(begin, results_path, t0, max_failures, call)


def submit(
    client: Client,
    inputs: Path,
    command: list[str],
    resources: str | None,
    call: str,
    workdir: str | None,
    json_out: bool,
) -> None:
    tasks, res = _request(inputs, resources)
    with on_signal() as driving:
        started = driving.run = _submit(client, command, tasks, res, call, workdir)
    submitted(started.id, started.n_tasks, started.info.n_jobs, started.run_dir, json_out)


def wait(
    client: Client, run_id: str, results_path: Path | None, max_failures: int | None
) -> NoReturn:
    def opening() -> RemoteRun:
        watched = RemoteRun(client, client.run(run_id))
        say(escape(watching_line(watched.id, watched.info.finished, watched.n_tasks)))
        return watched

    watch(opening, results_path, max_failures)


def watch(
    opening: Callable[[], RemoteRun], results_path: Path | None, max_failures: int | None
) -> NoReturn:
    """`wait`'s watching of a run on the service to its end (`retry`'s too): `opening` finds
    the run (and says the first line), then as `run`. A signal stops the watching only."""
    t0 = time.monotonic()
    check_results_path(results_path)

    def begin(driving: Driving) -> RemoteRun:
        watched = driving.run = opening()
        return watched

    # The calling form is not in the service's answer: no hint about it (None).
    run_to_end(begin, results_path, t0, max_failures, None, cancel=False)


def retry(
    client: Client,
    run_id: str,
    ask: RetryAsk,
    results_path: Path | None,
    max_failures: int | None,
    detach: bool,
) -> None:
    def start() -> str:
        from .retry_cmds import retry_line

        try:
            done = client.retry(run_id, **ask.keywords())
        except ClientRefusedError as exc:
            fail(_refusal(exc, _RETRY_OPTIONS))
        except ClientError as exc:
            fail(str(exc))
        say(escape(retry_line(done.run_id, done.n_tasks, done.n_jobs, done.causes, ask)))
        return done.run_id

    if detach:
        with on_signal(cancel=False):  # a signal after the POST: the service has the retry
            start()
        return
    watch(lambda: RemoteRun(client, client.run(start())), results_path, max_failures)


def status(client: Client, run_id: str, json_out: bool) -> None:
    with client_errors():
        watched = RemoteRun(client, client.run(run_id))
        st = watched.status_of(watched.info)
        if json_out:
            write_json(status_dict(watched, st, watched.state))
        else:
            summary(watched, st, state=watched.state)


def results(client: Client, run_id: str, failed: bool, results_path: Path | None) -> None:
    with client_errors():
        found = client.run(run_id)  # `last` is this run until the end of the stream
        listed = client.results(found.id, "not_ok" if failed else None)
    write_results(listed, results_path, found.id)


def logs(client: Client, run_id: str, index: int, tail: int | None, whole: bool) -> None:
    with client_errors():
        found = client.run(run_id)
    if not 0 <= index < found.n_tasks:
        fail(f"run {found.id} has tasks 0 to {found.n_tasks - 1}, not {index}")
    try:
        got = client.log(found.id, index, MAX_LOG_BYTES if whole else LOG_LIMIT_BYTES)
    except (ClientNotFoundError, ClientUnavailableError) as exc:
        fail(str(exc), 1)  # no log yet, or it could not be read: 1, as on this machine
    except ClientError as exc:
        fail(str(exc))
    if whole:
        write_log(got, tail, f"the service sends the last {MAX_LOG_BYTES >> 20} MB at most")
    else:
        write_log(got, tail, "--all for the whole log")


def cancel(client: Client, run_id: str) -> None:
    with client_errors():
        done = client.cancel(run_id)
    say(escape(f"cancelled {done.cancelled_jobs} jobs of run {done.run_id}"))


def run_rows(client: Client, limit: int) -> list[dict[str, Any]]:
    """Your runs on the service as `runs` lists them; the backend is your Resource's type
    (a run made on another Resource, before your Profile changed, shows its id)."""
    with client_errors():
        me = client.me()
        found = client.runs(limit)
    return [
        run_row(
            r.id,
            r.created,
            r.state,
            r.n_tasks,
            (me.resource_type or "-") if r.resource_id == me.resource_id else f"#{r.resource_id}",
            me.email,
        )
        for r in found
    ]
