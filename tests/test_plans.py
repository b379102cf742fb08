"""Plans that fit the cluster at any size (issue 13): the partition's time limit, the script
size split and its compressed payload, `render` planning as `run` does, and pending reasons that
never clear."""

from __future__ import annotations

import base64
import json
import math
import os
import sys
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from slurmrunner import payload, settling
from slurmrunner.batching import PartitionShape, plan_batches
from slurmrunner.config import merge_resources, parse_config, parse_resources
from slurmrunner.errors import BatchingError, ConfigError
from slurmrunner.jobstate import JobState, pending_verdict
from slurmrunner.local_jobs import LocalScheduler
from slurmrunner.profiles import Profile
from slurmrunner.reading import MAX_WARNINGS
from slurmrunner.runner import Runner, worker_source
from slurmrunner.runspec import (
    MAX_PAYLOAD_JSON_BYTES,
    RunSpec,
    payload_json_bytes,
    payload_json_limit,
)
from slurmrunner.script import render_script
from slurmrunner.slurm import parse_sinfo
from slurmrunner.store import Store
from slurmrunner.units import parse_time_minutes
from tests.fake_slurm import fake_run
from tests.helpers_cli import cli, flat, write_inputs, write_json

TWO_DAYS = 2 * 24 * 60


@pytest.fixture(autouse=True)
def _own_state(tmp_path, monkeypatch):
    """The local queue and store of these tests live in their own folder."""
    monkeypatch.setenv("SLURMRUNNER_LOCAL_QUEUE", str(tmp_path / "local-queue.sqlite"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def limits_and_res(slurm=None, task=None, **batching):
    cfg = parse_config({"default_slurm_config": slurm or {}, "batching_config": batching})
    return merge_resources(cfg, parse_resources(task or {})), cfg.batching_config


def shape(max_time=None, cpus=64, count=100):
    return PartitionShape(((cpus, 256000, count),), max_time)


def check_plan(p, n, max_time, max_num_jobs):
    assert sum(p.job_sizes) == n and all(size >= 1 for size in p.job_sizes)
    assert p.num_jobs <= max_num_jobs
    assert max(p.job_sizes) <= p.tasks_per_job
    if max_time and p.time_per_job_minutes:
        assert p.time_per_job_minutes <= max_time


# --- the partition's time limit ------------------------------------------------------------


def test_100000_tasks_of_10_minutes_fit_a_2_day_partition():
    """Must show (issue 13): every job of the plan fits the limit."""
    res, limits = limits_and_res(
        {"time": "00:10:00", "cpus_per_task": 1, "mem": "1G"},
        max_num_jobs=500,
        target_num_jobs=10,
        max_cpus_per_job=4,
        max_mem_per_job="16G",
    )
    p = plan_batches(100_000, res, limits, shape(TWO_DAYS))
    check_plan(p, 100_000, TWO_DAYS, 500)
    # 288 waves of 10 minutes fit in 2 days; one task at a time (the target): 348 jobs
    assert p.num_jobs == math.ceil(100_000 / 288) == 348
    assert p.time_per_job_minutes == 2880 and "time limit" in p.raised_for
    # without the limit the same run is 10 jobs of 10,000 tasks (~69 days each)
    assert plan_batches(100_000, res, limits, shape(None)).num_jobs == 10


def test_a_max_time_with_seconds_is_a_bound_rounded_down():
    """sinfo may say MaxTime with seconds: 2-00:00:30 allows 2880 whole minutes, not 2881."""
    sinfo = "short|64|256000|100|idle|2-00:00:30\nsub|64|256000|1|idle|00:00:30\n"
    part = parse_sinfo(sinfo, "short")
    assert part is not None and part.max_time_minutes == TWO_DAYS
    assert parse_sinfo(sinfo, "sub").max_time_minutes == 1  # the least a job can ask for
    # a task's time still rounds up: asking for less would cut it short
    assert parse_time_minutes("2-00:00:30") == TWO_DAYS + 1
    assert parse_time_minutes("2-00:00:30", round_up=False) == TWO_DAYS
    res, limits = limits_and_res({"time": "1"}, target_num_jobs=1, max_cpus_per_job=1)
    p = plan_batches(2 * 2881, res, limits, part)
    # 2 jobs of 2881 minutes each before, over the partition's limit
    assert p.num_jobs == 3 and p.time_per_job_minutes == 1921


def test_100000_tasks_go_wider_before_being_refused():
    # 50 jobs at 1 task at a time cannot hold them; 4 at a time (max_cpus_per_job) can
    res, limits = limits_and_res(
        {"time": "00:10:00", "cpus_per_task": 1}, max_num_jobs=100, max_cpus_per_job=4
    )
    p = plan_batches(100_000, res, limits, shape(TWO_DAYS))
    check_plan(p, 100_000, TWO_DAYS, 100)
    assert p.parallel_tasks_per_job == 4


def test_a_plan_that_cannot_fit_is_refused_naming_the_numbers():
    """Must show (issue 13): the default limits (50 jobs, 2 CPUs per job) cannot hold them."""
    res, limits = limits_and_res({"time": "00:10:00", "cpus_per_task": 1})
    with pytest.raises(BatchingError) as exc:
        plan_batches(100_000, res, limits, shape(TWO_DAYS))
    msg = str(exc.value)
    for part in (
        "100000 tasks",  # tasks
        "time=00:10:00",  # time per task
        "2 at once",  # parallel per job
        "288 one after another",
        "576 tasks per job",
        "174 jobs are needed",  # jobs needed ...
        "max_num_jobs=50",  # ... against max_num_jobs
        "time limit of 2-00:00:00",  # the partition's limit
    ):
        assert part in msg, (part, msg)


def test_one_task_longer_than_the_partition_is_refused():
    res, limits = limits_and_res({"time": "3-00:00:00"})
    with pytest.raises(BatchingError, match=r"time=3-00:00:00 per task is over .*2-00:00:00"):
        plan_batches(10, res, limits, shape(TWO_DAYS))


def test_explicit_tasks_per_job_goes_wider_to_fit_or_is_refused():
    res, limits = limits_and_res({"time": "60"}, max_cpus_per_job=4, task={"tasks_per_job": 8})
    p = plan_batches(16, res, limits, shape(240))  # 8 tasks, 4 waves: 2 at a time
    assert (p.num_jobs, p.parallel_tasks_per_job, p.time_per_job_minutes) == (2, 2, 240)
    res, limits = limits_and_res(
        {"time": "60"}, max_cpus_per_job=4, task={"tasks_per_job": 8, "parallel_tasks_per_job": 1}
    )
    with pytest.raises(BatchingError, match=r"tasks_per_job=8 .* 4 tasks per job"):
        plan_batches(16, res, limits, shape(240))


def test_explicit_parallel_is_kept_and_jobs_raised():
    res, limits = limits_and_res({"time": "60"}, task={"parallel_tasks_per_job": 1})
    p = plan_batches(100, res, limits, shape(600))
    check_plan(p, 100, 600, 50)
    assert p.parallel_tasks_per_job == 1 and p.num_jobs == 10


def test_partition_fitting_never_breaks_the_time_limit():
    # a small partition asks for fewer jobs; the time limit keeps enough of them
    res, limits = limits_and_res({"time": "10", "cpus_per_task": 1, "mem": "100M"})
    p = plan_batches(1000, res, limits, PartitionShape(((2, 4000, 1),), 1000))
    check_plan(p, 1000, 1000, 50)
    assert p.num_jobs == 10 and p.time_per_job_minutes == 1000  # 100 waves, 1 at a time
    # without the limit, the node (2 jobs at once) would have made it 2 jobs
    assert plan_batches(1000, res, limits, PartitionShape(((2, 4000, 1),))).num_jobs == 2


def test_min_jobs_raises_the_number_of_jobs():
    res, limits = limits_and_res({}, target_num_jobs=2, max_num_jobs=20)
    p = plan_batches(100, res, limits, None, min_jobs=7)
    assert p.num_jobs == 7 and p.raised_for == ("script size",)
    assert plan_batches(3, res, limits, None, min_jobs=7).num_jobs == 3
    with pytest.raises(BatchingError, match=r"21 jobs are needed, over .*max_num_jobs=20"):
        plan_batches(100, res, limits, None, min_jobs=21)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    n=st.integers(1, 200_000),
    time=st.integers(1, 3000),
    max_time=st.one_of(st.none(), st.integers(1, 10_000)),
    target_jobs=st.integers(1, 60),
    max_jobs=st.integers(1, 600),
    cpus=st.integers(1, 4),
    target_cpus=st.integers(1, 8),
    max_cpus=st.integers(1, 16),
    tasks_per_job=st.one_of(st.none(), st.integers(1, 5000)),
    parallel=st.one_of(st.none(), st.integers(1, 8)),
    min_jobs=st.integers(1, 50),
    nodes=st.one_of(st.none(), st.tuples(st.integers(1, 64), st.integers(1, 50))),
    cap=st.booleans(),
)
def test_every_plan_fits_or_is_refused(
    n, time, max_time, target_jobs, max_jobs, cpus, target_cpus, max_cpus, tasks_per_job,
    parallel, min_jobs, nodes, cap,
):  # fmt: skip
    assume(target_jobs <= max_jobs and target_cpus <= max_cpus and cpus <= max_cpus)
    task = {}
    if tasks_per_job is not None:
        task["tasks_per_job"] = tasks_per_job
    if parallel is not None:
        task["parallel_tasks_per_job"] = parallel
    res, limits = limits_and_res(
        {"time": str(time), "cpus_per_task": cpus},
        task=task,
        target_num_jobs=target_jobs,
        max_num_jobs=max_jobs,
        target_cpus_per_job=target_cpus,
        max_cpus_per_job=max_cpus,
        cap_jobs_to_partition=cap,
    )
    part = None
    if nodes is not None or max_time is not None:
        node_cpus, count = nodes or (64, 10)
        part = PartitionShape(((node_cpus, None, count),), max_time)
    try:
        p = plan_batches(n, res, limits, part, min_jobs)
    except BatchingError:
        # refused only when no plan can do it: check the automatic case's arithmetic
        if tasks_per_job is None and parallel is None and min_jobs <= max_jobs:
            max_parallel = max_cpus // cpus
            assert max_time is not None
            waves = max_time // time
            assert waves < 1 or n > max_jobs * max_parallel * waves
        return
    check_plan(p, n, max_time, max_jobs)
    if tasks_per_job is None:
        assert p.num_jobs >= min(min_jobs, n)
    assert p.parallel_tasks_per_job * cpus <= max_cpus
    if parallel is not None:
        assert p.parallel_tasks_per_job == min(parallel, p.tasks_per_job)


# --- refused before anything is submitted -------------------------------------------------


@pytest.fixture
def two_day_partition(monkeypatch):
    """The local scheduler reports a 2-day partition (as sinfo would on a cluster)."""
    seen = []

    def partition_shape(self, partition):
        seen.append(partition)
        return PartitionShape(((2, None, 1),), TWO_DAYS)

    monkeypatch.setattr(LocalScheduler, "partition_shape", partition_shape)
    return seen


def test_refused_before_any_sbatch(tmp_path, two_day_partition, monkeypatch):
    submitted = []
    monkeypatch.setattr(LocalScheduler, "submit", lambda self, script: submitted.append(script))
    cfg = parse_config({"default_slurm_config": {"time": "00:10:00"}})
    store = Store(tmp_path / "store.sqlite")
    runner = Runner(cfg, Profile(backend="local", project_dir=str(tmp_path / "proj")), store)
    with pytest.raises(BatchingError, match=r"174 jobs are needed, over .*max_num_jobs=50"):
        runner.submit(["true"], [{}] * 100_000)
    assert two_day_partition  # the partition was asked
    assert submitted == [] and store.runs() == []
    assert not (tmp_path / "proj").exists()


def test_render_plans_as_run_does(tmp_path, two_day_partition):
    cfg = parse_config(
        {
            "default_slurm_config": {"time": "01:00:00"},
            "batching_config": {"target_num_jobs": 1, "max_cpus_per_job": 1},
        }
    )
    runner = Runner(cfg, Profile(backend="local", project_dir=str(tmp_path)), Store(":memory:"))
    inputs = [{"x": i} for i in range(100)]
    assert len(runner.render(["true"], inputs)) == 1  # the partition not asked: 100 hours
    jobs = runner.plan(["true"], inputs, ask_partition=True)
    # 48 one-hour tasks fit in 2 days: 3 jobs of 34, 33, 33 tasks, 34 hours each
    assert [len(j.tasks) for j in jobs] == [34, 33, 33]
    assert {j.plan.time_per_job_minutes for j in jobs} == {34 * 60}
    scripts = runner.render(["true"], inputs, ask_partition=True)
    assert all("#SBATCH --time=1-10:00:00" in s for s in scripts)


def test_render_command_asks_the_cluster_when_told(tmp_path, two_day_partition, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    config = write_json(
        tmp_path / "c.json",
        {
            "default_slurm_config": {"time": "00:10:00"},
            "batching_config": {"max_num_jobs": 500},
        },
    )
    profile = write_json(tmp_path / "p.json", {"backend": "local", "project_dir": str(tmp_path)})
    inputs = write_inputs(tmp_path / "in.jsonl", [{}] * 1000)
    args = ("render", "-c", config, "-p", profile, "-i", inputs)
    assert cli(*args, "--", "true").stdout.count("# ===== job ") == 10
    assert two_day_partition == []  # not asked
    result = cli(*args, "--ask-cluster", "--", "true")
    assert result.exit_code == 0, result.output
    assert two_day_partition  # asked: 1000 tasks of 10 min, 1 at a time, 288 per job
    assert result.stdout.count("# ===== job ") == 4
    assert result.stdout.count("#SBATCH --time=1-17:40:00") == 4  # 250 tasks each
    # a plan that cannot fit: refused with the numbers, exit 2
    config.write_text(json.dumps({"default_slurm_config": {"time": "00:10:00"}}))
    inputs = write_inputs(tmp_path / "in.jsonl", [{}] * 30_000)
    result = cli(*args, "--ask-cluster", "--", "true")
    assert result.exit_code == 2
    assert "53 jobs are needed, over batching_config.max_num_jobs=50" in flat(result.stderr)


# --- the script-size split and the compressed payload -------------------------------------


def random_text(n):
    return base64.b64encode(os.urandom(n * 3 // 4 + 3)).decode()[:n]


def runner_with(tmp_path, **config):
    cfg = parse_config(config)
    return Runner(cfg, Profile(backend="local", project_dir=str(tmp_path)), Store(":memory:"))


def test_oversize_scripts_are_split(tmp_path):
    runner = runner_with(
        tmp_path, max_script_bytes=64 * 1024, batching_config={"target_num_jobs": 1}
    )
    inputs = [{"blob": random_text(500)} for _ in range(1000)]  # ~0.5 MB, incompressible
    scripts = runner.render(["true"], inputs)
    assert 8 <= len(scripts) <= 50
    assert all(len(s.encode()) <= 64 * 1024 for s in scripts)
    payloads = [json.loads(payload.read_payload_line(_line(s))) for s in scripts]
    assert [t["i"] for p in payloads for t in p["tasks"]] == list(range(1000))


def test_a_split_that_needs_more_than_max_num_jobs_is_refused(tmp_path):
    runner = runner_with(tmp_path, max_script_bytes=64 * 1024, batching_config={"max_num_jobs": 4})
    inputs = [{"blob": random_text(500)} for _ in range(1000)]
    with pytest.raises(BatchingError, match=r"over max_script_bytes=65536.*max_num_jobs=4"):
        runner.render(["true"], inputs)


def test_one_input_too_large_alone_is_refused(tmp_path):
    runner = runner_with(tmp_path, max_script_bytes=64 * 1024)
    inputs = [{"x": 1}, {"blob": random_text(70 * 1024)}]
    with pytest.raises(ConfigError, match=r"inputs\[1\] alone makes a job script"):
        runner.render(["true"], inputs)


def test_the_split_is_stored_with_the_run(tmp_path):
    runner = runner_with(
        tmp_path, max_script_bytes=64 * 1024, batching_config={"target_num_jobs": 1}
    )
    inputs = [{"blob": random_text(500)} for _ in range(300)]
    spec = RunSpec.new(runner.config, runner.profile, ["true"], None, "fractal", None, "R")
    fitted = spec.fit_scripts(list(enumerate(inputs)))
    assert fitted.min_jobs > 1
    again = RunSpec.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert again.plan == fitted.plan  # another process rebuilds the same jobs
    assert RunSpec.from_dict({**fitted.to_dict(), "min_jobs": None}).min_jobs == 1  # older runs


def test_the_scripts_rendered_while_planning_are_the_ones_the_store_gives(tmp_path):
    """The first submission sends the scripts fit_scripts rendered (no second render, no read
    of the inputs back): they must be what the stored run renders, which a retry or another
    process taking the run over submits."""
    runner = runner_with(
        tmp_path, max_script_bytes=64 * 1024, batching_config={"target_num_jobs": 1}
    )
    inputs = [{"t": (i, "é\u2028"), "k": [1.5, None], "blob": random_text(300)} for i in range(400)]
    run = runner.prepare(["true"], inputs)
    ready = dict(run._ready_scripts)
    assert len(ready) == len(run.store.jobs(run.id)) > 1  # split by size: several jobs
    for row in run.store.jobs(run.id):
        args = run.store.task_args(run.id, row.task_range)
        job = run.spec.job(row.idx, list(zip(row.tasks, args, strict=True)), run.spec.plan)
        assert ready[row.idx] == render_script(job, worker_source())


@pytest.mark.parametrize("value", [{1: 1, "a": 2}, {2: "a", 10: "b"}, {True: 1, 2: 3}, (1, [2])])
def test_inputs_are_taken_as_json_gives_them_back(tmp_path, value):
    """Keys that are not strings sort one way in memory and another once stored (as text):
    the first submission and a later render (a retry, another process) would differ."""
    run = runner_with(tmp_path).prepare(["true"], [value])
    (row,) = run.store.jobs(run.id)
    args = run.store.task_args(run.id, row.task_range)
    assert args == [json.loads(json.dumps(value))]
    job = run.spec.job(row.idx, list(zip(row.tasks, args, strict=True)), run.spec.plan)
    assert run._ready_scripts[0] == render_script(job, worker_source())


def test_an_input_that_is_not_json_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"inputs\[1\]: not JSON"):
        runner_with(tmp_path).prepare(["true"], [{}, {"a": {1, 2}}])


def test_w5_100000_inputs_of_500_bytes_need_no_tasks_per_job(tmp_path):
    """W5's shape (issue 13): split by script size alone, every script under 4 MB."""
    runner = runner_with(tmp_path)
    inputs = [
        {"path": f"/data/plate_{i // 1000}.zarr/B/{i % 96:02d}/0", "blob": random_text(470)}
        for i in range(100_000)
    ]
    assert all(len(json.dumps(x)) >= 500 for x in inputs[:10])
    jobs = runner.plan(["true"], inputs)
    source = worker_source()
    sizes = [len(render_script(job, source).encode()) for job in jobs]
    assert max(sizes) <= 4 * 1024 * 1024 and len(jobs) <= 50
    assert sum(len(j.tasks) for j in jobs) == 100_000
    # ~55 MB of JSON that does not compress: the script size sets it (14 jobs of ~3.8 MB)
    assert len(jobs) == 14
    assert max(payload_json_bytes(job) for job in jobs) <= MAX_PAYLOAD_JSON_BYTES


def fractal_like(n):
    """Inputs as a workflow makes them (~500 bytes of JSON each, compressing ~20x)."""
    return [
        {
            "zarr_url": f"/data/project/plate_{i // 1000}.zarr/B/{i % 96:02d}/0",
            "well": f"B{i % 96:02d}",
            "origin": f"/data/project/raw/plate_{i // 1000}/B{i % 96:02d}_T0001F001L01.tif",
            "channels": [
                {"label": f"DAPI_{c}", "wavelength_id": f"A0{c}_C0{c}", "start": 0, "end": 65535}
                for c in range(5)
            ],
        }
        for i in range(n)
    ]


def test_compressed_payloads_stay_within_the_json_a_job_may_parse(tmp_path):
    """A 4 MB script can carry ~90 MB of compressible JSON, which the worker parses at job
    start within the job's memory: jobs are split by the JSON's size too."""
    runner = runner_with(tmp_path, batching_config={"target_num_jobs": 1})
    inputs = fractal_like(100_000)
    assert 450 <= len(json.dumps(inputs[0])) <= 550
    jobs = runner.plan(["true"], inputs)
    sizes = [payload_json_bytes(job) for job in jobs]
    # ~50 MB of JSON: one script of ~2.5 MB would carry it all; 16 MB per job makes 4 jobs
    assert sum(sizes) > 45_000_000
    assert max(sizes) <= MAX_PAYLOAD_JSON_BYTES and len(jobs) == 4
    scripts = [render_script(job, worker_source()) for job in jobs]
    assert all(payload.is_compressed(_line(s)) for s in scripts)
    assert [t["i"] for s in scripts for t in json.loads(payload.read_payload_line(_line(s)))[
        "tasks"
    ]] == list(range(100_000))  # fmt: skip


def test_a_small_jobs_memory_bounds_its_payload(tmp_path):
    # 64 MB per task, one at a time: 2 MB of JSON per job (1/32 of it)
    runner = runner_with(
        tmp_path, default_slurm_config={"mem": "64M"}, batching_config={"target_num_jobs": 1}
    )
    inputs = fractal_like(20_000)  # ~10 MB of JSON
    jobs = runner.plan(["true"], inputs)
    assert jobs[0].plan.mem_per_job_mb == 64
    limit, why = payload_json_limit(jobs[0].plan)
    assert limit == 2 * 1024 * 1024 and "1/32 of the job's memory of 64MB" in why
    sizes = [payload_json_bytes(job) for job in jobs]
    assert max(sizes) <= limit and len(jobs) == math.ceil(sum(sizes) / (limit * 0.97))
    # with no memory set, only the fixed bound: one job
    assert len(runner_with(tmp_path, batching_config={"target_num_jobs": 1}).plan(
        ["true"], inputs
    )) == 1  # fmt: skip


def test_payload_sizes_are_counted_exactly(tmp_path):
    """fit_scripts adds up each task's JSON: the same as the payload the job carries."""
    from slurmrunner.runspec import _TaskJsonSizes

    inputs = [
        {"s": "é 漢字 🎉 \u2028 \x00 'quoted' \"too\"\n" * (i % 5), "n": [i, 0.5, None]}
        for i in range(50)
    ] + [{}, [], "x", 7, None]
    runner = runner_with(tmp_path, batching_config={"target_num_jobs": 7})
    jobs = runner.plan(["true"], inputs)
    sizes = _TaskJsonSizes(list(enumerate(inputs)))
    assert len(jobs) == 7
    for job in jobs:
        text = payload.read_payload_line(_line(render_script(job, worker_source())))
        assert sizes.job_bytes(job) == payload_json_bytes(job) == len(text.encode())
    assert sizes.job_bytes(replace(jobs[0], tasks=())) == payload_json_bytes(
        replace(jobs[0], tasks=())
    )


def test_payload_json_refusals_name_the_numbers(tmp_path):
    small = {"default_slurm_config": {"mem": "64M"}}
    runner = runner_with(tmp_path, **small, batching_config={"max_num_jobs": 2})
    with pytest.raises(BatchingError) as exc:
        runner.plan(["true"], fractal_like(20_000))
    msg = flat(str(exc.value))
    for part in (
        # 2 jobs of 2 at a time (squeezed into max_num_jobs): 128 MB per job
        "20000 tasks in 2 jobs are over the 4194304 bytes of JSON a job may carry",
        "(1/32 of the job's memory of 128MB) (job 0: ",
        "bytes of payload JSON for 10000 inputs); about 3 jobs would be needed",
        "max_num_jobs=2: raise max_num_jobs or the task's mem",
    ):
        assert part in msg, (part, msg)
    # one input alone over the bound
    runner = runner_with(tmp_path, default_slurm_config={"mem": "1M"})
    with pytest.raises(ConfigError, match=r"inputs\[1\] alone makes \d+ bytes of payload JSON"):
        runner.plan(["true"], [{"x": 1}, {"blob": "x" * 40_000}])
    # tasks_per_job given: no split, a refusal
    runner = runner_with(tmp_path, **small)
    with pytest.raises(ConfigError, match=r"job 0 makes \d+ bytes of payload JSON, over .*"
                       r"tasks_per_job"):  # fmt: skip
        runner.plan(["true"], fractal_like(20_000), {"tasks_per_job": 20_000})


def _line(script):
    return next(x for x in script.splitlines() if x.startswith(payload.PAYLOAD_PREFIX))


def test_payload_round_trip_both_forms():
    text = json.dumps({"tasks": [{"i": i, "args": {"p": "/a/b" * 50}} for i in range(500)]})
    assert len(text) > payload.COMPRESS_ABOVE
    line = payload.payload_line(text)
    assert payload.is_compressed(line) and len(line) < len(text) / 5
    assert payload.read_payload_line(line) == text
    assert payload.decode(payload.encode(text)) == text
    small = payload.payload_line('{"a":1}')
    assert not payload.is_compressed(small) and payload.read_payload_line(small) == '{"a":1}'
    # incompressible text stays plain: compression would only cost time
    noise = json.dumps({"blob": random_text(100_000)})
    assert not payload.is_compressed(payload.payload_line(noise))
    # the line defines the same text when Python runs it
    scope: dict = {}
    exec(line, scope)  # our own line
    assert scope["_PAYLOAD"] == text


def test_a_compressed_payload_runs_end_to_end(tmp_path):
    """The script decodes its payload itself: the worker runs the tasks as ever."""
    task = tmp_path / "echo.py"
    task.write_text(
        "import json, sys\n"
        "a = sys.argv\n"
        "args = json.load(open(a[a.index('--args-json') + 1]))\n"
        "json.dump({'n': len(args['p'])}, open(a[a.index('--out-json') + 1], 'w'))\n"
    )
    runner = Runner(
        parse_config(
            {
                "python": sys.executable,
                "batching_config": {"target_num_jobs": 1, "target_cpus_per_job": 2},
            }
        ),
        Profile(backend="local", project_dir=str(tmp_path / "proj")),
        Store(tmp_path / "store.sqlite"),
    )
    inputs = [{"p": f"/data/plate.zarr/B/{i:03d}/" * 60} for i in range(16)]  # 20 KB
    scripts = runner.render([sys.executable, str(task)], inputs)
    assert len(scripts) == 1 and payload.is_compressed(_line(scripts[0]))
    results = runner.run([sys.executable, str(task)], inputs)
    assert [r.status for r in results] == ["ok"] * 16
    assert [r.result for r in results] == [{"n": len(x["p"])} for x in inputs]


# --- pending reasons ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "verdict"),
    [
        ("PartitionTimeLimit", "fail"),
        ("QOSMaxWallDurationPerJobLimit", "fail"),
        ("AssocMaxWallDurationPerJobLimit", "fail"),
        ("QOSMaxCpuPerJobLimit", "fail"),
        ("QOSMaxMemoryPerNode", "fail"),
        ("BadConstraints", "fail"),
        ("InvalidQOS", "fail"),
        ("ReqNodeNotAvail, UnavailableNodes:n1", "warn"),
        ("PartitionNodeLimit", "warn"),
        ("JobHeldAdmin", "warn"),
        ("PartitionDown", "warn"),
        ("AssocMaxJobsLimit", None),  # clears as the user's other jobs end
        ("QOSMaxJobsPerUserLimit", None),
        ("QOSMaxSubmitJobPerUserLimit", None),
        ("AssocGrpCpuLimit", None),
        ("Priority", None),
        ("Resources", None),
        ("None", None),
        ("", None),
    ],
)
def test_pending_verdicts(reason, verdict):
    got = pending_verdict(JobState("PENDING", reason))
    assert (got[0] if got else None) == verdict
    assert pending_verdict(JobState("RUNNING", reason)) is None


@pytest.fixture
def clock(monkeypatch):
    """The time the pending checks see (settling's clock), moved by the test."""
    now = [1000.0]
    monkeypatch.setattr(settling, "_clock", lambda: now[0])
    return now


def test_a_job_that_can_never_start_fails_the_run(tmp_path, clock):
    run, query = fake_run(tmp_path, 4, tasks_per_job=2)
    a, b = run.job_ids()
    query.states[a] = "PENDING|PartitionTimeLimit"  # squeue's reason column
    query.states[b] = "PENDING|Priority"
    # seen once, then again within the grace: a warning, the run waits on
    for elapsed in (0, settling.PENDING_GRACE_S - 1):
        clock[0] = 1000.0 + elapsed
        status = run.poll()
        assert run.store.run(run.id).state not in ("failed", "cancelled")
    assert run.backend.scheduler.submit_host.calls["scancel"] == 0
    (note,) = [w for w in status.warnings if "PartitionTimeLimit" in w]
    assert f"job 0 ({a}) is pending: PartitionTimeLimit" in note
    assert "the run fails if this is still so after 60 s" in note
    clock[0] = 1000.0 + settling.PENDING_GRACE_S
    run.poll()
    row = run.store.run(run.id)
    assert row.state == "failed"
    assert "PartitionTimeLimit" in row.message and f"job 0 ({a}) can never start" in row.message
    results = run.results()
    assert [r.status for r in results] == ["failed", "failed", "cancelled", "cancelled"]
    assert results[0].error.cause == "unschedulable"
    assert "PartitionTimeLimit" in results[0].error.message
    assert run.backend.scheduler.submit_host.calls["scancel"] == 2  # the job, then the rest
    assert any("can never start" in w for w in run.status().warnings)
    # waiting returns at once, and the run stays failed
    assert len(run.wait(timeout=5)) == 4
    assert run.store.run(run.id).state == "failed"


def test_a_run_of_one_never_starting_job_fails(tmp_path, monkeypatch):
    # the grace as the rig's tests set it, read when the Run is made (two polls still needed)
    monkeypatch.setenv("SLURMRUNNER_PENDING_GRACE_S", "0")
    run, query = fake_run(tmp_path, 2, tasks_per_job=2)
    assert run._pending_grace_s == 0
    (a,) = run.job_ids()
    query.states[a] = "PENDING|QOSMaxWallDurationPerJobLimit"
    run.poll()
    assert run.store.run(run.id).state not in ("failed", "cancelled")  # one look is not enough
    results = run.wait(timeout=5)
    assert [r.error.cause for r in results] == ["unschedulable"] * 2
    assert run.store.run(run.id).state == "failed"
    assert run.backend.scheduler.submit_host.calls["scancel"] == 1


@pytest.mark.parametrize(("text", "grace"), [("5", 5.0), ("0.5", 0.5), ("", 60.0), ("x", 60.0),
                                              ("-1", 60.0), ("inf", 60.0)])  # fmt: skip
def test_the_pending_grace_from_the_environment(monkeypatch, text, grace):
    monkeypatch.setenv("SLURMRUNNER_PENDING_GRACE_S", text)
    assert settling.pending_grace_s() == grace


def test_a_never_clears_reason_that_clears_is_counted_again(tmp_path, clock):
    """InvalidAccount shows for a while after an association change: gone before the grace
    ends, it is forgotten; back, its time starts again."""
    run, query = fake_run(tmp_path, 2, tasks_per_job=2)
    (a,) = run.job_ids()
    plan = [
        (0, "PENDING|InvalidAccount"),
        (50, "PENDING|InvalidAccount"),
        (55, "PENDING|Priority"),  # cleared: forgotten
        (70, "PENDING|InvalidAccount"),
        (125, "PENDING|InvalidAccount"),  # 55 s since it came back
        (129, "PENDING|InvalidQOS"),  # another reason: counted from here
        (188, "PENDING|InvalidQOS"),
    ]
    for t, state in plan:
        clock[0], query.states[a] = 1000.0 + t, state
        run.poll()
        assert run.store.run(run.id).state not in ("failed", "cancelled"), (t, state)
    clock[0] = 1000.0 + 189
    run.poll()
    row = run.store.run(run.id)
    assert row.state == "failed" and f"job 0 ({a}) can never start: InvalidQOS" in row.message


def test_two_looks_a_grace_apart_fail(tmp_path, clock):
    run, query = fake_run(tmp_path, 2, tasks_per_job=2)
    (a,) = run.job_ids()
    query.states[a] = "PENDING|BadConstraints"
    run.poll()
    clock[0] += 3600  # one poll an hour later: two looks an hour apart
    assert run.store.run(run.id).state not in ("failed", "cancelled")
    run.poll()
    assert run.store.run(run.id).state == "failed"


def test_a_reason_that_may_clear_is_a_warning(tmp_path):
    run, query = fake_run(tmp_path, 2, tasks_per_job=2)
    (a,) = run.job_ids()
    query.states[a] = "PENDING|ReqNodeNotAvail, UnavailableNodes:n7"
    status = run.poll()
    status = run.poll()
    assert run.store.run(run.id).state not in ("failed", "cancelled")
    notes = [w for w in status.warnings if "ReqNodeNotAvail" in w]
    assert len(notes) == 1 and "may never start" in notes[0]
    assert run.results() == []


def test_pending_warnings_are_one_per_reason_counting_the_jobs(tmp_path):
    """Not one per job and node list: squeue's details change as nodes come and go."""
    run, query = fake_run(tmp_path, 6, tasks_per_job=2)
    ids = run.job_ids()
    for k in range(20):
        for j, job_id in enumerate(ids):
            query.states[job_id] = f"PENDING|ReqNodeNotAvail, UnavailableNodes:n[{k}-{k + j}]"
        status = run.poll()
    notes = [w for w in status.warnings if "pending" in w]
    assert notes == [
        f"3 jobs (job 0 ({ids[0]}), ...) are pending: ReqNodeNotAvail (a node the job requires "
        "is not available (down, drained or reserved)); they may never start"
    ]
    query.states[ids[1]] = query.states[ids[2]] = "RUNNING"
    status = run.poll()
    assert [w for w in status.warnings if "pending" in w] == [
        f"job 0 ({ids[0]}) is pending: ReqNodeNotAvail (a node the job requires is not "
        "available (down, drained or reserved)); it may never start"
    ]


def test_a_runs_warnings_are_bounded(tmp_path):
    run, _ = fake_run(tmp_path, 2, tasks_per_job=2)
    for k in range(500):
        run._warn_once(f"note {k}")
        run.warnings.append(f"squeue: error {k}")  # as asking.py says a failed poll
    warnings = run.status().warnings
    assert len(warnings) == MAX_WARNINGS
    assert warnings[-1] == f"... and {1000 - (MAX_WARNINGS - 1)} more warnings (in the log)"
    run._warn_once("note 3")  # still said once
    assert run.status().warnings == warnings


def test_runspec_keeps_older_specs_readable():
    d = {
        "run_id": "R",
        "config": {},
        "profile": {"backend": "local"},
        "resources": {},
        "command": ["true"],
        "call": "fractal",
        "workdir": None,
        "n_tasks": 3,
    }
    assert RunSpec.from_dict(d).min_jobs == 1
