"""A task's log (its standard output and error), or its end, read where the run's tasks wrote it.

The path is the run's own (`<run_dir>/logs/<index>.log`), never one a job wrote down. A
cluster run's log is read as its user (`cat`, the one reader the sudo rule allows), keeping
only the last `limit` bytes as they stream in: a task that wrote gigabytes costs the server
`limit` bytes of memory. A local run's log is opened without following a link.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import HostError, SlurmRunnerError

if TYPE_CHECKING:
    from .hosts.base import Host
    from .runspec import RunSpec

#: Timeout of one `cat` of a log, in seconds.
CAT_TIMEOUT_S = 60.0


class LogUnreadable(SlurmRunnerError):
    """The log exists (or may) but could not be read: permissions, the cluster, a link."""


@dataclass(frozen=True)
class LogTail:
    path: str
    data: bytes  # the log's bytes asked for (all of it when `size == len(data)`)
    size: int  # the whole log's size in bytes
    offset: int = 0  # where `data` starts in the log

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def log_path(spec: RunSpec, index: int) -> str:
    return f"{spec.run_dir}/logs/{index}.log"


def empty_log(spec: RunSpec, index: int) -> LogTail:
    """The log of a task that finished without writing a byte: the worker keeps no file for
    it (worker_files.py), so a finished task with no file wrote nothing."""
    return LogTail(log_path(spec, index), b"", 0)


def read_log(
    spec: RunSpec,
    user_host: Host,
    index: int,
    limit: int | None,
    timeout: float = CAT_TIMEOUT_S,
    *,
    skip_last: int = 0,
    from_start: bool = False,
) -> LogTail | None:
    """The last `limit` bytes of task `index`'s log (all of it when None), but for its last
    `skip_last` bytes (an earlier page); or with `from_start` its first `limit` bytes. None: no
    log yet. `user_host`: the run's backend's host of its user; `timeout`: of the `cat`.

    Memory is bounded by what is asked: `limit + skip_last` bytes of the end are kept as the
    log streams in, or `limit` of its start."""
    path = log_path(spec, index)
    if spec.profile.backend == "local":
        return _read_local(path, limit, skip_last, from_start)
    if limit is None:  # the host's own bound on a command's output applies (its head)
        bound: dict[str, int | bool] = {}
    elif from_start:
        bound = {"max_output": limit}
    else:
        bound = {"max_output": limit + skip_last, "keep_tail": True}
    try:
        got = user_host.run(["cat", path], timeout=timeout, raw=True, **bound)  # type: ignore[arg-type]
    except HostError as exc:
        raise LogUnreadable(f"cannot read {path}: {exc}") from None
    if not got.ok:
        if "No such file" in got.stderr:
            return None
        raise LogUnreadable(f"cannot read {path}: {got.stderr.strip()[:500]}")
    data = got.stdout.encode("latin-1")  # the log's own bytes (raw): offsets are exact
    size = len(data) + got.stdout_dropped
    if from_start or limit is None:
        return LogTail(path, data, size)
    kept = data[: max(0, len(data) - skip_last)][-limit:]
    return LogTail(path, kept, size, max(0, size - skip_last - len(kept)))


def _read_local(
    path: str, limit: int | None, skip_last: int = 0, from_start: bool = False
) -> LogTail | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LogUnreadable(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # a FIFO or device put there
            raise LogUnreadable(f"cannot read {path}: not a regular file")
        try:
            size = fh.seek(0, os.SEEK_END)
            if limit is None:
                start, n = 0, size
            elif from_start:
                start, n = 0, limit
            else:
                end = max(0, size - skip_last)
                start = max(0, end - limit)
                n = end - start
            fh.seek(start)
            data = fh.read(n)
        except OSError as exc:
            raise LogUnreadable(f"cannot read {path}: {exc.strerror}") from None
    return LogTail(path, data, size, start)
