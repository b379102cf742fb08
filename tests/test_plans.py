"""Plans that fit the cluster at any size (issue 13): the partition's time limit, the script
size split and its compressed payload, `render` planning as `run` does, and pending reasons that
never clear."""

from __future__ import annotations

import base64
import json
import math
import os
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from slurmrunner import payload
from slurmrunner.batching import PartitionShape, plan_batches
from slurmrunner.config import merge_resources, parse_config, parse_resources
from slurmrunner.errors import BatchingError, ConfigError
from slurmrunner.jobstate import JobState, pending_verdict
from slurmrunner.local_jobs import LocalScheduler
from slurmrunner.profiles import Profile
from slurmrunner.runner import Runner, worker_source
from slurmrunner.runspec import RunSpec
from slurmrunner.script import render_script
from slurmrunner.store import Store
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


def test_a_job_that_can_never_start_fails_the_run(tmp_path):
    run, query = fake_run(tmp_path, 4, tasks_per_job=2)
    a, b = run.job_ids()
    query.states[a] = "PENDING|PartitionTimeLimit"  # squeue's reason column
    query.states[b] = "PENDING|Priority"
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


def test_a_run_of_one_never_starting_job_fails(tmp_path):
    run, query = fake_run(tmp_path, 2, tasks_per_job=2)
    (a,) = run.job_ids()
    query.states[a] = "PENDING|QOSMaxWallDurationPerJobLimit"
    results = run.wait(timeout=5)
    assert [r.error.cause for r in results] == ["unschedulable"] * 2
    assert run.store.run(run.id).state == "failed"
    assert run.backend.scheduler.submit_host.calls["scancel"] == 1


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
