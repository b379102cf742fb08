"""`slurmrunner retry`: failed tasks of a run go again, in new jobs of the same run, with more
memory or time; then the run is watched to its end exactly as `wait` does (run_cmds.watch_run,
remote.watch), or, with --detach, left to run.

What the user gives is checked here first, with the core's own words (retries.parse_growth),
the same on this machine and with a server: a bad --mem is refused before any run is read.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..errors import ConfigError, SlurmRunnerError
from ..retries import RETRYABLE_CAUSES, parse_growth
from ..run import Run
from ..service.schemas.runs import MAX_RETRY_INDICES
from .driving import on_signal
from .inputs import attach, check_results_path
from .options import MaxFailuresOpt, ResultsOpt, RunArg, ServerOpt, StoreOpt, TokenOpt
from .output import fail, say
from .run_cmds import watch_run

EXAMPLES = """\
Examples:

  slurmrunner retry last                                  # every failed task, as it was

  slurmrunner retry RUN --cause out_of_memory --mem 2x    # twice the memory of the last try

  slurmrunner retry RUN --cause time_limit --time +30:00 --detach

  slurmrunner retry RUN --indices 3,17,40-45 --mem 8G

Exit status: as `wait`: 0 every task ok; 1 a task failed or was cancelled; with --detach, 0
once the retry is submitted. 2 bad input: nothing retried (no failed task chosen, a bad
--mem or --time, a bound of the admin's exceeded, a cancelled run). 130, 143, 129: stopped
watching by SIGINT, SIGTERM, SIGHUP (the run goes on).
"""

CauseOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--cause",
        help="Only tasks that failed of these causes (comma-separated, or the option again): "
        "out_of_memory, time_limit, node_failure, exit_code, ... Default: every failed task.",
        show_default=False,
    ),
]
IndicesOpt = Annotated[
    str | None,
    typer.Option(
        "--indices",
        help="Only these tasks (their index, 0 for the first input): 3,17 or 40-45.",
        show_default=False,
    ),
]
MemOpt = Annotated[
    str | None,
    typer.Option(
        "--mem",
        help="Memory of the next attempt: 2x (times), +2G (more), 8G (set).",
        show_default=False,
    ),
]
TimeOpt = Annotated[
    str | None,
    typer.Option(
        "--time",
        help="Time limit of the next attempt: 2x, +30:00 (more), 2:00:00 (set).",
        show_default=False,
    ),
]
DetachOpt = Annotated[
    bool,
    typer.Option("--detach", help="Return once the retry is submitted; `wait` watches it later."),
]


@dataclass(frozen=True)
class RetryAsk:
    """What `retry` asks for: Run.retry's and Client.retry's keywords."""

    causes: list[str] | None
    indices: list[int] | None
    mem: str | None
    time: str | None

    def keywords(self) -> dict[str, Any]:
        return {"causes": self.causes, "indices": self.indices, "mem": self.mem, "time": self.time}


def read_ask(
    causes: list[str] | None, indices: str | None, mem: str | None, time_: str | None
) -> RetryAsk:
    """The options checked, before anything is read or sent (exit 2 naming the option)."""
    chosen = [c.strip() for given in causes or () for c in given.split(",") if c.strip()]
    for cause in chosen:
        if cause not in RETRYABLE_CAUSES:
            fail(
                f"--cause {cause}: not a cause a task can fail of; one of "
                + ", ".join(RETRYABLE_CAUSES)
            )
    for value, what in ((mem, "mem"), (time_, "time")):
        if value is not None:
            try:
                parse_growth(value, what)
            except ConfigError as exc:
                fail(f"--{exc}")
    return RetryAsk(
        list(dict.fromkeys(chosen)) or None, _indices(indices), mem or None, time_ or None
    )


def _indices(text: str | None) -> list[int] | None:
    if text is None:
        return None
    found: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, dash, last = part.partition("-")
        try:
            lo, hi = int(first), int(last if dash else first)
        except ValueError:
            fail(f"--indices: {part!r} is not an index (3) nor a range (40-45)")
        if lo < 0 or hi < lo:
            fail(f"--indices: {part!r}: indices count from 0, a range from low to high")
        if len(found) + hi - lo + 1 > MAX_RETRY_INDICES:
            fail(f"--indices: more than {MAX_RETRY_INDICES} tasks; choose them by --cause")
        found.update(range(lo, hi + 1))
    if not found:
        fail("--indices: give task indices, e.g. 3,17 or 40-45")
    return sorted(found)


def retry_line(
    run_id: str, n_tasks: int, n_jobs: int, causes: Mapping[str, int], ask: RetryAsk
) -> str:
    """`retrying 3 tasks of run X in 2 jobs (out_of_memory: 3; mem 2x)`."""
    tasks = f"{n_tasks} task" + ("s" if n_tasks != 1 else "")
    jobs = f"{n_jobs} job" + ("s" if n_jobs != 1 else "")
    counted = sorted(causes.items(), key=lambda kv: (-kv[1], kv[0]))
    parts = [", ".join(f"{cause}: {n}" for cause, n in counted)]
    parts.append(", ".join(f"{w} {v}" for w, v in (("mem", ask.mem), ("time", ask.time)) if v))
    detail = "; ".join(p for p in parts if p)
    return f"retrying {tasks} of run {run_id} in {jobs}" + (f" ({detail})" if detail else "")


def start_retry(run: Run, ask: RetryAsk) -> None:
    """Store the retry and submit its jobs (Run.retry); its line, or exit 2 saying why not."""
    causes_of = {r.index: r.error.cause for r in run.store.failed_results(run.id) if r.error}
    try:
        started = run.retry(**ask.keywords())
    except SlurmRunnerError as exc:
        fail(str(exc))
    causes = Counter(causes_of.get(i, "unknown") for i in started.indices)
    say(escape(retry_line(run.id, started.n_tasks, started.n_jobs, causes, ask)))


def retry(
    run_id: RunArg,
    cause: CauseOpt = None,
    indices: IndicesOpt = None,
    mem: MemOpt = None,
    time_: TimeOpt = None,
    detach: DetachOpt = False,
    results: ResultsOpt = None,
    max_failures: MaxFailuresOpt = None,
    store: StoreOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Run a run's failed tasks again, in new jobs of the same run, then watch it as `wait`.

    RUN is an id, a unique prefix of one, or `last`. The tasks chosen (every failed one by
    default) keep their earlier attempts in their results (`attempts`, each with the
    `resources` it ran with). --mem and --time grow from what each task's last attempt had;
    the admin's bounds (max_mem_per_job, the partition's time limit) still hold: a retry over
    them is refused before anything is submitted, naming the bound.
    """
    ask = read_ask(cause, indices, mem, time_)
    if detach and (results is not None or max_failures is not None):
        fail(
            "--detach returns once the retry is submitted: --results and --max-failures "
            "are for watching it"
        )
    if server:
        from . import remote

        client = remote.connect(server, token, store=store)
        return remote.retry(client, run_id, ask, results, max_failures, detach)
    t0 = time.monotonic()
    check_results_path(results)
    attached = attach(run_id, store)
    if detach:
        with on_signal(cancel=False) as driving:  # a signal: what was stored is `wait`'s
            driving.run = attached
            start_retry(attached, ask)
        return
    watch_run(attached, results, max_failures, t0, lambda: start_retry(attached, ask))
