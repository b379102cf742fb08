"""The rig's sshd for the SSH tests: where it is, and tools to break connections to it.

The rig (scripts/cluster-up) runs a key-only sshd on 127.0.0.1:2222 (users alice, bob and the
SSH service user svc), private keys at /etc/slurmrunner-rig/keys/<user>_ed25519 (owned by
slurmsrv, 0600), the server's host key in /etc/slurmrunner-rig/known_hosts and the listener's
pid in /run/slurmrunner-rig/sshd.pid. scripts/rig.env states that contract (RIG_SSH_HOST,
RIG_SSH_PORT, RIG_KEYS_DIR, RIG_KNOWN_HOSTS, RIG_SSH_USER, RIG_SSHD_PIDFILE); the values above
are used when it is absent. SLURMRUNNER_RIG_ENV may name another env file (e.g. a throwaway
sshd of one's own).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

RIG_ENV = Path(__file__).resolve().parents[1] / "scripts" / "rig.env"
RIG_DIR = "/etc/slurmrunner-rig"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (optionally `export KEY=...`, shell-quoted values, # comments)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"^export\s+", "", line)
        key, sep, raw = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue
        try:
            words = shlex.split(raw, comments=True)
        except ValueError:
            words = [raw]
        values[key] = " ".join(words)
    return values


@dataclass(frozen=True)
class SSHRig:
    host: str
    port: int
    users: tuple[str, ...]
    keys_dir: str
    known_hosts: str
    sshd_pidfile: str | None
    source: str

    @property
    def user(self) -> str:
        return self.users[0]

    def key(self, user: str | None = None) -> str:
        return f"{self.keys_dir}/{user or self.user}_ed25519"

    def listener_pid(self) -> int | None:
        if not self.sshd_pidfile:
            return None
        try:
            return int(Path(self.sshd_pidfile).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def problem(self) -> str | None:
        """Why the rig's sshd cannot be used now, or None."""
        try:
            # Generous: only a dead sshd takes this long, a busy machine answers sooner.
            with socket.create_connection((self.host, self.port), timeout=10) as sock:
                sock.settimeout(10)
                banner = sock.recv(64)
        except OSError as exc:
            return f"no sshd at {self.host}:{self.port} ({exc})"
        if not banner.startswith(b"SSH-"):
            return f"{self.host}:{self.port} is not an SSH server (banner {banner[:20]!r})"
        for path in (self.key(), self.known_hosts):
            if not os.path.isfile(path):
                return f"{path} is missing"
        return None


def load_rig() -> SSHRig:
    env_path = Path(os.environ.get("SLURMRUNNER_RIG_ENV") or RIG_ENV)
    values = read_env_file(env_path) if env_path.is_file() else {}
    source = str(env_path) if values else "the built-in rig contract (no rig.env)"
    users = values.get("RIG_SSH_USER") or values.get("RIG_USERS") or "svc"
    return SSHRig(
        host=values.get("RIG_SSH_HOST") or "127.0.0.1",
        port=int(values.get("RIG_SSH_PORT") or 2222),
        users=tuple(u for u in re.split(r"[\s,]+", users) if u),
        keys_dir=values.get("RIG_KEYS_DIR") or f"{RIG_DIR}/keys",
        known_hosts=values.get("RIG_KNOWN_HOSTS") or f"{RIG_DIR}/known_hosts",
        sshd_pidfile=values.get("RIG_SSHD_PIDFILE") or "/run/slurmrunner-rig/sshd.pid",
        source=source,
    )


