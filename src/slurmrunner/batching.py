"""Pack N tasks into few SLURM jobs within the admin's limits. Pure.

The rules, in order:
1. A single task must fit in a job: cpus_per_task <= max_cpus_per_job and
   mem <= max_mem_per_job, else BatchingError.
2. Parallel tasks per job: as many as the *target* CPU and memory per job allow (at least 1).
3. Tasks per job: enough to spread the tasks over at most `target_num_jobs` jobs. If that would
   still make more than `max_num_jobs` jobs (only possible with explicit values) or if the run
   had to be squeezed into `max_num_jobs`, jobs grow and parallelism may rise up to the *max*
   CPU and memory per job.
4. No more jobs than the partition can run at once (when its shape is known and
   `cap_jobs_to_partition` is on): extra jobs would only queue behind each other, each paying
   the scheduler's start-up. A job still stays within the partition's time limit.
5. Jobs are balanced (sizes differ by at most one task) and keep input order.
6. Explicit `tasks_per_job` / `parallel_tasks_per_job` in a task's resources are honoured and
   checked against the same max limits.

`time` is per task. A job runs its tasks in ceil(tasks_per_job / parallel) waves, so its
`--time` is the per-task time multiplied by the number of waves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import BatchingConfig, JobResources
from .errors import BatchingError


@dataclass(frozen=True)
class BatchPlan:
    n_tasks: int
    tasks_per_job: int
    parallel_tasks_per_job: int
    job_sizes: tuple[int, ...]
    cpus_per_job: int
    mem_per_job_mb: int | None
    time_per_job_minutes: int | None
    fitted_from: int | None = None  # jobs the limits alone asked for, when rule 4 made fewer

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
    num_jobs: int, n_tasks: int, parallel: int, res: JobResources, shape: PartitionShape
) -> int:
    """Fewer jobs when the partition cannot run `num_jobs` of them side by side."""
    mem = res.mem_mb
    while num_jobs > 1:
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
        if fewer >= num_jobs:
            break
        num_jobs = fewer
    return num_jobs


def _balanced_sizes(n_tasks: int, num_jobs: int) -> tuple[int, ...]:
    base, extra = divmod(n_tasks, num_jobs)
    return tuple(base + (1 if k < extra else 0) for k in range(num_jobs))


def plan_batches(
    n_tasks: int,
    res: JobResources,
    limits: BatchingConfig,
    partition: PartitionShape | None = None,
) -> BatchPlan:
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

    tasks_per_job = res.tasks_per_job
    squeezed = False
    if tasks_per_job is None:
        tasks_per_job = math.ceil(n_tasks / limits.target_num_jobs)
        if parallel is not None:
            tasks_per_job = max(tasks_per_job, min(parallel, n_tasks))
        if math.ceil(n_tasks / tasks_per_job) > limits.max_num_jobs:
            tasks_per_job = math.ceil(n_tasks / limits.max_num_jobs)
            squeezed = True
    elif math.ceil(n_tasks / tasks_per_job) > limits.max_num_jobs:
        raise BatchingError(
            f"tasks_per_job={tasks_per_job} makes {math.ceil(n_tasks / tasks_per_job)} jobs "
            f"for {n_tasks} tasks, over batching_config.max_num_jobs={limits.max_num_jobs}"
        )
    tasks_per_job = min(tasks_per_job, n_tasks)

    num_jobs = wanted = math.ceil(n_tasks / tasks_per_job)
    if res.tasks_per_job is None and partition is not None and limits.cap_jobs_to_partition:
        ceiling = parallel or (max_parallel if squeezed else target_parallel)
        num_jobs = _fit_partition(num_jobs, n_tasks, ceiling, res, partition)
    if res.tasks_per_job is None:
        tasks_per_job = math.ceil(n_tasks / num_jobs)
    if parallel is None:
        parallel = min(tasks_per_job, max_parallel if squeezed else target_parallel)
    parallel = min(parallel, tasks_per_job)

    waves = math.ceil(tasks_per_job / parallel)
    return BatchPlan(
        n_tasks=n_tasks,
        tasks_per_job=tasks_per_job,
        parallel_tasks_per_job=parallel,
        job_sizes=_balanced_sizes(n_tasks, num_jobs)
        if res.tasks_per_job is None
        else tuple(min(tasks_per_job, n_tasks - k * tasks_per_job) for k in range(num_jobs)),
        cpus_per_job=parallel * cpus,
        mem_per_job_mb=parallel * mem if mem is not None else None,
        time_per_job_minutes=res.time_minutes * waves if res.time_minutes else None,
        fitted_from=wanted if num_jobs < wanted else None,
    )
