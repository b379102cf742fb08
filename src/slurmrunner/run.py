"""One run as a process sees it: its jobs' submission, their watching, its results.

A Run is made of its parts, one file each: submission.py (the run folder, each job claimed
then submitted), asking.py (what the scheduler says of its jobs), reading.py (its results
files), settling.py (what is final, and when a job is closed), and here its cancellation and
status. It makes no watching call itself: watcher.Watcher drives every active run of a
process in one loop, with one `squeue` per cycle per scheduler, one `cat` per cycle per
cluster identity and one history call for the jobs squeue lost; `poll`, `wait` and
`as_completed` are that same loop with this one run in it.

Watching protects the controller: results come from the jobs' own results files, read on a
short adaptive interval, and a job that ends normally says so in its file, so `squeue` is
asked rarely: on its own slower adaptive interval, or at once when a job reports an
interruption whose cause only the scheduler knows. A failing `squeue` is retried and never
read as an outcome; a job squeue no longer knows is looked up in the scheduler's history
before anything is concluded (asking.py). A cycle costs what is new: a record is saved as soon
as it is final and then dropped, and status counts are kept by the store as results are saved.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .asking import Asking
from .backends import Backend, backend_for
from .chunks import JobWatch
from .errors import HostError, SlurmRunnerError
from .pacing import PollPolicy
from .reading import Reading, Warnings
from .results import TaskResult, cancelled
from .retrying import Retrying, RetryStarted
from .runspec import RunSpec
from .script import job_name
from .settling import JOB_OUTPUT_TAIL, PendingSeen, Settling, pending_grace_s
from .store import Store, new_claim
from .submission import Submission
from .watcher import Watcher

__all__ = ["JOB_OUTPUT_TAIL", "Progress", "RetryStarted", "Run", "RunStatus"]

log = logging.getLogger("slurmrunner")
Progress = Callable[["RunStatus"], None]


def _now() -> float:
    # Looked up at each call: a test may give this module a clock of its own.
    return time.monotonic()


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


class Run(Reading, Settling, Submission, Asking, Retrying):
    """One run: its jobs, their watching, its results.

    Driven by one watcher at a time (its own, through poll/wait/as_completed, or a process's
    Watcher); `cancel` and the reading methods may be called from another thread.
    """

    def __init__(
        self,
        run_id: str,
        store: Store,
        spec: RunSpec,
        poll: PollPolicy,
        connections_before: int | None = None,
    ) -> None:
        self.id = run_id
        self.store = store
        self.spec = spec
        self.poll_policy = poll
        self.backend: Backend = backend_for(spec.profile, spec.local_queue)
        self.calls: Counter[str] = Counter()
        self.warnings: list[str] = Warnings()  # bounded (reading.MAX_WARNINGS)
        self._warned: dict[str, int] = {}
        # Pending reasons that never clear, as seen so far (settling.PendingSeen).
        self._pending_seen: dict[int, PendingSeen] = {}
        self._pending_now: set[int] = set()  # PENDING in the scheduler's last answer
        self._pending_grace_s = pending_grace_s()
        self._watch: dict[int, JobWatch] = {}
        self._bad_reported: set[int] = set()  # jobs whose bad lines were reported
        self._finished = store.finished_indices(run_id)
        self._sep_token: str | None = None
        # SSH connections opened from here on count for this run (from before planning when
        # the planning itself asked the cluster).
        opened = self.backend.connections_opened()
        self._connections_at_start = opened if connections_before is None else connections_before
        self._claim = new_claim()
        # Job index -> its script, rendered while planning (runner.prepare): submitted as is.
        self._ready_scripts: dict[int, str] = {}
        self._folder_made, self._folder_refused = False, None  # see Watcher._make_folders
        self._retry_submit_at: float | None = None  # set while the user's job limit holds
        self._new: list[TaskResult] = []  # saved since the last status()
        # Failures saved since the retry policy last looked (retrying.py); the first look
        # takes every stored failure: an earlier process may have died before retrying them.
        self._policy_todo: list[TaskResult] = []
        self._policy_scan = True
        self._attempt_jobs: dict[int, int] | None = None
        self._newest_retry_job = -1
        # Held by the watcher while it works on this run, and by cancel: a cancel from another
        # thread waits for the step under way, never for a whole cycle's calls.
        self._lock = threading.RLock()
        self._closed = False  # cancelled: no watcher touches it any more
        self._watcher: Watcher | None = None  # its own, for poll/wait/as_completed

    @property
    def n_tasks(self) -> int:
        return self.spec.n_tasks

    @property
    def run_dir(self) -> str:
        return self.spec.run_dir

    @property
    def all_ended(self) -> bool:
        """Every task has a result (saved by this object, or there before it was made)."""
        return len(self._finished) >= self.n_tasks

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

    def _own_watcher(self) -> Watcher:
        """A watcher of this one run: the process's loop, with one run in it (its errors are
        raised to the caller, and it reads at every cycle: the caller paces it)."""
        if self._watcher is None:
            self._watcher = Watcher(
                self.poll_policy, clock=_now, raise_errors=True, counters_every_s=0.0
            )
            self._watcher.add(self, resume=False)
        return self._watcher

    def _cycle(self) -> bool:
        """One cycle of its own watcher; whether it brought news."""
        return self._own_watcher().step(read_all=True)

    def _cycles(self, timeout: float | None) -> Iterator[RunStatus]:
        """Watch, yielding the status after each look, until every task has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        watcher = self._own_watcher()
        self._submit_missing()
        while True:
            self._cycle()
            status = self.status()
            yield status
            if status.done:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.id} not finished after {timeout}s")
            time.sleep(watcher.pause())
        if self.store.run(self.id).state not in ("cancelled", "failed"):
            self._finish("done")

    def _finish(self, state: str, message: str | None = None) -> None:
        """Save the run's final state (done, cancelled, failed; `message`: why it failed) and
        log it in one line, with its counts: a server's log then tells every run's end, and
        whose it was."""
        self.store.set_run_state(self.id, state, message[:2000] if message else None)
        counts = self.store.status_counts(self.id)
        shown = " ".join(f"{k}={counts[k]}" for k in ("ok", "failed", "cancelled"))
        log.info("run %s %s: user=%s tasks=%d %s", self.id, state, self.user, self.n_tasks, shown)

    @property
    def user(self) -> str:
        """The cluster account the run's jobs run as (for logs)."""
        return self.spec.profile.username or "local"

    def _submit_due(self) -> None:
        """Jobs waiting for room in the user's queue are submitted when their time has come
        (the watcher's cycle, before it reads the run's jobs: Store.live_jobs_of). Failures
        the retry policy has not looked at yet (a reattached run's) are retried first."""
        self._retry_by_policy(scan_only=True)
        if self._retry_submit_at is not None and time.monotonic() >= self._retry_submit_at:
            self._submit_missing()

    def _save(self, results: Iterable[TaskResult]) -> None:
        fresh = [r for r in results if r.index not in self._finished]
        if fresh:
            self.store.save_results(self.id, fresh)
            self._finished.update(r.index for r in fresh)
            self._new.extend(fresh)
            if self.spec.config.retry:
                self._policy_todo.extend(r for r in fresh if r.status == "failed")

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
        """scancel the run's unfinished jobs (as the user); their tasks become `cancelled`.
        A run whose every task has ended has nothing to cancel: 0, and it stays done (its jobs
        may still be leaving the queue, which is no work of the run's)."""
        with self._lock:  # a watcher's step on this run ends first; none starts after
            return self._cancel()

    def fail(self, message: str) -> int:
        """Cancel what went through and mark the run failed, saying why, in one step: its
        state goes straight to `failed` (never `cancelled` on the way)."""
        with self._lock:
            return self._cancel("failed", message)

    def _cancel(self, state: str = "cancelled", message: str | None = None) -> int:
        if sum(self.store.status_counts(self.id).values()) >= self.n_tasks:
            return 0
        if self.store.run(self.id).state == "failed":
            return 0  # its jobs were cancelled when it failed; it stays failed, saying why
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
            # Tasks interrupted or killed by the cancel itself (held) are cancelled, as are
            # those that never reported; those that ended before were saved by the last look.
            self._w(row).held.clear()
            self._save(cancelled(i, row.job_id) for i in row.task_range)
            self.store.update_job(self.id, row.idx, state="CANCELLED", done=1)
        self._finish(state, message)
        self._closed = True
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
        return self.store.results_in_order(self.id)

    def job_ids(self) -> list[str]:
        return [j.job_id for j in self.store.jobs(self.id) if j.job_id]
