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

import atexit
import contextlib
import logging
import os
import select
import socket
import stat
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from ..errors import (
    HostError,
    SSHAuthError,
    SSHConnectError,
    SSHError,
    SSHHostKeyError,
    SSHKeyError,
)
from ..quoting import posix_username, shell_command
from .base import CallCounter, CommandResult

# paramiko's transport thread logs every failure it raises to us as well: keep it off stderr
# unless the application configures logging.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

#: Waits between reconnection attempts after an established connection dropped.
RECONNECT_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
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


# --------------------------------------------------------------------------- key, host keys


def load_private_key(path: str) -> paramiko.PKey:
    """The private key at `path` (ed25519, ecdsa or rsa, unencrypted), checked like OpenSSH:
    refused when group or others have any permission on it. Raises SSHKeyError naming path."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SSHKeyError(f"SSH private key {path} does not exist") from None
    except OSError as exc:
        raise SSHKeyError(f"cannot read SSH private key {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SSHKeyError(f"SSH private key {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SSHKeyError(
            f"SSH private key {path} has permissions {mode:04o}: it must not be accessible by "
            f"group or others (like OpenSSH, slurmrunner refuses it); run: chmod 600 {path}"
        )
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise SSHKeyError(f"cannot read SSH private key {path}: {exc.strerror}") from None
    if not head.strip():
        raise SSHKeyError(f"SSH private key {path} is empty")
    try:
        return paramiko.PKey.from_path(path)
    except (TypeError, paramiko.PasswordRequiredException) as exc:
        if isinstance(exc, paramiko.PasswordRequiredException) or "password" in str(exc):
            raise SSHKeyError(
                f"SSH private key {path} is encrypted with a passphrase: slurmrunner needs a "
                "key without passphrase (kept mode 0600, readable only by the server's user)"
            ) from None
        raise SSHKeyError(f"SSH private key {path} could not be loaded: {exc}") from None
    except paramiko.UnknownKeyType as exc:
        raise SSHKeyError(
            f"SSH private key {path} is of an unsupported type ({exc}): use ed25519, ecdsa or rsa"
        ) from None
    except OSError as exc:
        raise SSHKeyError(f"cannot read SSH private key {path}: {exc.strerror}") from None
    except (ValueError, paramiko.SSHException) as exc:
        hint = ""
        if head.lstrip().startswith((b"ssh-", b"ecdsa-", b"sk-")):
            hint = " (it looks like a public key: give the path of the private key)"
        raise SSHKeyError(
            f"SSH private key {path} is not a private key in OpenSSH or PEM format{hint}: "
            f"{str(exc).split('. See ')[0]}"
        ) from None


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def _load_known_hosts(path: str) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    if os.path.exists(path):
        try:
            keys.load(path)
        except (OSError, paramiko.SSHException) as exc:
            raise SSHHostKeyError(f"cannot read known_hosts file {path}: {exc}") from None
    return keys


def _check_host_key(
    name: str, offered: paramiko.PKey, expected: Any, known_hosts: str, endpoint: str
) -> None:
    if expected is None:
        where = known_hosts if os.path.exists(known_hosts) else f"{known_hosts} (missing file)"
        raise SSHHostKeyError(
            f"host key of {endpoint} is unknown: no entry for {name} in {where}; the server "
            f"offered {_fingerprint(offered)}. Verify that fingerprint with the cluster's admins "
            "and add the server's public host key to the known_hosts file (strict host key "
            "checking: unknown hosts are never accepted)"
        )
    ours = expected.get(offered.get_name())
    if ours != offered:
        recorded = ours if ours is not None else next(iter(expected.values()))
        raise SSHHostKeyError(
            f"host key of {endpoint} has CHANGED: the server offered {_fingerprint(offered)} but "
            f"{known_hosts} records {_fingerprint(recorded)} for {name}. POSSIBLE "
            "MAN-IN-THE-MIDDLE ATTACK (or the server was reinstalled): refusing to connect. If "
            f"the change is legitimate, replace the entry for {name} in {known_hosts}"
        )


def _prefer_known_key_types(transport: paramiko.Transport, expected: Any) -> None:
    """Ask the server for the host key type(s) known_hosts records (as OpenSSH does)."""
    opts = transport.get_security_options()
    offered = list(opts.key_types)
    wanted: list[str] = []
    for key_type in list(expected):
        names = ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if key_type == "ssh-rsa" else [key_type]
        wanted += [n for n in names if n in offered and n not in wanted]
    if wanted:
        opts.key_types = wanted + [n for n in offered if n not in wanted]


# --------------------------------------------------------------------------- connecting


@dataclass(frozen=True)
class SSHTarget:
    """The identity a pool entry is for. known_hosts is part of it so that a connection
    verified against one known_hosts file is never reused by a caller trusting another."""

    host: str
    port: int
    username: str
    key_path: str
    known_hosts: str

    @property
    def endpoint(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def _remaining(deadline: float) -> float:
    return deadline - time.monotonic()


def _resolve(host: str, port: int, deadline: float) -> list[Any]:
    """getaddrinfo bounded by the deadline (the resolver itself has no timeout)."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc

    worker = threading.Thread(target=work, name=f"resolve {host}", daemon=True)
    worker.start()
    worker.join(max(_remaining(deadline), 0.0))
    if worker.is_alive():
        raise SSHConnectError(f"resolving host name {host!r} did not finish in time")
    if "error" in box:
        exc = box["error"]
        reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else exc
        raise SSHConnectError(f"cannot resolve host name {host!r}: {reason}")
    return box["infos"]


