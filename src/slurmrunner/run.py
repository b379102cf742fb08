"""One run as a process sees it: its jobs' submission, their watching, its results.

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
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .backends import Backend, backend_for
from .errors import HostError, SlurmRunnerError, TransientSchedulerError
from .jobstate import JobState
from .pacing import PollPolicy, ReadPace
from .results import TaskResult, cancelled, from_record, without_record
from .runspec import RunSpec
from .script import job_name, results_relpath
from .store import JobRow, Store, new_claim
from .submission import NOT_TRANSIENT, Submission

log = logging.getLogger("slurmrunner")

# How the worker starts a task's record; lets a re-read line be skipped without parsing it.
_RECORD_HEAD = re.compile(r'\{"i":(\d+),')
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


class Run(Submission):
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
        except NOT_TRANSIENT:
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
