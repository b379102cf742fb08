"""Pack N tasks into few SLURM jobs within the admin's limits. Pure.

The rules, in order:
1. A single task must fit in a job: cpus_per_task <= max_cpus_per_job and
   mem <= max_mem_per_job, else BatchingError.
2. Parallel tasks per job: as many as the *target* CPU and memory per job allow (at least 1).
3. Tasks per job: enough to spread the tasks over at most `target_num_jobs` jobs. If that would
   still make more than `max_num_jobs` jobs (only possible with explicit values) or if the run
   had to be squeezed into `max_num_jobs`, jobs grow and parallelism may rise up to the *max*
   CPU and memory per job.
4. Every job fits the partition's time limit (when the shape and the task's `time` are
   known): a job runs at most `limit // time` waves, so the number of jobs is raised until
   each job's tasks fit; when even `max_num_jobs` jobs cannot hold them at the target
   parallelism, parallelism rises up to the *max* CPU and memory per job; past that the plan
   is refused, naming the numbers (nothing is submitted).
5. At least `min_jobs` jobs (the caller's: more jobs when a job's script would be too large,
   see runspec.fit_scripts), up to `max_num_jobs`.
6. No more jobs than the partition can run at once (when its shape is known and
   `cap_jobs_to_partition` is on): extra jobs would only queue behind each other, each paying
   the scheduler's start-up. Never fewer than rules 4 and 5 need.
7. Jobs are balanced (sizes differ by at most one task) and keep input order.
8. Explicit `tasks_per_job` / `parallel_tasks_per_job` in a task's resources are honoured and
   checked against the same max limits, the time limit included (with explicit
   `tasks_per_job` alone, parallelism rises up to the max to fit it).

`time` is per task. A job runs its tasks in ceil(tasks_per_job / parallel) waves, so its
`--time` is the per-task time multiplied by the number of waves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import BatchingConfig, JobResources
from .errors import BatchingError
from .units import format_time_minutes


@dataclass(frozen=True)
class BatchPlan:
    n_tasks: int
    tasks_per_job: int
    parallel_tasks_per_job: int
    job_sizes: tuple[int, ...]
    cpus_per_job: int
    mem_per_job_mb: int | None
    time_per_job_minutes: int | None
    fitted_from: int | None = None  # jobs the limits alone asked for, when rule 6 made fewer
    # Why there are more jobs than target_num_jobs asked for: "time limit" (rule 4),
    # "script size" (rule 5); empty when there are not.
    raised_for: tuple[str, ...] = ()

    @property
    def num_jobs(self) -> int:
        return len(self.job_sizes)

    @property
    def waves(self) -> int:
        return math.ceil(self.tasks_per_job / self.parallel_tasks_per_job)

    def job_ranges(self) -> list[range]:
        """Task indices of each job, in input order."""
        ranges, start = [], 0
        for size in self.job_sizes:
            ranges.append(range(start, start + size))
            start += size
        return ranges


@dataclass(frozen=True)
class PartitionShape:
    """What a partition offers, as far as batching cares (from the scheduler, or nproc)."""

    nodes: tuple[tuple[int, int | None, int], ...]  # (CPUs, memory MB or None, node count)
    max_time_minutes: int | None = None

    def jobs_at_once(self, cpus_per_job: int, mem_per_job_mb: int | None) -> int:
        total = 0
        for cpus, mem, count in self.nodes:
            fit = cpus // cpus_per_job
            if mem is not None and mem_per_job_mb:
                fit = min(fit, mem // mem_per_job_mb)
            total += fit * count
        return total

    def to_dict(self) -> dict[str, object]:
        return {"nodes": [list(n) for n in self.nodes], "max_time_minutes": self.max_time_minutes}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> PartitionShape:
        nodes = d.get("nodes") or []
        assert isinstance(nodes, list)
        max_time = d.get("max_time_minutes")
        return cls(
            tuple((int(c), None if m is None else int(m), int(k)) for c, m, k in nodes),
            int(max_time) if isinstance(max_time, int) else None,
        )


def _fit_partition(
    num_jobs: int,
    n_tasks: int,
    parallel: int,
    res: JobResources,
    shape: PartitionShape,
    floor: int = 1,
) -> int:
    """Fewer jobs when the partition cannot run `num_jobs` of them side by side (never fewer
    than `floor`)."""
    mem = res.mem_mb
    while num_jobs > max(floor, 1):
        per_job = math.ceil(n_tasks / num_jobs)
        p = min(parallel, per_job)
        at_once = shape.jobs_at_once(p * res.cpus_per_task, p * mem if mem else None)
        if at_once < 1 or at_once >= num_jobs:
            break
        fewer = at_once
        if res.time_minutes and shape.max_time_minutes:
            max_waves = shape.max_time_minutes // res.time_minutes
            if max_waves < 1:
                break
            fewer = max(fewer, math.ceil(n_tasks / (max_waves * parallel)))
        fewer = max(fewer, floor)
        if fewer >= num_jobs:
            break
        num_jobs = fewer
    return num_jobs


def _balanced_sizes(n_tasks: int, num_jobs: int) -> tuple[int, ...]:
    base, extra = divmod(n_tasks, num_jobs)
    return tuple(base + (1 if k < extra else 0) for k in range(num_jobs))


def _max_waves(res: JobResources, partition: PartitionShape | None) -> int | None:
    """How many tasks one after another fit in a job within the partition's time limit (None:
    no limit known, or no time per task)."""
    if not (res.time_minutes and partition is not None and partition.max_time_minutes):
        return None
    waves = partition.max_time_minutes // res.time_minutes
    if waves < 1:
        raise BatchingError(
            f"time={format_time_minutes(res.time_minutes)} per task is over the partition's "
            f"time limit of {format_time_minutes(partition.max_time_minutes)}: not even one "
            "task fits in a job (give a shorter time, or use a partition with a longer limit)"
        )
    return waves


def _parallel_why(parallel: int, res: JobResources, limits: BatchingConfig, given: bool) -> str:
    if given:
        return "resources.parallel_tasks_per_job"
    why = f"max_cpus_per_job={limits.max_cpus_per_job} / cpus_per_task={res.cpus_per_task}"
    if res.mem_mb is not None:
        why += f", max_mem_per_job={limits.max_mem_per_job}MB / mem={res.mem_mb}MB"
    return why


def _too_long(
    n_tasks: int,
    res: JobResources,
    limits: BatchingConfig,
    partition: PartitionShape,
    waves: int,
    parallel: int,
    given: bool,
) -> BatchingError:
    """The refusal of a run whose jobs cannot fit the partition's time limit, with the numbers."""
    assert res.time_minutes and partition.max_time_minutes
    per_job = waves * parallel
    need = math.ceil(n_tasks / per_job)
    return BatchingError(
        f"{n_tasks} tasks of time={format_time_minutes(res.time_minutes)} do not fit the "
        f"partition's time limit of {format_time_minutes(partition.max_time_minutes)}: a job "
        f"runs at most {parallel} at once ({_parallel_why(parallel, res, limits, given)}) and "
        f"{waves} one after another, so {per_job} tasks per job; {need} jobs are needed, over "
        f"batching_config.max_num_jobs={limits.max_num_jobs}. Raise max_num_jobs or "
        "max_cpus_per_job, give a shorter time, or use a partition with a longer time limit"
    )


