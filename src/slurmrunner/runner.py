"""Orchestration: plan -> script -> submit -> watch -> collect. The only module that knows all.

A Runner plans and stores runs for one user (config + Profile); run.Run watches one. The admin's
policy (policy.py) is checked first: a refused identity or resource creates nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .backends import Backend, backend_for
from .batching import PartitionShape
from .config import SlurmRunnerConfig, TaskResources, merge_resources, parse_resources
from .errors import ConfigError, TaskFailedError
from .pacing import PollPolicy
from .policy import check_run
from .profiles import Profile
from .results import TaskResult
from .run import Progress, Run, RunStatus
from .runspec import CALL_FORMS, RunSpec, new_run_id, worker_source
from .script import JobSpec, render_script
from .store import Store

__all__ = ["CALL_FORMS", "Run", "RunStatus", "Runner", "new_run_id", "worker_source"]

Resources = TaskResources | Mapping[str, Any] | None
Owner = tuple[int, int, int]  # the service's (user_id, resource_id, profile_id)
# Partitions change rarely: one sinfo per profile and partition per SHAPE_MAX_AGE_S.
SHAPE_MAX_AGE_S = 300.0
#: The scripts rendered while planning are kept for the run's first submission (no second
#: render, no read of the inputs back from the store) up to this many characters in all.
READY_SCRIPTS_MAX_CHARS = 8_000_000
_shapes: dict[tuple[str, str | None], tuple[float, PartitionShape | None]] = {}
_shapes_lock = threading.Lock()


def _as_resources(resources: TaskResources | Mapping[str, Any] | None) -> TaskResources:
    if resources is None:
        return TaskResources()
    if isinstance(resources, TaskResources):
        return resources
    return parse_resources(dict(resources))


def _as_inputs(inputs: Iterable[Any]) -> list[Any]:
    """Any iterable, read once (a generator too); each input must be JSON. Each is taken as
    JSON gives it back (a tuple as a list, a key 2 as "2"), as the store gives it to a retry or
    to another process: the jobs submitted first are the ones rendered again later."""
    values = list(inputs)
    for n, value in enumerate(values):
        try:
            values[n] = json.loads(json.dumps(value))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"inputs[{n}]: not JSON ({exc})") from None
    return values


class Runner:
    """Runs a command over many inputs for one user, as their Profile says.

    >>> results = Runner(config, profile).run(["python3", "task.py"], [{"x": 1}, {"x": 2}])
    """

    def __init__(
        self,
        config: SlurmRunnerConfig | None = None,
        profile: Profile | None = None,
        store: Store | None = None,
        poll: PollPolicy | None = None,
    ) -> None:
        self.config = config or SlurmRunnerConfig()
        self.profile = profile or Profile(backend="local")
        self.store = store or Store()
        self.poll_policy = poll or PollPolicy()

    # planning (no side effects)
    def plan(
        self,
        command: Sequence[str],
        inputs: Sequence[Any],
        resources: Resources = None,
        call: str = "fractal",
        workdir: str | None = None,
        run_id: str = "RUNID",
        ask_partition: bool = False,
    ) -> list[JobSpec]:
        """The jobs `submit` would make, planned and checked the same way (time limit, script
        size); nothing is created. `ask_partition`: plan with the partition's shape and time
        limit as `submit` does (one sinfo on a cluster); without it the plan knows neither."""
        task_resources = _as_resources(resources)
        spec = RunSpec.new(
            self.config, self.profile, command, task_resources, call, workdir, run_id
        )
        check_run(self.config, self.profile, task_resources)
        if ask_partition:
            spec, _ = self._fit_to_partition(
                spec, backend_for(self.profile, policy=self.config.impersonation)
            )
        tasks = list(enumerate(inputs))
        return spec.fit_scripts(tasks).jobs(tasks)

    def render(self, *args: Any, **kwargs: Any) -> list[str]:
        return [render_script(job, worker_source()) for job in self.plan(*args, **kwargs)]

    # running
    def submit(
        self,
        command: Sequence[str],
        inputs: Iterable[Any],
        resources: Resources = None,
        call: str = "fractal",
        workdir: str | None = None,
    ) -> Run:
        """Plan, store and submit every job; return at once with a Run to watch."""
        run = self.prepare(command, inputs, resources, call, workdir)
        run.start()
        return run

    def prepare(
        self,
        command: Sequence[str],
        inputs: Iterable[Any],
        resources: Resources = None,
        call: str = "fractal",
        workdir: str | None = None,
        *,
        owner: Owner | None = None,
    ) -> Run:
        """Plan and store the run; nothing is submitted until `Run.start()`.

        The run id exists before any job does, so an interruption while submitting can be
        cleaned up: `Run.cancel()` cancels what went through and drops the rest. `owner`: the
        service's user, Resource and Profile ids kept with the run.
        """
        run_id = new_run_id()
        inputs = _as_inputs(inputs)
        task_resources = _as_resources(resources)
        spec = RunSpec.new(
            self.config, self.profile, command, task_resources, call, workdir, run_id
        )
        check_run(self.config, self.profile, task_resources)  # before anything exists
        tasks = list(enumerate(inputs))
        backend = backend_for(self.profile, policy=self.config.impersonation)
        if self.profile.backend == "local":
            queue = getattr(backend.scheduler, "queue", None)
            spec = replace(spec, local_queue=str(queue.path) if queue else None)
        connections_before = backend.connections_opened()
        spec, asked = self._fit_to_partition(spec, backend)
        # The plan within the partition's time limit and max_script_bytes (more jobs when a
        # script would be too large), or a refusal naming the numbers: before anything exists.
        scripts: dict[int, str] = {}
        spec = spec.fit_scripts(tasks, scripts, READY_SCRIPTS_MAX_CHARS)
        user_id, resource_id, profile_id = owner or (None, None, None)
        self.store.create_run(
            run_id,
            spec.to_dict(),
            inputs,
            spec.plan.job_sizes,
            user_id=user_id,
            resource_id=resource_id,
            profile_id=profile_id,
        )
        run = Run(run_id, self.store, spec, self.poll_policy, connections_before)
        run._ready_scripts = scripts
        if asked:
            run.calls[backend.scheduler.call_names["shape"]] += 1
        return run

    def _fit_to_partition(self, spec: RunSpec, backend: Backend) -> tuple[RunSpec, bool]:
        """The spec with the partition's shape (batching rule 4); and whether sinfo ran."""
        if not self.config.batching_config.cap_jobs_to_partition:
            return spec, False
        partition = merge_resources(self.config, spec.resources).partition
        key = (self.profile.model_dump_json(), partition)
        with _shapes_lock:
            seen = _shapes.get(key)
        if seen and time.monotonic() - seen[0] < SHAPE_MAX_AGE_S:
            return replace(spec, partition=seen[1]), False
        shape = backend.scheduler.partition_shape(partition)
        if shape is not None:  # a failure is not remembered: the next run asks again
            with _shapes_lock:
                _shapes[key] = (time.monotonic(), shape)
        return replace(spec, partition=shape), "shape" in backend.scheduler.call_names

    def run(
        self,
        command: Sequence[str],
        inputs: Iterable[Any],
        resources: Resources = None,
        call: str = "fractal",
        workdir: str | None = None,
        progress: Progress | None = None,
        raise_on_failure: bool = False,
    ) -> list[TaskResult]:
        """Submit and wait; results in input order. Ctrl-C cancels the run's jobs.

        With raise_on_failure, a run with any task not ok raises TaskFailedError (which
        carries every result) instead of returning.
        """
        run = self.prepare(command, inputs, resources, call, workdir)
        try:
            run.start()
            results = run.wait(progress)
        except BaseException:
            run.cancel()
            raise
        failed = [r for r in results if not r.ok]
        if raise_on_failure and failed:
            raise TaskFailedError(run.id, failed, results)
        return results

    @staticmethod
    def attach(run_id: str, store: Store | None = None, poll: PollPolicy | None = None) -> Run:
        """A run started by this or another process (from the store); `run_id` may also be
        `last` or a unique prefix of an id."""
        store = store or Store()
        run_id = store.resolve_run_id(run_id)
        spec = RunSpec.from_dict(store.run(run_id).spec)
        # The run's backend, checked against the policy the run was submitted under, before
        # Run (which takes the backend already built for its profile) runs anything.
        backend_for(spec.profile, spec.local_queue, spec.config.impersonation)
        return Run(run_id, store, spec, poll or PollPolicy())
