"""The service's own log lines on standard error, for `slurmrunner serve`.

uvicorn configures its own loggers only; without this the `slurmrunner` loggers (a run
created, its jobs submitted, a job ended, a run done, a watcher step failed: one line each,
with the run id and the cluster user) would reach Python's last-resort handler, which shows
warnings only and without a time. journald adds its own time, but a log file does not: the
lines carry theirs.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOGGER = "slurmrunner"
# uvicorn's level names; "trace" is uvicorn's own, below DEBUG.
_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}


def log_to_stderr(level: str = "info", stream: TextIO | None = None) -> logging.Handler:
    """Send the `slurmrunner` loggers' lines at `level` and above to standard error (or
    `stream`), each with its time; replaces a handler an earlier call installed, so calling it
    twice never prints a line twice."""
    logger = logging.getLogger(LOGGER)
    for old in [h for h in logger.handlers if getattr(h, "_slurmrunner_serve", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler._slurmrunner_serve = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(_LEVELS.get(level.lower(), logging.INFO))
    # Not to the root logger as well: a root handler someone adds would print each line twice.
    logger.propagate = False
    return handler
