"""A run's submission: the run folder, then each job claimed in the store before its sbatch,
so no job is ever submitted twice, even by two processes reattaching at the same moment.

The run folder is made fresh and private (refused if it exists), in folders that no other
account may write (run_folders.py). The worker then opens everything in it relative to the
folder itself, never following a link.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .backends import Backend
from .errors import (
    HostError,
    ImpersonationError,
    SchedulerError,
    SSHAuthError,
    SSHHostKeyError,
    SSHKeyError,
    SubmitLimitError,
    TransientSchedulerError,
)
from .hosts.base import CommandResult, Host
from .pacing import PollPolicy
from .results import TaskError, TaskResult
from .retrying import retry_spec
from .run_folders import finish_folders, make_parents, make_run_folders
from .runspec import RunSpec, worker_source
from .script import job_name, render_script
from .store import JobRow, Store, claim_is_live

log = logging.getLogger("slurmrunner")

# Host errors that waiting does not cure: stop at once and say why.
NOT_TRANSIENT = (SSHKeyError, SSHHostKeyError, SSHAuthError, ImpersonationError)


class Submission:
    """The submitting half of a Run (see run.Run, which holds the state named here)."""

    id: str
    store: Store
    spec: RunSpec
    poll_policy: PollPolicy
    backend: Backend
    calls: Counter[str]
    warnings: list[str]
    _claim: str
    _ready_scripts: dict[int, str]
    # Set by the watcher when it made the run's folder with others of its account: made, and
    # why it was refused if it was.
    _folder_made: bool
    _folder_refused: Exception | None
    _retry_submit_at: float | None
    _finished: set[int]

    # Defined by Run: saving results and counting calls belong to watching.
    def _save(self, results: Iterable[TaskResult]) -> None:
        raise NotImplementedError

    def _flush_counters(self) -> None:
        raise NotImplementedError

    def _finish(self, state: str) -> None:
        raise NotImplementedError

    @property
    def user(self) -> str:
        raise NotImplementedError

    def start(self, *, taken_over: bool = False) -> None:
        """Create the run folder as the user and submit every job not yet submitted.
        `taken_over`: the folder may be there already, made by a process that died in its
        own `start` (see resume)."""
        self._make_run_folder(taken_over)
        self._submit_missing()
        self.store.set_run_state(self.id, "running")
        self._flush_counters()

    def resume(self) -> None:
        """Take over a run an earlier process stored: submit the jobs it did not. A run still
        `submitting` is one whose `start` never ended (the process died first, e.g. a server
        killed between storing a run and its watcher's first step): its folder may be missing
        or half made, and a job submitted without it fails to launch. So it is started, taking
        the folder that process may have made."""
        if self.store.run(self.id).state != "submitting":
            self._submit_missing()
            return
        self.start(taken_over=True)

    def _make_run_folder(self, taken_over: bool = False) -> None:
        if self._folder_made:  # with the other runs of its account (watcher, run_folders)
            self._folder_made = False
            if self._folder_refused is not None:
                raise self._folder_refused
            return
        base = self.spec.profile.resolved_project_dir()
        if not taken_over:
            refused = make_run_folders(self._user, base, [self.run_dir])
            if refused:
                raise refused[self.run_dir]
            return
        # From a process that died in `start`: the folder, if there, is that process's (the
        # parents let no other account write, checked after) and holds what it made (the jobs
        # it submitted write into it), so it is kept as it is.
        make_parents(self._user, base)
        self._user(["mkdir", "-p", "-m", "700", self.run_dir], check=True)
        refused = finish_folders(self._user, base, [self.run_dir])
        if refused:
            raise refused[self.run_dir]

    def _user(
        self, argv: list[str], check: bool = False, idempotent: bool = True, **host_kw: Any
    ) -> Any:
        """A command as the user (mkdir -p, cat); an idempotent one runs again if the
        connection dropped while it ran. `host_kw`: max_output, keep_tail (see hosts.base)."""

        def count() -> None:
            self.calls[argv[0]] += 1

        result = run_as_user(self.backend.user_host, argv, count, idempotent, **host_kw)
        if check and not result.ok:
            raise HostError(f"{' '.join(argv[:2])} ... failed: {result.stderr.strip()}")
        return result

    def _submit_missing(self) -> None:
        self._retry_submit_at = None
        todo = [j for j in self.store.jobs(self.id) if j.job_id is None and not j.done]
        if not todo:
            return
        plan = self.spec.plan
        submitted: list[str] = []
        for row in todo:
            if row.state == "SUBMITTING" and claim_is_live(row.claim, self._claim):
                continue  # another process is submitting it right now
            if not self.store.claim_job(self.id, row, self._claim):
                continue  # another process claimed it between our read and now
            name = job_name(self.id, row.idx)
            if row.state == "SUBMITTING":  # an earlier process died around sbatch
                found = self._find_patiently(name)
                if found:
                    self._adopt(row, found)
                    submitted.append(found)
                    continue
            # A retry's job is made from its own plan and resources (retrying.py).
            spec = retry_spec(self.spec, row)
            script = self._ready_scripts.pop(row.idx, None) if spec is self.spec else None
            if script is None:
                args = self.store.task_args(self.id, row.task_range)
                job_plan = plan if spec is self.spec else spec.plan
                job = spec.job(row.idx, list(zip(row.tasks, args, strict=True)), job_plan)
                script = render_script(job, worker_source())
            try:
                job_id = self._sbatch(script, name)
            except SubmitLimitError as exc:
                # Not a failure: the job waits in the store until the user's queue has room.
                self.store.update_job(self.id, row.idx, state="NEW")
                self._retry_submit_at = time.monotonic() + self.poll_policy.submit_limit_retry_s
                note = f"job {row.idx} and later wait for room in the user's queue: {exc}"
                if note not in self.warnings:
                    self.warnings.append(note)
                log.warning("run %s: %s", self.id, note)
                self._log_submitted(submitted)
                return  # the jobs after it would meet the same limit
            except SchedulerError as exc:
                if row.idx == 0:
                    self.store.update_job(self.id, row.idx, state="NEW")
                    self._finish("failed", f"the first job was not submitted: {exc}")
                    raise
                log.warning(
                    "run %s job %d not submitted: user=%s %s", self.id, row.idx, self.user, exc
                )
                self._fail_job(row, "submit_failed", str(exc))
                continue
            self._adopt(row, job_id)
            submitted.append(job_id)
        self._log_submitted(submitted)

    def _log_submitted(self, job_ids: list[str]) -> None:
        """One line for the jobs a call submitted (all of a run's at its start)."""
        if job_ids:
            shown = job_ids[0] if len(job_ids) == 1 else f"{job_ids[0]}..{job_ids[-1]}"
            log.info(
                "run %s submitted: user=%s jobs=%d ids=%s", self.id, self.user, len(job_ids), shown
            )

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
            except NOT_TRANSIENT:
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
            except NOT_TRANSIENT:
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


def run_as_user(
    host: Host,
    argv: list[str],
    on_attempt: Callable[[], None],
    idempotent: bool = True,
    **host_kw: Any,
) -> CommandResult:
    """`argv` on the user's host, run again (up to 3 times) when the connection dropped while
    it ran and running it twice does no harm; `on_attempt` is called before each run."""
    delays = [0.5, 1.0, 2.0]
    while True:
        on_attempt()
        try:
            return host.run(argv, **host_kw)
        except HostError as exc:
            if not idempotent or not getattr(exc, "maybe_ran", False) or not delays:
                raise
            log.warning("%s interrupted (%s); running it again", argv[0], exc)
            time.sleep(delays.pop(0))
