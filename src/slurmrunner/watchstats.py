"""What a watcher's cycles cost: calls by kind and group, per cycle and in all, and how long
each cycle took. Read by tests ("at most one squeue per cycle per scheduler") and metrics.

Kinds: `poll` (squeue, or the local queue), `history` (sacct), `cat` (results files; a group
is a cluster identity), `job_output` (the end of a job's own output, once per job that ended
without a record for every task), `submit` (sbatch). A group is a watcher.RunKeys value.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

RECENT_CYCLES = 1000
CallKey = tuple[str, str]  # (kind, group)


@dataclass
class CycleStats:
    started: float  # the watcher's clock
    duration_s: float
    cpu_s: float  # the watcher thread's own CPU during the cycle (time.thread_time)
    runs: int  # runs stepped
    calls: Counter[CallKey] = field(default_factory=Counter)
    errors: int = 0  # run steps that failed


class WatcherStats:
    """Counters of a watcher; safe to read from another thread (snapshot())."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cycles = 0
        self.calls: Counter[CallKey] = Counter()
        #: The most calls of one kind to one group in any single cycle.
        self.most_per_cycle: Counter[CallKey] = Counter()
        self.errors: Counter[str] = Counter()  # run id -> failed steps
        self.fallbacks: Counter[str] = Counter()  # identity -> shared cats read again alone
        self.cycle_s_total = 0.0
        self.cycle_s_max = 0.0
        self.cpu_s_total = 0.0
        self.recent: deque[CycleStats] = deque(maxlen=RECENT_CYCLES)
        #: Called with each cycle once it is counted, in the watcher's thread (the service's
        #: metrics take every cycle's duration here, not only the last RECENT_CYCLES').
        self.listeners: list[Callable[[CycleStats], None]] = []

    def record(self, cycle: CycleStats) -> None:
        with self._lock:
            self.cycles += 1
            self.calls.update(cycle.calls)
            for key, n in cycle.calls.items():
                self.most_per_cycle[key] = max(self.most_per_cycle[key], n)
            self.cycle_s_total += cycle.duration_s
            self.cycle_s_max = max(self.cycle_s_max, cycle.duration_s)
            self.cpu_s_total += cycle.cpu_s
            self.recent.append(cycle)
        for listener in self.listeners:
            listener(cycle)

    def failed(self, run_id: str) -> None:
        with self._lock:
            self.errors[run_id] += 1

    def fell_back(self, identity: str) -> None:
        with self._lock:
            self.fallbacks[identity] += 1

    def most(self, kind: str) -> int:
        """The most calls of `kind` any one group had in any one cycle."""
        with self._lock:
            return max((n for (k, _), n in self.most_per_cycle.items() if k == kind), default=0)

    def total(self, kind: str) -> int:
        with self._lock:
            return sum(n for (k, _), n in self.calls.items() if k == kind)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "cycles": self.cycles,
                "calls": dict(self.calls),
                "most_per_cycle": dict(self.most_per_cycle),
                "errors": dict(self.errors),
                "fallbacks": dict(self.fallbacks),
                "cycle_s_total": self.cycle_s_total,
                "cycle_s_max": self.cycle_s_max,
                "cpu_s_total": self.cpu_s_total,
                "last_cycle": self.recent[-1] if self.recent else None,
            }
