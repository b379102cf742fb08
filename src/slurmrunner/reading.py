"""A run's reading of its jobs' results files: the plan of a look (which chunks of which jobs),
what the pieces the look brought hold, and a look at the run alone (run.Run holds the state
named here; watcher.Watcher reads many runs of one identity in one `cat`, sharedcat.py).

Everything a job writes is untrusted (chunks.py cuts and checks the files, records.py each
line): a bad line is counted and reported once per job, never raised. A record is saved as soon
as it is final and then dropped, so a look costs what is new.

A job the scheduler says has not started (PENDING, and no start line read from its files) is
not read: no worker ran, so its files do not exist, and a look at them costs a `cat` argument
(and an error line) per chunk for nothing. Skipping it is safe because nothing is concluded
from a look that did not happen: its records stay in its files (append-only; a look reads a
chunk from where the previous one stopped), and a job is closed only after a whole look that
began after the scheduler said it was over, which a job that is no longer PENDING gets. A
state read a while ago may be stale (squeue is asked at a slow pace): such a job is still
looked at every PENDING_LOOK_S.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .chunks import UNREADABLE, JobWatch, Piece, cat_paths, split_output
from .errors import HostError
from .records import TaskRecord
from .results import TaskResult, awaits_scheduler, from_record
from .runspec import RunSpec
from .sharedcat import foreign_tokens, head_token
from .store import JobRow
from .submission import NOT_TRANSIENT

log = logging.getLogger("slurmrunner")

#: A job said PENDING (and not started, by its files) is looked at no more often than this.
PENDING_LOOK_S = 10.0
START_LOOK_S = 3.0


@dataclass
class ReadPlan:
    """One look at a run's jobs: the chunks of each job to read, in the order cat reads them."""

    rows: list[JobRow]
    windows: dict[int, list[int]]  # job -> its chunks, in chunk order
    over: dict[int, bool]  # job -> the scheduler said it ended before this look began
    files: list[tuple[int, int]]  # (job, chunk) in cat order: each job's newest chunk first
    cut_looks: int  # most looks in a row cut short at one of its jobs: such runs go last


@dataclass
class Look:
    """What one `cat` of a run alone gave (for the watcher's choice of whom to read together)."""

    news: bool
    token: str | None  # the separator line the output began with, when it could be cut
    clean: bool  # whole, cut at its own token only, no other run's token: fit to share a cat
    size: int  # characters of output
    empty: bool  # no output at all: no separator file yet (no worker wrote anything)
    ran: bool = True  # False: the host could not run the cat (nothing was looked at)


#: Warnings a run keeps (its status's `warnings`): later ones are counted in one last line
#: (and are in the log), so a run that runs for weeks holds no more than these.
MAX_WARNINGS = 100


class Warnings(list[str]):
    """A run's warnings: the first MAX_WARNINGS - 1, then a line counting the others (the
    places of those kept never change: Reading._warn_once updates one in place)."""

    dropped = 0

    def append(self, note: str) -> None:
        if len(self) < MAX_WARNINGS - 1:
            super().append(note)
            return
        self.dropped += 1
        line = f"... and {self.dropped} more warnings (in the log)"
        if len(self) < MAX_WARNINGS:
            super().append(line)
        else:
            self[-1] = line


