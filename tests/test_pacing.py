"""The reading pace: as fast as results come, no faster, within the policy's bounds."""

from __future__ import annotations

from itertools import pairwise

import pytest

from slurmrunner.pacing import AIM_AFTER_S, AIM_SLACK, PollPolicy, ReadPace


def reads(pace: ReadPace, news_at: list[float], until: float, start: float = 0.0) -> list[float]:
    """Simulate a run whose results land at `news_at`; return the times the runner reads."""
    t, seen, times = start, 0, []
    while t < until:
        times.append(t)
        arrived = sum(1 for a in news_at if a <= t)
        t += pace.after_read(arrived > seen, t)
        seen = arrived
    return times


def test_quiet_reads_back_off_to_the_maximum():
    pace = ReadPace(0.2, 2.0)
    waits = [pace.after_read(False, float(k)) for k in range(10)]
    assert waits[0] == pytest.approx(0.3)
    assert waits == sorted(waits)
    assert waits[-1] == 2.0


def test_first_news_reads_again_at_the_minimum():
    pace = ReadPace(0.2, 2.0)
    pace.after_read(False, 0.0)
    assert pace.after_read(True, 1.0) == 0.2


def test_steady_fast_results_keep_the_minimum():
    pace = ReadPace(0.2, 2.0)
    for k in range(20):
        assert pace.after_read(True, k * 0.2) == 0.2


def test_results_every_two_seconds_are_read_less_often_than_at_the_minimum():
    news = [2.0 * k for k in range(1, 33)]  # W2-like: a pair of 2 s tasks ends every 2 s
    paced = reads(ReadPace(0.2, 2.0), news, 64.0)
    eager = reads(ReadPace(0.2, 0.2), news, 64.0)
    assert len(paced) <= len(eager) / 4
    # and each result is still seen soon after it lands
    for a in news[:-1]:
        assert min(t for t in paced if t >= a) - a <= 2.0


def test_gap_estimate_never_leaves_the_bounds():
    pace = ReadPace(0.5, 1.0)
    assert pace.after_read(True, 0.0) == 0.5
    assert pace.after_read(True, 100.0) == 1.0  # a long gap: capped at max_s
    assert pace.after_read(True, 100.01) >= 0.5  # a burst: not below min_s


# Just after a run joins: held at the minimum for a while, once; then the age floor.


def restarted(min_s: float = 0.2, max_s: float = 2.0, hold_s: float = 2.0) -> ReadPace:
    pace = ReadPace(min_s, max_s, hold_s)
    pace.restart()  # what the watcher does when a run joins
    return pace


def test_quiet_reads_are_held_at_the_minimum_then_back_off():
    pace = restarted(hold_s=2.0)
    times = reads(pace, [], 20.0, start=5.0)  # the hold counts from the first read
    waits = [b - a for a, b in pairwise(times)]
    held = [w for a, w in zip(times, waits, strict=False) if a < 7.0]
    assert held == pytest.approx([0.2] * 10)
    later = waits[len(held) :]
    assert later[0] == pytest.approx(0.3)
    assert later == sorted(later) and max(later) == 2.0


def test_a_pace_just_made_is_not_held():
    pace = ReadPace(0.2, 2.0, 2.0)
    assert pace.after_read(False, 0.0) == pytest.approx(0.3)


def test_the_hold_is_once_per_restart_not_after_news():
    pace = restarted(hold_s=1.0)
    assert pace.after_read(False, 0.0) == 0.2
    assert pace.after_read(True, 0.5) == 0.2
    assert pace.after_read(False, 0.9) == 0.2  # still within the hold
    assert pace.after_read(False, 1.1) == pytest.approx(0.3)  # over: backs off
    assert pace.after_read(True, 5.0) == pytest.approx(2.0)  # a 4.5 s gap: half, capped
    assert pace.after_read(False, 7.0) == 2.0  # quiet after news: no new hold
    pace.restart()  # another run joins
    assert pace.after_read(False, 8.0) == 0.2
    assert pace.after_read(False, 8.9) == 0.2
    assert pace.after_read(False, 9.1) == pytest.approx(0.3)


def test_restart_forgets_the_gap_between_news():
    pace = ReadPace(0.2, 2.0, 2.0)
    for k in range(5):
        pace.after_read(True, 4.0 * k)  # news every 4 s: reads every 2 s
    assert pace.interval == 2.0
    pace.restart()
    assert pace.after_read(True, 30.0) == 0.2  # the new run's first news: no gap known


