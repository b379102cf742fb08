"""The one interface every host offers: run an argv, maybe with standard input.

A host is *where and as whom* a command runs (this process's user, another user through
sudo, a service user over SSH). Hosts know nothing of SLURM.

What a command prints is written by users (job output, results, logs): every host decodes it
with replacement (never raises on bytes) and keeps at most `max_output` bytes of each stream,
reading (and dropping) the rest so that a big producer neither blocks nor fills memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

#: What a host keeps of each output stream unless the caller says otherwise.
DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    #: Bytes of each stream that were read but not kept (over `max_output`).
    stdout_dropped: int = 0
    stderr_dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def truncated(self) -> bool:
        return bool(self.stdout_dropped or self.stderr_dropped)


class OutputBuffer:
    """At most `limit` bytes of a stream: its head, or with `tail` its last bytes."""

    def __init__(self, limit: int, tail: bool = False, raw: bool = False) -> None:
        if limit < 0:
            raise ValueError("max_output must not be negative")
        self.limit = limit
        self.tail = tail
        self.raw = raw
        self.dropped = 0
        self._data = bytearray()

    def add(self, chunk: bytes) -> None:
        if self.tail:
            self._data += chunk
            excess = len(self._data) - self.limit
            if excess > 0:
                del self._data[:excess]  # CPython drops a bytearray's head without copying
                self.dropped += excess
            return
        room = self.limit - len(self._data)
        if room > 0:
            self._data += chunk[:room]
        self.dropped += max(len(chunk) - max(room, 0), 0)

    def text(self) -> str:
        if self.raw:  # one character per byte: .encode("latin-1") gives the bytes back
            return self._data.decode("latin-1")
        # A cut may split a character: it becomes U+FFFD like any other bad byte.
        return self._data.decode("utf-8", errors="replace")


class Host(Protocol):
    """Runs commands as one identity. Implementations must be thread-safe."""

    #: How many times each program (argv[0]) was run: the run summary reports these.
    calls: Counter[str]

    def run(
        self,
        argv: list[str],
        stdin: str | None = None,
        timeout: float | None = 60.0,
        *,
        max_output: int = DEFAULT_MAX_OUTPUT,
        keep_tail: bool = False,
        raw: bool = False,
    ) -> CommandResult:
        """Run argv (never through a shell of ours); return its status and output.

        Each stream keeps at most `max_output` bytes: the first ones, or with `keep_tail` the
        last ones of stdout (e.g. a job's output, whose end says why it stopped); the rest is
        read and counted in `*_dropped`. Output is decoded as UTF-8 with replacement; with
        `raw`, stdout as latin-1, byte for byte (a log read by byte offsets).

        Raises HostError (or a subclass) when the command could not be run at all, e.g. the
        connection is down or sudo refused; a command that ran and failed returns its status.
        """
        ...

    def close(self) -> None: ...


@dataclass
class CallCounter:
    """Counts calls per program; shared by host implementations."""

    calls: Counter[str] = field(default_factory=Counter)

    def count(self, argv: list[str]) -> None:
        self.calls[argv[0].rsplit("/", 1)[-1]] += 1
