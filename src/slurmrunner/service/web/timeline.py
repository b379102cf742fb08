"""Pure geometry of a run's timeline: a lane per job, from its first task's start to its last
task's end (the workers' times), and the sampled tasks inside it, packed into a few rows so
that the tasks a job runs side by side are seen side by side. Drawn as SVG by timeline.html.

Every time comes from what a job wrote (a task can forge its record's times), so times are
clipped to the picture and the picture to the run's life: nothing a task writes can make the
page larger than MAX_LANES lanes of MAX_TASKS_PER_LANE marks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 600.0
LABEL_W = 110.0  # the lane's label, left of the chart
LANE_H = 24.0
ROWS = 4  # task rows per lane; tasks beyond overlap in the last row
MAX_LANES = 60
MAX_TASKS_PER_LANE = 60
AXIS_H = 18.0


@dataclass(frozen=True)
class TimedTask:
    index: int
    start: float
    end: float
    status: str


@dataclass(frozen=True)
class Mark:
    index: int
    status: str
    x: float
    width: float
    y: float  # from the lane's top
    height: float
    seconds: float


@dataclass(frozen=True)
class Lane:
    label: str
    state: str
    y: float
    x: float | None  # the job's bar; None when none of its tasks has a time yet
    width: float
    open: bool  # still running: its bar ends at the picture's end, not at a last task
    marks: list[Mark]


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Picture:
    lanes: list[Lane]
    ticks: list[Tick]
    start: float
    seconds: float
    height: float
    hidden: int  # jobs not drawn


@dataclass(frozen=True)
class JobLine:
    label: str
    state: str
    first_task: int
    span: tuple[float, float] | None  # (first start, last end), unix time
    running: bool


def _pack(tasks: Sequence[TimedTask]) -> list[int]:
    """A row for each task (sorted by start): the first row free at its start, else the last."""
    free_at = [-math.inf] * ROWS
    rows = []
    for t in tasks:
        row = next((k for k in range(ROWS) if free_at[k] <= t.start), ROWS - 1)
        free_at[row] = max(free_at[row], t.end)
        rows.append(row)
    return rows


def _ticks(seconds: float, span_label: object) -> list[Tick]:
    """Five or so round times along the axis."""
    raw = seconds / 5
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    k, ticks = 0, []
    while k * step <= seconds + 1e-9 and len(ticks) < 12:
        ticks.append(Tick(WIDTH * k * step / seconds, span_label(k * step)))  # type: ignore[operator]
        k += 1
    return ticks


def picture(
    jobs: Sequence[JobLine],
    tasks: Sequence[TimedTask],
    start: float,
    end: float,
    span_label: object = lambda s: f"{s:g} s",
) -> Picture:
    """The timeline from `start` to `end` (unix times; the run's creation to its last end)."""
    seconds = max(end - start, 1e-3)

    def x_of(t: float) -> float:
        return min(max((t - start) / seconds, 0.0), 1.0) * WIDTH

    shown = jobs[:MAX_LANES]
    firsts = [j.first_task for j in shown]
    by_lane: dict[int, list[TimedTask]] = {}
    for t in sorted(tasks, key=lambda t: (t.start, t.index)):
        k = bisect.bisect_right(firsts, t.index) - 1
        if k >= 0 and len(by_lane.setdefault(k, [])) < MAX_TASKS_PER_LANE:
            by_lane[k].append(t)
    rows = {k: _pack(lane) for k, lane in by_lane.items()}
    # As many rows as the most tasks side by side: a job running one at a time is one row.
    row_h = (LANE_H - 4) / (max((max(r) for r in rows.values() if r), default=0) + 1)
    lanes = []
    for k, job in enumerate(shown):
        marks = []
        for t, row in zip(by_lane.get(k, []), rows.get(k, []), strict=True):
            x0, x1 = x_of(t.start), x_of(t.end)
            width = x1 - x0 - 0.6 if x1 - x0 > 2 else 1.0  # a gap between tasks back to back
            marks.append(
                Mark(t.index, t.status, x0, width, 2 + row * row_h, row_h - 0.5, t.end - t.start)
            )
        x = width = None
        if job.span is not None:
            x = x_of(job.span[0])
            width = max((WIDTH if job.running else x_of(job.span[1])) - x, 1.0)
        lanes.append(Lane(job.label, job.state, k * LANE_H, x, width or 0.0, job.running, marks))
    return Picture(
        lanes,
        _ticks(seconds, span_label),
        start,
        seconds,
        len(shown) * LANE_H,
        len(jobs) - len(shown),
    )
