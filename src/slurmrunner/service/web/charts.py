"""Pure geometry of the pages' pictures: the progress bar's segments, histograms, the jobs'
timeline. Drawn as SVG (or CSS widths) by the templates, on the server: no charting library
to ship, nothing to run in the browser, and a page is readable without JavaScript.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: The bar's parts in drawing order; "unfinished" is every task without a result yet.
SEGMENTS = ("ok", "failed", "cancelled", "unfinished")


@dataclass(frozen=True)
class Segment:
    name: str
    n: int
    percent: float  # of the bar's width


def progress(counts: Mapping[str, int], n_tasks: int) -> list[Segment]:
    """The stacked bar: finished tasks by status, then the unfinished rest."""
    finished = {name: counts.get(name, 0) for name in SEGMENTS[:3]}
    rest = max(n_tasks - sum(finished.values()), 0)
    total = max(n_tasks, sum(finished.values()), 1)
    parts = [*finished.items(), ("unfinished", rest)]
    return [Segment(name, n, round(100 * n / total, 3)) for name, n in parts if n]


@dataclass(frozen=True)
class Bin:
    lo: float
    hi: float
    n: int
    x: float  # in the chart's coordinates (0..WIDTH)
    width: float
    height: float  # 0..HEIGHT


@dataclass(frozen=True)
class Histogram:
    bins: list[Bin]
    lo: float
    hi: float
    n: int
    peak: int
    marker_x: float | None  # where a reference value (the requested memory) falls, if inside


WIDTH, HEIGHT = 600.0, 120.0


def histogram(
    values: Iterable[float], n_bins: int = 20, marker: float | None = None
) -> Histogram | None:
    """Counts of `values` in `n_bins` equal bins from 0 to their maximum (or to `marker`, if
    higher: the requested memory stays on the picture); None without values."""
    data = [v for v in values if v is not None and math.isfinite(v) and v >= 0]
    if not data:
        return None
    hi = max(max(data), marker or 0.0)
    if hi <= 0:
        hi = 1.0
    step = hi / n_bins
    counts = [0] * n_bins
    for v in data:
        counts[min(int(v / step), n_bins - 1)] += 1
    peak = max(counts)
    w = WIDTH / n_bins
    bins = [
        Bin(k * step, (k + 1) * step, n, k * w, w, HEIGHT * n / peak if peak else 0.0)
        for k, n in enumerate(counts)
    ]
    marker_x = WIDTH * marker / hi if marker is not None and marker > 0 else None
    return Histogram(bins, 0.0, hi, len(data), peak, marker_x)


@dataclass(frozen=True)
class Lane:
    """One job of the timeline: a bar as long as its longest sampled task, a tick per
    sampled task's duration."""

    label: str
    state: str
    y: float
    width: float
    ticks: list[float]


@dataclass(frozen=True)
class Timeline:
    lanes: list[Lane]
    longest_s: float
    height: float
    hidden: int  # jobs not drawn (beyond the lanes shown)


LANE_H = 14.0
#: Ticks drawn per job: enough to see a job's spread, few enough to keep the page light.
MAX_TICKS = 24


def timeline(
    jobs: Sequence[tuple[str, str]],
    durations: Mapping[int, list[float]],
    max_lanes: int = 60,
) -> Timeline:
    """`jobs`: (label, state) by job index; `durations`: sampled task durations by job index."""
    shown = jobs[:max_lanes]
    longest = max((max(d) for d in durations.values() if d), default=0.0) or 1.0
    lanes = []
    for k, (label, state) in enumerate(shown):
        d = durations.get(k, [])
        width = WIDTH * (max(d) / longest) if d else 0.0
        ticks = [WIDTH * v / longest for v in d[:: max(1, math.ceil(len(d) / MAX_TICKS))]]
        lanes.append(Lane(label, state, k * LANE_H, width, ticks))
    return Timeline(lanes, longest, len(shown) * LANE_H, len(jobs) - len(shown))
