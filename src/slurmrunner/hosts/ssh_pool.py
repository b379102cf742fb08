"""The pool of SSH connections: one shared, authenticated Transport per identity (SSHTarget),
reconnected with backoff when it drops, and closed when its last user lets go."""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Sequence

import paramiko

from ..errors import SSHConnectError, SSHError
from .ssh_connect import SSHTarget, open_transport

#: Waits between reconnection attempts after an established connection dropped.
RECONNECT_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)


# --------------------------------------------------------------------------- the pool


class PooledConnection:
    """One pool entry: the shared Transport of a target, its channel cap and its counters."""

    def __init__(
        self,
        target: SSHTarget,
        connect_timeout: float,
        max_channels: int,
        keepalive_s: float,
        reconnect_delays: Sequence[float],
    ) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.max_channels = max_channels
        self.keepalive_s = keepalive_s
        self.reconnect_delays = tuple(reconnect_delays)
        #: Caps the session channels open at once on this connection.
        self.slots = threading.BoundedSemaphore(max_channels)
        #: How many SSH connections this entry opened (1 + reconnections).
        self.connections_opened = 0
        self.refs = 0
        self.closed = False
        self._lock = threading.Lock()
        self._transport: paramiko.Transport | None = None
        #: The uid `id -u` reported on a transport (checked once per connection).
        self.uid_seen: tuple[paramiko.Transport, int] | None = None
        self._failures = 0
        self._last_error: SSHError | None = None

    def transport(self) -> paramiko.Transport:
        """The live Transport, (re)connecting if needed: the first connection gets one
        attempt (bad settings fail fast); a reconnection gets len(reconnect_delays) + 1."""
        current = self._transport
        if current is not None and current.is_active():
            return current
        failures_seen = self._failures
        with self._lock:
            if self.closed:
                raise SSHError(f"the SSH connection to {self.target.endpoint} was closed")
            current = self._transport
            if current is not None and current.is_active():
                return current
            if self._failures != failures_seen and self._last_error is not None:
                # Another thread just tried (with backoff) while we waited: do not try again.
                raise type(self._last_error)(str(self._last_error))
            reconnecting = current is not None or self.connections_opened > 0
            if current is not None:
                current.close()
                self._transport = None
            delays = self.reconnect_delays if reconnecting else ()
            for attempt in range(len(delays) + 1):
                try:
                    current = open_transport(self.target, self.connect_timeout, self.keepalive_s)
                    break
                except SSHConnectError as exc:
                    if attempt < len(delays):
                        time.sleep(delays[attempt])
                        continue
                    error: SSHError = exc
                    if reconnecting:
                        error = SSHConnectError(
                            f"the SSH connection to {self.target.endpoint} dropped and "
                            f"{attempt + 1} reconnection attempts failed: {exc}"
                        )
                    self._fail(error)
                    raise error from None
                except SSHError as exc:
                    self._fail(exc)
                    raise
            self._transport = current
            self.connections_opened += 1
            return current

    def _fail(self, error: SSHError) -> None:
        self._failures += 1
        self._last_error = error

    def invalidate(self, transport: paramiko.Transport) -> None:
        """Drop `transport` (dead or unresponsive) so that the next use reconnects."""
        with self._lock:
            if self._transport is transport:
                self._transport = None
        transport.close()

    @property
    def connected(self) -> bool:
        current = self._transport
        return current is not None and current.is_active()

    def local_address(self) -> tuple[str, int] | None:
        """The client side (ip, port) of the live connection, to find its server process."""
        current = self._transport
        if current is None or not current.is_active():
            return None
        return current.sock.getsockname()[:2]  # type: ignore[union-attr]

    def close(self) -> None:
        with self._lock:
            self.closed = True
            current, self._transport = self._transport, None
        if current is not None:
            current.close()


class ConnectionPool:
    """Pool entries by target; thread-safe. An entry closes when its last SSHHost closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[SSHTarget, PooledConnection] = {}

    def acquire(
        self,
        target: SSHTarget,
        connect_timeout: float = 10.0,
        max_channels: int = 8,
        keepalive_s: float = 15.0,
        reconnect_delays: Sequence[float] = RECONNECT_DELAYS,
    ) -> PooledConnection:
        """The entry of `target` (created on first use: its settings are the first caller's)."""
        with self._lock:
            entry = self._entries.get(target)
            if entry is None or entry.closed:
                entry = PooledConnection(
                    target, connect_timeout, max_channels, keepalive_s, reconnect_delays
                )
                self._entries[target] = entry
            entry.refs += 1
            return entry

    def release(self, entry: PooledConnection) -> None:
        with self._lock:
            entry.refs -= 1
            if entry.refs > 0:
                return
            if self._entries.get(entry.target) is entry:
                del self._entries[entry.target]
        entry.close()

    def get(self, target: SSHTarget) -> PooledConnection | None:
        with self._lock:
            return self._entries.get(target)

    def entries(self) -> list[PooledConnection]:
        with self._lock:
            return list(self._entries.values())

    def close_all(self) -> None:
        """Close every connection (e.g. at shutdown); SSHHosts using them then refuse to run."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


#: The process-wide pool every SSHHost uses unless given another.
connection_pool = ConnectionPool()
atexit.register(connection_pool.close_all)


def close_all() -> None:
    """Close every pooled SSH connection of the process."""
    connection_pool.close_all()