def plan_batches(
    n_tasks: int,
    res: JobResources,
    limits: BatchingConfig,
    partition: PartitionShape | None = None,
    min_jobs: int = 1,
) -> BatchPlan:
    """The jobs for `n_tasks` tasks (see the rules above); BatchingError, naming the limit and
    the numbers, when they cannot be planned. `min_jobs`: at least this many jobs (rule 5)."""
    if n_tasks < 1:
        raise BatchingError("nothing to run: the inputs are empty")
    cpus, mem = res.cpus_per_task, res.mem_mb
    if cpus > limits.max_cpus_per_job:
        raise BatchingError(
            f"cpus_per_task={cpus} does not fit in a job: "
            f"batching_config.max_cpus_per_job is {limits.max_cpus_per_job}"
        )
    if mem is not None and mem > limits.max_mem_per_job:
        raise BatchingError(
            f"mem={mem}MB does not fit in a job: "
            f"batching_config.max_mem_per_job is {limits.max_mem_per_job}MB"
        )
    max_waves = _max_waves(res, partition)

    max_parallel = limits.max_cpus_per_job // cpus
    target_parallel = limits.target_cpus_per_job // cpus
    if mem is not None:
        max_parallel = min(max_parallel, limits.max_mem_per_job // mem)
        target_parallel = min(target_parallel, limits.target_mem_per_job // mem)
    target_parallel = max(1, min(target_parallel, max_parallel))

    parallel = res.parallel_tasks_per_job
    if parallel is not None and parallel > max_parallel:
        raise BatchingError(
            f"parallel_tasks_per_job={parallel} needs {parallel * cpus} CPUs"
            + (f" and {parallel * mem}MB" if mem else "")
            + f" per job, over batching_config.max_cpus_per_job={limits.max_cpus_per_job}"
            + (f" / max_mem_per_job={limits.max_mem_per_job}MB" if mem else "")
        )

    if res.tasks_per_job is not None:
        return _explicit_plan(
            n_tasks, res, limits, partition, max_waves, max_parallel, target_parallel
        )

    if min_jobs > limits.max_num_jobs:
        raise BatchingError(
            f"{min_jobs} jobs are needed, over batching_config.max_num_jobs={limits.max_num_jobs}"
        )
    tasks_per_job = math.ceil(n_tasks / limits.target_num_jobs)
    if parallel is not None:
        tasks_per_job = max(tasks_per_job, min(parallel, n_tasks))
    num_jobs = math.ceil(n_tasks / tasks_per_job)
    squeezed = num_jobs > limits.max_num_jobs
    num_jobs = min(num_jobs, limits.max_num_jobs)
    ceiling = parallel or (max_parallel if squeezed else target_parallel)
    raised_for: list[str] = []

    floor = 1
    if max_waves is not None:
        assert partition is not None
        floor = math.ceil(n_tasks / (max_waves * ceiling))
        if floor > limits.max_num_jobs and parallel is None and ceiling < max_parallel:
            squeezed, ceiling = True, max_parallel  # rule 4: wider jobs before a refusal
            floor = math.ceil(n_tasks / (max_waves * ceiling))
            num_jobs = limits.max_num_jobs
        if floor > limits.max_num_jobs:
            raise _too_long(
                n_tasks, res, limits, partition, max_waves, ceiling, parallel is not None
            )
        if floor > num_jobs:
            num_jobs = floor
            raised_for.append("time limit")
    if min_jobs > num_jobs:
        num_jobs = min_jobs
        raised_for.append("script size")
    floor = min(max(floor, min_jobs), n_tasks)
    num_jobs = min(num_jobs, n_tasks)

    wanted = num_jobs
    if partition is not None and limits.cap_jobs_to_partition:
        num_jobs = _fit_partition(num_jobs, n_tasks, ceiling, res, partition, floor)
    tasks_per_job = math.ceil(n_tasks / num_jobs)
    if parallel is None:
        parallel = min(tasks_per_job, ceiling)
    parallel = min(parallel, tasks_per_job)
    plan = _plan(
        n_tasks,
        tasks_per_job,
        parallel,
        _balanced_sizes(n_tasks, num_jobs),
        res,
        fitted_from=wanted if num_jobs < wanted else None,
        raised_for=tuple(raised_for) if num_jobs > limits.target_num_jobs else (),
    )
    _check_fits(plan, partition)
    return plan


def _explicit_plan(
    n_tasks: int,
    res: JobResources,
    limits: BatchingConfig,
    partition: PartitionShape | None,
    max_waves: int | None,
    max_parallel: int,
    target_parallel: int,
) -> BatchPlan:
    """Rule 8: the task's own tasks_per_job, checked; parallelism rises to fit the time limit
    unless it was given too."""
    assert res.tasks_per_job is not None
    num_jobs = math.ceil(n_tasks / res.tasks_per_job)
    if num_jobs > limits.max_num_jobs:
        raise BatchingError(
            f"tasks_per_job={res.tasks_per_job} makes {num_jobs} jobs "
            f"for {n_tasks} tasks, over batching_config.max_num_jobs={limits.max_num_jobs}"
        )
    tasks_per_job = min(res.tasks_per_job, n_tasks)
    given = res.parallel_tasks_per_job
    parallel = min(given or target_parallel, tasks_per_job)
    if max_waves is not None and math.ceil(tasks_per_job / parallel) > max_waves:
        assert partition is not None and res.time_minutes and partition.max_time_minutes
        wider = math.ceil(tasks_per_job / max_waves)
        if given is not None or wider > max_parallel:
            p = parallel if given is not None else max_parallel
            raise BatchingError(
                f"tasks_per_job={tasks_per_job} tasks of time="
                f"{format_time_minutes(res.time_minutes)} do not fit the partition's time "
                f"limit of {format_time_minutes(partition.max_time_minutes)}: a job runs at "
                f"most {p} at once ({_parallel_why(p, res, limits, given is not None)}) and "
                f"{max_waves} one after another, so {p * max_waves} tasks per job. Give a "
                "smaller tasks_per_job (or none: the plan then fits the limit itself)"
            )
        parallel = wider
    sizes = tuple(min(tasks_per_job, n_tasks - k * tasks_per_job) for k in range(num_jobs))
    plan = _plan(n_tasks, tasks_per_job, parallel, sizes, res)
    _check_fits(plan, partition)
    return plan


def _plan(
    n_tasks: int,
    tasks_per_job: int,
    parallel: int,
    sizes: tuple[int, ...],
    res: JobResources,
    **kw: object,
) -> BatchPlan:
    waves = math.ceil(tasks_per_job / parallel)
    return BatchPlan(
        n_tasks=n_tasks,
        tasks_per_job=tasks_per_job,
        parallel_tasks_per_job=parallel,
        job_sizes=sizes,
        cpus_per_job=parallel * res.cpus_per_task,
        mem_per_job_mb=parallel * res.mem_mb if res.mem_mb is not None else None,
        time_per_job_minutes=res.time_minutes * waves if res.time_minutes else None,
        **kw,  # type: ignore[arg-type]
    )


def _check_fits(plan: BatchPlan, partition: PartitionShape | None) -> None:
    """The promise of rule 4, kept whatever the rules above did."""
    limit = partition.max_time_minutes if partition is not None else None
    if limit and plan.time_per_job_minutes and plan.time_per_job_minutes > limit:
        raise AssertionError(  # pragma: no cover - a bug in the rules above
            f"planned {plan.time_per_job_minutes} min per job over the limit {limit}"
        )
