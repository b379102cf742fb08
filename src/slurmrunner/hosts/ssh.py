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

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import paramiko

from ..errors import HostError, ImpersonationError, SSHConnectError, SSHError, SSHKeyError
from ..quoting import posix_username, shell_command
from .base import DEFAULT_MAX_OUTPUT, CallCounter, CommandResult, OutputBuffer
from .ssh_channel import (
    SSHCommandInterrupted,
    SSHCommandTimeout,
    close_channel,
    maybe_ran,
    run_on_channel,
    transport_died,
)
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
            close_channel(self._checked_channel()[1])

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
                return run_on_channel(
                    self.target.endpoint,
                    self._conn.connect_timeout,
                    transport,
                    channel,
                    argv,
                    command,
                    data,
                    timeout,
                    limits,
                )
            finally:
                close_channel(channel)

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
                    close_channel(channel)
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
                close_channel(channel)
            transport, channel = self._open_channel()  # loops back to the check
        return transport, channel

    def _remote_uid(self, transport: paramiko.Transport, channel: paramiko.Channel) -> int:
        argv = ["id", "-u"]
        limits = (OutputBuffer(4096), OutputBuffer(4096))
        wait = max(self._conn.connect_timeout, 10.0)
        result = run_on_channel(
            self.target.endpoint,
            self._conn.connect_timeout,
            transport,
            channel,
            argv,
            "id -u",
            None,
            wait,
            limits,
        )
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
                if "Timeout" not in reason and not transport_died(transport):
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
