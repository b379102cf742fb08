"""A job's results chunks as the watcher reads them: one `cat` for all of a run's jobs, cut
back into files, and each job's chain of chunks checked link by link. Pure.

Cutting: the worker writes a separator file (`results/sep`, one line holding a random token)
and the watcher names it before every file it reads, and once more at the end, so the output of
`cat SEP f1 SEP f2 ... SEP` is cut exactly at file boundaries whatever the files hold. A line is
then read as coming from the file it is in: a job's results never speak for another job, and a
line a task left unfinished cannot swallow the first line of the next file. A file is read
*whole* only when the separator after it arrived (output cut short by a host's cap, or a
separator missing, is never taken for the end of a file).

Checking: `next` and `end` lines carry how many task records the chunk holds (and `end` how
many all chunks hold). A chunk is sealed, and never read again, when its `next` line matches
what was read of it; a job is over from its files alone when its `end` line matches the whole
chain. A line that does not match (forged, or for another chunk) is counted as bad and changes
nothing. Once the scheduler has said the job ended, nothing is written any more: a `next` line
that names the right chunk seals it even when extra lines (a task's own) spoil its count.

A chunk bigger than a host keeps (a task may append gigabytes to its own) is never read whole:
each look reads a job's newest chunks first and the jobs whose last look was cut last, so what
comes after the flood, and other jobs, are still read; and after MAX_CUT_LOOKS cut looks at a
job the scheduler said had ended, it is concluded with what could be read. So is a job whose
run's separator file a task changed or removed (UNREADABLE): its run waits no longer than that.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from .jobstate import JobState
from .records import Bad, EndLine, NextLine, StartLine, TaskRecord, parse_line, sample
from .script import results_relpath

SEPARATOR_RELPATH = "results/sep"
SEPARATOR = re.compile(r"SLURMRUNNER-SEPARATOR-[0-9a-f]{32}\n")
MAX_AHEAD = 32
MAX_CUT_LOOKS = 3


def cat_paths(run_dir: str, files: list[tuple[int, int]]) -> list[str]:
    """The arguments of `cat` reading chunk files (job, chunk), each after a separator."""
    sep = f"{run_dir}/{SEPARATOR_RELPATH}"
    paths = []
    for job, chunk in files:
        paths += [sep, f"{run_dir}/{results_relpath(job, chunk)}"]
    return [*paths, sep]


@dataclass(frozen=True)
class Piece:
    text: str
    whole: bool  # the separator after it arrived: this is all the file held


#: A file of a look that could not be cut into files (see split_output).
UNREADABLE = Piece("(not told apart from the other files)", False)


def split_output(out: str, n_files: int, token: str | None = None) -> list[Piece] | None:
    """The files of `cat_paths` output, in order; None when it cannot be cut. `token`: the
    run's separator line as learnt from an earlier look; the output must begin with it."""
    if not out:  # no separator file yet, so no worker wrote anything: every file is absent
        return [Piece("", True)] * n_files
    head = SEPARATOR.match(out)
    if head is None or (token is not None and head.group() != token):
        return None  # the separator file was changed or removed: nothing can be placed
    parts = out.split(head.group())
    # ["", f1, ..., fn, ""] when whole; fewer when the output was cut short.
    if len(parts) > n_files + 2 or (len(parts) == n_files + 2 and parts[-1]):
        return None  # a file holds the separator itself: which one cannot be told
    pieces = []
    for k in range(n_files):
        at = k + 1
        if at < len(parts) - 1:
            pieces.append(Piece(parts[at], True))
        elif at == len(parts) - 1:
            pieces.append(Piece(parts[at], False))
        else:
            pieces.append(Piece("", False))
    return pieces