def _open_socket(target: SSHTarget, timeout: float, deadline: float) -> socket.socket:
    address = f"{target.host}:{target.port}"
    last: OSError | None = None
    for family, kind, proto, _name, sockaddr in _resolve(target.host, target.port, deadline):
        left = _remaining(deadline)
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        sock.settimeout(left)
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small request/reply packets (channel open, exec): without this, Nagle plus the
            # server's delayed ACK cost 40 ms per command.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    if isinstance(last, ConnectionRefusedError):
        raise SSHConnectError(f"connection to {address} refused (no SSH server on that port?)")
    if last is None or isinstance(last, TimeoutError):
        raise SSHConnectError(f"connecting to {address} timed out after {timeout:g}s")
    raise SSHConnectError(f"cannot connect to {address}: {last.strerror or last}")


def open_transport(target: SSHTarget, timeout: float, keepalive_s: float) -> paramiko.Transport:
    """One authenticated, host-key-verified Transport, or a typed SSHError, within timeout."""
    deadline = time.monotonic() + timeout
    pkey = load_private_key(target.key_path)
    expected = _load_known_hosts(target.known_hosts).lookup(target.known_hosts_name)
    address = f"{target.host}:{target.port}"
    sock = _open_socket(target, timeout, deadline)
    transport: paramiko.Transport | None = None
    try:
        transport = paramiko.Transport(sock)
        left = max(_remaining(deadline), 0.1)
        # start_client(timeout=left) is the bound; paramiko's own timers only back it up.
        transport.banner_timeout = left + 1
        transport.handshake_timeout = left + 1
        if expected is not None:
            _prefer_known_key_types(transport, expected)
        try:
            transport.start_client(timeout=left)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            hint = " (not an SSH server, or it dropped us)" if "banner" in str(exc) else ""
            raise SSHConnectError(f"SSH handshake with {address} failed: {exc}{hint}") from None
        if not transport.is_active() or not transport.initial_kex_done:
            raise SSHConnectError(
                f"SSH handshake with {address} did not finish within {timeout:g}s"
            )
        _check_host_key(
            target.known_hosts_name,
            transport.get_remote_server_key(),
            expected,
            target.known_hosts,
            address,
        )
        transport.auth_timeout = max(_remaining(deadline), 0.1)
        try:
            more = transport.auth_publickey(target.username, pkey)
        except paramiko.BadAuthenticationType as exc:
            raise SSHAuthError(
                f"{target.endpoint} does not accept public-key authentication "
                f"(it allows: {', '.join(exc.allowed_types) or 'nothing'})"
            ) from None
        except paramiko.AuthenticationException as exc:
            text = str(exc)
            if "timeout" in text.lower():
                raise SSHConnectError(
                    f"authentication at {target.endpoint} did not finish within {timeout:g}s"
                ) from None
            if "transport shut down" in text or "EOF" in text:
                raise SSHConnectError(
                    f"{address} closed the connection during authentication of {target.endpoint}"
                ) from None
            raise SSHAuthError(
                f"{target.endpoint} refused authentication with the key {target.key_path} "
                f"({_fingerprint(pkey)}): is its public key in {target.username}'s "
                "authorized_keys on the cluster?"
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SSHConnectError(
                f"connection to {address} lost during authentication: {exc}"
            ) from None
        if more or not transport.is_authenticated():
            raise SSHAuthError(
                f"{target.endpoint} requires further authentication ({', '.join(more)}) "
                "after the key: slurmrunner supports key-only accounts"
            )
        if keepalive_s > 0:
            transport.set_keepalive(int(max(keepalive_s, 1)))
        return transport
    except BaseException:
        if transport is not None:
            transport.close()
        else:
            sock.close()
        raise


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
    ) -> None:
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
        self._conn.transport()

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
        self, argv: list[str], stdin: str | None = None, timeout: float | None = 60.0
    ) -> CommandResult:
        """Run argv (every word quoted) on the host; stdin (any size) is streamed to it.

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
        with self._conn.slots:
            transport, channel = self._open_channel()
            try:
                return self._exchange(transport, channel, argv, command, data, timeout)
            finally:
                _close_channel(channel)

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

        out, err = bytearray(), bytearray()
        try:
            wake = channel.fileno()  # readable when stdout or stderr has data, or at close
            while True:
                got = False
                if channel.recv_ready():
                    out += channel.recv(_READ_CHUNK)
                    got = True
                if channel.recv_stderr_ready():
                    err += channel.recv_stderr(_READ_CHUNK)
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
            out.decode("utf-8", errors="replace"),
            err.decode("utf-8", errors="replace"),
        )

    @staticmethod
    def _abandon(channel: paramiko.Channel) -> None:
        """Best effort: signal the timed-out command (OpenSSH >= 7.9), then close."""
        with contextlib.suppress(Exception):
            _channel_request(channel, "signal", "TERM", want_reply=False)
        _close_channel(channel)
