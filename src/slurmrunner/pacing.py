"""How often the runner looks at a run: the policy's bounds and the reading pace. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PollPolicy:
    """Seconds between reads of the results files and between `squeue` calls (adaptive)."""

    read_min_s: float = 0.2
    read_max_s: float = 2.0
    # after a run joins the watcher, quiet reads stay at read_min_s this long (ReadPace)
    read_hold_s: float = 2.0
    # reads at most this fraction of the time since a run joined apart (up to read_max_s)
    read_age_fraction: float = 0.02
    squeue_min_s: float = 1.0
    squeue_max_s: float = 30.0
    submit_retry_s: tuple[float, ...] = (1, 2, 4, 8, 15, 30, 30, 30)
    # sbatch refused for the user's job limit: try again after this, or when a job ends
    submit_limit_retry_s: float = 30.0


#: A read aimed at a predicted end comes this much later than predicted (the last tasks of a
#: steady stream land a little apart; a read too early waits a whole interval for the next).
AIM_SLACK = 1.1
AIM_AFTER_S = 0.03


class ReadPace:
    """Seconds until the next read of the results files.

    Every read is a `sudo cat` or an SSH command, so reading faster than results come is pure
    cost. After a read that brought news, the next one comes after half the usual gap between
    news (tasks of one run tend to finish at a steady pace), never sooner than `min_s`; after
    a read that brought nothing, the wait grows by half, up to `max_s`.

    Except just after a restart (a run joined: its jobs were just submitted; the watcher calls
    `restart`): for `hold_s` from the first read
    after it, a read that brought nothing is followed by another after
    `min_s`. A job on an idle cluster starts within the scheduler's next passes and short
    tasks may be over a second later; backing off then (0.3, 0.45, 0.7, 1 s...) is what made
    such a run's end be seen up to 1-2 s late. The hold is once per restart, not after every
    news (tasks that take long would be read at the minimum for nothing), and it costs few
    calls: a job the scheduler says is still pending is not read at all (reading.py), so the
    held cycles only look at the queue when its time is due, and jobs that run bring news.
    A pace just made has no hold until it is restarted.

    And once per restart, a read aimed at the end: when the runs' pace of results says the
    last one lands before the next read (`eta`, from the watcher), that read comes just after
    it instead. A short run's end was seen on average half a read interval late (W1: 0.06 to
    0.16 s after its last task, on a 1.3 s run). Once only: a run whose last task is a long one
    (the pace so far says "any moment now") costs one early read, not a stream of them.

    And never closer than `age_fraction` of the time since the first read after the (re)start
    (within the bounds): while results stream in steadily every read brings news, and the pace
    would stay at `min_s` for as long as the run lasts, a `cat` every 0.2 s for hours (W4,
    100,000 no-ops in 140 s, read 560 times: a third of the server's CPU). A run that has
    lasted T seconds has its results and its end seen at most `age_fraction` * T later (2%:
    0.2 s until 10 s, 1 s at 50 s, `max_s` from 100 s on).
    """

    def __init__(
        self,
        min_s: float,
        max_s: float,
        hold_s: float = PollPolicy.read_hold_s,
        age_fraction: float = PollPolicy.read_age_fraction,
    ) -> None:
        self.min_s, self.max_s, self.hold_s = min_s, max_s, hold_s
        self.age_fraction = age_fraction
        self._interval = min_s
        self._since: float | None = None  # the first read after the (re)start
        self._hold_until: float | None = None  # set by the first read after a restart
        self._held = False  # restarted, its hold not begun yet
        self._last_news: float | None = None
        self._gap: float | None = None  # smoothed seconds between reads that brought news
        self._aims = 0  # reads aimed at a predicted end still allowed (one per restart)

    @property
    def interval(self) -> float:
        """The last wait given."""
        return self._interval

    def restart(self) -> None:
        """A run joined: read at the minimum pace, and hold it for `hold_s` from the next read;
        the gap between news is learnt again (the new run's tasks have their own rhythm)."""
        self._interval = self.min_s
        self._held, self._hold_until = True, None
        self._since = self._last_news = self._gap = None
        self._aims = 1

    def wake(self) -> None:
        """The scheduler says a job of these runs started or ended: the next waits start again
        from the minimum, and the end may be aimed at again; no hold, and the age floor stays
        (a job starting every few seconds in a long run must not keep the reads at the
        minimum)."""
        self._interval = self.min_s
        self._aims = 1

    def after_read(self, news: bool, now: float, eta: float | None = None) -> float:
        """The wait until the next read, after one at `now` that brought `news` or not.
        `eta`: seconds until the last result is expected, if the pace of results tells."""
        wait = self._after_read(news, now)
        if eta is None or self._aims <= 0:
            return wait
        aimed = max(eta * AIM_SLACK + AIM_AFTER_S, AIM_AFTER_S)
        if aimed >= wait:
            return wait
        self._aims -= 1
        return aimed  # the interval, which the next waits grow from, stays as it was

    def _after_read(self, news: bool, now: float) -> float:
        if self._since is None:
            self._since = now
        if self._held:
            self._held, self._hold_until = False, now + self.hold_s
        least = max(self.min_s, self.age_fraction * (now - self._since))
        if not news:
            if self._hold_until is not None and now < self._hold_until:
                wanted = self.min_s
            else:
                wanted = max(self._interval * 1.5, least)
            self._interval = min(wanted, self.max_s)
            return self._interval
        if self._last_news is not None:
            gap = now - self._last_news
            self._gap = gap if self._gap is None else (self._gap + gap) / 2
        self._last_news = now
        wanted = self.min_s if self._gap is None else self._gap / 2
        self._interval = min(max(wanted, least), self.max_s)
        return self._interval
