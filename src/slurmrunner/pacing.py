"""How often the runner looks at a run: the policy's bounds and the reading pace. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PollPolicy:
    """Seconds between reads of the results files and between `squeue` calls (adaptive)."""

    read_min_s: float = 0.2
    read_max_s: float = 2.0
    squeue_min_s: float = 1.0
    squeue_max_s: float = 30.0
    submit_retry_s: tuple[float, ...] = (1, 2, 4, 8, 15, 30, 30, 30)
    # sbatch refused for the user's job limit: try again after this, or when a job ends
    submit_limit_retry_s: float = 30.0


class ReadPace:
    """Seconds until the next read of the results files.

    Every read is a `sudo cat` or an SSH command, so reading faster than results come is pure
    cost. After a read that brought news, the next one comes after half the usual gap between
    news (tasks of one run tend to finish at a steady pace), never sooner than `min_s`; after
    a read that brought nothing, the wait grows by half, up to `max_s`.
    """

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s, self.max_s = min_s, max_s
        self.interval = min_s
        self._last_news: float | None = None
        self._gap: float | None = None  # smoothed seconds between reads that brought news

    def after_read(self, news: bool, now: float) -> float:
        if not news:
            self.interval = min(self.interval * 1.5, self.max_s)
            return self.interval
        if self._last_news is not None:
            gap = now - self._last_news
            self._gap = gap if self._gap is None else (self._gap + gap) / 2
        self._last_news = now
        wanted = self.min_s if self._gap is None else self._gap / 2
        self.interval = min(max(wanted, self.min_s), self.max_s)
        return self.interval
