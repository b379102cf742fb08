"""A run's settling: what is final is saved, and a job is closed when nothing more can come
(run.Run holds the state named here).

Success comes only from the worker's record. A task with no record after its job is over gets
the scheduler's word on why (OUT_OF_MEMORY, TIMEOUT, CANCELLED, ...) and the end of the job's
own output; a record whose cause only the scheduler knows (a task killed by its signal, an
interruption) is held until that word is in.

A job that can never start is not waited for: when squeue says a job is PENDING for a reason
that never clears (jobstate.NEVER_CLEARS: PartitionTimeLimit, QOSMaxWallDurationPerJobLimit,
...) in polls spanning PENDING_GRACE_S (at least PENDING_MIN_LOOKS of them), its tasks fail
with that reason (cause `unschedulable`), the run's other jobs are cancelled and the run is
failed, saying why; until then it is a warning. A reason that may not clear (ReqNodeNotAvail,
a hold, a partition down) is a warning, and the run waits on. Pending warnings are one per
reason, counting the jobs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .chunks import JobWatch
from .errors import HostError
from .jobstate import JobState, pending_verdict, reason_name
from .results import TaskError, TaskResult, from_record, without_record
from .store import JobRow, Store

if TYPE_CHECKING:
    from .backends import Backend

log = logging.getLogger("slurmrunner")

#: What of a job's output (jobs/K.out) is kept to explain a task without a record.
JOB_OUTPUT_TAIL = 2048
#: A pending reason that "never clears" fails the run only when seen for the same job in polls
#: at least this many seconds apart (and in at least PENDING_MIN_LOOKS polls): InvalidAccount
#: and InvalidQOS show for a while after an association change or a slurmdbd reconnect,
#: BadConstraints while the nodes with the feature are down. $SLURMRUNNER_PENDING_GRACE_S,
#: read when a Run is made, sets another (the rig's tests).
PENDING_GRACE_S = 60.0
PENDING_MIN_LOOKS = 2
PENDING_GRACE_ENV = "SLURMRUNNER_PENDING_GRACE_S"
_clock = time.monotonic  # the tests' to move


def pending_grace_s() -> float:
    """PENDING_GRACE_S, or $SLURMRUNNER_PENDING_GRACE_S when it is a number of seconds."""
    text = os.environ.get(PENDING_GRACE_ENV, "").strip()
    if not text:
        return PENDING_GRACE_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        log.warning(
            "%s=%r is not a number of seconds: %g is used", PENDING_GRACE_ENV, text, PENDING_GRACE_S
        )
        return PENDING_GRACE_S
    return value


@dataclass
class PendingSeen:
    """A job seen pending for a reason that never clears: since when, in how many polls. Kept
    in the Run, in memory only: a process that reattaches starts counting again (the run
    then fails a grace later, never sooner)."""

    job_id: str | None
    reason: str  # its name (jobstate.reason_name)
    first: float  # _clock()
    looks: int = 0


class Settling:
    """The settling part of a Run (see run.Run)."""

    id: str
    store: Store
    run_dir: str
    calls: Any
    _finished: set[int]
    _retry_submit_at: float | None
    _closed: bool
    _pending_seen: dict[int, PendingSeen]  # job index -> since when (see PendingSeen)
    _pending_grace_s: float

    if TYPE_CHECKING:  # defined by Run, Reading and Submission
        backend: Backend

        @property
        def user(self) -> str: ...

        def _w(self, row: JobRow) -> JobWatch: ...

        def _save(self, results: Iterable[TaskResult]) -> None: ...

        def _log_path(self, index: int) -> str: ...

        def _user(self, argv: list[str], check: bool = False, **kw: Any) -> Any: ...

        def _warn_once(self, note: str, key: str | None = None) -> None: ...

        def _finish(self, state: str, message: str | None = None) -> None: ...

        def _flush_counters(self) -> None: ...

        def fail(self, message: str) -> int: ...

        def _retry_by_policy(self, scan_only: bool = False) -> None: ...

        def _see_jobs(self, rows: Iterable[JobRow]) -> None: ...

        @property
        def all_ended(self) -> bool: ...

        def _job_of_attempt(self, index: int, default: int) -> int: ...

    # Jobs that can never start (Run's bases: Settling comes before Asking, whose squeue
    # answer this takes first).
    def _apply_squeue(
        self, rows: list[JobRow], states: dict[str, JobState] | None, error: Exception | None
    ) -> bool:
        changed: bool = super()._apply_squeue(rows, states, error)  # type: ignore[misc]
        if states:
            changed |= self._check_pending(rows, states)
        return changed

    def _check_pending(self, rows: list[JobRow], states: dict[str, JobState]) -> bool:
        """Warn of a pending reason that may never clear, or that never does but was not seen
        long enough yet; fail the run on one that never does (see the module's doc). Returns
        whether the run was failed."""
        now = _clock()
        never: list[tuple[JobRow, str, str]] = []
        notes: dict[tuple[str, str], list[tuple[JobRow, str]]] = {}
        for row in rows:
            st = states.get(row.job_id or "")
            if st is None:
                continue  # not in this answer: as it was
            verdict = pending_verdict(st)
            name = reason_name(st.reason)
            seen = self._pending_seen.get(row.idx)
            if verdict is None or verdict[0] != "fail":
                self._pending_seen.pop(row.idx, None)
            elif seen is None or (seen.job_id, seen.reason) != (row.job_id, name):
                seen = self._pending_seen[row.idx] = PendingSeen(row.job_id, name, now)
            if verdict is None:
                continue
            kind, why = verdict
            if kind == "fail":
                assert seen is not None
                seen.looks += 1
                if seen.looks >= PENDING_MIN_LOOKS and now - seen.first >= self._pending_grace_s:
                    never.append((row, st.reason.strip(), why))
                    continue
            notes.setdefault((kind, name), []).append((row, why))
        for (kind, name), pending in notes.items():
            note = _pending_note(kind, name, pending, self._pending_grace_s)
            self._warn_once(note, key=f"pending: {name}")
        if not never:
            return False
        row, reason, why = never[0]
        others = f" (and {len(never) - 1} more jobs)" if len(never) > 1 else ""
        message = (
            f"job {row.idx} ({row.job_id}){others} can never start: {reason} ({why}); "
            "the run was failed and its jobs cancelled"
        )
        log.warning("run %s: user=%s %s", self.id, self.user, message)
        self._warn_once(message)
        ids = [r.job_id for r, _, _ in never if r.job_id]
        self.calls[self.backend.scheduler.call_names["cancel"]] += 1
        self.backend.scheduler.cancel(ids)
        for r, why_reason, why_text in never:
            self._save(
                _unschedulable(i, r.job_id, why_reason, why_text)
                for i in r.task_range
                if i not in self._finished
            )
            self.store.update_job(self.id, r.idx, state="CANCELLED", reason=why_reason, done=1)
        self.fail(message)  # cancels the other jobs; nothing to cancel when none is left
        if not self._closed:
            self._finish("failed", message)
            self._closed = True
            self._flush_counters()
        return True

    def _settle_rows(self, rows: list[JobRow]) -> bool:
        """Settle every job; when one ended, the failures so far that the admin's policy
        retries go into new jobs (retrying.py), before anyone could see the run as ended."""
        self._see_jobs(rows)
        closed = [self._settle(row) for row in rows]  # every one: no short cut
        if any(closed) or self.all_ended:
            self._retry_by_policy()
        return any(closed)

    def _settle(self, row: JobRow) -> bool:
        """Save what is final; close the job when nothing more can come."""
        w = self._w(row)
        state = w.state.state if w.state else None
        clean_end = w.ended and not w.interrupted
        if not (clean_end or state):
            return False
        if not clean_end and not w.final_look:
            # Over, says the scheduler, but its files were not read whole since: a failed or
            # lagging look must not turn records still in them (a requeued job's next attempt
            # among them) into lost or interrupted tasks.
            return False
        if state and w.held:  # the scheduler's word on why: held records are final now
            self._save(
                from_record(rec, row.job_id, state, self._log_path(i)) for i, rec in w.held.items()
            )
            w.held.clear()
        elif clean_end and w.held:
            return False  # killed by the scheduler's signal: wait for its word on why
        missing = [i for i in row.task_range if i not in self._finished]
        if missing:  # a task retried since is the retry's job's to settle, not this one's
            missing = [i for i in missing if self._job_of_attempt(i, row.idx) == row.idx]
        if missing:
            end_state = state or "UNKNOWN"
            reason = w.state.reason if w.state else ""
            output = self._job_output_tail(row)
            self._save(
                without_record(i, row.job_id, end_state, reason, output, w.bad) for i in missing
            )
        self.store.update_job(
            self.id,
            row.idx,
            state=state or "COMPLETED",
            reason=w.state.reason if w.state else "",
            done=1,
        )
        log.info(
            "run %s job %d ended: user=%s job_id=%s state=%s no_record=%d",
            self.id,
            row.idx,
            self.user,
            row.job_id,
            state or "COMPLETED",
            len(missing),
        )
        if self._retry_submit_at is not None:
            self._retry_submit_at = time.monotonic()  # a job left: room for a waiting one
        return True

    def _job_output_tail(self, row: JobRow) -> str:
        """The end of the job's own output (often what killed it): the host reads it all,
        as `cat` is what the user's sudo rule allows, but keeps only its last bytes."""
        path = f"{self.run_dir}/jobs/{row.idx}.out"
        try:
            result = self._user(["cat", path], max_output=JOB_OUTPUT_TAIL, keep_tail=True)
        except HostError:
            return ""
        text = result.stdout[-JOB_OUTPUT_TAIL:] if result.ok else ""
        if getattr(result, "stdout_dropped", 0) and "\n" in text:
            text = text.split("\n", 1)[1]  # no half line at the top
        return text


def _pending_note(kind: str, name: str, jobs: list[tuple[JobRow, str]], grace: float) -> str:
    """One warning for every job pending for `name` (the count, the first job named)."""
    row, why = jobs[0]
    first = f"job {row.idx} ({row.job_id})"
    one = len(jobs) == 1
    who = f"{first} is" if one else f"{len(jobs)} jobs ({first}, ...) are"
    if kind == "warn":
        then = "it may never start" if one else "they may never start"
    else:
        then = f"the run fails if this is still so after {grace:g} s"
    return f"{who} pending: {name} ({why}); {then}"


def _unschedulable(index: int, job_id: str | None, reason: str, why: str) -> TaskResult:
    message = f"job {job_id} can never start: {reason} ({why})"
    return TaskResult(index, "failed", error=TaskError("unschedulable", message), job_id=job_id)
