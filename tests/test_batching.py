"""plan_batches: tasks per job, parallelism, limits, time and memory per job."""

from __future__ import annotations

import itertools
import math

import pytest

from slurmrunner.batching import PartitionShape, plan_batches
from slurmrunner.config import BatchingConfig, merge_resources, parse_config, parse_resources
from slurmrunner.errors import BatchingError, ConfigError


def resources(slurm=None, task=None, batching=None):
    cfg = parse_config({"default_slurm_config": slurm or {}, "batching_config": batching or {}})
    return merge_resources(cfg, parse_resources(task or {})), cfg.batching_config


def plan(n, slurm=None, task=None, **batching):
    res, limits = resources(slurm, task, batching)
    return plan_batches(n, res, limits)


def check_cover(p, n):
    """Every index exactly once, in input order, contiguous jobs."""
    indices = [i for rng in p.job_ranges() for i in rng]
    assert indices == list(range(n))
    assert [len(r) for r in p.job_ranges()] == list(p.job_sizes)
    assert sum(p.job_sizes) == n


def test_20_tasks_max_4_jobs():
    p = plan(20, max_num_jobs=4, target_num_jobs=4)
    assert p.num_jobs == 4
    assert p.job_sizes == (5, 5, 5, 5)
    assert p.tasks_per_job == 5
    check_cover(p, 20)


def test_20_tasks_squeezed_by_max_num_jobs_alone():
    # only max_num_jobs set: the default target (10 jobs) is read as capped by it
    p = plan(20, max_num_jobs=4)
    assert p.num_jobs == 4 and p.job_sizes == (5, 5, 5, 5)
    check_cover(p, 20)


def test_100_tasks_target_10_jobs():
    p = plan(100, target_num_jobs=10, max_num_jobs=50)
    assert p.num_jobs == 10
    assert p.job_sizes == (10,) * 10
    check_cover(p, 100)


def test_fewer_tasks_than_target_jobs():
    p = plan(3, target_num_jobs=10)
    assert p.job_sizes == (1, 1, 1)
    assert p.parallel_tasks_per_job == 1


def test_balanced_in_order_property():
    combos = itertools.product(
        [1, 2, 3, 5, 7, 10, 11, 19, 20, 23, 64, 99, 100, 101, 257, 1000],  # n
        [1, 2, 3, 4, 7, 10],  # target_num_jobs
        [0, 1, 5, 40],  # max_num_jobs above the target
        [1, 2, 4],  # cpus_per_task
    )
    checked = 0
    for n, target, extra, cpus in combos:
        batching = {
            "target_num_jobs": target,
            "max_num_jobs": target + extra,
            "target_cpus_per_job": 4,
            "max_cpus_per_job": 8,
        }
        p = plan(n, slurm={"cpus_per_task": cpus}, **batching)
        check_cover(p, n)
        assert max(p.job_sizes) - min(p.job_sizes) <= 1, (n, batching, p)
        assert p.num_jobs <= target, (n, batching, p)  # within the target when possible
        assert p.tasks_per_job == max(p.job_sizes)
        assert 1 <= p.parallel_tasks_per_job <= p.tasks_per_job
        assert p.cpus_per_job == p.parallel_tasks_per_job * cpus <= 8
        checked += 1
    assert checked > 1000


def test_never_more_than_max_num_jobs_property():
    for n, cap in itertools.product(range(1, 120, 7), [1, 2, 3, 5, 9]):
        res, _ = resources()
        limits = BatchingConfig(target_num_jobs=cap, max_num_jobs=cap)
        p = plan_batches(n, res, limits)
        assert p.num_jobs <= cap
        assert p.num_jobs == math.ceil(n / math.ceil(n / cap))  # as few tasks per job as fit
        check_cover(p, n)


def test_parallel_from_target_cpus():
    p = plan(
        40,
        slurm={"cpus_per_task": 2},
        target_num_jobs=4,
        target_cpus_per_job=8,
        max_cpus_per_job=16,
    )
    assert p.tasks_per_job == 10
    assert p.parallel_tasks_per_job == 4  # 8 target cpus / 2
    assert p.cpus_per_job == 8


def test_parallel_from_target_mem():
    p = plan(
        40,
        slurm={"cpus_per_task": 1, "mem": "1G"},
        target_num_jobs=4,
        target_cpus_per_job=8,
        max_cpus_per_job=16,
        target_mem_per_job="3G",
        max_mem_per_job="16G",
    )
    assert p.parallel_tasks_per_job == 3  # memory is the tighter target
    assert p.mem_per_job_mb == 3 * 1024


