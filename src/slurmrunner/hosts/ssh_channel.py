"""One command on one open session channel: the exec request (with a bounded wait for its
reply), stdin streamed in, stdout and stderr read under their caps, the timeout, and telling a
command that finished from a connection that dropped under it (then it may have run).

Apart from ssh.py, which picks, opens and checks the channel (pool, reconnection, uid check):
this part speaks paramiko's channel protocol and knows nothing of the host's connection.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Sequence

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from ..errors import SSHError
from .base import CommandResult, OutputBuffer

_READ_CHUNK = 1 << 16


class SSHCommandInterrupted(SSHError):
    """The command was sent, then the connection dropped or the timeout passed before its
    exit status came back: it may have run (and may still be running). Check before retrying."""

    maybe_ran = True

    def __init__(self, message: str, argv: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.argv = tuple(argv)


class SSHCommandTimeout(SSHCommandInterrupted):
    """The command did not finish within `timeout` (it was sent: it may have run)."""


def maybe_ran(exc: BaseException) -> bool:
    """True when a failed `run` may nevertheless have run the command on the host."""
    return bool(getattr(exc, "maybe_ran", False))


# --------------------------------------------------------------------------- channel helpers


def _channel_request(channel: paramiko.Channel, kind: str, value: str, want_reply: bool) -> None:
    message = Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string(kind)
    message.add_boolean(want_reply)
    message.add_string(value)
    if want_reply:
        channel._event_pending()
    channel.transport._send_user_message(message)  # type: ignore[union-attr]


def _send_exec(channel: paramiko.Channel, command: str, wait: float | None) -> bool:
    """Channel.exec_command with a bounded wait for the reply (paramiko's waits forever).
    True: accepted; False: refused; raises TimeoutError when no reply came in time."""
    _channel_request(channel, "exec", command, want_reply=True)
    if not channel.event.wait(wait):
        raise TimeoutError
    return bool(channel.event_ready)


def transport_died(transport: paramiko.Transport, settle: float = 0.5) -> bool:
    """Whether the connection is dead, for an ambiguous channel end (closed without exit
    status, request refused). paramiko's thread closes the channels of a dying connection
    just *before* it clears is_active(): give it `settle` seconds to finish dying."""
    if not transport.is_active():
        return True
    transport.join(settle)
    return not transport.is_active()


def close_channel(channel: paramiko.Channel) -> None:
    """Close; a connection dying meanwhile is not an error of its own (the caller reports)."""
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        channel.close()


def _feed_stdin(channel: paramiko.Channel, data: bytes) -> None:
    try:
        channel.sendall(data)
        channel.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the command exited (or the connection dropped) without reading all of it


def _abandon(channel: paramiko.Channel) -> None:
    """Best effort: signal the timed-out command (OpenSSH >= 7.9), then close."""
    with contextlib.suppress(Exception):
        _channel_request(channel, "signal", "TERM", want_reply=False)
    close_channel(channel)


# --------------------------------------------------------------------------- one command


def run_on_channel(
    endpoint: str,
    connect_timeout: float,
    transport: paramiko.Transport,
    channel: paramiko.Channel,
    argv: list[str],
    command: str,
    data: bytes | None,
    timeout: float | None,
    limits: tuple[OutputBuffer, OutputBuffer],
) -> CommandResult:
    """Run `command` on the open `channel` of `transport` (the connection to `endpoint`, whose
    `connect_timeout` bounds the exec request's reply when there is no `timeout`): its result,
    or SSHCommandTimeout / SSHCommandInterrupted once it was sent, SSHError when refused."""
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = " ".join(argv[:3]) + (" ..." if len(argv) > 3 else "")
    wait = timeout if timeout is not None else max(3 * connect_timeout, 30.0)
    try:
        accepted = _send_exec(channel, command, wait)
    except (TimeoutError, OSError, EOFError, paramiko.SSHException) as exc:
        if isinstance(exc, TimeoutError) and not transport_died(transport):
            raise SSHCommandTimeout(
                f"{endpoint} did not answer the request to run {shown!r} "
                f"within {wait:g}s (it may have run)",
                argv,
            ) from None
        raise SSHCommandInterrupted(
            f"the SSH connection to {endpoint} dropped while sending {shown!r} "
            "(it may have run: check before running it again)",
            argv,
        ) from None
    if not accepted:
        if not transport_died(transport):
            raise SSHError(f"{endpoint} refused to execute {shown!r}")
        raise SSHCommandInterrupted(
            f"the SSH connection to {endpoint} dropped while starting {shown!r} "
            "(it may have run: check before running it again)",
            argv,
        )

    writer: threading.Thread | None = None
    if data:
        writer = threading.Thread(
            target=_feed_stdin, args=(channel, data), name="ssh-stdin", daemon=True
        )
        writer.start()
    else:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            channel.shutdown_write()

    out, err = limits
    try:
        wake = channel.fileno()  # readable when stdout or stderr has data, or at close
        while True:
            got = False
            # Read on past the caps (dropping): a full window would stall the command.
            if channel.recv_ready():
                out.add(channel.recv(_READ_CHUNK))
                got = True
            if channel.recv_stderr_ready():
                err.add(channel.recv_stderr(_READ_CHUNK))
                got = True
            if got:
                continue
            if channel.closed:
                break
            nap = 1.0
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    _abandon(channel)
                    raise SSHCommandTimeout(
                        f"{shown!r} on {endpoint} did not finish within "
                        f"{timeout:g}s (it ran, and may still be running)",
                        argv,
                    )
                nap = min(nap, left)
            select.select([wake], [], [], nap)
    finally:
        if writer is not None:
            if writer.is_alive():
                close_channel(channel)  # wakes a writer blocked on a full window
            writer.join(5.0)

    status = channel.exit_status
    complete = channel.eof_received and channel.exit_status_ready() and status != -1
    if not complete and transport_died(transport):
        raise SSHCommandInterrupted(
            f"the SSH connection to {endpoint} dropped while {shown!r} was "
            "running (it may have run: check before running it again)",
            argv,
        )
    return CommandResult(
        tuple(argv),
        status,  # -1: the server gave no exit status (e.g. killed by a signal)
        out.text(),
        err.text(),
        out.dropped,
        err.dropped,
    )
