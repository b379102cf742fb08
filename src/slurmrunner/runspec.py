"""What a run is: command, call form, paths, resources and plan, enough to rebuild its jobs
in any process (stored with the run). Pure apart from reading the worker's source."""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from .batching import BatchPlan, PartitionShape, plan_batches
from .config import SlurmRunnerConfig, TaskResources, merge_resources
from .errors import BatchingError, ConfigError
from .profiles import Profile
from .quoting import cluster_path, local_path
from .script import JobSpec, check_script_size, render_script, worker_payload
from .worker_ship import worker_program

CALL_FORMS = ("fractal", "stdin")
#: Rounds of RunSpec.fit_scripts (each adds jobs in proportion to how far a script is over).
FIT_ROUNDS = 12
#: Room kept under max_script_bytes when adding jobs (job sizes differ by their inputs).
FIT_MARGIN = 0.97
#: At most this much payload JSON per job (bytes), whatever max_script_bytes lets through once
#: compressed. The worker holds a job's whole JSON text and parses it at job start, in the
#: job's memory (--mem) before any task runs: parsed, it takes ~3x (long strings) to ~9x
#: (paths and small arguments, typical) to ~14x (numbers) its size (CPython 3.11, measured).
#: Typical inputs compress ~22x, so a 4 MB script could carry ~90 MB of JSON and get the job
#: OOM-killed, every task reported out_of_memory. 16 MB parsed is ~50-230 MB.
MAX_PAYLOAD_JSON_BYTES = 16 * 1024 * 1024
#: ... and at most 1/PAYLOAD_MEM_SHARE of the job's memory when the plan sets it: the parsed
#: payload (~9x) then keeps to ~30% of it for typical inputs; the tasks need the rest.
PAYLOAD_MEM_SHARE = 32


def payload_json_limit(plan: BatchPlan) -> tuple[int, str]:
    """The most payload JSON a job of `plan` may carry (bytes), and what sets it (to say so)."""
    limit, why = MAX_PAYLOAD_JSON_BYTES, f"at most {MAX_PAYLOAD_JSON_BYTES} bytes per job"
    if plan.mem_per_job_mb:
        share = plan.mem_per_job_mb * 1024 * 1024 // PAYLOAD_MEM_SHARE
        if share < limit:
            limit = share
            why = f"1/{PAYLOAD_MEM_SHARE} of the job's memory of {plan.mem_per_job_mb}MB"
    return max(limit, 1), why


def _dumps(value: Any) -> str:
    # As script.render_script writes the payload (ASCII: characters are bytes).
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def payload_json_bytes(job: JobSpec) -> int:
    """The size of the JSON text a job's worker parses."""
    return len(_dumps(worker_payload(job)))


class _TaskJsonSizes:
    """A job's payload size without writing its JSON again for every plan tried: the task
    list is `[t0,t1,...]`, each task written alone as in the whole (script.worker_payload's
    {"i", "args"}), so a job's size is its payload's without tasks plus its tasks' and commas."""

    def __init__(self, tasks: list[tuple[int, Any]]) -> None:
        self.start: dict[int, int] = {}  # input index -> position in the prefix sums
        self.sums = [0]
        for pos, (i, args) in enumerate(tasks):
            self.start[i] = pos
            self.sums.append(self.sums[-1] + len(_dumps({"i": i, "args": args})))

    def job_bytes(self, job: JobSpec) -> int:
        bare = payload_json_bytes(replace(job, tasks=()))
        if not job.tasks:
            return bare
        first = self.start[job.tasks[0][0]]
        n = len(job.tasks)
        return bare + self.sums[first + n] - self.sums[first] + n - 1


@cache
def worker_source() -> str:
    # The worker is split by responsibility into worker_*.py: the job gets them joined.
    return worker_program()


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _check_command(command: Sequence[str], call: str) -> tuple[str, ...]:
    if (
        isinstance(command, str)
        or not command
        or not all(isinstance(w, str) and w for w in command)
    ):
        raise ConfigError(
            "command: give the program and its arguments as a list, e.g. ['python3', 'task.py']"
        )
    if any("\0" in w for w in command):
        raise ConfigError("command: contains a NUL byte")
    if call not in CALL_FORMS:
        raise ConfigError(f"call: {call!r} is not one of {', '.join(CALL_FORMS)}")
    return tuple(command)


