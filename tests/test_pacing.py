"""The reading pace: as fast as results come, no faster, within the policy's bounds."""

from __future__ import annotations

import pytest

from slurmrunner.pacing import ReadPace


def reads(pace: ReadPace, news_at: list[float], until: float) -> list[float]:
    """Simulate a run whose results land at `news_at`; return the times the runner reads."""
    t, seen, times = 0.0, 0, []
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
