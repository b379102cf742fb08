"""Opening one SSH connection: the private key, the host key check, the socket, the
handshake and authentication, each failure typed (see hosts/ssh.py) and within a deadline."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any

import paramiko

from ..errors import SSHAuthError, SSHConnectError, SSHHostKeyError, SSHKeyError

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


_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)  # 0: not offered (not Linux)


class _QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges what it receives at once (Linux's TCP_QUICKACK, which
    the kernel clears again, so it is set after every read). Why: after authentication
    OpenSSH's sshd sends two small packets the client does not answer (hostkeys-00 and a
    debug message) and, Nagle on its side, holds its reply to our first channel open until
    they are acknowledged; with delayed ACKs that is 40 ms on every new connection's first
    command (measured 44 ms -> 2 ms on 127.0.0.1)."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        with contextlib.suppress(OSError):
            self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return data


def _new_socket(family: int, kind: int, proto: int) -> socket.socket:
    tcp = family in (socket.AF_INET, socket.AF_INET6)
    return (_QuickAckSocket if tcp and _QUICKACK else socket.socket)(family, kind, proto)


def _open_socket(target: SSHTarget, timeout: float, deadline: float) -> socket.socket:
    address = f"{target.host}:{target.port}"
    last: OSError | None = None
    for family, kind, proto, _name, sockaddr in _resolve(target.host, target.port, deadline):
        left = _remaining(deadline)
        if left <= 0:
            break
        sock = _new_socket(family, kind, proto)
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
            why = str(exc) or type(exc).__name__  # EOFError says nothing by itself
            dropped = "banner" in why or not str(exc)
            hint = " (not an SSH server, or it dropped us)" if dropped else ""
            raise SSHConnectError(f"SSH handshake with {address} failed: {why}{hint}") from None
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
