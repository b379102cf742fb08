"""A watcher's calls to schedulers (watcher.Watcher inherits them): which schedulers are asked
in a cycle, the job rows of the runs stepped (what the poll asks about, one store query), at
most one poll (squeue) per scheduler for the jobs of all its runs, and one history call
(sacct) for the jobs that poll lost; each scheduler's poll on its own adaptive pace.

Apart from watcher.py, which keeps the loop and the runs' coming and going, the same way the
reading of results files is apart in watchreads.py.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import HostError, TransientSchedulerError
from .watchreads import Entry
from .watchstats import CallKey

if TYPE_CHECKING:
    from .pacing import PollPolicy


@dataclass
class _Scheduler:
    key: str
    interval: float
    next_at: float = 0.0
    last_at: float = float("-inf")
    fresh_until: float = 0.0  # a run joined: squeue at its minimum pace until then

    def asked(self, at: float) -> None:
        """A poll was made (answered or not) at `at`: the next one is an interval later."""
        self.last_at = at
        self.next_at = at + self.interval


class SchedulerCalls:
    """The scheduler part of a Watcher (see watcher.Watcher, which holds the state named here)."""

    if TYPE_CHECKING:  # defined by Watcher
        poll_policy: PollPolicy
        _clock: Callable[[], float]
        _entries: dict[str, Entry]
        _schedulers: dict[str, _Scheduler]
        _calls: Counter[CallKey]

        def _guard(self, e: Entry, fn: Callable[..., Any], *args: Any) -> Any: ...

        def _count(self, kind: str, group: str, n: int) -> None: ...

        def _fail_all(self, entries: list[Entry], exc: BaseException) -> None: ...

    def _polls_due(self, now: float) -> set[str]:
        """The schedulers asked in this cycle: at their adaptive pace (every cycle when a
        poll costs nothing), or at once when a job ended with an interruption or a killed task
        and waits for the scheduler's word on why (still at most once per squeue_min_s)."""
        due = set()
        urgent_after = self.poll_policy.squeue_min_s
        for e in self._entries.values():
            sched = self._schedulers[e.keys.scheduler]
            if sched.key in due or e.retry_at > now:
                continue
            if (
                e.run.backend.scheduler.cheap_poll
                or now >= sched.next_at
                or (now >= sched.last_at + urgent_after and e.run._awaits_any())
            ):
                due.add(sched.key)
        return due

    def _job_rows(self, entries: list[Entry]) -> None:
        """The submitted, unfinished jobs of every run stepped, one query per store (not one
        per run: the cycle's largest cost on PostgreSQL with many runs watched)."""
        for group in _by(entries, lambda e: str(id(e.run.store))).values():
            try:
                found = group[0].run.store.live_jobs_of([e.run.id for e in group])
            except Exception as exc:
                self._fail_all(group, exc)
                continue
            for e in group:
                e.rows = found.get(e.run.id, [])
                n = len(e.rows) if e.submitted is None else e.submitted
                self._count("submit", e.keys.scheduler, n)

    def _poll(self, sched: _Scheduler, group: list[Entry]) -> None:
        """One poll for the jobs of every run of the scheduler; each run takes its answer."""
        ids = [r.job_id for e in group for r in e.rows if r.job_id]
        states, error = None, None
        self._calls[("poll", sched.key)] += 1
        try:
            states = group[0].run.backend.scheduler.poll(ids)
        except (TransientSchedulerError, HostError) as exc:
            error = exc
        except Exception as exc:
            self._fail_all(group, exc)
            sched.asked(self._clock())
            return
        changed = False
        for e in group:
            if self._guard(e, e.run._apply_squeue, e.rows, states, error):
                e.news = changed = True
            e.asked = states is not None
        policy = self.poll_policy
        if error is not None or changed or self._clock() < sched.fresh_until:
            sched.interval = policy.squeue_min_s
        else:
            sched.interval = min(sched.interval * 2, policy.squeue_max_s)
        sched.asked(self._clock())

    def _history(self, sched: _Scheduler, group: list[Entry]) -> None:
        """After the read (a gone job whose files tell how it ended needs no history): one
        history call for the jobs squeue lost, of every run of the scheduler."""
        wanted = [(e, self._guard(e, e.run._history_wanted, e.rows)) for e in group]
        wanted = [(e, gone) for e, gone in wanted if gone]
        if not wanted:
            return
        ids = [r.job_id for _, gone in wanted for r in gone if r.job_id]
        known, error = None, None
        self._calls[("history", sched.key)] += 1
        try:
            known = wanted[0][0].run.backend.scheduler.history(ids)
        except (TransientSchedulerError, HostError) as exc:
            error = exc
        except Exception as exc:
            self._fail_all([e for e, _ in wanted], exc)
            return
        for e, gone in wanted:
            if self._guard(e, e.run._apply_history, gone, known, error):
                e.news = True


# Also how Watcher.step groups a cycle's runs (by scheduler, by identity): one helper for both.
def _by(entries: list[Entry], key: Callable[[Entry], str]) -> dict[str, list[Entry]]:
    groups: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        groups[key(e)].append(e)
    return groups
