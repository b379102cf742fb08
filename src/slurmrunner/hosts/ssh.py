"""Commands as a cluster user over SSH (paramiko), through ONE shared connection per identity.

Every `SSHHost` of the process with the same (host, port, username, key, known_hosts) shares
one pool entry: one authenticated paramiko Transport, on which each `run` opens a fresh
session channel. A semaphore per entry caps the channels open at once (`max_channels`, below
sshd's default `MaxSessions 10`), so a run of any size holds one SSH connection to the site.

Errors are typed (see `slurmrunner.errors`) and all arrive within `connect_timeout`:

* SSHKeyError: key missing, unreadable, group/other-accessible, not a private key, encrypted;
* SSHHostKeyError: host key unknown, or changed (possible man-in-the-middle) -- strict always;
* SSHAuthError: the server refused the key for user@host:port;
* SSHConnectError: refused, timed out, name not resolved, handshake failed, lost for good.

When the connection drops, the next `run` reconnects (backoff 0.5, 1, 2, 4 s) and retries
the command only if it cannot have started (the channel could not be opened). If the
connection is lost or the timeout passes *after* the command was sent, `run` raises
`SSHCommandInterrupted` (`maybe_ran = True`): the caller must check whether it ran (e.g. look
for the tagged job) before running it again. Any other HostError means it did not run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from ..errors import HostError, ImpersonationError, SSHConnectError, SSHError, SSHKeyError
from ..quoting import posix_username, shell_command
from .base import DEFAULT_MAX_OUTPUT, CallCounter, CommandResult, OutputBuffer
from .ssh_connect import SSHTarget, load_private_key, open_transport
from .ssh_pool import (
    RECONNECT_DELAYS,
    ConnectionPool,
    PooledConnection,
    close_all,
    connection_pool,
)

__all__ = [
    "RECONNECT_DELAYS",
    "ConnectionPool",
    "PooledConnection",
    "SSHCommandInterrupted",
    "SSHCommandTimeout",
    "SSHHost",
    "SSHTarget",
    "close_all",
    "connection_pool",
    "load_private_key",
    "maybe_ran",
    "open_transport",
]

# paramiko's transport thread logs every failure it raises to us as well: keep it off stderr
# unless the application configures logging.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

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


def _transport_died(transport: paramiko.Transport, settle: float = 0.5) -> bool:
    """Whether the connection is dead, for an ambiguous channel end (closed without exit
    status, request refused). paramiko's thread closes the channels of a dying connection
    just *before* it clears is_active(): give it `settle` seconds to finish dying."""
    if not transport.is_active():
        return True
    transport.join(settle)
    return not transport.is_active()


def _close_channel(channel: paramiko.Channel) -> None:
    """Close; a connection dying meanwhile is not an error of its own (the caller reports)."""
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        channel.close()


def _feed_stdin(channel: paramiko.Channel, data: bytes) -> None:
    try:
        channel.sendall(data)
        channel.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the command exited (or the connection dropped) without reading all of it


# --------------------------------------------------------------------------- the host


class SSHHost:
    """Runs commands as `username` on `host` over the pooled SSH connection of its identity.

    `known_hosts=None` means the process user's ~/.ssh/known_hosts. Host key checking is
    always strict. Settings of the shared connection (timeouts, max_channels, keepalive) are
    those of the first SSHHost of that identity.
    """

    def __init__(
        self,
        host: str,
        port: int = 22,
        username: str = "",
        key_path: str = "",
        known_hosts: str | None = None,
        connect_timeout: float = 10.0,
        max_channels: int = 8,
        keepalive_s: float = 15.0,
        *,
        reconnect_delays: Sequence[float] = RECONNECT_DELAYS,
        pool: ConnectionPool | None = None,
        check_uid: Callable[[str, int], None] | None = None,
    ) -> None:
        """`check_uid(username, uid)`, when given, is called with the uid `id -u` reports on
        each new connection before any command runs on it, and raises to refuse it."""
        if not host:
            raise ValueError("SSHHost needs a host")
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"SSH port {port} is out of range 1-65535")
        if not key_path:
            raise SSHKeyError("SSHHost needs the path of a private key (ssh_key_path)")
        if max_channels < 1:
            raise ValueError("max_channels must be at least 1")
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        self.target = SSHTarget(
            host=host,
            port=int(port),
            username=posix_username(username),
            key_path=os.path.abspath(os.path.expanduser(key_path)),
            known_hosts=os.path.abspath(os.path.expanduser(known_hosts or "~/.ssh/known_hosts")),
        )
        self._pool = pool if pool is not None else connection_pool
        self._conn = self._pool.acquire(
            self.target, connect_timeout, max_channels, keepalive_s, reconnect_delays
        )
        self._counter = CallCounter()
        self._count_lock = threading.Lock()
        self._closed = False
        self._check_uid = check_uid

    @classmethod
    def for_profile(cls, profile: Any, **settings: Any) -> SSHHost:
        """The SSHHost of a `slurm_ssh` Profile (host, port, username, ssh_key_path, ...)."""
        return cls(
            host=profile.host,
            port=profile.port,
            username=profile.username,
            key_path=profile.ssh_key_path,
            known_hosts=profile.known_hosts,
            connect_timeout=profile.connect_timeout_s,
            **settings,
        )

    # -- what the run summary reports

    @property
    def calls(self) -> Counter[str]:
        return self._counter.calls

    @property
    def connections_opened(self) -> int:
        """SSH connections opened for this identity by the process (1 + reconnections)."""
        return self._conn.connections_opened

    @property
    def connection(self) -> PooledConnection:
        return self._conn

    @property
    def endpoint(self) -> str:
        return self.target.endpoint

    def __repr__(self) -> str:
        return f"SSHHost({self.target.endpoint}, key={self.target.key_path})"

    # -- lifecycle

    def connect(self) -> None:
        """Open (or check) the shared connection now: typed errors before any work starts."""
        self._check_open()
        if self._check_uid is None:
            self._conn.transport()
            return
        with self._conn.slots:
            _close_channel(self._checked_channel()[1])

    def close(self) -> None:
        """Release this host's share of the connection (closed when nobody else uses it)."""
        if not self._closed:
            self._closed = True
            self._pool.release(self._conn)

    def __enter__(self) -> SSHHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise HostError(f"{self!r} is closed")

    # -- running

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
        """Run argv (every word quoted) on the host; stdin (any size) is streamed to it.
        Output is capped and decoded as Host.run says.

        `timeout` counts from the moment a channel slot is free (waiting for one of the
        `max_channels` slots is not the command's time)."""
        self._check_open()
        if not argv:
            raise ValueError("argv is empty")
        argv = [str(word) for word in argv]
        command = shell_command(argv)
        data = stdin.encode("utf-8") if stdin is not None else None
        with self._count_lock:
            self._counter.count(argv)
        limits = (OutputBuffer(max_output, keep_tail, raw), OutputBuffer(max_output))
        with self._conn.slots:
            transport, channel = self._checked_channel()
            try:
                return self._exchange(transport, channel, argv, command, data, timeout, limits)
            finally:
                _close_channel(channel)

    def _checked_channel(self) -> tuple[paramiko.Transport, paramiko.Channel]:
        """A session channel on a connection whose remote uid passed `check_uid`: on a new
        connection, `id -u` runs first (on a channel of its own) and nothing else runs unless
        the check passes."""
        transport, channel = self._open_channel()
        delays = list(self._conn.reconnect_delays)
        while self._check_uid is not None:
            seen = self._conn.uid_seen
            if seen is not None and seen[0] is transport:
                try:
                    self._check_uid(self.target.username, seen[1])
                except BaseException:
                    _close_channel(channel)
                    raise
                return transport, channel
            try:
                self._conn.uid_seen = (transport, self._remote_uid(transport, channel))
            except SSHCommandInterrupted as exc:
                # Only the check was sent, and it reads nothing: a dropped connection is
                # retried on a new one, as opening a channel is.
                if not delays:
                    raise SSHConnectError(
                        f"checking the uid of {self.target.endpoint}: {exc}"
                    ) from None
                time.sleep(delays.pop(0))
            finally:
                _close_channel(channel)
            transport, channel = self._open_channel()  # loops back to the check
        return transport, channel

    def _remote_uid(self, transport: paramiko.Transport, channel: paramiko.Channel) -> int:
        argv = ["id", "-u"]
        limits = (OutputBuffer(4096), OutputBuffer(4096))
        wait = max(self._conn.connect_timeout, 10.0)
        result = self._exchange(transport, channel, argv, "id -u", None, wait, limits)
        text = result.stdout.strip()
        if not result.ok or not text.isdigit():
            raise ImpersonationError(
                f"cannot check the uid of {self.target.endpoint}: `id -u` gave status "
                f"{result.returncode}, output {text[:80]!r}, errors {result.stderr.strip()[:200]!r}"
            )
        return int(text)

    def _open_channel(self) -> tuple[paramiko.Transport, paramiko.Channel]:
        """A session channel; retried (reconnecting) while nothing of the command was sent."""
        conn = self._conn
        delays = conn.reconnect_delays
        error: SSHError | None = None
        for attempt in range(len(delays) + 1):
            transport = conn.transport()
            try:
                return transport, transport.open_session(timeout=conn.connect_timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                # Nothing of the command was sent: whatever happened, retrying is safe.
                reason = getattr(exc, "text", None) or str(exc) or type(exc).__name__
                if "Timeout" not in reason and not _transport_died(transport):
                    # The server refused one more session (MaxSessions; paramiko may report
                    # it as "Unable to open channel" when several refusals race): wait it out
                    # on the same connection, whose other channels keep running.
                    error = SSHError(
                        f"{self.target.endpoint} refused to open a session channel ({reason}): "
                        f"is the server's MaxSessions below max_channels={conn.max_channels}?"
                    )
                    if attempt < len(delays):
                        time.sleep(delays[attempt])
                    continue
                # Transport dead, or silent for connect_timeout on a channel open (an sshd
                # answers in milliseconds: the path is dead): replace it and retry.
                conn.invalidate(transport)
                error = SSHConnectError(
                    f"could not open a channel on the SSH connection to {self.target.endpoint}: "
                    f"{reason}"
                )
        assert error is not None
        raise error

    def _exchange(
        self,
        transport: paramiko.Transport,
        channel: paramiko.Channel,
        argv: list[str],
        command: str,
        data: bytes | None,
        timeout: float | None,
        limits: tuple[OutputBuffer, OutputBuffer],
    ) -> CommandResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = " ".join(argv[:3]) + (" ..." if len(argv) > 3 else "")
        wait = timeout if timeout is not None else max(3 * self._conn.connect_timeout, 30.0)
        try:
            accepted = _send_exec(channel, command, wait)
        except (TimeoutError, OSError, EOFError, paramiko.SSHException) as exc:
            if isinstance(exc, TimeoutError) and not _transport_died(transport):
                raise SSHCommandTimeout(
                    f"{self.target.endpoint} did not answer the request to run {shown!r} "
                    f"within {wait:g}s (it may have run)",
                    argv,
                ) from None
            raise SSHCommandInterrupted(
                f"the SSH connection to {self.target.endpoint} dropped while sending {shown!r} "
                "(it may have run: check before running it again)",
                argv,
            ) from None
        if not accepted:
            if not _transport_died(transport):
                raise SSHError(f"{self.target.endpoint} refused to execute {shown!r}")
            raise SSHCommandInterrupted(
                f"the SSH connection to {self.target.endpoint} dropped while starting {shown!r} "
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
                        self._abandon(channel)
                        raise SSHCommandTimeout(
                            f"{shown!r} on {self.target.endpoint} did not finish within "
                            f"{timeout:g}s (it ran, and may still be running)",
                            argv,
                        )
                    nap = min(nap, left)
                select.select([wake], [], [], nap)
        finally:
            if writer is not None:
                if writer.is_alive():
                    _close_channel(channel)  # wakes a writer blocked on a full window
                writer.join(5.0)

        status = channel.exit_status
        complete = channel.eof_received and channel.exit_status_ready() and status != -1
        if not complete and _transport_died(transport):
            raise SSHCommandInterrupted(
                f"the SSH connection to {self.target.endpoint} dropped while {shown!r} was "
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

    @staticmethod
    def _abandon(channel: paramiko.Channel) -> None:
        """Best effort: signal the timed-out command (OpenSSH >= 7.9), then close."""
        with contextlib.suppress(Exception):
            _channel_request(channel, "signal", "TERM", want_reply=False)
        _close_channel(channel)