def test_parallel_rises_toward_max_only_when_squeezed():
    cpus = {"target_cpus_per_job": 2, "max_cpus_per_job": 8}
    relaxed = plan(40, target_num_jobs=4, max_num_jobs=10, **cpus)
    assert relaxed.num_jobs == 4 and relaxed.tasks_per_job == 10
    assert relaxed.parallel_tasks_per_job == 2  # the target, though the max would allow 8

    # the default target_num_jobs (10) is over max_num_jobs: the run is squeezed into 4 jobs,
    # so parallelism rises up to the max
    squeezed = plan(40, max_num_jobs=4, **cpus)
    assert squeezed.num_jobs == 4 and squeezed.tasks_per_job == 10
    assert squeezed.parallel_tasks_per_job == 8
    assert squeezed.cpus_per_job == 8

    # ... but never over what the max memory per job allows
    mem = {"target_mem_per_job": "1G", "max_mem_per_job": "3G"}
    capped = plan(40, slurm={"mem": "1G"}, max_num_jobs=4, **cpus, **mem)
    assert capped.parallel_tasks_per_job == 3
    assert capped.mem_per_job_mb == 3 * 1024

    # ... and an explicit parallel value is never raised
    explicit = plan(40, task={"parallel_tasks_per_job": 1}, max_num_jobs=4, **cpus)
    assert explicit.num_jobs == 4 and explicit.parallel_tasks_per_job == 1


def test_target_over_max_refused_only_when_set():
    with pytest.raises(ConfigError, match="target_num_jobs"):
        parse_config({"batching_config": {"target_num_jobs": 5, "max_num_jobs": 4}})
    assert parse_config({"batching_config": {"max_num_jobs": 4}}).batching_config.max_num_jobs == 4
    assert parse_config({"batching_config": {"max_mem_per_job": "1G"}})


def test_parallel_never_over_tasks_per_job():
    p = plan(2, target_num_jobs=1, max_num_jobs=1, target_cpus_per_job=8, max_cpus_per_job=8)
    assert p.tasks_per_job == 2 and p.parallel_tasks_per_job == 2


def test_task_over_max_cpus_refused():
    with pytest.raises(BatchingError) as info:
        plan(4, slurm={"cpus_per_task": 5}, max_cpus_per_job=4)
    assert "max_cpus_per_job" in str(info.value) and "cpus_per_task" in str(info.value)


def test_task_over_max_mem_refused():
    with pytest.raises(BatchingError) as info:
        plan(4, slurm={"mem": "17G"}, max_mem_per_job="16G")
    assert "max_mem_per_job" in str(info.value) and "mem" in str(info.value)


def test_task_between_target_and_max_runs_alone():
    p = plan(6, slurm={"cpus_per_task": 3, "mem": "6G"}, max_cpus_per_job=4)
    assert p.parallel_tasks_per_job == 1
    assert p.cpus_per_job == 3 and p.mem_per_job_mb == 6144


def test_empty_inputs_refused():
    with pytest.raises(BatchingError, match="empty"):
        plan(0)


def test_explicit_tasks_per_job_honoured():
    p = plan(10, task={"tasks_per_job": 4}, max_num_jobs=5)
    assert p.tasks_per_job == 4
    assert p.job_sizes == (4, 4, 2)
    check_cover(p, 10)


def test_explicit_tasks_per_job_over_max_num_jobs_refused():
    with pytest.raises(BatchingError) as info:
        plan(100, task={"tasks_per_job": 2}, target_num_jobs=5, max_num_jobs=10)
    msg = str(info.value)
    assert "tasks_per_job=2" in msg and "max_num_jobs" in msg


def test_explicit_parallel_honoured():
    p = plan(
        12,
        task={"parallel_tasks_per_job": 3},
        target_num_jobs=2,
        target_cpus_per_job=1,
        max_cpus_per_job=4,
    )
    assert p.parallel_tasks_per_job == 3
    assert p.cpus_per_job == 3
    assert p.tasks_per_job == 6


def test_explicit_parallel_over_max_cpus_refused():
    with pytest.raises(BatchingError) as info:
        plan(12, slurm={"cpus_per_task": 2}, task={"parallel_tasks_per_job": 3}, max_cpus_per_job=4)
    msg = str(info.value)
    assert "parallel_tasks_per_job=3" in msg and "max_cpus_per_job" in msg


def test_explicit_parallel_over_max_mem_refused():
    with pytest.raises(BatchingError) as info:
        plan(
            12,
            slurm={"mem": "4G"},
            task={"parallel_tasks_per_job": 5},
            max_cpus_per_job=8,
            max_mem_per_job="16G",
        )
    assert "parallel_tasks_per_job=5" in str(info.value)
    assert "max_mem_per_job" in str(info.value)


def test_explicit_both_honoured():
    p = plan(9, task={"tasks_per_job": 3, "parallel_tasks_per_job": 2}, max_cpus_per_job=2)
    assert (p.tasks_per_job, p.parallel_tasks_per_job, p.job_sizes) == (3, 2, (3, 3, 3))
    assert p.waves == 2


@pytest.mark.parametrize(
    ("tasks_per_job", "parallel", "waves"), [(10, 2, 5), (10, 4, 3), (8, 8, 1), (10, 3, 4)]
)
def test_time_scaled_by_waves(tasks_per_job, parallel, waves):
    p = plan(
        40,
        slurm={"time": "00:15:00"},
        task={"tasks_per_job": tasks_per_job, "parallel_tasks_per_job": parallel},
        max_cpus_per_job=8,
    )
    assert p.waves == waves
    assert p.time_per_job_minutes == 15 * waves