class Reading:
    """The reading part of a Run (see run.Run)."""

    id: str
    spec: RunSpec
    calls: Counter[str]
    warnings: list[str]
    _warned: dict[str, int]  # _warn_once's keys -> the note's place in warnings
    _watch: dict[int, JobWatch]
    _pending_now: set[int]
    _bad_reported: set[int]
    _finished: set[int]
    #: The run's separator line once a look at it alone was cut cleanly (the watcher's).
    _sep_token: str | None

    run_dir: str
    if TYPE_CHECKING:  # defined by Run, Submission and Asking

        def _save(self, results: Iterable[TaskResult]) -> None: ...

        def _user(self, argv: list[str], check: bool = False, **kw: Any) -> Any: ...

        def _requeued(self, row: JobRow) -> None: ...

        def _job_of_attempt(self, index: int, default: int) -> int: ...

        def _see_jobs(self, rows: Iterable[JobRow]) -> None: ...

    def _w(self, row: JobRow) -> JobWatch:
        w = self._watch.get(row.idx)
        if w is None:
            limit = self.spec.config.max_result_bytes
            w = self._watch[row.idx] = JobWatch(row.idx, row.task_range, limit)
        return w

    def _reading(self, row: JobRow) -> bool:
        """Its files may still bring news: not ended, or ended interrupted and not read whole
        since the scheduler said the job is over (a requeued job writes its next attempt after
        its interrupted end)."""
        w = self._w(row)
        return not w.ended or (w.interrupted and not w.final_look)

    def _unstarted(self, row: JobRow, now: float | None, just_asked: bool = False) -> bool:
        """Not to be read now: never started, as far as anyone knows (see the module doc).
        `just_asked`: the scheduler was asked in this cycle, a moment before this look."""
        w = self._w(row)
        if now is None or (w.queue_state or row.state) != "PENDING" or w.started or w.over:
            return False
        if w.first_seen is None:
            w.first_seen = now
        if now - w.first_seen < START_LOOK_S:
            # Just submitted: its start line tells its start, on the read pace; but not right
            # after squeue called it PENDING in this cycle (no worker has written yet: a cat
            # for nothing). Only now: a job requeued later may hold an earlier attempt's lines.
            return just_asked and row.idx in self._pending_now
        return now - w.looked_at < PENDING_LOOK_S

    def _read_plan(
        self, rows: list[JobRow], now: float | None = None, just_asked: bool = False
    ) -> ReadPlan | None:
        """The next look at `rows` (None: nothing to read). `now`: the watcher's clock;
        `just_asked`: its squeue in this cycle answered for these rows."""
        self._see_jobs(rows)
        # Jobs whose last look was cut short go last, so that one job's flood (bigger than
        # the host keeps) does not hide the others.
        todo = sorted(
            (r for r in rows if self._reading(r) and not self._unstarted(r, now, just_asked)),
            key=lambda r: self._w(r).cut_looks,
        )
        if not todo:
            return None
        # Each job's first unsealed chunk and the next ones, all in this one look (newest
        # first: a flood in the open chunk does not hide what came after it). A chunk that
        # was sealed (its next line matched) is never read again.
        windows = {r.idx: self._w(r).window() for r in todo}
        # Over, said the scheduler, before this look began: nothing more will be written.
        over = {r.idx: self._w(r).over for r in todo}
        files = [(r.idx, chunk) for r in todo for chunk in reversed(windows[r.idx])]
        cut = max(self._w(r).cut_looks for r in todo)
        if now is not None:
            for r in todo:
                self._w(r).looked_at = now
        return ReadPlan(todo, windows, over, files, cut)

    def _apply_read(self, plan: ReadPlan, pieces: list[Piece] | None) -> bool:
        """What a look brought: `pieces`, one per file of the plan, or None when the output
        could not be cut into files (nothing is read from it)."""
        if pieces is None:
            self._warn_once(
                f"results of run {self.id} cannot be read: {self.run_dir}/results/sep "
                "was changed or removed"
            )
            pieces = [UNREADABLE] * len(plan.files)
        news = False
        fresh: list[TaskResult] = []
        taken: set[int] = set()
        at = 0
        for row in plan.rows:
            w = self._w(row)
            window = plan.windows[row.idx]
            mine = pieces[at : at + len(window)][::-1]  # back in chunk order
            at += len(window)
            was_ended, attempt = w.ended, w.attempt
            over = plan.over[row.idx]
            for chunk, piece in zip(window, mine, strict=True):
                if piece is UNREADABLE:
                    continue
                for rec in w.take(chunk, piece, over):
                    news |= self._accept(row, w, rec, fresh, taken)
            w.after_look(window, mine, over)
            news |= w.ended and not was_ended
            if w.attempt > attempt:  # its start line says so before squeue may have
                self._requeued(row)
            self._report_bad_lines(row, w)
        try:
            self._save(fresh)
        except Exception:
            # Not saved (the database went away): the next look reads these jobs' files again
            # from their start, with new watches as a reattaching process does (what was saved
            # before is skipped then). Kept, the watches would have these records lost.
            for row in plan.rows:
                self._watch.pop(row.idx, None)
            raise
        return news

    def _cat_errors(self, stderr: str) -> None:
        """cat's complaints other than files not there yet (a job's next chunk)."""
        other = [
            line
            for line in stderr.splitlines()
            if line.strip() and "No such file or directory" not in line
        ]
        if other:
            self._warn_once(f"cat: {other[0][:300]!r}")

    def _cat_failed(self, exc: HostError) -> None:
        # The cluster is out of reach for now: results wait in their files; read later.
        self.warnings.append(f"cat: {exc}")
        log.warning("reading results failed (%s); will retry", exc)

    def _read_alone(self, plan: ReadPlan, foreign: set[str] | None = None) -> Look:
        """One `cat` of this run's plan alone, cut at its own separator (the one learnt, when
        there is one). `foreign`: the separators of the other runs of its identity."""
        try:
            result = self._user(["cat", *cat_paths(self.run_dir, plan.files)])
        except NOT_TRANSIENT:
            raise
        except HostError as exc:
            self._cat_failed(exc)
            return Look(False, None, False, 0, False, ran=False)
        self._cat_errors(result.stderr)
        out = result.stdout
        pieces = split_output(out, len(plan.files), self._sep_token)
        clean = (
            pieces is not None
            and bool(out)
            and not getattr(result, "stdout_dropped", 0)
            and all(p.whole for p in pieces)
            and not foreign_tokens(out, foreign or set())
        )
        token = head_token(out) if pieces is not None else None
        news = self._apply_read(plan, pieces)
        return Look(news, token, clean, len(out), not out)

    def _read_results(self, rows: list[JobRow]) -> bool:
        """One look at `rows`, this run alone (a cancel's last look)."""
        plan = self._read_plan(rows)
        return self._read_alone(plan).news if plan else False

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
        elif self._job_of_attempt(i, row.idx) != row.idx:
            return False  # an earlier attempt's record, read again: the task was retried
        taken.add(i)
        if awaits_scheduler(rec):
            w.held[i] = rec
        else:
            fresh.append(from_record(rec, row.job_id, None, self._log_path(i)))
        return True

    def _log_path(self, index: int) -> str:
        return f"{self.run_dir}/logs/{index}.log"

    def _warn_once(self, note: str, key: str | None = None) -> None:
        """Say `note` once for `key` (the note itself by default): a later note of the same
        key replaces it where it is (e.g. a count of jobs that changed), not logged again."""
        key = note if key is None else key
        at = self._warned.get(key)
        if at is None:
            if len(self._warned) < MAX_WARNINGS * 10:  # past that, logged each time
                self._warned[key] = len(self.warnings)
            self.warnings.append(note)
            log.warning("%s", note)
        elif at < MAX_WARNINGS - 1 and self.warnings[at] != note:
            self.warnings[at] = note

    def _report_bad_lines(self, row: JobRow, w: JobWatch) -> None:
        if w.bad and row.idx not in self._bad_reported:
            self._bad_reported.add(row.idx)
            self._warn_once(
                f"job {row.idx} ({row.job_id}) wrote lines that are not valid records: they "
                f"are counted and skipped; the first, {w.first_bad}"
            )
