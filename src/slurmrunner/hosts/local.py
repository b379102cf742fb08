"""Commands as this process's own user."""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import time
from collections import Counter

from ..errors import HostError
from .base import DEFAULT_MAX_OUTPUT, CallCounter, CommandResult, OutputBuffer

_CHUNK = 1 << 16


class LocalHost:
    # Files that commands create (sbatch's job output among them: SLURM applies the submitter's
    # umask) are private to the user; sudo keeps the stricter of its own and ours.
    umask = 0o077

    def __init__(self) -> None:
        self._counter = CallCounter()

    @property
    def calls(self) -> Counter[str]:
        return self._counter.calls

    def _prefix(self) -> list[str]:
        return []

    def _env(self) -> dict[str, str] | None:
        return None  # inherit ours

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
        self._counter.count(argv)
        full = [*self._prefix(), *argv]
        out, err = OutputBuffer(max_output, keep_tail, raw), OutputBuffer(max_output)
        try:
            proc = subprocess.Popen(
                full,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env(),
                umask=self.umask,
            )
        except FileNotFoundError as exc:
            raise HostError(f"cannot run {full[0]!r}: not found on PATH") from exc
        except OSError as exc:
            raise HostError(f"cannot run {full[0]!r}: {exc.strerror or exc}") from exc
        data = stdin.encode("utf-8") if stdin is not None else b""
        try:
            _communicate(proc, data, out, err, timeout)
        except TimeoutError:
            raise HostError(f"{' '.join(full[:3])}... did not finish within {timeout}s") from None
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        result = CommandResult(
            tuple(argv), proc.returncode, out.text(), err.text(), out.dropped, err.dropped
        )
        return self._check(result)

    def _check(self, result: CommandResult) -> CommandResult:
        return result

    def close(self) -> None:
        pass


def _communicate(
    proc: subprocess.Popen[bytes],
    data: bytes,
    out: OutputBuffer,
    err: OutputBuffer,
    timeout: float | None,
) -> None:
    """Feed stdin and drain both pipes at once (as Popen.communicate does, so a command that
    writes much while we write its input cannot deadlock), keeping only what the buffers keep.
    Raises TimeoutError when `timeout` passes first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    assert proc.stdout is not None and proc.stderr is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        view, offset = memoryview(data), 0
        if proc.stdin is not None:
            if data:
                os.set_blocking(proc.stdin.fileno(), False)
                sel.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        while sel.get_map():
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError
            for key, _ in sel.select(wait):
                if key.fileobj is proc.stdin:
                    try:
                        offset += os.write(key.fd, view[offset : offset + _CHUNK])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        offset = len(view)  # it exited without reading all: not our error
                    if offset >= len(view):
                        sel.unregister(key.fileobj)
                        with contextlib.suppress(BrokenPipeError):
                            proc.stdin.close()
                    continue
                chunk = os.read(key.fd, _CHUNK)
                if chunk:
                    key.data.add(chunk)
                else:
                    sel.unregister(key.fileobj)
    remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
    try:
        proc.wait(remaining)
    except subprocess.TimeoutExpired:
        raise TimeoutError from None
