"""Failures printed as they happen, where the user looks, and an early word when every one
of the first tasks fails the same way (usually the command, not the inputs)."""

from __future__ import annotations

from collections.abc import Iterable

from rich.markup import escape

from ..results import TaskResult
from .output import say

SHOWN_FAILURES = 10
TAIL_LINES = 5
# The first tasks to finish; if all of them failed alike, the program is the likely cause.
FIRST_FEW = 3
_FRACTAL_FLAGS = ("--args-json", "--out-json")


def describe_failure(r: TaskResult) -> str:
    """A failed task in a few lines: index, cause, message, its log's last lines, the path."""
    assert r.error is not None
    lines = [f"[red]task {r.index} failed[/] ({escape(r.error.cause)}): {escape(r.error.message)}"]
    tail = r.error.log_tail.rstrip().splitlines()[-TAIL_LINES:]
    lines += [f"  [dim]│[/] {escape(line)}" for line in tail]
    if r.log:
        lines.append(f"  log: {escape(r.log)}")
    return "\n".join(lines)


class FailureReporter:
    """Fed with each batch of newly finished results; prints what the user must know now."""

    def __init__(self, run_id: str, n_tasks: int, call: str | None) -> None:
        # None: the calling form is not known (`wait` on a service's run): no hint about it.
        self.run_id = run_id
        self.call = call
        self.first_wanted = min(FIRST_FEW, n_tasks)
        self.first: list[TaskResult] = []
        self.shown = 0
        self.said_more = False

    def feed(self, results: Iterable[TaskResult]) -> None:
        for r in results:
            if r.status == "failed" and r.error is not None:
                self._show(r)
            if len(self.first) < self.first_wanted:
                self.first.append(r)
                if len(self.first) == self.first_wanted:
                    self._maybe_hint()

    def _show(self, r: TaskResult) -> None:
        if self.shown < SHOWN_FAILURES:
            self.shown += 1
            say(describe_failure(r))
        elif not self.said_more:
            self.said_more = True
            say(
                "... more failures not shown "
                f"(`slurmrunner results {escape(self.run_id)} --failed` lists them all)"
            )

    def _maybe_hint(self) -> None:
        first = self.first
        if self.call != "fractal" or not first:
            return
        if not all(r.status == "failed" and r.error for r in first):
            return
        if len({r.error.cause for r in first if r.error}) != 1:
            return
        tails = [r.error.log_tail if r.error else "" for r in first]
        if all(any(flag in tail for flag in _FRACTAL_FLAGS) for tail in tails):
            n = len(first)
            which = "the first task" if n == 1 else f"the first {n} tasks all"
            say(
                f"[yellow]hint:[/] {which} failed the same way and the log mentions "
                "--args-json/--out-json: the program seems not to take `--args-json/--out-json` "
                "(the fractal calling form); try `--call stdin`."
            )
