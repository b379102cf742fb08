"""Runs of the service's users: the operations behind `/api/v1/runs`.

A run is planned and stored in the request (the core's checks refuse it before anything
exists: its resources, the admin's config and policy, the Resource's limits); its folder and
jobs are made by the service's watcher thread (watching.py), so a slow cluster never holds a
request. Every read is scoped to its owner: another user's run is not found (404), so its
existence does not leak; a superuser may read, cancel and retry any run. A retry is stored in
the request, like a run (its checks refuse it before anything is submitted), and its jobs are
submitted by the watcher thread. What a read shows of a run is built in run_reads.py.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import nullcontext

from sqlalchemy.orm import Session

from ..backends import backend_for
from ..errors import BatchingError, ConfigError, HostError, PolicyError, RunNotFoundError
from ..policy import check_profile
from ..run import Run
from ..runner import Runner
from ..store import RunRow, Store
from ..store_queries import StatusFilter
from ..store_retries import RetryConflictError
from ..store_rows import RunView
from ..tasklogs import LogTail, empty_log, read_log
from .auth import Caller
from .checks import core_profile, runner_config
from .errors import ClusterUnavailable, Conflict, Invalid, NotFound, ServiceBusy
from .models import Resource, User
from .run_reads import stored_spec
from .schemas.runs import RETRY_INDICES_SHOWN, Retried, RetryCreate, RunCreate
from .watching import ServiceWatcher

log = logging.getLogger("slurmrunner.service")

# The per-user limit is checked and the run stored under one lock: two requests of one user at
# once cannot both pass a limit that has room for one.
# Per user, in this process: the API's one process (serve) is the only writer of runs.
_admission: dict[int, threading.Lock] = {}
_admission_guard = threading.Lock()


#: Log reads at once in this process, and the timeout of each (seconds).
LOG_READS_AT_ONCE = 4
LOG_READ_TIMEOUT_S = 10.0
_log_reads = threading.BoundedSemaphore(LOG_READS_AT_ONCE)


def _admission_lock(user_id: int) -> threading.Lock:
    with _admission_guard:
        return _admission.setdefault(user_id, threading.Lock())


def owned_run(store: Store, user: Caller | User, run_id: str) -> RunRow:
    """The run if `user` may see it; 404 otherwise, whether it exists or not. Like the CLI,
    `run_id` may be `last` or a unique prefix, among the user's own runs (a superuser's:
    among all)."""
    try:  # a whole id, as clients send it: one query
        row = store.run(run_id)
    except RunNotFoundError:
        pass
    else:
        if _may_see(user, row):
            return row
    return store.run(_resolve(store, user, run_id))


def owned_run_view(store: Store, user: Caller | User, run_id: str) -> RunView:
    """owned_run with what GET /runs/{id} shows of it (a whole id, as clients send it: three
    queries in all; another user's run: one, as for a missing one)."""
    view = store.run_view(run_id, lambda row: _may_see(user, row))
    if view is not None:
        return view
    found = store.run_view(_resolve(store, user, run_id))
    if found is None:  # deleted since it was resolved
        raise NotFound(f"no run {run_id!r}")
    return found


def _may_see(user: Caller | User, row: RunRow) -> bool:
    return user.is_superuser or row.user_id == user.id


def _resolve(store: Store, user: Caller | User, run_id: str) -> str:
    """A run id from `last` or a prefix, among the runs `user` may see; NotFound otherwise."""
    scope = None if user.is_superuser else user.id
    try:
        return store.resolve_run_id(run_id, user_id=scope)
    except RunNotFoundError as exc:
        if "several runs" in str(exc):  # ids of the caller's own runs only
            raise NotFound(str(exc)) from None
        raise NotFound("no runs yet" if run_id == "last" else f"no run {run_id!r}") from None


def run_object(store: Store, row: RunRow, watching: ServiceWatcher | None = None) -> Run:
    """A Run on the stored run, for cancelling it (never driven here), or, with `watching`, for
    its watcher to drive (a retry of a run that had ended)."""
    return Runner.attach(row.id, store, watching.poll_policy if watching else None)


def create_run(store: Store, watching: ServiceWatcher, user: User, body: RunCreate) -> RunRow:
    profile = user.profile
    assert profile is not None  # deps.current_user_with_profile
    resource = profile.resource
    if resource.prevent_new_submissions:
        raise Conflict(
            f"Resource {resource.name!r} takes no new runs for now "
            "(prevent_new_submissions is set by an admin)"
        )
    limit = resource.max_tasks_per_run
    if limit is not None and len(body.inputs) > limit:
        raise Invalid.one(
            ("body", "inputs"),
            f"{len(body.inputs)} tasks: over this Resource's max_tasks_per_run ({limit})",
            "limit",
        )
    # Again before every run: the policy, the config or this server's accounts may have
    # changed since the Profile was saved.
    core, config = core_profile(profile, resource)
    runner = Runner(config, core, store, watching.poll_policy)
    active_limit = resource.max_active_runs_per_user
    # Only a user with a limit waits, and only for their own other requests.
    with _admission_lock(user.id) if active_limit is not None else nullcontext():
        if active_limit is not None:
            active = store.count_active_runs(user.id, resource.id)
            if active >= active_limit:
                raise Conflict(
                    f"you have {active} active runs: this Resource's "
                    f"max_active_runs_per_user is {active_limit}; wait for one to end"
                )
        try:
            run = runner.prepare(
                body.command,
                body.inputs,
                body.resources,
                body.call,
                body.workdir,
                owner=(user.id, resource.id, profile.id),
            )
        except (ConfigError, BatchingError) as exc:  # what the request asks cannot be planned
            raise Invalid.one(("body",), str(exc), "config") from None
        except HostError as exc:  # the cluster did not answer the planning's sinfo
            raise ClusterUnavailable(f"the cluster did not answer: {exc}") from None
    # Read before the watcher has it: the 201 is the run as created (`submitting`), not
    # whatever step the watcher thread happened to reach meanwhile.
    created = store.run(run.id)
    watching.add(run)
    log.info(
        "run %s created: user=%s tasks=%d jobs=%d resource=%s",
        run.id,
        user.email,
        run.n_tasks,
        run.spec.plan.num_jobs,
        resource.name,
    )
    return created


def result_pages(
    store: Store, run_id: str, status: StatusFilter, after: int, page: int = 1000
) -> Iterator[str]:
    """Every result after `after` as JSON lines, read a page at a time (a stream never holds
    the database, nor a whole run's results)."""
    while True:
        found = store.results_page(run_id, status, after, page)
        if not found:
            return
        yield "".join(_json_line(r.to_dict()) for r in found)
        after = found[-1].index


def _json_line(data: object) -> str:
    return json.dumps(data) + "\n"


def task_log(
    store: Store,
    row: RunRow,
    index: int,
    limit: int,
    skip_last: int = 0,
    from_start: bool = False,
) -> LogTail:
    """A page of a task's log (see tasklogs.read_log): its end, an earlier page, its start."""
    if not 0 <= index < row.n_tasks:
        raise NotFound(f"run {row.id} has tasks 0 to {row.n_tasks - 1}, not {index}")
    # The run's backend as its stored policy allows, without a Run (which would read every
    # finished index of a 100,000-task run for one log).
    spec = stored_spec(row)
    backend = backend_for(spec.profile, spec.local_queue, spec.config.impersonation)
    # A log is the user's file: a FIFO or /dev/urandom there makes `cat` last its whole
    # timeout. Few at once and short, so log reads never take the API's worker threads.
    if not _log_reads.acquire(blocking=False):
        raise ServiceBusy("too many log reads at once; try again")
    try:
        found = read_log(
            spec,
            backend.user_host,
            index,
            limit,
            timeout=LOG_READ_TIMEOUT_S,
            skip_last=skip_last,
            from_start=from_start,
        )
    finally:
        _log_reads.release()
    if found is None and store.result(row.id, index) is not None:
        return empty_log(spec, index)
    if found is None:
        raise NotFound(f"task {index} has no log (yet)")
    return found


def cancel_run(store: Store, watching: ServiceWatcher, user: Caller | User, row: RunRow) -> int:
    n = watching.cancel(row.id, lambda: run_object(store, row))
    log.info("run %s cancel: user=%s jobs=%d", row.id, user.email, n)
    return n


def retry_run(
    store: Store,
    watching: ServiceWatcher,
    sessions: Callable[[], Session],
    user: Caller | User,
    row: RunRow,
    body: RetryCreate,
) -> Retried:
    """Run the chosen failed tasks of the run again (ServiceWatcher.retry): refused with 409
    while its Resource takes no new runs, when the Resource's impersonation policy no longer
    accepts the run's identity, for a cancelled run, or when another request retried them
    first; with 422 naming the field when the choice or the growth cannot be planned."""
    if row.state in ("cancelled", "submitting"):
        raise Conflict(f"run {row.id} is {row.state}: nothing of it can be retried")
    _check_resource(sessions, row)
    causes_of = {r.index: r.error.cause for r in store.failed_results(row.id) if r.error}
    try:
        started = watching.retry(
            row.id,
            lambda: run_object(store, row, watching),
            body.causes,
            body.indices,
            body.mem,
            body.time,
        )
    except RetryConflictError as exc:
        raise Conflict(str(exc)) from None
    except PolicyError as exc:  # the run's identity, under the policy it was stored with
        raise Conflict(f"this run's identity is refused now: {exc}") from None
    except HostError as exc:
        raise ClusterUnavailable(f"the cluster did not answer: {exc}") from None
    except (ConfigError, BatchingError) as exc:
        state = store.run(row.id).state
        if state in ("cancelled", "submitting"):  # cancelled since it was read
            raise Conflict(str(exc)) from None
        raise Invalid.one(_retry_field(str(exc), body), _retry_words(str(exc)), "retry") from None
    causes = Counter(causes_of.get(i, "unknown") for i in started.indices)
    log.info(
        "run %s retry: user=%s tasks=%d jobs=%d causes=%s mem=%s time=%s",
        row.id,
        user.email,
        started.n_tasks,
        started.n_jobs,
        ",".join(sorted(causes)),
        body.mem or "-",
        body.time or "-",
    )
    return Retried(
        run_id=row.id,
        n_tasks=started.n_tasks,
        n_jobs=started.n_jobs,
        indices=started.indices[:RETRY_INDICES_SHOWN],
        causes=dict(causes),
        state=store.run(row.id).state,
    )


def _check_resource(sessions: Callable[[], Session], row: RunRow) -> None:
    """The run's Resource, as for a new run: taking runs, and accepting the run's identity
    under its impersonation policy of now (it may have changed since the run began)."""
    if row.resource_id is None:
        return
    with sessions() as db:
        resource = db.get(Resource, row.resource_id)
        if resource is None:
            return
        if resource.prevent_new_submissions:
            raise Conflict(
                f"Resource {resource.name!r} takes no new runs for now "
                "(prevent_new_submissions is set by an admin): no retries either"
            )
        config = runner_config(resource)
    try:
        check_profile(stored_spec(row).profile, config.impersonation)
    except PolicyError as exc:
        raise Conflict(f"the Resource's impersonation policy refuses this run now: {exc}") from None


def _retry_field(message: str, body: RetryCreate) -> tuple[str, ...]:
    """Which field of the request a refusal of the core's is about (ConfigError and
    BatchingError name what they refuse at the start of their message)."""
    for field, starts in (
        ("mem", ("mem:", "mem=")),
        ("time", ("time:", "time=")),
        ("indices", ("--indices:",)),
    ):
        if message.startswith(starts):
            return ("body", field)
    if message.startswith("no failed task") and body.causes:
        return ("body", "causes")
    return ("body",)


def _retry_words(message: str) -> str:
    """The core's message, without the field it names first (the location names it)."""
    for prefix in ("mem: ", "time: ", "--indices: "):
        if message.startswith(prefix):
            return message.removeprefix(prefix)
    return message
