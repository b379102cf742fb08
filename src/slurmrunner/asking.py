"""What the scheduler says of a run's jobs, as a Run takes it (run.Run holds the state named
here; watcher.Watcher makes the calls, one for every run of a scheduler, and paces them).

`squeue` is asked once per cycle for every unfinished job of every run the watcher drives. A
job it no longer knows (it left the queue MinJobAge after its end, before anyone looked) is not
concluded at once: if its files do not tell how it ended, the scheduler's history (`sacct`, one
call per cycle for all such jobs of all runs) is asked first. Only when neither knows, after
HISTORY_ANSWERS answers without it or HISTORY_FAILURES failed calls (a cluster without
accounting, or whose database stays down, still ends its runs), is it taken as gone, and its
tasks without a record become `lost`.

A job back in the queue after it ran (PENDING or REQUEUED again) was requeued, by preemption or
`scontrol requeue`: that is a state change, said once, not an end to wait for at the fast pace.
Its files are read on: the next attempt's records replace the interrupted ones (see run.Run).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from .backends import Backend
from .chunks import JobWatch
from .jobstate import GONE, JobState
from .store import JobRow, Store

log = logging.getLogger("slurmrunner")

HISTORY_ANSWERS = 3
HISTORY_FAILURES = 10
#: A job in one of these states after it ran is back in the queue: it was requeued.
REQUEUE_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
RAN_STATES = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING"})


class Asking:
    """The scheduler-asking half of a Run (see run.Run)."""

    id: str
    store: Store
    backend: Backend
    calls: Counter[str]
    warnings: list[str]
    _watch: dict[int, JobWatch]
    _pending_now: set[int]  # jobs the scheduler's last answer called PENDING

    if TYPE_CHECKING:  # defined by Reading: the watch of each job, the run's warnings

        def _w(self, row: JobRow) -> JobWatch: ...

        def _warn_once(self, note: str, key: str | None = None) -> None: ...

    @staticmethod
    def _awaiting(w: JobWatch) -> bool:
        """Its files ended with an interruption or a task killed by the scheduler's signal:
        only the scheduler knows why, so squeue is asked at the fast pace."""
        return w.state is None and not w.gone and w.ended and (w.interrupted or bool(w.held))

    def _awaits_state(self, row: JobRow) -> bool:
        return self._awaiting(self._w(row))

    def _awaits_any(self) -> bool:
        """A job of the run awaits the scheduler's word (closed jobs never do)."""
        return any(self._awaiting(w) for w in list(self._watch.values()))

    @staticmethod
    def _untold(w: JobWatch) -> bool:
        told = w.ended and not w.interrupted and not w.held
        return w.gone and w.state is None and not told

    def _requeued(self, row: JobRow) -> None:
        self._w(row).requeue()
        self._warn_once(
            f"job {row.idx} ({row.job_id}) was requeued by the scheduler: its unfinished "
            "tasks run again in its next attempt"
        )

    def _apply_squeue(
        self, rows: list[JobRow], states: dict[str, JobState] | None, error: Exception | None
    ) -> bool:
        """Take the scheduler's answer for this run's jobs (`states`, from the one poll the
        watcher made for every run of the scheduler; None when it failed with `error`).
        Returns whether a job's state changed."""
        name = self.backend.scheduler.call_names["poll"]
        self.calls[name] += 1
        self._pending_now = set()
        if states is None:
            # No answer is not an answer: keep every job as it was and ask again later.
            self.calls[name + "_errors"] += 1
            self.warnings.append(f"{name}: {error}")
            log.warning("%s failed (%s); will retry", name, error)
            return False
        changed = False
        for row in rows:
            st = states.get(row.job_id or "")
            if st is None:
                continue
            w = self._w(row)
            w.queue_state = st.state
            if st.state == "PENDING":
                self._pending_now.add(row.idx)
            if st.state in REQUEUE_STATES and (
                (w.ended and w.interrupted)
                or (st.state != row.state and (row.state in RAN_STATES or w.started))
            ):
                self._requeued(row)
            elif st.terminal:
                w.state = st
            elif w.state is None:
                w.gone = st.state == GONE.state
            if st.state != row.state:
                self.store.update_job(self.id, row.idx, state=st.state, reason=st.reason)
                changed = True
        return changed

    def _history_wanted(self, rows: list[JobRow]) -> list[JobRow]:
        """The jobs squeue lost whose files do not tell how they ended (no end line, an
        interrupted one, or a task killed by the scheduler's signal): the history is asked."""
        return [r for r in rows if r.job_id and self._untold(self._w(r))]

    def _apply_history(
        self, gone: list[JobRow], known: dict[str, JobState] | None, error: Exception | None
    ) -> bool:
        """Take the history's answer for `gone` (None when the one call failed with `error`)."""
        name = self.backend.scheduler.call_names.get("history", "history")
        self.calls[name] += 1
        if known is None:
            self.calls[name + "_errors"] += 1
            self.warnings.append(f"{name}: {error}")
            log.warning("%s failed (%s); will retry", name, error)
        changed = False
        for row in gone:
            w = self._w(row)
            st = known.get(row.job_id or "") if known is not None else None
            if st is not None and st.terminal:
                w.state = st
                self.store.update_job(self.id, row.idx, state=st.state, reason=st.reason)
                changed = True
                continue
            # Not known (or still running, says a history that lags): one more try spent.
            if known is None:
                w.history_failures += 1
            else:
                w.history_answers += 1
            if w.history_answers >= HISTORY_ANSWERS or w.history_failures >= HISTORY_FAILURES:
                w.state = JobState(GONE.state, f"{GONE.reason}, nor to {name}")
                changed = True
        return changed