def test_a_job_that_starts_within_the_hold_is_read_at_once():
    """W1: a run's job starts 0.9 s after it joins and its 1,000 short tasks end over 0.6 s.
    Without the hold the reads backed off to 0.3, 0.45, 0.7 s and the first results (and so
    the end) were seen half a second late; held, within the minimum pace."""
    news = [0.9 + 0.1 * k for k in range(7)]  # the last results at 1.5 s
    held = reads(restarted(), news, 4.0)
    plain = reads(ReadPace(0.2, 2.0, 2.0), news, 4.0)
    first = min(t for t in held if t >= news[0])
    last = min(t for t in held if t >= news[-1])
    assert first - news[0] <= 0.2 + 1e-9 and last - news[-1] <= 0.2 + 1e-9
    assert min(t for t in plain if t >= news[0]) - news[0] > 0.4
    # the price: the reads of the hold (2 s at 0.2 s), a few more than backing off
    assert len([t for t in held if t < 2.0]) <= 11


def test_a_long_pending_job_still_backs_off_to_the_maximum():
    pace = restarted()
    times = reads(pace, [], 120.0)
    assert len(times) <= 11 + 6 + 120 / 2.0  # the hold, the climb, then every max_s
    assert times[-1] - times[-2] == pytest.approx(2.0)


def test_policy_default_hold_is_the_paces():
    assert ReadPace(0.2, 2.0).hold_s == PollPolicy().read_hold_s == 2.0


def test_a_steady_stream_is_read_less_often_as_the_run_ages():
    """W4: results land every 0.05 s for 140 s. Every read brings news, so the gap rule
    alone kept the minimum pace (700 reads); the age floor reads at most 2% of the run's
    age apart, and the last results are still seen within 2% of the run's length."""
    news = [0.05 * k for k in range(1, 2801)]  # until 140 s
    times = reads(restarted(), news, 145.0)
    assert 150 <= len(times) <= 200
    assert len([t for t in times if t < 10.0]) >= 45  # the first 10 s at the minimum
    seen_end = min(t for t in times if t >= news[-1])
    assert seen_end - news[-1] <= 0.02 * 140 + 1e-9
    assert max(b - a for a, b in pairwise(times)) == pytest.approx(2.0)


def test_the_age_counts_from_the_restart():
    pace = restarted()
    for k in range(202):
        pace.after_read(True, k * 0.5)  # 100 s of steady news
    assert pace.interval == pytest.approx(2.0)
    pace.restart()  # a new run joins: its first results are read at once
    assert pace.after_read(True, 120.0) == 0.2
    assert pace.after_read(True, 120.2) == 0.2


def test_a_short_run_is_not_slowed_by_the_age_floor():
    news = [0.9 + 0.05 * k for k in range(60)]  # W3-like: results from 0.9 s to 3.85 s
    times = [t for t in reads(restarted(), news, 5.0) if t < 4.2]
    assert all(b - a == pytest.approx(0.2) for a, b in pairwise(times))


# A read aimed at the predicted end, once per restart.
def test_a_read_is_aimed_at_the_end_the_pace_of_results_predicts():
    pace = restarted()
    pace.after_read(True, 0.0)
    wait = pace.after_read(True, 0.2, eta=0.05)  # the last result in 50 ms: read just after
    assert wait == pytest.approx(0.05 * AIM_SLACK + AIM_AFTER_S)
    assert pace.interval == pytest.approx(0.2)  # what the next waits grow from is unchanged
    # once: a last task that takes long ("any moment now", again and again) costs one read
    assert pace.after_read(True, 0.3, eta=0.01) == pytest.approx(0.2)
    pace.restart()  # a new run joins: its end may be aimed at
    assert pace.after_read(True, 0.5, eta=0.0) == pytest.approx(AIM_AFTER_S)


def test_an_end_predicted_after_the_next_read_changes_nothing():
    pace = restarted()
    assert pace.after_read(True, 0.0, eta=5.0) == pytest.approx(0.2)
    assert pace.after_read(True, 0.2, eta=0.1) < 0.2  # the allowance was kept for this one


def test_a_short_runs_end_is_seen_soon_after_its_last_result():
    """W1-like: 1,000 results at a steady pace from 0.37 s to 1.03 s; reads every 0.2 s saw
    the end up to 0.2 s late, depending on where it fell between two reads."""
    for last in (1.03, 1.08, 1.13, 1.18):
        pace, t, first, late = restarted(), 0.0, None, None
        while late is None:
            done = 0 if t < 0.37 else min(1000, int(1 + 999 * (t - 0.37) / (last - 0.37)))
            if done and first is None:
                first = (t, done)
            eta = None
            if first and t > first[0] and done > first[1] and done < 1000:
                eta = (1000 - done) * (t - first[0]) / (done - first[1])
            if done == 1000:
                late = t - last
            t += pace.after_read(done > 0, t, eta)
        assert late <= 0.1 * (last - 0.37) + AIM_AFTER_S + 1e-9, (last, late)
