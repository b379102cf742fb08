"""One loop that drives every active run of a process, of every user and backend.

Runs are grouped twice (watchreads.RunKeys): by *scheduler*, the runs whose jobs one poll can
answer (a local queue file; the SLURM of this host, asked as the server user for every sudo
user; an SSH connection), and by *identity*, the runs whose files one `cat` can read (one
cluster account). A cycle costs, per scheduler, at most one poll (squeue) for the jobs of all
its runs and one history call (sacct) for the jobs squeue lost, and, per identity, one `cat` of
every run's results chunks (watchreads.py; more only when something is off), each on its own
adaptive pace; then every run stepped settles what is final. Run.poll/wait/as_completed are
this loop with one run in it. What each cycle cost is in `stats` (watchstats.py).

A run's step that fails (any exception) is logged and counted and the run is retried after
a growing pause; it never stops the loop for the others. Thread-safe: add, remove, cancel,
runs and stats may be used from any thread while run_forever or step runs in one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import OperationalError

from .pacing import PollPolicy, ReadPace
from .run_folders import make_run_folders
from .watchpolls import SchedulerCalls, _by, _Scheduler
from .watchreads import Entry, Identity, RunKeys, SharedReads, run_keys
from .watchstats import CallKey, CycleStats, WatcherStats

if TYPE_CHECKING:
    from .run import Run

__all__ = ["RunKeys", "Watcher", "WatcherStats", "run_keys"]

log = logging.getLogger("slurmrunner")

ERROR_BACKOFF_MAX_S = 60.0
#: A database that cannot be reached (a restart) is every run's trouble, not one run's fault:
#: its runs retry at most this far apart, so they carry on within seconds of its return instead
#: of up to ERROR_BACKOFF_MAX_S later. A retry while it is down costs a refused connection.
DB_ERROR_BACKOFF_MAX_S = 8.0
#: A run's call counters are saved this often (a write per run): they are for reading later.
COUNTERS_EVERY_S = 5.0
# After a run joins, squeue stays at its fastest pace this long (not doubling when nothing
# changed): its jobs start within the scheduler's next passes, and short ones end soon after.
FRESH_SQUEUE_S = 5.0
FINAL_RUN_STATES = ("done", "cancelled", "failed")
#: Most run folders made in one set of calls (Watcher._make_folders).
FOLDERS_AT_ONCE = 50


class Watcher(SchedulerCalls, SharedReads):
    def __init__(
        self,
        poll: PollPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        raise_errors: bool = False,
        keys: Callable[[Run], RunKeys] | None = None,
        counters_every_s: float = COUNTERS_EVERY_S,
    ) -> None:
        """`raise_errors`: a run's failure is raised to the caller (a watcher of one run) and
        the run stays when it is done (its caller decides); `keys`: the grouping of runs;
        `counters_every_s`: how often a run's call counters are saved (0: every cycle)."""
        self.poll_policy = poll or PollPolicy()
        self._counters_every_s = counters_every_s
        self.stats = WatcherStats()
        self._clock = clock
        self._raise = raise_errors
        self._keys = keys or (lambda run: run_keys(run.spec.profile, run.spec.local_queue))
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._incoming: list[Entry] = []
        self._leaving: set[str] = set()
        self._schedulers: dict[str, _Scheduler] = {}
        self._identities: dict[str, Identity] = {}
        self._wake = threading.Event()
        self._calls: Counter[CallKey] = Counter()  # this cycle's
        self._errors = 0

    # runs in and out (any thread)
    def add(self, run: Run, *, resume: bool = True, start: bool = False) -> None:
        """Watch `run` from the next cycle: `start` it there (run folder, submission), or
        `resume` it (submit what an earlier process did not)."""
        with self._lock:
            if run.id not in self._entries and all(e.run.id != run.id for e in self._incoming):
                self._incoming.append(Entry(run, self._keys(run), resume, start))
                self._leaving.discard(run.id)
        self._wake.set()

    def remove(self, run_id: str) -> None:
        """Stop watching a run (its jobs go on; another watcher may take it)."""
        with self._lock:
            self._leaving.add(run_id)
        self._wake.set()

    def cancel(self, run_id: str) -> int:
        """Cancel a watched run (it leaves at the next cycle); 0 when it is not watched."""
        with self._lock:
            entry = self._entries.get(run_id) or next(
                (e for e in self._incoming if e.run.id == run_id), None
            )
        count = entry.run.cancel() if entry else 0
        self._wake.set()
        return count

    def runs(self) -> list[Run]:
        with self._lock:
            return [e.run for e in [*self._entries.values(), *self._incoming]]

    # the loop
    def run_forever(self, stop: threading.Event) -> None:
        """Cycle until `stop` is set; a new run wakes it at once."""
        while not stop.is_set():
            self._wake.clear()
            try:
                self.step()
            except Exception:  # a fault of the watcher's own: logged, the loop goes on
                log.exception("watcher cycle failed")
            end = time.monotonic() + self.pause()
            while not (stop.is_set() or self._wake.is_set()) and time.monotonic() < end:
                stop.wait(min(end - time.monotonic(), 0.05))

    def pause(self) -> float:
        """Seconds until something is due (a read, a retry); at most the slow read pace."""
        now = self._clock()
        longest = self.poll_policy.read_max_s
        with self._lock:
            if self._incoming or self._leaving:
                return 0.0
            entries = list(self._entries.values())
        due = [now + longest]
        for e in entries:
            wake = self._identities[e.keys.identity].next_read
            sched = self._schedulers[e.keys.scheduler]
            if sched.interval > 0 and not e.run.backend.scheduler.cheap_poll:
                # squeue at its own pace, not only when some read happens to be due: a job's
                # start or end it sees wakes its user's reads (step), which may have backed
                # off meanwhile. (A poll every cycle: the cycles keep the reads' pace.)
                wake = min(wake, sched.next_at)
            due.append(max(wake, e.retry_at))  # a run whose step failed waits it out
            if e.run._retry_submit_at is not None:
                due.append(now + e.run._retry_submit_at - time.monotonic())
        return min(max(min(due) - now, 0.0), longest)

    def step(self, read_all: bool = False) -> bool:
        """One cycle; whether it brought news. `read_all`: read every identity now, whatever
        its pace (a watcher of one run, paced by its caller)."""
        started, cpu = self._clock(), time.thread_time()  # this thread: not the API's
        self._calls, self._errors = Counter(), 0
        self._take_in(started)
        now = self._clock()
        polled = self._polls_due(now)
        stepped = self._due(now, read_all, polled)
        for e in stepped:
            e.ok, e.news, e.rows, e.asked = True, False, [], False
        self._make_folders([e for e in stepped if e.start])
        for e in stepped:
            self._guard(e, self._prepare, e)
        self._job_rows([e for e in stepped if e.ok])
        live = [e for e in stepped if e.ok and e.rows]
        asked = []
        for key, group in _by(live, lambda e: e.keys.scheduler).items():
            if key in polled:
                sched = self._schedulers[key]
                self._poll(sched, group)
                asked.append((sched, group))
        for key in polled - {sched.key for sched, _ in asked}:
            sched = self._schedulers[key]  # due, but no job to ask about: not due again at once
            sched.next_at = now + sched.interval
        for key in {e.keys.identity for e in live if e.news}:
            # A job started or ended, says squeue: its files are read now, not when a pace
            # that backed off while it was pending comes round (up to read_max_s later).
            ident = self._identities[key]
            ident.pace.wake()
            ident.next_read = min(ident.next_read, now)
        read = []
        for key, group in _by(live, lambda e: e.keys.identity).items():
            ident = self._identities[key]
            if read_all or now >= ident.next_read:
                waiting = self._read(ident, [e for e in group if e.ok], now)
                read.append((ident, group, waiting))
        for key in {e.keys.identity for e in stepped if e.ok} - {i.key for i, _, _ in read}:
            # Due, but none of its runs has a job to read yet (they wait for room in the
            # user's queue): not due again at once (a submission wakes the loop by itself).
            ident = self._identities[key]
            if ident.next_read <= now:
                ident.next_read = now + self.poll_policy.read_max_s
        for sched, group in asked:
            self._history(sched, [e for e in group if e.ok])
        for e in live:
            if e.ok:
                self._guard(e, self._settle, e)
        end = self._clock()
        for e in stepped:
            if e.ok:
                e.errors = 0
                if end - e.flushed_at >= self._counters_every_s or e.run.all_ended:
                    self._guard(e, e.run._flush_counters)
                    e.flushed_at = end
        for ident, group, waiting in read:
            news = any(e.news for e in group)
            etas = [eta for e in group if e.ok and (eta := e.eta(end)) is not None]
            eta = min(etas, default=None)
            ident.next_read = end + ident.pace.after_read(news, end, eta)
            if waiting:
                # Runs whose separator it did not know yet wait for the next look (watchreads):
                # at the minimum pace, or an account's runs that all end while pending (short
                # jobs squeue never sees running) are each seen one paced read after the last.
                ident.next_read = min(ident.next_read, end + self.poll_policy.read_min_s)
        ids = {e.run.id for e in stepped}
        for e in list(self._entries.values()):
            ended = e.ok and e.run.id in ids and e.run.all_ended
            if e.run._closed or (ended and not self._raise):
                self._leave(e)
        cycle = CycleStats(started, end - started, time.thread_time() - cpu, len(stepped))
        cycle.calls, cycle.errors = self._calls, self._errors
        self.stats.record(cycle)
        return any(e.news for e in stepped)

    def _take_in(self, now: float) -> None:
        with self._lock:
            new, self._incoming = self._incoming, []
            leaving, self._leaving = self._leaving, set()
        for e in new:
            self._entries[e.run.id] = e
            self._schedulers.setdefault(
                e.keys.scheduler, _Scheduler(e.keys.scheduler, self.poll_policy.squeue_min_s)
            )
            policy = self.poll_policy
            pace = ReadPace(
                policy.read_min_s, policy.read_max_s, policy.read_hold_s, policy.read_age_fraction
            )
            ident = self._identities.setdefault(e.keys.identity, Identity(e.keys.identity, pace))
            ident.next_read = min(ident.next_read, now)  # a new run is read at once
            self._schedulers[e.keys.scheduler].fresh_until = now + FRESH_SQUEUE_S
            ident.pace.restart()
            token = e.run._sep_token
            if token is not None and ident.tokens.setdefault(token, e.run.id) != e.run.id:
                e.run._sep_token = None  # another run's: learnt again, from its own look
        for run_id in leaving:
            if run_id in self._entries:
                self._leave(self._entries[run_id], done=False)

    def _due(self, now: float, read_all: bool, polled: set[str]) -> list[Entry]:
        """The runs this cycle steps: those whose identity is read or whose scheduler is
        asked now, and those with a submission due; the others wait untouched (a cycle costs
        what is due, not what is watched)."""
        out = []
        for e in self._entries.values():
            if e.retry_at > now:
                continue  # its last step failed: it waits a while
            retry = e.run._retry_submit_at
            if (
                read_all
                or e.resume
                or e.start
                or e.keys.scheduler in polled
                or now >= self._identities[e.keys.identity].next_read
                or (retry is not None and time.monotonic() >= retry)
            ):
                out.append(e)
        return out

    def _guard(self, e: Entry, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) as one step of e's run, under its lock; a failure is e's alone."""
        if not e.ok:
            return None
        try:
            with e.run._lock:
                if e.run._closed:
                    e.ok = False
                    return None
                return fn(*args)
        except Exception as exc:
            if self._raise:
                raise
            self._failed(e, exc)
            return None

    def _failed(self, e: Entry, exc: BaseException) -> None:
        e.ok = False
        e.errors += 1
        most = DB_ERROR_BACKOFF_MAX_S if isinstance(exc, OperationalError) else ERROR_BACKOFF_MAX_S
        e.retry_at = self._clock() + min(2.0 ** (e.errors - 1), most)
        self._errors += 1
        self.stats.failed(e.run.id)
        log.error("run %s step failed: user=%s %r", e.run.id, e.run.user, exc, exc_info=exc)
        e.run._warn_once(f"watching this run failed ({type(exc).__name__}); it is retried")
        try:
            final = e.run.store.run(e.run.id).state in FINAL_RUN_STATES
        except Exception:  # the store itself is down: keep the run, retry later
            final = False
        if final:
            with self._lock:
                self._leaving.add(e.run.id)

    def _count(self, kind: str, group: str, n: int) -> None:
        if n > 0:
            self._calls[(kind, group)] += n

    def _fail_all(self, entries: list[Entry], exc: BaseException) -> None:
        if self._raise:
            raise exc
        for e in entries:
            self._failed(e, exc)

    def _leave(self, e: Entry, done: bool = True) -> None:
        # Under the run's lock: a retry (from another thread) makes it unfinished again,
        # either before this (it stays) or after its end is saved (the retry runs it again).
        with e.run._lock:
            if done and not e.run._closed and not e.run.all_ended:
                return  # a retry came in since the cycle saw it ended: watched on
            self._leave_now(e, done)

    def _leave_now(self, e: Entry, done: bool) -> None:
        del self._entries[e.run.id]
        self._guard(e, e.run._flush_counters)  # what is still counted here
        ident = self._identities[e.keys.identity]
        if ident.tokens.get(e.run._sep_token or "") == e.run.id:
            del ident.tokens[e.run._sep_token or ""]
        ident.alone.discard(e.run.id)
        ident.sizes.pop(e.run.id, None)
        ident.unlearnt.pop(e.run.id, None)
        if done and not e.run._closed:
            try:
                if e.run.store.run(e.run.id).state != "cancelled":
                    e.run._finish("done")
            except Exception as exc:
                log.error("run %s ended, but its state was not saved: %r", e.run.id, exc)

    # the phases of a cycle (the scheduler calls: watchpolls.py; the reads: watchreads.py)
    def _make_folders(self, starting: list[Entry]) -> None:
        """The folders of the runs of one account (and project) starting in this cycle, made
        together: four calls as the user for them all, not four per run (run_folders.py).
        Each run's start then takes its folder, or the reason it was refused."""

        groups: dict[tuple[str, str], list[Entry]] = defaultdict(list)
        for e in starting:
            try:
                where = e.run.spec.profile.resolved_project_dir()
            except Exception:  # e.g. no working folder: its own start says so, in its guard
                continue
            if not e.run._closed:
                groups[(e.keys.identity, where)].append(e)
        for (_, base), entries in groups.items():
            # A bounded command line (an SSH command is one string, 128 KiB at most).
            for k in range(0, len(entries) if len(entries) > 1 else 0, FOLDERS_AT_ONCE):
                group = entries[k : k + FOLDERS_AT_ONCE]
                first = group[0].run
                with first._lock:  # its call counters take the group's calls
                    try:
                        dirs = [e.run.run_dir for e in group]
                        refused = make_run_folders(first._user, base, dirs)
                    except Exception as exc:  # the project folder refused, the host down
                        refused = {e.run.run_dir: exc for e in group}
                for e in group:
                    e.run._folder_made = True
                    e.run._folder_refused = refused.get(e.run.run_dir)

    def _prepare(self, e: Entry) -> None:
        """Start or resume the run if it is its first step; its job rows are read after."""
        run = e.run
        submit = run.backend.scheduler.call_names.get("submit", "submit")
        before = run.calls[submit]
        e.submitted = None
        if e.start:
            e.start = e.resume = False
            try:
                run.start()  # flushes the run's counters: its jobs count as the submissions
            except OperationalError:
                # The database went away (a restart), not the run: failing it would need the
                # database too, and a run left unstarted but not failed is never submitted.
                # Taken up once the database answers, as a restarted server would (resume:
                # start again, keeping the folder; claimed jobs are found, not resubmitted).
                e.resume = True
                raise
            except Exception as exc:
                # Not to be tried again (its folder is refused once made): what went through
                # is cancelled, and the run is failed, saying why.
                why = f"could not start: {exc}"
                try:
                    run.fail(why)
                except Exception:
                    run._finish("failed", why)  # the cancel failed: the state still says why
                    raise
                raise
            return  # its jobs, read next, count as its submissions
        if e.resume:
            e.resume = False
            try:
                run.resume()  # a run whose start never ended gets its folder first
            except OperationalError:
                e.resume = True  # the database's fault (see above): again once it answers
                raise
        run._submit_due()  # jobs that waited for room in the user's queue
        e.submitted = run.calls[submit] - before

    def _settle(self, e: Entry) -> None:
        before = e.run.calls["cat"]
        e.news |= e.run._settle_rows(e.rows)
        self._count("job_output", e.keys.identity, e.run.calls["cat"] - before)
