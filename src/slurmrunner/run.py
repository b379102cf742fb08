"""One run as a process sees it: its jobs' submission, their watching, its results.

Watching protects the controller: results come from the jobs' own results files (one `cat`
as the user per cycle, on a short adaptive interval) and a job that ends normally says so in
its file, so `squeue` (one call per cycle for all the run's jobs) is asked rarely: on its own
slower adaptive interval, or at once when a job reports an interruption whose cause only the
scheduler knows. A failing `squeue` is retried and never read as an outcome; a job squeue no
longer knows is looked up in the scheduler's history before anything is concluded (asking.py).

Everything a job writes is untrusted (chunks.py cuts and checks the files, records.py each
line): a bad line is counted and reported once per job, never raised. A cycle costs what is
new: a record is saved as soon as it is final and then dropped, and status counts are kept by
the store as results are saved.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .asking import Asking
from .backends import Backend, backend_for
from .chunks import UNREADABLE, JobWatch, cat_paths, split_output
from .errors import HostError, SlurmRunnerError
from .pacing import PollPolicy, ReadPace
from .records import TaskRecord
from .results import TaskResult, awaits_scheduler, cancelled, from_record, without_record
from .runspec import RunSpec
from .script import job_name
from .store import JobRow, Store, new_claim
from .submission import NOT_TRANSIENT, Submission

log = logging.getLogger("slurmrunner")
#: What of a job's output (jobs/K.out) is kept to explain a task without a record.
JOB_OUTPUT_TAIL = 2048
Progress = Callable[["RunStatus"], None]


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


class Run(Submission, Asking):
    """One run: its jobs, their watching, its results. Safe to drive from one thread."""

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
        self.warnings: list[str] = []
        self._watch: dict[int, JobWatch] = {}
        self._bad_reported: set[int] = set()  # jobs whose bad lines were reported
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
        asked = (
            self.backend.scheduler.cheap_poll
            or now >= self._next_squeue
            or (urgent and now >= self._last_squeue + self.poll_policy.squeue_min_s)
        )
        if asked:
            news |= self._squeue(rows)
            self._last_squeue = time.monotonic()
            self._next_squeue = self._last_squeue + self._squeue_interval
        news |= self._read_results(rows)
        if asked:  # after the read: a gone job whose files tell how it ended needs no history
            news |= self._history(rows)
        for row in rows:
            news |= self._settle(row)
        self._flush_counters()
        return news

    def _w(self, row: JobRow) -> JobWatch:
        w = self._watch.get(row.idx)
        if w is None:
            limit = self.spec.config.max_result_bytes
            w = self._watch[row.idx] = JobWatch(row.idx, row.task_range, limit)
        return w

    def _read_results(self, rows: list[JobRow]) -> bool:
        # Jobs whose last look was cut short go last, so that one job's flood (bigger than
        # the host keeps) does not hide the others.
        todo = sorted((r for r in rows if self._reading(r)), key=lambda r: self._w(r).cut_looks)
        if not todo:
            return False
        # Each job's first unsealed chunk and the next ones, all in this one call (newest
        # first: a flood in the open chunk does not hide what came after it). A chunk that
        # was sealed (its next line matched) is never read again.
        windows = {r.idx: self._w(r).window() for r in todo}
        # Over, said the scheduler, before this look began: nothing more will be written.
        over = {r.idx: self._w(r).over for r in todo}
        files = [(r.idx, chunk) for r in todo for chunk in reversed(windows[r.idx])]
        try:
            result = self._user(["cat", *cat_paths(self.run_dir, files)])
        except NOT_TRANSIENT:
            raise
        except HostError as exc:
            # The cluster is out of reach for now: results wait in their files; read later.
            self.warnings.append(f"cat: {exc}")
            log.warning("reading results failed (%s); will retry", exc)
            return False
        other = [
            line
            for line in result.stderr.splitlines()
            if line.strip() and "No such file or directory" not in line
        ]
        if other:
            self._warn_once(f"cat: {other[0][:300]!r}")
        pieces = split_output(result.stdout, len(files))
        if pieces is None:
            # What came back cannot be told apart file by file: nothing is read from it.
            self._warn_once(
                f"results of run {self.id} cannot be read: {self.run_dir}/results/sep "
                "was changed or removed"
            )
            pieces = [UNREADABLE] * len(files)
        news = False
        fresh: list[TaskResult] = []
        taken: set[int] = set()
        at = 0
        for row in todo:
            w = self._w(row)
            window = windows[row.idx]
            mine = pieces[at : at + len(window)][::-1]  # back in chunk order
            at += len(window)
            was_ended, attempt = w.ended, w.attempt
            for chunk, piece in zip(window, mine, strict=True):
                if piece is UNREADABLE:
                    continue
                for rec in w.take(chunk, piece, over[row.idx]):
                    news |= self._accept(row, w, rec, fresh, taken)
            w.after_look(window, mine, over[row.idx])
            news |= w.ended and not was_ended
            if w.attempt > attempt:  # its start line says so before squeue may have
                self._requeued(row)
            self._report_bad_lines(row, w)
        self._save(fresh)
        return news

    def _reading(self, row: JobRow) -> bool:
        """Its files may still bring news: not ended, or ended interrupted and not read whole
        since the scheduler said the job is over (a requeued job writes its next attempt after
        its interrupted end)."""
        w = self._w(row)
        return not w.ended or (w.interrupted and not w.final_look)

    def _accept(
        self, row: JobRow, w: JobWatch, rec: TaskRecord, fresh: list[TaskResult], taken: set[int]
    ) -> bool:
        """A valid record: saved now if final, held if its cause waits for the scheduler (held
        ones are settled in this same cycle when the scheduler's word is in). The first valid
        record of a task wins, but a later attempt's replaces a held one: the requeue stopped
        that one."""
        i = rec.i
        held = w.held.get(i)
        if held is not None and rec.attempt > held.attempt:
            del w.held[i]
        elif i in self._finished or i in w.held or i in taken:
            return False
        taken.add(i)
        if awaits_scheduler(rec):
            w.held[i] = rec
        else:
            fresh.append(from_record(rec, row.job_id, None, self._log_path(i)))
        return True

    def _log_path(self, index: int) -> str:
        return f"{self.run_dir}/logs/{index}.log"

    def _warn_once(self, note: str) -> None:
        if note not in self.warnings:
            self.warnings.append(note)
            log.warning("%s", note)

    def _report_bad_lines(self, row: JobRow, w: JobWatch) -> None:
        if w.bad and row.idx not in self._bad_reported:
            self._bad_reported.add(row.idx)
            self._warn_once(
                f"job {row.idx} ({row.job_id}) wrote lines that are not valid records: they "
                f"are counted and skipped; the first, {w.first_bad}"
            )

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
        """scancel the run's unfinished jobs (as the user); their tasks become `cancelled`.
        A run whose every task has ended has nothing to cancel: 0, and it stays done (its jobs
        may still be leaving the queue, which is no work of the run's)."""
        if sum(self.store.status_counts(self.id).values()) >= self.n_tasks:
            return 0
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