@dataclass
class JobWatch:
    """What this process has learnt of one job's files (and end) since it started watching."""

    job: int
    tasks: range
    max_result_bytes: int
    chunk: int = 0  # the first chunk not sealed: those before are read whole and never again
    ahead: int = 1  # chunks read past it per look; grows while catching up (reattach)
    sealed_records: int = 0  # task records in the sealed chunks
    lines_taken: dict[int, int] = field(default_factory=dict)  # complete lines read, per chunk
    counts: dict[int, int] = field(default_factory=dict)  # valid task records, per chunk
    closed: set[int] = field(default_factory=set)  # matched by their next line, not yet sealed
    ended: bool = False  # a matching end line was read
    interrupted: bool = False  # ... and it says the job was interrupted
    final_look: bool = False  # read to its end after the scheduler said it had ended
    cut_looks: int = 0  # looks in a row cut short inside this job's own files
    state: JobState | None = None  # the scheduler's word on its end
    gone: bool = False  # squeue no longer knows it: its end waits for the history (sacct)
    history_answers: int = 0  # history answers that did not know how it ended
    history_failures: int = 0  # history calls that failed
    started: bool = False  # a start line was read
    looked_at: float = float("-inf")  # when its files were last read (watcher's clock)
    first_seen: float | None = None  # when this reader first planned a look at it
    queue_state: str = ""  # what the scheduler said of it last (PENDING, RUNNING, ...)
    attempt: int = 0  # the newest attempt whose start line was read (SLURM_RESTART_COUNT)
    bad: int = 0  # lines that are not valid lines of this job
    first_bad: str = ""
    #: Records of tasks killed by a signal or interrupted: their cause waits for the
    #: scheduler's word. Every other record is saved as soon as it is read and dropped.
    held: dict[int, TaskRecord] = field(default_factory=dict)

    @property
    def over(self) -> bool:
        """The scheduler said it ended (or no longer knows it): nothing more will be written."""
        return self.state is not None or self.gone

    def requeue(self) -> None:
        """It runs again (requeued): its earlier attempt's end, and the scheduler's word on
        that end, are over; its chunks are read on. Held records wait for the new attempt."""
        self.ended = self.interrupted = self.final_look = self.gone = False
        self.state = None
        self.cut_looks = self.history_answers = self.history_failures = 0

    def window(self) -> list[int]:
        """The chunks to read in the next look."""
        return list(range(self.chunk, self.chunk + self.ahead + 1))

    def take(self, chunk: int, piece: Piece, over: bool) -> Iterator[TaskRecord]:
        """Read what is new in one chunk's text; yield its valid task records (duplicates
        too: first come, first kept is the caller's rule). `over`: the scheduler said the job
        ended before this look, so nothing more will be written."""
        lines = piece.text.split("\n")
        lines.pop()  # after the last newline: empty, or a line still being written
        start = self.lines_taken.get(chunk, 0)
        self.lines_taken[chunk] = max(start, len(lines))
        for line in lines[start:]:
            if not line.strip():
                continue
            parsed = parse_line(line, self.job, self.tasks, self.max_result_bytes)
            if isinstance(parsed, TaskRecord):
                self.counts[chunk] = self.counts.get(chunk, 0) + 1
                yield parsed
            elif isinstance(parsed, NextLine):
                self._on_next(chunk, parsed, line, over)
            elif isinstance(parsed, EndLine):
                self._on_end(chunk, parsed, line)
            elif isinstance(parsed, StartLine):
                self.started = True
                if parsed.attempt > self.attempt:
                    self.attempt = parsed.attempt
                    self.requeue()
            elif isinstance(parsed, Bad):
                self._count_bad(parsed.reason, parsed.sample)

    def _on_next(self, chunk: int, line: NextLine, text: str, over: bool) -> None:
        seen = self.counts.get(chunk, 0)
        if line.chunk != chunk + 1:
            self._count_bad(f"next names chunk {line.chunk} in chunk {chunk}", sample(text))
        elif line.records == seen or over:
            self.closed.add(chunk)
            if line.records != seen:
                self._count_bad(
                    f"chunk {chunk} holds {seen} records, its next line says {line.records}",
                    sample(text),
                )
        else:
            self._count_bad(
                f"next says {line.records} records in chunk {chunk}, {seen} were read",
                sample(text),
            )

    def _on_end(self, chunk: int, line: EndLine, text: str) -> None:
        in_chain = self.sealed_records + sum(
            self.counts.get(c, 0) for c in range(self.chunk, chunk + 1)
        )
        links = all(c in self.closed for c in range(self.chunk, chunk))
        if (
            line.chunk == chunk
            and line.records == self.counts.get(chunk, 0)
            and line.tasks == in_chain
            and links
        ):
            self.ended = True
            self.interrupted = line.interrupted is not None
        else:
            self._count_bad(
                f"end line (chunk {line.chunk}, {line.records} records, {line.tasks} in all) "
                f"does not match what was read (chunk {chunk}, "
                f"{self.counts.get(chunk, 0)} records, {in_chain} in all)",
                sample(text),
            )

    def _count_bad(self, reason: str, text_sample: str) -> None:
        self.bad += 1
        if self.bad == 1:
            self.first_bad = f"{reason}: {text_sample}"

    def advance(self) -> None:
        """Seal the closed chunks at the head of the chain; never read them again."""
        while self.chunk in self.closed:
            self.closed.discard(self.chunk)
            self.sealed_records += self.counts.pop(self.chunk, 0)
            self.lines_taken.pop(self.chunk, None)
            self.chunk += 1

    def after_look(self, window: list[int], pieces: list[Piece], over: bool) -> None:
        """Pace the next look, and tell whether this one was final (see module doc)."""
        self.advance()
        behind = self.chunk > window[-1]  # every chunk read was full: more may be there
        self.ahead = min(self.ahead * 2, MAX_AHEAD) if behind else 1
        all_whole = all(p.whole for p in pieces)
        if all_whole:
            self.cut_looks = 0
        elif any(p.text and not p.whole for p in pieces):
            self.cut_looks += 1  # its own file filled what the host keeps
        # else: the output was full before its files came: not a look at this job at all
        if over and not behind and (all_whole or self.cut_looks >= MAX_CUT_LOOKS):
            if not all_whole and not self.final_look:
                self._count_bad(
                    f"chunk {self.chunk} could not be read whole (larger than a read keeps, "
                    "or the run's separator file was changed): the rest was not read",
                    "",
                )
            self.final_look = True