def require_rig() -> SSHRig:
    """The rig, or skip (developer machine without the rig) / fail (CI: the rig must be up)."""
    rig = load_rig()
    problem = rig.problem()
    if problem:
        message = (
            f"the rig's sshd is not usable: {problem} (settings from {rig.source}); "
            "start it with scripts/cluster-up"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {message}")
        if os.environ.get("SLURMRUNNER_RIG") == "1":
            pytest.fail(f"scripts/test brought the rig up (SLURMRUNNER_RIG=1) but {message}")
        pytest.skip(message)
    return rig


# --------------------------------------------------------------------------- server processes


def _sockets(port_local: int, port_remote: int) -> set[str]:
    """Inodes of established TCP sockets with these ports (from /proc/net/tcp{,6})."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if state != "01":
                    continue
                if int(local.rsplit(":", 1)[1], 16) == port_local and (
                    int(remote.rsplit(":", 1)[1], 16) == port_remote
                ):
                    inodes.add(inode)
    return inodes


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def server_process_of(client_port: int, server_port: int, listener: int | None) -> int:
    """The per-connection sshd process serving the client connection from `client_port`: of
    the processes holding the server side of that TCP connection, the one whose parent does
    not (a child of the listening sshd). Only this connection's process, never another's."""
    inodes = {f"socket:[{inode}]" for inode in _sockets(server_port, client_port)}
    assert inodes, f"no server-side socket for client port {client_port}"
    holders = _holders_of(inodes)
    assert holders, f"no process holds the server side of client port {client_port}"
    tops = [pid for pid in holders if _parent(pid) not in holders]
    assert len(tops) == 1, f"ambiguous server processes {sorted(holders)}"
    pid = tops[0]
    if listener is not None:
        assert _parent(pid) == listener, f"sshd {pid} is not a child of the listener {listener}"
    return pid


def _holders_of(inodes: set[str]) -> set[int]:
    """Every process with an open descriptor on one of `inodes` ("socket:[N]" links)."""
    holders: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        holders.add(int(entry.name))
                        break
    return holders


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:[") : -1])
    return inodes


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                children.setdefault(_parent(int(entry.name)), []).append(int(entry.name))
    found, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def client_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of the established TCP connections to `server_port` held by process `pid`
    or its descendants (read from /proc: no `ss`, no parsing of its columns)."""
    mine: set[str] = set()
    for each in _descendants(pid):
        mine |= _socket_inodes(each)
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                remote_port = int(remote.rsplit(":", 1)[1], 16)
                if state == "01" and inode in mine and remote_port == server_port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


@dataclass(frozen=True)
class SshdConnection:
    """The rig's processes serving one client connection, once the user has a session: the
    per-connection monitor (`sshd: USER [priv]`, a child of the listener) and its unprivileged
    child that holds the socket and runs the user's commands (`sshd: USER@notty`, a title sshd
    sets only when the first session channel opens, i.e. after authentication)."""

    client_port: int
    monitor: int
    session: int
    title: str


def sshd_connection(client_port: int, server_port: int, listener: int) -> SshdConnection | None:
    """The connection from `client_port` if it is authenticated and has run a command, else
    None (not yet there, still in its handshake, or already gone). Never raises on a race."""
    try:
        inodes = {f"socket:[{inode}]" for inode in _sockets(server_port, client_port)}
        if not inodes:
            return None
        holders = _holders_of(inodes)
        monitors = [pid for pid in holders if _parent(pid) == listener]
        if len(monitors) != 1:
            return None
        monitor = monitors[0]
        sessions = [pid for pid in holders if _parent(pid) == monitor]
        if len(sessions) != 1:
            return None
        title = _cmdline(sessions[0])
        if not re.fullmatch(r"sshd: \S+@notty", title):
            return None
        return SshdConnection(client_port, monitor, sessions[0], title)
    except (OSError, ValueError, IndexError):
        return None


def signal_session(conn: SshdConnection, sig: int) -> bool:
    """Send `sig` to the connection's session process, and to nothing else: the process is
    pinned with a pidfd, then checked to still be that connection's child of that monitor
    with that title, so a pid that ended and was reused in between is never signalled.
    False if the process is gone (the connection ended by itself)."""
    try:
        pidfd = os.pidfd_open(conn.session)
    except ProcessLookupError:
        return False
    try:
        try:
            same = _parent(conn.session) == conn.monitor and _cmdline(conn.session) == conn.title
        except (OSError, ValueError, IndexError):
            same = False
        if not same:
            return False
        try:
            signal.pidfd_send_signal(pidfd, sig)
        except ProcessLookupError:
            return False
        return True
    finally:
        os.close(pidfd)


def wait_until(predicate, timeout: float, step: float = 0.01) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# --------------------------------------------------------------------------- a breakable path


class TcpProxy:
    """A loopback TCP forwarder to the rig's sshd that the test can cut (`drop`), take down
    (`stop`: nothing listens, connections are refused) and bring back (`start`) on the same
    port. The port is chosen by the kernel (bound to port 0) and stays bound by this object
    while the proxy is down, so no other process can take it in between."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._reserved: socket.socket | None = None  # holds the port while stopped
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0

    def start(self) -> TcpProxy:
        if self._listener is not None:
            return self
        if self._reserved is not None:
            listener, self._reserved = self._reserved, None
        else:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        """Cut every forwarded connection (both ends see the connection close)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def stop(self) -> None:
        """Nothing listens any more (connections are refused); the port stays ours."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            # Bind the same port explicitly (SO_REUSEADDR: allowed next to the old, no longer
            # listening socket) before closing the old one: there is no moment at which the
            # port is free for another process.
            reserved = socket.socket()
            reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            reserved.bind(("127.0.0.1", self.port))
            self._listener.close()
            self._listener = None
            self._reserved = reserved
        self.drop()

    def close(self) -> None:
        self.stop()
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None


_RESERVED: list[socket.socket] = []  # closed_port() sockets, held until the process exits


def closed_port() -> int:
    """A loopback port where nothing listens, and nothing can start listening while this
    process runs: a socket stays bound to it without listening, so connections to it are
    refused (a port bound then released could be taken by another process in between)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _RESERVED.append(sock)
    return sock.getsockname()[1]
