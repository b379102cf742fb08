"""The service's one watcher: a thread that drives every active run of every user.

Started with the app (its lifespan): it first takes back every run the database says is not
finished (a restart after SIGKILL, or after a clean stop, resumes them: jobs already submitted
are watched, not submitted again, see store.claim_job), then cycles until the app stops. A new
run is handed over by the POST that stored it (`add(run, start=True)`): the request returns at
once, the run's folder and sbatch happen in this thread. A retry (`retry`) is stored by the
request, on the watcher's own Run object when it has one, and submitted here as well.

On a clean stop (SIGTERM) the runs are left running on the cluster and resumed at the next
start; a Resource's `local` jobs run on this machine, so the admin chooses (`serve
--local-jobs-on-stop`) whether they are left running or cancelled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from typing import Literal

from ..pacing import PollPolicy
from ..run import RetryStarted, Run
from ..runner import Runner
from ..store import Store
from ..watcher import Watcher

log = logging.getLogger("slurmrunner.service")

LocalJobsOnStop = Literal["keep", "cancel"]
STOP_JOIN_S = 30.0


class ServiceWatcher:
    def __init__(
        self,
        store: Store,
        poll: PollPolicy | None = None,
        local_jobs_on_stop: LocalJobsOnStop = "keep",
    ) -> None:
        self.store = store
        self.poll_policy = poll or PollPolicy()
        self.watcher = Watcher(self.poll_policy)
        self.local_jobs_on_stop = local_jobs_on_stop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retrying = threading.Lock()  # one retry at a time: see retry
        self.resumed: list[str] = []

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Take back the unfinished runs, then start the loop's thread."""
        self.resume_all()
        self._thread = threading.Thread(
            target=self.watcher.run_forever, args=(self._stop,), name="slurmrunner-watcher"
        )
        self._thread.daemon = True  # a hung cluster call must not keep a stopping process alive
        self._thread.start()
        log.info("watcher started: %d unfinished run(s) resumed", len(self.resumed))

    def resume_all(self) -> None:
        for run_id in self.store.active_runs():
            try:
                run = Runner.attach(run_id, self.store, self.poll_policy)
            except Exception as exc:  # one bad run never keeps the others from resuming
                log.error("run %s not resumed: %s", run_id, exc)
                continue
            self.watcher.add(run, resume=True)
            self.resumed.append(run_id)

    def add(self, run: Run) -> None:
        """Watch a run just stored: submitted from the next cycle."""
        self.watcher.add(run, start=True)

    def cancel(self, run_id: str, make_run: Callable[[], Run]) -> int:
        """Cancel a run, watched here or not (a run that had already finished keeps its
        state). The watcher's own Run object is used when it has one (its lock orders the
        cancel after the step under way); `make_run` builds one only when it has not."""
        if any(r.id == run_id for r in self.watcher.runs()):
            return self.watcher.cancel(run_id)
        return make_run().cancel()

    def retry(
        self,
        run_id: str,
        make_run: Callable[[], Run],
        causes: Collection[str] | None = None,
        indices: Collection[int] | None = None,
        mem: str | None = None,
        time: str | None = None,
    ) -> RetryStarted:
        """Store a retry of the run's failed tasks (Run.retry, with submit=False: the caller's
        thread makes no sbatch); the watcher's next cycle submits its jobs. The watcher's own
        Run object is used when it has one (its lock orders the retry between two steps, and
        it learns which tasks are unfinished again); else `make_run` builds one, which is
        then watched (resumed: it submits the new jobs). One retry at a time in this process:
        two at once on a run not watched would each build a Run, and the one watched would
        not know of the other's tasks. Raises as Run.retry does."""
        with self._retrying:
            run = next((r for r in self.watcher.runs() if r.id == run_id), None)
            if run is None:
                run = make_run()
            started = run.retry(causes, indices, mem, time, submit=False)
            # Watched from the next cycle; nothing when it is still watched. A run whose last
            # step saw every task ended may have left the watcher meanwhile: taken back.
            self.watcher.add(run, resume=True)
            return started

    def stop(self) -> None:
        """Stop the loop (runs keep running on the cluster); cancel local jobs if asked."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_S)
            if self._thread.is_alive():
                log.warning("watcher did not stop within %.0f s", STOP_JOIN_S)
        if self.local_jobs_on_stop == "cancel":
            for run in self.watcher.runs():
                if run.spec.profile.backend == "local":
                    try:
                        n = run.cancel()
                        log.info("run %s: cancelled %d local job(s) at shutdown", run.id, n)
                    except Exception as exc:
                        log.error("run %s: cancel at shutdown failed: %s", run.id, exc)
        log.info("watcher stopped; unfinished runs resume at the next start")
