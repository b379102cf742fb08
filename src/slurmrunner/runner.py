"""Orchestration: plan -> script -> submit -> watch -> collect. The only module that knows all.

Watching protects the controller: results come from the jobs' own results files (one `cat`
as the user per cycle, on a short adaptive interval) and a job that ends normally says so in
its file, so `squeue` (one call per cycle for all the run's jobs) is asked rarely: on its own
slower adaptive interval, or at once when a job reports an interruption whose cause only the
scheduler knows. A failing `squeue` is retried and never read as an outcome.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib.resources import files
from typing import Any

from .backends import Backend, backend_for
from .batching import BatchPlan, PartitionShape, plan_batches
from .config import SlurmRunnerConfig, TaskResources, merge_resources, parse_resources
from .errors import (
    ConfigError,
    HostError,
    ImpersonationError,
    SchedulerError,
    SlurmRunnerError,
    SSHAuthError,
    SSHHostKeyError,
    SSHKeyError,
    SubmitLimitError,
    TaskFailedError,
    TransientSchedulerError,
)
from .jobstate import JobState
from .pacing import PollPolicy, ReadPace
from .profiles import Profile
from .quoting import cluster_path, local_path
from .results import TaskError, TaskResult, cancelled, from_record, without_record
from .script import JobSpec, check_script_size, job_name, render_script, results_relpath
from .store import JobRow, Store, claim_is_live, new_claim

log = logging.getLogger("slurmrunner")

CALL_FORMS = ("fractal", "stdin")
# How the worker starts a task's record; lets a re-read line be skipped without parsing it.
_RECORD_HEAD = re.compile(r'\{"i":(\d+),')
# Host errors that waiting does not cure: stop at once and say why.
_NOT_TRANSIENT = (SSHKeyError, SSHHostKeyError, SSHAuthError, ImpersonationError)
Progress = Callable[["RunStatus"], None]
Resources = TaskResources | Mapping[str, Any] | None
# Partitions change rarely: one sinfo per profile and partition per SHAPE_MAX_AGE_S.
SHAPE_MAX_AGE_S = 300.0
_shapes: dict[tuple[str, str | None], tuple[float, PartitionShape | None]] = {}
_shapes_lock = threading.Lock()


@cache
def worker_source() -> str:
    return files("slurmrunner").joinpath("worker.py").read_text()


@dataclass
class RunStatus:
    run_id: str
    n_tasks: int
    counts: Counter[str] = field(default_factory=Counter)  # ok / failed / cancelled
    jobs: Counter[str] = field(default_factory=Counter)  # job state -> n
    calls: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: Results this Run object saved since its previous status(): print failures as they come.
    new_results: list[TaskResult] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> bool:
        return self.finished >= self.n_tasks


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


def _as_resources(resources: TaskResources | Mapping[str, Any] | None) -> TaskResources:
    if resources is None:
        return TaskResources()
    if isinstance(resources, TaskResources):
        return resources
    return parse_resources(dict(resources))


def _as_inputs(inputs: Iterable[Any]) -> list[Any]:
    """Any iterable, read once (a generator too); each input must be JSON."""
    values = list(inputs)
    for n, value in enumerate(values):
        try:
            json.dumps(value)
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
        self.profile = profile or Profile()
        self.store = store or Store()
        self.poll_policy = poll or PollPolicy()

    # planning (no side effects)
    def plan(
        self,
        command: Sequence[str],
        inputs: Sequence[Any],
        resources: TaskResources | None = None,
        call: str = "fractal",
        workdir: str | None = None,
        run_id: str = "RUNID",
    ) -> list[JobSpec]:
        spec = _RunSpec.new(self.config, self.profile, command, resources, call, workdir, run_id)
        return spec.jobs(list(enumerate(inputs)))

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
    ) -> Run:
        """Plan and store the run; nothing is submitted until `Run.start()`.

        The run id exists before any job does, so an interruption while submitting can be
        cleaned up: `Run.cancel()` cancels what went through and drops the rest.
        """
        run_id = new_run_id()
        inputs = _as_inputs(inputs)
        spec = _RunSpec.new(
            self.config, self.profile, command, _as_resources(resources), call, workdir, run_id
        )
        tasks = list(enumerate(inputs))
        backend = backend_for(self.profile)
        connections_before = backend.connections_opened()
        fitted, asked = self._fit_to_partition(spec, backend)
        try:
            spec = fitted
            self._check_sizes(spec.jobs(tasks))
        except ConfigError:
            if fitted.partition is None:
                raise
            # Fewer, bigger jobs made a script too large: keep the plain plan instead.
            spec = replace(fitted, partition=None)
            self._check_sizes(spec.jobs(tasks))
        self.store.create_run(run_id, spec.to_dict(), inputs, spec.plan.job_sizes)
        run = Run(run_id, self.store, spec, self.poll_policy, connections_before)
        if asked:
            run.calls[backend.scheduler.call_names["shape"]] += 1
        return run

    def _fit_to_partition(self, spec: _RunSpec, backend: Backend) -> tuple[_RunSpec, bool]:
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

    def _check_sizes(self, jobs: list[JobSpec]) -> None:
        """Refuse an oversize job before anything is created."""
        for job in jobs:
            check_script_size(
                render_script(job, worker_source()), self.config.max_script_bytes, job.job_index
            )

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
        spec = _RunSpec.from_dict(store.run(run_id).spec)
        return Run(run_id, store, spec, poll or PollPolicy())


@dataclass(frozen=True)
class _RunSpec:
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
    ) -> _RunSpec:
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
        return plan_batches(n_tasks, res, self.config.batching_config, self.partition)

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
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _RunSpec:
        return cls(
            d["run_id"],
            SlurmRunnerConfig.model_validate(d["config"]),
            Profile.model_validate(d["profile"]),
            TaskResources.model_validate(d["resources"]),
            tuple(d["command"]),
            d["call"],
            d["workdir"],
            d["n_tasks"],
            PartitionShape.from_dict(d["partition"]) if d.get("partition") else None,
        )


@dataclass
class _JobWatch:
    """What this process has learnt of one job since it started watching."""

    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    ended: bool = False  # the worker wrote its end line
    chunk: int = 0  # the results chunk being written (earlier ones are complete and read)
    ahead: int = 1  # chunks read past it per look; grows while catching up (reattach)
    behind: bool = True  # the last look ended on a full chunk: more may be written already
    final_look: bool = False  # read to its end after the scheduler said it had ended
    interrupted: bool = False
    state: JobState | None = None


class Run:
    """One run: its jobs, their watching, its results. Safe to drive from one thread."""

    def __init__(
        self,
        run_id: str,
        store: Store,
        spec: _RunSpec,
        poll: PollPolicy,
        connections_before: int | None = None,
    ) -> None:
        self.id = run_id
        self.store = store
        self.spec = spec
        self.poll_policy = poll
        self.backend: Backend = backend_for(spec.profile)
        self.calls: Counter[str] = Counter()
        self.warnings: list[str] = []
        self._watch: dict[int, _JobWatch] = {}
        self._read: set[int] = set()  # task indices whose record this process has read
        self._finished = store.finished_indices(run_id)
        self._read_pace = ReadPace(poll.read_min_s, poll.read_max_s)
        self._squeue_interval = poll.squeue_min_s
        self._next_squeue = 0.0
        self._last_squeue = 0.0
        # SSH connections opened from here on count for this run (from before planning when
        # the planning itself asked the cluster).
        opened = self.backend.connections_opened()
        self._connections_at_start = opened if connections_before is None else connections_before
        self._claim = new_claim()
        self._retry_submit_at: float | None = None  # set while the user's job limit holds
        self._new: list[TaskResult] = []  # saved since the last status()

    @property
    def n_tasks(self) -> int:
        return self.spec.n_tasks

    @property
    def run_dir(self) -> str:
        return self.spec.run_dir

    # submission
    def start(self) -> None:
        """Create the run folder as the user and submit every job not yet submitted."""
        base = self.spec.profile.resolved_project_dir()
        dirs = [base, f"{base}/.slurmrunner", f"{base}/.slurmrunner/runs", self.run_dir]
        subdirs = [f"{self.run_dir}/{sub}" for sub in ("jobs", "logs", "tasks", "results")]
        self._user(["mkdir", "-p", "-m", "700", *dirs, *subdirs], check=True)
        self._submit_missing()
        self.store.set_run_state(self.id, "running")
        self._flush_counters()

    def _user(self, argv: list[str], check: bool = False) -> Any:
        """An idempotent command as the user (mkdir -p, cat): run again if the connection
        dropped while it ran."""
        delays = [0.5, 1.0, 2.0]
        while True:
            self.calls[argv[0]] += 1
            try:
                result = self.backend.user_host.run(argv)
                break
            except HostError as exc:
                if not getattr(exc, "maybe_ran", False) or not delays:
                    raise
                log.warning("%s interrupted (%s); running it again", argv[0], exc)
                time.sleep(delays.pop(0))
        if check and not result.ok:
            raise HostError(f"{' '.join(argv[:2])} ... failed: {result.stderr.strip()}")
        return result

    def _submit_missing(self) -> None:
        self._retry_submit_at = None
        todo = [j for j in self.store.jobs(self.id) if j.job_id is None and not j.done]
        if not todo:
            return
        plan = self.spec.plan
        for row in todo:
            if row.state == "SUBMITTING" and claim_is_live(row.claim, self._claim):
                continue  # another process is submitting it right now
            if not self.store.claim_job(self.id, row, self._claim):
                continue  # another process claimed it between our read and now
            if row.state == "SUBMITTING":  # an earlier process died around sbatch
                found = self._find_patiently(job_name(self.id, row.idx))
                if found:
                    self._adopt(row, found)
                    continue
            args = self.store.task_args(self.id, row.task_range)
            job = self.spec.job(row.idx, list(zip(row.task_range, args, strict=True)), plan)
            try:
                job_id = self._sbatch(render_script(job, worker_source()), job.job_name)
            except SubmitLimitError as exc:
                # Not a failure: the job waits in the store until the user's queue has room.
                self.store.update_job(self.id, row.idx, state="NEW")
                self._retry_submit_at = time.monotonic() + self.poll_policy.submit_limit_retry_s
                note = f"job {row.idx} and later wait for room in the user's queue: {exc}"
                if note not in self.warnings:
                    self.warnings.append(note)
                log.warning("%s", note)
                return  # the jobs after it would meet the same limit
            except SchedulerError as exc:
                if row.idx == 0:
                    self.store.update_job(self.id, row.idx, state="NEW")
                    self.store.set_run_state(self.id, "failed")
                    raise
                self._fail_job(row, "submit_failed", str(exc))
                continue
            self._adopt(row, job_id)

    def _adopt(self, row: JobRow, job_id: str) -> None:
        self.store.update_job(self.id, row.idx, job_id=job_id, state="PENDING")

    def _find(self, names: list[str]) -> dict[str, str]:
        self.calls[self.backend.scheduler.call_names["poll"]] += 1
        return self.backend.scheduler.find(names)

    def _find_patiently(self, name: str) -> str | None:
        """The id of a job submitted under `name`; never guesses while SLURM cannot answer."""
        delays = list(self.poll_policy.submit_retry_s)
        while True:
            try:
                return self._find([name]).get(name)
            except _NOT_TRANSIENT:
                raise
            except (TransientSchedulerError, HostError) as exc:
                if not delays:
                    raise SchedulerError(
                        f"cannot tell whether {name} was submitted: {exc}"
                    ) from exc
                time.sleep(delays.pop(0))

    def _sbatch(self, script: str, name: str) -> str:
        """Submit once; after a failure that may have gone through, look before trying again."""
        delays = list(self.poll_policy.submit_retry_s)
        while True:
            try:
                self.calls[self.backend.scheduler.call_names["submit"]] += 1
                return self.backend.scheduler.submit(script)
            except _NOT_TRANSIENT:
                raise
            except (TransientSchedulerError, HostError) as exc:
                if not delays:
                    raise SchedulerError(f"gave up submitting {name}: {exc}") from exc
                self.warnings.append(f"sbatch: {exc}; retrying")
                log.warning("sbatch for %s failed (%s); retrying", name, exc)
                time.sleep(delays.pop(0))
                try:
                    found = self._find([name])
                except (TransientSchedulerError, HostError):
                    found = {}
                if name in found:
                    return found[name]

    def _fail_job(self, row: JobRow, cause: str, message: str) -> None:
        results = [
            TaskResult(i, "failed", error=TaskError(cause, message))
            for i in row.task_range
            if i not in self._finished
        ]
        self._save(results)
        self.store.update_job(self.id, row.idx, state="FAILED", done=1)

    # watching
    def poll(self) -> RunStatus:
        """One watching cycle: read results, ask the scheduler when due. Returns the status."""
        self._cycle()
        return self.status()

    def wait(
        self, progress: Progress | None = None, timeout: float | None = None
    ) -> list[TaskResult]:
        """Watch until every task has ended; results in input order."""
        for status in self._cycles(timeout):
            if progress:
                progress(status)
        return self.results()

    def as_completed(self, timeout: float | None = None) -> Iterator[TaskResult]:
        """Each task's result once, as soon as it is known (those already known first)."""
        yield from self.results()
        for status in self._cycles(timeout):
            yield from sorted(status.new_results, key=lambda r: r.index)

    def _cycles(self, timeout: float | None) -> Iterator[RunStatus]:
        """Watch, yielding the status after each look, until every task has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._submit_missing()
        while True:
            news = self._cycle()
            status = self.status()
            yield status
            if status.done:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.id} not finished after {timeout}s")
            time.sleep(self._read_pace.after_read(news, time.monotonic()))
        if self.store.run(self.id).state != "cancelled":
            self.store.set_run_state(self.id, "done")

    def _cycle(self) -> bool:
        if self._retry_submit_at is not None and time.monotonic() >= self._retry_submit_at:
            self._submit_missing()
        rows = [r for r in self.store.jobs(self.id) if not r.done and r.job_id]
        if not rows:
            self._flush_counters()
            return False
        news = False
        now = time.monotonic()
        # A job that ended with an interruption or a killed task waits for the scheduler's
        # word on why: ask now rather than at the slow cadence (still at most once per min_s).
        urgent = any(self._awaits_state(r) for r in rows)
        if (
            self.backend.scheduler.cheap_poll
            or now >= self._next_squeue
            or (urgent and now >= self._last_squeue + self.poll_policy.squeue_min_s)
        ):
            news |= self._squeue(rows)
            self._last_squeue = time.monotonic()
            self._next_squeue = self._last_squeue + self._squeue_interval
        news |= self._read_results(rows)
        for row in rows:
            news |= self._settle(row)
        self._flush_counters()
        return news

    def _w(self, row: JobRow) -> _JobWatch:
        return self._watch.setdefault(row.idx, _JobWatch())

    def _awaits_state(self, row: JobRow) -> bool:
        w = self._w(row)
        if w.state is not None or not w.ended:
            return False
        return w.interrupted or any(
            (rec.get("error") or {}).get("cause") == "signal" for rec in w.records.values()
        )

    def _squeue(self, rows: list[JobRow]) -> bool:
        ids = [r.job_id for r in rows if r.job_id]
        self.calls[self.backend.scheduler.call_names["poll"]] += 1
        try:
            states = self.backend.scheduler.poll(ids)
        except (TransientSchedulerError, HostError) as exc:
            # No answer is not an answer: keep every job as it was and ask again later.
            self.calls[self.backend.scheduler.call_names["poll"] + "_errors"] += 1
            self.warnings.append(f"squeue: {exc}")
            log.warning("squeue failed (%s); will retry", exc)
            self._squeue_interval = self.poll_policy.squeue_min_s
            return False
        changed = False
        for row in rows:
            st = states.get(row.job_id or "")
            w = self._w(row)
            if st is None:
                continue
            if st.terminal or st.state == "UNKNOWN":
                w.state = st
            if st.state != row.state:
                self.store.update_job(self.id, row.idx, state=st.state, reason=st.reason)
                changed = True
        if changed:
            self._squeue_interval = self.poll_policy.squeue_min_s
        else:
            self._squeue_interval = min(self._squeue_interval * 2, self.poll_policy.squeue_max_s)
        return changed

    def _read_results(self, rows: list[JobRow]) -> bool:
        todo = [r for r in rows if not self._w(r).ended]
        if not todo:
            return False
        # The chunk being written and the next ones: a chunk that has a successor is complete,
        # so all are read whole in this one call and the reader never goes back.
        paths = [
            f"{self.run_dir}/{results_relpath(r.idx, chunk)}"
            for r in todo
            for chunk in range(self._w(r).chunk, self._w(r).chunk + self._w(r).ahead + 1)
        ]
        before = {r.idx: self._w(r).chunk for r in todo}
        try:
            result = self._user(["cat", *paths])
        except _NOT_TRANSIENT:
            raise
        except HostError as exc:
            # The cluster is out of reach for now: results wait in their files; read later.
            self.warnings.append(f"cat: {exc}")
            log.warning("reading results failed (%s); will retry", exc)
            return False
        if not result.ok:
            other = [
                line
                for line in result.stderr.splitlines()
                if line.strip() and "No such file or directory" not in line
            ]
            if other:
                self.warnings.append(f"cat: {other[0]}")
        news = False
        by_idx = {r.idx: r for r in todo}
        for line in result.stdout.split("\n"):
            if not line.endswith("}"):
                continue  # empty, or a line still being written: read again next cycle
            head = _RECORD_HEAD.match(line)
            if head and int(head[1]) in self._read:
                continue  # read in an earlier cycle: files are re-read whole, parse once
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            row = by_idx.get(rec.get("job", -1))
            if row is None:
                continue
            w = self._w(row)
            if rec.get("event") == "end":
                w.ended = True
                w.interrupted = "interrupted" in rec
                news = True
            elif rec.get("event") == "next":
                w.chunk = max(w.chunk, int(rec.get("chunk", 0)))
            elif "i" in rec and rec["i"] not in w.records and rec["i"] in row.task_range:
                w.records[rec["i"]] = rec
                self._read.add(rec["i"])
                news = True
        for r in todo:
            w = self._w(r)
            w.behind = w.chunk == before[r.idx] + w.ahead + 1  # even the last one read was full
            w.ahead = min(w.ahead * 2, 32) if w.behind else 1
            w.final_look = w.final_look or (w.state is not None and not w.behind)
        return news

    def _settle(self, row: JobRow) -> bool:
        """Save what is final; close the job when nothing more can come."""
        w = self._w(row)
        state = w.state.state if w.state else None
        final: list[TaskResult] = []
        for i, rec in w.records.items():
            if i in self._finished:
                continue
            cause = (rec.get("error") or {}).get("cause")
            if rec["status"] == "ok" or cause not in ("signal", "interrupted") or state:
                final.append(from_record(rec, row.job_id, state))
        self._save(final)

        clean_end = w.ended and not w.interrupted
        if not (clean_end or state):
            return bool(final)
        if not w.ended and not w.final_look:
            # Over, says the scheduler, but its files were not read whole since: a failed or
            # lagging look must not turn records still in them into lost tasks.
            return bool(final)
        missing = [i for i in row.task_range if i not in self._finished]
        if missing and clean_end and not state:
            held = [i for i in missing if i in w.records]
            if held:  # killed by a signal: wait for the scheduler's word on why
                return bool(final)
        if missing:
            end_state = state or "UNKNOWN"
            reason = w.state.reason if w.state else ""
            output = self._job_output_tail(row)
            self._save(
                [
                    from_record(w.records[i], row.job_id, end_state)
                    if i in w.records
                    else without_record(i, row.job_id, end_state, reason, output)
                    for i in missing
                ]
            )
        self.store.update_job(
            self.id,
            row.idx,
            state=state or "COMPLETED",
            reason=w.state.reason if w.state else "",
            done=1,
        )
        if self._retry_submit_at is not None:
            self._retry_submit_at = time.monotonic()  # a job left: room for a waiting one
        return True

    def _job_output_tail(self, row: JobRow, limit: int = 2048) -> str:
        try:
            result = self._user(["cat", f"{self.run_dir}/jobs/{row.idx}.out"])
        except HostError:
            return ""
        text = result.stdout if result.ok else ""
        return text[-limit:]

    def _save(self, results: Iterable[TaskResult]) -> None:
        fresh = [r for r in results if r.index not in self._finished]
        if fresh:
            self.store.save_results(self.id, fresh)
            self._finished.update(r.index for r in fresh)
            self._new.extend(fresh)

    def _flush_counters(self) -> None:
        self.store.add_counters(self.id, self.calls)
        opened = self.backend.connections_opened()
        if opened is not None and self._connections_at_start is not None:
            delta = opened - self._connections_at_start
            if delta:
                self.store.add_counters(self.id, Counter(ssh_connections=delta))
            self._connections_at_start = opened
        self.calls = Counter()

    # cancellation
    def cancel(self) -> int:
        """scancel the run's unfinished jobs (as the user); their tasks become `cancelled`."""
        rows = [r for r in self.store.jobs(self.id) if not r.done]
        for row in rows:
            if row.job_id is None and row.state == "SUBMITTING":
                # Submission interrupted (a signal, a killed process): it may have gone through.
                with contextlib.suppress(SlurmRunnerError):
                    found = self._find([job_name(self.id, row.idx)]).get(job_name(self.id, row.idx))
                    if found:
                        self.store.update_job(self.id, row.idx, job_id=found)
        rows = [r for r in self.store.jobs(self.id) if not r.done]
        ids = [r.job_id for r in rows if r.job_id]
        if ids:
            self.calls[self.backend.scheduler.call_names["cancel"]] += 1
            self.backend.scheduler.cancel(ids)
            # Tasks that ended before the cancel keep their outcome: one last look.
            with contextlib.suppress(HostError):
                self._read_results([r for r in rows if r.job_id])
        for row in rows:
            self._save(
                from_record(rec, row.job_id, None)
                for rec in self._w(row).records.values()
                if rec["status"] != "interrupted"
                and (rec.get("error") or {}).get("cause") != "signal"
            )
            self._save(cancelled(i, row.job_id) for i in row.task_range)
            self.store.update_job(self.id, row.idx, state="CANCELLED", done=1)
        self.store.set_run_state(self.id, "cancelled")
        self._flush_counters()
        return len(ids)

    # reading
    def status(self) -> RunStatus:
        jobs = self.store.jobs(self.id)
        new, self._new = self._new, []
        return RunStatus(
            run_id=self.id,
            n_tasks=self.n_tasks,
            counts=self.store.status_counts(self.id),
            jobs=Counter(j.state for j in jobs),
            calls=self.store.counters(self.id),
            warnings=list(self.warnings),
            new_results=new,
        )

    def results(self) -> list[TaskResult]:
        """Finished tasks' results, in input order (unfinished ones are left out)."""
        found = self.store.results(self.id)
        return [found[i] for i in sorted(found)]

    def job_ids(self) -> list[str]:
        return [j.job_id for j in self.store.jobs(self.id) if j.job_id]