def _local_command(command: tuple[str, ...]) -> tuple[str, ...]:
    """A program named by a relative path runs from the caller's folder, wherever the task's
    working directory is (a bare name is looked up on PATH, as a shell would)."""
    program = command[0]
    if "/" in program and not os.path.isabs(program):
        return (os.path.abspath(program), *command[1:])
    return command


@dataclass(frozen=True)
class RunSpec:
    """What a run is, enough to rebuild its jobs in another process."""

    run_id: str
    config: SlurmRunnerConfig
    profile: Profile
    resources: TaskResources
    command: tuple[str, ...]
    call: str
    workdir: str | None
    n_tasks: int = 0
    partition: PartitionShape | None = None  # as seen at submission: the plan depends on it
    # The local backend's queue file the jobs went to: a process that reattaches looks there,
    # whatever its own environment says.
    local_queue: str | None = None
    # At least this many jobs (batching rule 5): set by fit_scripts when a job's script would
    # be too large, stored so that any process rebuilds the same jobs.
    min_jobs: int = 1

    @classmethod
    def new(
        cls,
        config: SlurmRunnerConfig,
        profile: Profile,
        command: Sequence[str],
        resources: TaskResources | None,
        call: str,
        workdir: str | None,
        run_id: str,
    ) -> RunSpec:
        checked = _check_command(command, call)
        # One path rule for the CLI and the API: on this machine, tasks run where the caller
        # is unless told otherwise, and relative paths mean the caller's folder.
        if profile.backend == "local":
            workdir = local_path(workdir or os.getcwd(), "workdir")
            checked = _local_command(checked)
        elif workdir is not None:
            workdir = cluster_path(workdir, "workdir")
        return cls(
            run_id,
            config,
            profile,
            resources or TaskResources(),
            checked,
            call,
            workdir,
        )

    @property
    def run_dir(self) -> str:
        return f"{self.profile.resolved_project_dir()}/.slurmrunner/runs/{self.run_id}"

    @property
    def plan(self) -> BatchPlan:
        return self._plan_for(self.n_tasks)

    def _plan_for(self, n_tasks: int) -> BatchPlan:
        res = merge_resources(self.config, self.resources)
        return plan_batches(
            n_tasks, res, self.config.batching_config, self.partition, self.min_jobs
        )

    def fit_scripts(
        self,
        tasks: list[tuple[int, Any]],
        scripts: dict[int, str] | None = None,
        keep_chars: int = 0,
    ) -> RunSpec:
        """This spec for `tasks`, with as many jobs as keep every job's script within
        max_script_bytes and its payload's JSON within payload_json_limit (up to max_num_jobs):
        every job is rendered and measured, so a run that passes is one whose jobs all fit,
        the partition's time limit included (the plan checks it). BatchingError or
        ConfigError, with the numbers, before anything exists. `scripts`, when given, is
        filled with each job's script as rendered here (job index -> script), while they
        hold at most `keep_chars` characters in all (none at all past it)."""
        spec = replace(self, n_tasks=len(tasks))
        script_limit = self.config.max_script_bytes
        limits = self.config.batching_config
        explicit = merge_resources(self.config, self.resources).tasks_per_job is not None
        source = worker_source()
        json_sizes = _TaskJsonSizes(tasks)
        for _ in range(FIT_ROUNDS):
            plan = spec.plan
            json_limit, json_why = payload_json_limit(plan)
            over = None
            kept = 0 if scripts is not None else -1  # -1: none kept
            if scripts is not None:
                scripts.clear()  # an earlier round's plan
            for job in spec.jobs(tasks):
                # The JSON first: when it is over, the script (compressing it) is not needed.
                size = json_sizes.job_bytes(job)
                if size > json_limit:
                    over = (job, size, True)
                    break
                script = render_script(job, source)
                size = len(script.encode())
                if size > script_limit:
                    over = (job, size, False)
                    break
                if kept >= 0 and scripts is not None:
                    kept += len(script)
                    if kept > keep_chars:
                        scripts.clear()
                        kept = -1
                    else:
                        scripts[job.job_index] = script
            if over is None:
                return spec
            job, size, is_json = over
            if is_json:
                limit = json_limit
                what = f"{size} bytes of payload JSON"
                bound = f"the {json_limit} bytes of JSON a job may carry ({json_why})"
                bare = payload_json_bytes(replace(job, tasks=()))
                by_mem = json_limit < MAX_PAYLOAD_JSON_BYTES
                remedy = "max_num_jobs or the task's mem" if by_mem else "max_num_jobs"
            else:
                limit = script_limit
                what = f"a job script of {size} bytes"
                bound = f"max_script_bytes={script_limit} (SLURM's default limit is 4 MB)"
                bare = len(render_script(replace(job, tasks=()), source).encode())
                remedy = "max_num_jobs or max_script_bytes"
            if explicit:
                if not is_json:
                    check_script_size(render_script(job, source), script_limit, job.job_index)
                raise ConfigError(
                    f"job {job.job_index} makes {what}, over {bound}: give fewer inputs per "
                    "job (resources.tasks_per_job, or none: the plan then splits the jobs "
                    "itself) or smaller arguments"
                )
            if len(job.tasks) == 1:
                raise ConfigError(
                    f"inputs[{job.tasks[0][0]}] alone makes {what}, over {bound}: give "
                    "smaller arguments"
                )
            room = max(limit * FIT_MARGIN - bare, 1.0)
            need = math.ceil(plan.num_jobs * (size - bare) / room)
            need = min(max(need, plan.num_jobs + 1), spec.n_tasks)
            if need > limits.max_num_jobs:
                if plan.num_jobs >= limits.max_num_jobs:
                    raise BatchingError(
                        f"{spec.n_tasks} tasks in {plan.num_jobs} jobs are over {bound} (job "
                        f"{job.job_index}: {what} for {len(job.tasks)} inputs); about {need} "
                        f"jobs would be needed, over batching_config.max_num_jobs="
                        f"{limits.max_num_jobs}: raise {remedy}, or give smaller arguments"
                    )
                need = limits.max_num_jobs  # the last try: as many jobs as allowed
            spec = replace(spec, min_jobs=need)
        raise BatchingError(
            f"no plan of at most {limits.max_num_jobs} jobs keeps every job of these "
            f"{spec.n_tasks} tasks within max_script_bytes={script_limit} and its payload "
            f"within {MAX_PAYLOAD_JSON_BYTES} bytes of JSON (and 1/{PAYLOAD_MEM_SHARE} of the "
            "job's memory)"
        )

    def exports(self) -> dict[str, str]:
        base = self.profile.cache_base()
        return {name: f"{base}/{rel}" for name, rel in self.config.user_local_exports.items()}

    def jobs(self, tasks: list[tuple[int, Any]]) -> list[JobSpec]:
        if self.n_tasks != len(tasks):
            object.__setattr__(self, "n_tasks", len(tasks))
        plan = self.plan
        return [
            self.job(k, [tasks[i] for i in rng], plan) for k, rng in enumerate(plan.job_ranges())
        ]

    def job(self, k: int, tasks: list[tuple[int, Any]], plan: BatchPlan) -> JobSpec:
        return JobSpec(
            run_id=self.run_id,
            job_index=k,
            run_dir=self.run_dir,
            resources=merge_resources(self.config, self.resources),
            plan=plan,
            command=self.command,
            tasks=tuple(tasks),
            exports=self.exports(),
            call=self.call,
            workdir=self.workdir,
            python=self.config.python,
            max_result_bytes=self.config.max_result_bytes,
            local=self.profile.backend == "local",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "config": self.config.model_dump(mode="json", exclude_unset=True),
            "profile": self.profile.model_dump(mode="json", exclude_unset=True),
            "resources": self.resources.model_dump(mode="json", exclude_unset=True),
            "command": list(self.command),
            "call": self.call,
            "workdir": self.workdir,
            "n_tasks": self.n_tasks,
            "partition": self.partition.to_dict() if self.partition else None,
            "local_queue": self.local_queue,
            "min_jobs": self.min_jobs,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        return cls(
            d["run_id"],
            SlurmRunnerConfig.model_validate(d["config"]),
            # Runs stored before Profiles had to name their backend were local ones.
            Profile.model_validate({"backend": "local", **d["profile"]}),
            TaskResources.model_validate(d["resources"]),
            tuple(d["command"]),
            d["call"],
            d["workdir"],
            d["n_tasks"],
            PartitionShape.from_dict(d["partition"]) if d.get("partition") else None,
            d.get("local_queue"),
            int(d.get("min_jobs") or 1),
        )
