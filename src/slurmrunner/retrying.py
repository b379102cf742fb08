"""A run's retries (run.Run holds the state named here): failed tasks run again, in new jobs
of the same run, with more memory or time, on demand (`retry`) or by the admin's policy.

A retry is planned like a run (batching, the partition's time limit, script size) for the
tasks it takes, grouped by the resources of their next attempt, and stored in one
transaction (store_retries.py) before any sbatch: the failed attempts move into the tasks'
history and the new jobs wait as NEW rows, which the usual submission sends. So a process
killed at any point leaves either the failed results (a reattaching watcher plans the policy's
retries again from them) or the new jobs (submitted once, by whoever claims them).

By policy, the failures of one watching step are retried together: tasks of jobs that end in
the same cycle share the retry's jobs.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from time import monotonic as time_now
from typing import TYPE_CHECKING, Any

from .config import TaskResources, merge_resources
from .errors import BatchingError, ConfigError
from .results import TaskResult
from .retries import RetryRule, Shape, by_policy, effective_rules, on_demand
from .runspec import RunSpec
from .store_retries import RetryConflictError

if TYPE_CHECKING:
    import threading

    from .store import JobRow, Store

log = logging.getLogger("slurmrunner")
#: A run retried on demand: done or failed ones run again; a cancelled one stays so.
RETRYABLE_STATES = ("running", "done", "failed")


@dataclass(frozen=True)
class RetryStarted:
    """What a retry took: how many tasks, in how many new jobs."""

    n_tasks: int
    n_jobs: int
    indices: list[int]


def retry_spec(spec: RunSpec, row: JobRow) -> RunSpec:
    """The spec a job's script is made from: the run's, or its retry's (resources, plan)."""
    if row.retry_plan is None:
        return spec
    plan = json.loads(row.retry_plan)
    return replace(
        spec,
        resources=TaskResources.model_validate(plan["resources"]),
        n_tasks=int(plan["n_tasks"]),
        min_jobs=int(plan.get("min_jobs") or 1),
    )


