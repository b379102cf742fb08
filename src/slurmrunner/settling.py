"""A run's settling: what is final is saved, and a job is closed when nothing more can come
(run.Run holds the state named here).

Success comes only from the worker's record. A task with no record after its job is over gets
the scheduler's word on why (OUT_OF_MEMORY, TIMEOUT, CANCELLED, ...) and the end of the job's
own output; a record whose cause only the scheduler knows (a task killed by its signal, an
interruption) is held until that word is in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .chunks import JobWatch
from .errors import HostError
from .results import TaskResult, from_record, without_record
from .store import JobRow, Store

log = logging.getLogger("slurmrunner")

#: What of a job's output (jobs/K.out) is kept to explain a task without a record.
JOB_OUTPUT_TAIL = 2048


class Settling:
    """The settling part of a Run (see run.Run)."""

    id: str
    store: Store
    run_dir: str
    _finished: set[int]
    _retry_submit_at: float | None

    if TYPE_CHECKING:  # defined by Run, Reading and Submission

        @property
        def user(self) -> str: ...

        def _w(self, row: JobRow) -> JobWatch: ...

        def _save(self, results: Iterable[TaskResult]) -> None: ...

        def _log_path(self, index: int) -> str: ...

        def _user(self, argv: list[str], check: bool = False, **kw: Any) -> Any: ...

    def _settle_rows(self, rows: list[JobRow]) -> bool:
        news = False
        for row in rows:
            news |= self._settle(row)
        return news

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
