"""Request and response bodies of the run routes (`/api/v1/runs...`).

A run's request is bounded here (argument count and length, input count); what the inputs and
resources mean is checked by the core (config.parse_resources, policy.check_run), whose
refusals name the key. The limits an admin sets on a Resource are checked after these.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints

from ...retries import RETRYABLE_CAUSES, growth_validator
from ...runspec import CALL_FORMS
from .common import MAX_ID, AbsolutePath, Request, Response, no_control

# A command line: bounded like a shell's, each argument free of control characters other than
# tab (an argument may hold a tab; a NUL cannot reach exec, a line break would reach scripts).
MAX_ARGS = 1024
MAX_ARG_CHARS = 8192
#: Inputs per request, whatever the Resource allows (its max_tasks_per_run may be lower).
MAX_INPUTS = 1_000_000
#: A page of results.
MAX_PAGE = 5000
#: The most of a log one request returns (the log's end).
MAX_LOG_BYTES = 1 << 20
DEFAULT_LOG_BYTES = 64 << 10
#: Task indices one retry may name, and how many of those it took its answer lists.
MAX_RETRY_INDICES = 100_000
RETRY_INDICES_SHOWN = 1000


def _arg(value: str) -> str:
    no_control(value.replace("\t", " "))
    return value


Arg = Annotated[str, StringConstraints(max_length=MAX_ARG_CHARS), AfterValidator(_arg)]
CallForm = Literal[CALL_FORMS]  # type: ignore[valid-type]
RunState = Literal["submitting", "running", "done", "cancelled", "failed"]
ResultsStatus = Literal["ok", "failed", "cancelled", "not_ok"]


class RunCreate(Request):
    """Run `command` once per input, as the caller's Profile says."""

    command: list[Arg] = Field(min_length=1, max_length=MAX_ARGS)
    inputs: list[Any] = Field(min_length=1, max_length=MAX_INPUTS)
    # The task's resource overrides (mem, time, cpus_per_task, partition, ...): the CLI's
    # --resources JSON; checked against the admin's config and limits.
    resources: dict[str, Any] | None = None
    call: CallForm = "fractal"  # type: ignore[valid-type]
    workdir: AbsolutePath | None = None


class RunRead(Response):
    id: str
    state: str
    created: float  # unix time
    n_tasks: int
    n_jobs: int
    finished: int
    counts: dict[str, int]  # finished tasks by status: ok / failed / cancelled
    user_id: int | None
    resource_id: int | None
    profile_id: int | None
    run_dir: str
    call: str  # how each task is called: fractal (--args-json/--out-json) or stdin
    message: str | None  # why the run failed as a whole (its start refused, ...)


class JobRead(Response):
    index: int
    job_id: str | None
    state: str
    reason: str
    first_task: int
    n_tasks: int
    done: bool


class RunDetail(RunRead):
    causes: dict[str, int]  # tasks not ok, by cause (out_of_memory, time_limit, ...)
    jobs: list[JobRead]
    calls: dict[str, int]  # calls to the cluster made for this run (sbatch, squeue, cat, ...)
    retried_tasks: int = 0  # tasks sent again so far (a task retried twice counts twice)


class ResultsPage(Response):
    """Results by task index; ask for the next page with `after=next_after` while it is set."""

    run_id: str
    total: int  # finished tasks matching the filter
    items: list[dict[str, Any]]  # TaskResult as in `slurmrunner results`
    next_after: int | None


class Cancelled(Response):
    run_id: str
    cancelled_jobs: int
    state: str


_growth = growth_validator  # one check for the API and the config


RetryCause = Literal[RETRYABLE_CAUSES]  # type: ignore[valid-type]
TaskIndex = Annotated[int, Field(ge=0, le=MAX_ID)]
Growth = Annotated[str, StringConstraints(max_length=64), AfterValidator(no_control)]


class RetryCreate(Request):
    """Run a run's failed tasks again, in new jobs of the same run: those of `causes` (every
    failed task when not given), only `indices` if given, with memory and time grown."""

    causes: list[RetryCause] | None = Field(  # type: ignore[valid-type]
        default=None, min_length=1, max_length=len(RETRYABLE_CAUSES)
    )
    indices: list[TaskIndex] | None = Field(
        default=None, min_length=1, max_length=MAX_RETRY_INDICES
    )
    mem: Annotated[Growth | None, _growth("mem")] = None
    time: Annotated[Growth | None, _growth("time")] = None


class Retried(Response):
    """What a retry took. `indices`: the first RETRY_INDICES_SHOWN of its tasks, by index
    (all of them when n_tasks is no more)."""

    run_id: str
    n_tasks: int
    n_jobs: int
    indices: list[int]
    causes: dict[str, int]  # the retried tasks by the cause of their failure
    state: str