def test_time_scaled_by_waves_of_automatic_plan():
    p = plan(100, slurm={"time": "1:00:00"}, target_num_jobs=10, target_cpus_per_job=2)
    assert (p.tasks_per_job, p.parallel_tasks_per_job) == (10, 2)
    assert p.time_per_job_minutes == 60 * 5


def test_no_time_means_no_time():
    assert plan(10).time_per_job_minutes is None


def test_mem_per_job_is_parallel_times_mem():
    p = plan(
        20,
        slurm={"mem": "500M"},
        target_num_jobs=2,
        target_cpus_per_job=4,
        max_cpus_per_job=4,
    )
    assert p.parallel_tasks_per_job == 4
    assert p.mem_per_job_mb == 4 * 500


def test_no_mem_means_no_mem():
    assert plan(10).mem_per_job_mb is None


# --- rule 4: no more jobs than the partition runs at once

LIMITS = dict(
    target_num_jobs=4,
    max_num_jobs=50,
    target_cpus_per_job=2,
    max_cpus_per_job=2,
    target_mem_per_job=1000,
    max_mem_per_job=2000,
)
ONE_TASK = {"cpus_per_task": 1, "mem": "100M"}


def fitted(n, shape, slurm=ONE_TASK, task=None, **batching):
    res, limits = resources(slurm, task, {**LIMITS, **batching})
    return plan_batches(n, res, limits, shape)


def node(cpus, mem=18079, count=1):
    return (cpus, mem, count)


def test_one_two_cpu_node_runs_the_whole_run_as_one_job():
    p = fitted(1000, PartitionShape((node(2),)))
    assert (p.num_jobs, p.parallel_tasks_per_job, p.fitted_from) == (1, 2, 4)
    check_cover(p, 1000)


def test_a_partition_that_fits_every_job_changes_nothing():
    unfitted = fitted(1000, None)
    p = fitted(1000, PartitionShape((node(2, count=8),)))
    assert p == unfitted
    assert p.num_jobs == 4 and p.fitted_from is None


def test_jobs_at_once_counts_cpus_and_memory_of_every_node_kind():
    shape = PartitionShape((node(4), node(64, mem=400), node(1, count=10)))
    # 2-CPU 200 MB jobs: 2 on the 4-CPU node, 2 on the 400 MB node, none on 1-CPU nodes
    assert shape.jobs_at_once(2, 200) == 4
    assert shape.jobs_at_once(1, None) == 4 + 64 + 10
    p = fitted(1000, PartitionShape((node(4), node(1, count=10))))
    assert (p.num_jobs, p.fitted_from) == (2, 4)  # two 2-CPU jobs fit on the 4-CPU node


def test_memory_bound_node():
    p = fitted(1000, PartitionShape((node(64, mem=400),)))
    assert p.num_jobs == 2 and p.fitted_from == 4


def test_few_tasks_converge_to_what_fits():
    # 4 one-task jobs of 1 CPU would fit 2 at once; 2 jobs of 2 tasks run 2 at a time, so 1
    p = fitted(4, PartitionShape((node(2),)))
    assert (p.num_jobs, p.parallel_tasks_per_job) == (1, 2)
    check_cover(p, 4)


def test_the_partition_time_limit_keeps_jobs_apart():
    # 1 min per task, 2 at a time, 200 min at most per job: 400 tasks per job at most
    p = fitted(
        1000, PartitionShape((node(2),), max_time_minutes=200), slurm={**ONE_TASK, "time": "1"}
    )
    assert p.num_jobs == 3 and p.time_per_job_minutes <= 200
    # a plan that cannot fit within max_num_jobs is refused, naming the numbers
    with pytest.raises(BatchingError) as exc:
        fitted(
            1000,
            PartitionShape((node(2),), max_time_minutes=60),
            slurm={**ONE_TASK, "time": "10"},
        )
    msg = str(exc.value)
    for part in ("1000 tasks", "time=00:10:00", "01:00:00", "2 at once", "6 one after another"):
        assert part in msg
    assert "84 jobs are needed" in msg and "max_num_jobs=50" in msg


def test_the_admin_can_turn_the_fitting_off():
    p = fitted(1000, PartitionShape((node(2),)), cap_jobs_to_partition=False)
    assert p.num_jobs == 4


def test_explicit_tasks_per_job_is_not_refitted():
    p = fitted(1000, PartitionShape((node(2),)), task={"tasks_per_job": 100})
    assert p.num_jobs == 10


def test_a_job_larger_than_every_node_is_left_to_the_scheduler():
    p = fitted(1000, PartitionShape((node(1, count=8),)))
    assert p.num_jobs == 4  # 2-CPU jobs fit nowhere: sbatch will say so


def test_squeezed_runs_only_get_fewer_jobs():
    p = fitted(5000, PartitionShape((node(2, count=3),)), max_num_jobs=10, target_num_jobs=10)
    assert p.num_jobs == 3 and p.parallel_tasks_per_job == 2


def test_shape_round_trips_through_the_store():
    shape = PartitionShape((node(2), (4, None, 3)), max_time_minutes=60)
    assert PartitionShape.from_dict(shape.to_dict()) == shape