class Retrying:
    """The retrying part of a Run (see run.Run)."""

    id: str
    store: Store
    spec: RunSpec
    _finished: set[int]
    _closed: bool
    _lock: threading.RLock
    _policy_todo: list[TaskResult]
    _policy_scan: bool
    _attempt_jobs: dict[int, int] | None  # retried task -> its newest job (None: not read)
    _newest_retry_job: int  # the newest retry job this object knows (-1: none)
    _retry_submit_at: float | None
    calls: Counter[str]

    if TYPE_CHECKING:

        def _warn_once(self, note: str, key: str | None = None) -> None: ...

        def _submit_missing(self) -> None: ...

        def _flush_counters(self) -> None: ...

    def retry(
        self,
        causes: Collection[str] | None = None,
        indices: Collection[int] | None = None,
        mem: str | None = None,
        time: str | None = None,
        *,
        submit: bool = True,
    ) -> RetryStarted:
        """Run the chosen failed tasks again (by cause, by index, or every failed one), with
        their memory and time grown (`2x`, `+2G`, `8G`; `2x`, `+30:00`, `2:00:00`), in new
        jobs: submitted now, or with `submit=False` by the run's watcher at its next cycle (a
        service's request thread makes no sbatch). ConfigError or BatchingError, naming the
        bound, before any sbatch; RetryConflictError if another process retried them first."""
        with self._lock:
            state = self.store.run(self.id).state
            if state not in RETRYABLE_STATES:
                raise ConfigError(f"run {self.id} is {state}: nothing of it can be retried")
            failed = self.store.failed_results(self.id, indices, causes)
            shapes = self._shapes(failed)
            picks = on_demand(failed, shapes, causes, indices, mem, time)
            started = self._start_retry(picks, shapes, RETRYABLE_STATES)
            self._closed = False
            if submit:
                self._submit_missing()
            else:
                self._retry_submit_at = time_now()  # the watcher's next cycle submits them
            self._flush_counters()
            return started

    def _base_shape(self) -> Shape:
        res = merge_resources(self.spec.config, self.spec.resources)
        return Shape(res.mem_mb, res.time_minutes)

    def _shapes(self, results: Iterable[TaskResult]) -> dict[int, Shape]:
        """What each result's attempt ran with."""
        base, out = self._base_shape(), {}
        for r in results:
            ran = r.resources
            out[r.index] = Shape(ran.get("mem_mb"), ran.get("time_minutes")) if ran else base
        return out

    def _start_retry(
        self,
        picks: dict[int, Shape],
        shapes: dict[int, Shape],
        states: tuple[str, ...] = ("running",),
    ) -> RetryStarted:
        """Plan the picked tasks' jobs (one plan per next shape) and store them (from a run
        in one of `states`, which is `running` after)."""
        groups: dict[Shape, list[int]] = defaultdict(list)
        for i in sorted(picks):
            groups[picks[i]].append(i)
        jobs: list[tuple[list[int], str]] = []
        for shape, idxs in groups.items():
            jobs.extend(self._plan_group(shape, idxs))
        moves = {i: (shapes[i].to_dict(), picks[i].to_dict()) for i in picks}
        new = self.store.start_retry(self.id, moves, jobs, states)
        self._finished.difference_update(picks)
        self._newest_retry_job = max(self._newest_retry_job, *new)
        self.calls["retried_tasks"] += len(picks)  # shown with the run's calls
        if self._attempt_jobs is not None:
            for k, (tasks, _) in zip(new, jobs, strict=True):
                self._attempt_jobs.update(dict.fromkeys(tasks, k))
        log.info(
            "run %s retry: tasks=%d jobs=%d first_job=%s",
            self.id,
            len(picks),
            len(new),
            new[0] if new else "-",
        )
        return RetryStarted(len(picks), len(new), sorted(picks))

    def _plan_group(self, shape: Shape, idxs: list[int]) -> list[tuple[list[int], str]]:
        """The jobs of tasks retried with one shape: planned and checked as a run's are."""
        # The run's batching asks are left to the plan: the retry's tasks are fewer, with more
        # memory, and the first jobs' sizes may not fit them within the admin's bounds.
        asked: dict[str, Any] = self.spec.resources.model_dump(
            mode="json", exclude_unset=True, exclude={"tasks_per_job", "parallel_tasks_per_job"}
        )
        resources = TaskResources.model_validate({**asked, **shape.overrides()})
        args = self.store.task_args(self.id, idxs)
        tasks = list(zip(idxs, args, strict=True))
        # Jobs as the run's carry tasks: target_num_jobs in proportion to the tasks retried
        # (a few retried tasks share one job, instead of one job each).
        limits = self.spec.config.batching_config
        target = max(1, -(-limits.target_num_jobs * len(idxs) // max(self.spec.n_tasks, 1)))
        config = self.spec.config.model_copy(
            update={"batching_config": limits.model_copy(update={"target_num_jobs": target})}
        )
        spec = replace(self.spec, config=config, resources=resources, min_jobs=1)
        spec = spec.fit_scripts(tasks)
        plan = json.dumps(
            {
                "resources": resources.model_dump(mode="json", exclude_unset=True),
                "n_tasks": len(idxs),
                "min_jobs": spec.min_jobs,
            }
        )
        return [([idxs[p] for p in rng], plan) for rng in spec.plan.job_ranges()]

    def _job_of_attempt(self, index: int, default: int) -> int:
        """The job of a task's newest attempt: its retry's newest job, else `default`."""
        if self._attempt_jobs is None:
            self._attempt_jobs = {}
            for row in self.store.jobs(self.id):  # in index order: the newest last
                if row.task_list is not None:
                    self._attempt_jobs.update(dict.fromkeys(row.task_list, row.idx))
        return self._attempt_jobs.get(index, default)

    def _see_jobs(self, rows: Iterable[JobRow]) -> None:
        """A retry's job this object did not make (another process's, e.g. `slurmrunner
        retry` while this one watches): its tasks are unfinished again, and their earlier
        jobs' records are not theirs any more. What this object knows is read again."""
        newest = max((r.idx for r in rows if r.task_list is not None), default=-1)
        if newest > self._newest_retry_job:
            self._newest_retry_job = newest
            self._finished = self.store.finished_indices(self.id)
            self._attempt_jobs = None

    def _retry_by_policy(self, scan_only: bool = False) -> None:
        """Retry what the admin's policy retries among the failures saved so far (all of the
        run's, the first time: a process that died before retrying them). `scan_only`: only
        that first time (a watcher's cycle before its reads); else called when a job ended,
        so that the failures of a job go again together, not one job each."""
        rules = effective_rules(self.spec.config.retry, self.spec.resources.retry)
        if not rules or self._closed:
            self._policy_todo.clear()
            return
        if scan_only and not self._policy_scan:
            return
        try:
            self._retry_failures(rules)
        except Exception:
            self._policy_scan = True  # looked at again from the store, at the next call
            raise

    def _retry_failures(self, rules: dict[str, RetryRule]) -> None:
        if self._policy_scan:
            self._policy_scan = False
            self._policy_todo = self.store.failed_results(self.id, causes=rules)
        todo, self._policy_todo = self._policy_todo, []
        named = {r.index for r in todo if r.error is not None and r.error.cause in rules}
        if not named:
            return
        # As stored: the results saved here do not carry the attempts before them.
        failed = [
            r
            for r in self.store.failed_results(self.id, named)
            if r.error is not None and r.error.cause in rules
        ]
        shapes = self._shapes(failed)
        picks, notes = by_policy(failed, rules, shapes)
        for note in notes:
            self._warn_once(f"run {self.id}: {note}")
        groups: dict[Shape, dict[int, Shape]] = defaultdict(dict)
        for i, shape in picks.items():
            groups[shape][i] = shape
        started = False
        for group in groups.values():
            try:
                self._start_retry(group, shapes)
                started = True
            except (BatchingError, ConfigError) as exc:
                # Over a bound of the admin's: these tasks stay failed, and the run says why.
                causes = sorted({str(r.error.cause) for r in failed if r.index in group if r.error})
                self._warn_once(f"{'/'.join(causes)} failures not retried: {exc}")
            except RetryConflictError as exc:
                log.info("run %s: retry by policy skipped: %s", self.id, exc)
        if started:
            self._submit_missing()
