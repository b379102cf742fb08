"""One `cat` for many runs of one cluster identity, and the cut of what it prints. Pure.

Each run's part of the call is the one `chunks.cat_paths` makes for it alone: its own
separator file (`results/sep`, written by its worker) before each of its files and once after
the last, so the output is `S1 f S1 f ... S1  S2 f S2 ... S2 ...`, where S is what each
separator file held when cat read it. Everything there is written by the users' jobs.

The output is cut with tokens learnt before (watchreads.py), never with what this output
itself seems to say, and accepted only when every occurrence of every planned token is exactly
where the plan puts one: in plan order, as many as each run's part has separators, nothing
before the first, between two runs' parts or after the last. Then a run whose separator file
and files are its worker's, as cat read them, gets exactly its own files back, whatever the
other runs' files and separator files hold: all its separators are in the output, so a count
that matches leaves no room for a copy of its token elsewhere, and its part can neither start
early nor end late without bytes between parts. Two runs never share a token (a token learnt
for another run is refused). Output cut short (the host's cap) is never cut here: what is left
could be a run's lookalike of the next runs' parts, their real parts cut away.

A run whose token is not known yet may have its separator file read at the end of the call,
once per such run, each followed by the last run's separator as a fence: what lies between two
fences is that run's separator file, offered to the watcher as a token to learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from .chunks import SEPARATOR, SEPARATOR_RELPATH, Piece, cat_paths


@dataclass(frozen=True)
class Part:
    """One run's part of a shared cat."""

    run_dir: str
    token: str  # its separator line (with the newline), learnt from an earlier look
    files: list[tuple[int, int]]  # (job, chunk) in cat order


@dataclass(frozen=True)
class Cut:
    pieces: list[list[Piece]]  # per part, its files in order, each read whole
    sizes: list[int]  # bytes of each part
    learnt: list[str]  # per learner: what its separator file held ("" when there was none)


def head_token(out: str) -> str | None:
    """The separator line an output of `cat_paths` begins with, if any."""
    head = SEPARATOR.match(out)
    return head.group() if head else None


def shared_cat_paths(parts: list[Part], learners: list[str]) -> list[str]:
    """The arguments of one `cat` reading every part, then the separator file of each run dir
    in `learners`, each followed by the last part's separator file."""
    if learners and not parts:
        raise ValueError("learning a token needs a part to fence it")
    paths: list[str] = []
    for part in parts:
        paths += cat_paths(part.run_dir, part.files)
    if learners:
        fence = f"{parts[-1].run_dir}/{SEPARATOR_RELPATH}"
        for run_dir in learners:
            paths += [f"{run_dir}/{SEPARATOR_RELPATH}", fence]
    return paths


def cut_shared(out: str, parts: list[Part], n_learners: int = 0) -> Cut | None:
    """Each part's files of `shared_cat_paths` output; None when it cannot be cut exactly."""
    if not parts:
        return None
    index = {part.token: k for k, part in enumerate(parts)}
    if len(index) != len(parts):
        return None  # two parts with one token: which is which cannot be told
    expected = [k for k, part in enumerate(parts) for _ in range(len(part.files) + 1)]
    expected += [len(parts) - 1] * n_learners
    # Matches never overlap a real separator: a token's only newline is its last byte and
    # its prefix holds the only "S" a match can start at, so a match that reaches into a
    # separator is that separator (lookalikes of no planned token are plain file content).
    marks = [
        (m.start(), m.end(), index[m.group()])
        for m in SEPARATOR.finditer(out)
        if m.group() in index
    ]
    if [k for _, _, k in marks] != expected:
        return None
    if marks[0][0] != 0 or marks[-1][1] != len(out):
        return None  # bytes before the first part or after the last: nobody's
    pieces: list[list[Piece]] = [[] for _ in parts]
    for (_, end0, k0), (start1, _, k1) in pairwise(marks):
        if k0 == k1:
            pieces[k0].append(Piece(out[end0:start1], True))
        elif start1 != end0:
            return None  # bytes between two runs' parts: neither's
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for start, end, k in marks:
        first.setdefault(k, start)
        last[k] = end
    n_last = len(parts[-1].files)
    learnt = [p.text for p in pieces[-1][n_last:]]
    pieces[-1] = pieces[-1][:n_last]
    sizes = [last[k] - first[k] for k in range(len(parts))]
    return Cut(pieces, sizes, learnt)


def foreign_tokens(out: str, foreign: set[str]) -> bool:
    """Whether `out` holds a separator line of another run (one of `foreign`)."""
    return bool(foreign) and any(m.group() in foreign for m in SEPARATOR.finditer(out))
