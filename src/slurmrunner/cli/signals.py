"""SIGINT, SIGTERM and SIGHUP all mean "stop": cancel what was submitted, then exit 128+N.

A closed terminal (SIGHUP), `timeout` or a killed CI job sends TERM or HUP, not INT; left to
their default they would kill this process and leave its jobs running. The handlers raise
an exception instead, so the code that submitted the jobs gets to cancel them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType, TracebackType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """Raised by a handled signal; a KeyboardInterrupt so that `except Exception` lets it by."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class SignalGuard:
    """While entered, the first handled signal raises Interrupted and records its number in
    `signum`; every later one is ignored, so nothing interrupts the cancel that follows.

    `signum` survives whatever the exception becomes on its way up (e.g. an OSError from a
    progress bar drawing on a terminal that is gone): test it, not the exception's type.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        for sig in HANDLED:
            # Ignored when we started (nohup, `cmd &` in a script): the caller asked for that.
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def quiet_dead_streams() -> None:
    """Point stdout/stderr at /dev/null if they can no longer be written (the terminal closed,
    the reader of a pipe left), so that the interpreter's last flush cannot turn our exit
    status into 120."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
