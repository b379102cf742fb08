"""SSHHost against a REAL sshd: the rig's (scripts/cluster-up; see helpers_sshd.py).

Tests marked `ssh` need the rig: skipped with the reason when it is down, failed when CI is set.
The key-file and unreachable-host cases need no server and always run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import socket
import threading
import time
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from slurmrunner.errors import (
    HostError,
    SSHAuthError,
    SSHConnectError,
    SSHHostKeyError,
    SSHKeyError,
)
from slurmrunner.hosts.ssh import (
    ConnectionPool,
    SSHCommandInterrupted,
    SSHCommandTimeout,
    SSHHost,
    load_private_key,
    maybe_ran,
)

try:
    from helpers_sshd import (
        SSHRig,
        TcpProxy,
        closed_port,
        require_rig,
        server_process_of,
        wait_until,
    )
except ImportError:  # tests/ became a package
    from tests.helpers_sshd import (
        SSHRig,
        TcpProxy,
        closed_port,
        require_rig,
        server_process_of,
        wait_until,
    )

ERROR_BUDGET_S = 15.0  # every error case must be reported within this


@pytest.fixture
def pool():
    pool = ConnectionPool()  # isolated from the process pool and from other tests
    yield pool
    pool.close_all()


@pytest.fixture
def rig() -> SSHRig:
    return require_rig()


def rig_host(rig: SSHRig, pool: ConnectionPool, **settings) -> SSHHost:
    settings.setdefault("key_path", rig.key())
    settings.setdefault("known_hosts", rig.known_hosts)
    return SSHHost(rig.host, rig.port, rig.user, pool=pool, **settings)


def write_key(path: Path, kind: str = "ed25519", password: bytes | None = None) -> str:
    """A fresh private key at path (mode 0600); returns its public key line."""
    private = {
        "ed25519": lambda: ed25519.Ed25519PrivateKey.generate(),
        "ecdsa": lambda: ec.generate_private_key(ec.SECP256R1()),
        "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }[kind]()
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
        )
    )
    path.chmod(0o600)
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def rig_known_hosts_for_port(rig: SSHRig, port: int, path: Path) -> str:
    """The rig's host keys recorded under 127.0.0.1:port (to reach the rig through a proxy)."""
    recorded = paramiko.HostKeys(rig.known_hosts).lookup(known_hosts_name(rig.host, rig.port))
    assert recorded, f"{rig.known_hosts} has no entry for the rig's sshd"
    keys = paramiko.HostKeys()
    for key_type, key in recorded.items():
        keys.add(known_hosts_name("127.0.0.1", port), key_type, key)
    keys.save(str(path))
    return str(path)


def expect_error(host: SSHHost, error: type[HostError], *fragments: str) -> str:
    """run() fails with exactly `error` (not a sibling type), in time, naming the fragments."""
    start = time.monotonic()
    with pytest.raises(HostError) as info:
        host.run(["true"])
    elapsed = time.monotonic() - start
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert elapsed < ERROR_BUDGET_S, f"took {elapsed:.1f}s"
    assert not maybe_ran(info.value)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def unique_sleep() -> str:
    """A sleep duration no other test process uses: it marks our command among processes."""
    return f"{40 + secrets.randbelow(10**6) / 10**6:.6f}"


def find_processes(marker: str, ancestor: int | None = None) -> list[int]:
    """PIDs whose command line contains marker (and, if given, that descend from ancestor)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if marker not in cmdline or "pytest" in cmdline:
                    continue
                if ancestor is None or ancestor in ancestors(int(entry.name)):
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return found


def ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain


# --------------------------------------------------------------------------- running commands


@pytest.mark.ssh
def test_argv_is_quoted_and_status_and_streams_come_back(rig, pool):
    host = rig_host(rig, pool)
    words = ["a b", "it's", '"dq"', "$HOME", "; rm -rf /", "*", "back\\slash", "new\nline", ""]
    result = host.run(["printf", "%s|", *words])
    assert result.ok
    assert result.stdout == "|".join(words) + "|"
    assert result.argv == ("printf", "%s|", *words)

    failed = host.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (failed.returncode, failed.stdout, failed.stderr) == (3, "out\n", "err\n")
    assert host.run(["id", "-un"]).stdout.strip() == rig.user
    assert host.calls["printf"] == 1 and host.calls["sh"] == 1
    assert host.connections_opened == 1


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_the_connection_socket_acknowledges_what_it_reads_at_once():
    """sshd holds its answer to a new connection's first channel open behind two packets we
    do not answer: our socket acks every read at once (else 40 ms of delayed ACK each time)."""
    from slurmrunner.hosts.ssh_connect import SSHTarget, _open_socket, _QuickAckSocket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        target = SSHTarget("127.0.0.1", port, "u", "/k", "/known_hosts")
        sock = _open_socket(target, 5.0, time.monotonic() + 5.0)  # what paramiko is given
        assert isinstance(sock, _QuickAckSocket)
        with sock:
            peer, _ = server.accept()
            with peer:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
                peer.sendall(b"hostkeys-00")
                assert sock.recv(64) == b"hostkeys-00"
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1


@pytest.mark.ssh
def test_large_stdin_and_large_stdout_stderr_round_trip(rig, pool):
    host = rig_host(rig, pool)
    # 4 MB of varied text with non-ASCII characters (a big SLURM script is this size).
    line = "#SBATCH --comment=é€ " + "x" * 60 + "\n"
    text = "".join(f"{i:08d} {line}" for i in range(4 * 1024 * 1024 // (len(line) + 9) + 1))
    assert len(text.encode()) > 4 * 1024 * 1024

    start = time.monotonic()
    echoed = host.run(["cat"], stdin=text, timeout=60)
    cat_s = time.monotonic() - start
    assert echoed.ok and echoed.stdout == text

    digest = host.run(["sha256sum"], stdin=text)
    assert digest.stdout.split()[0] == hashlib.sha256(text.encode()).hexdigest()

    # Both output streams large at once, while stdin is still being written: no deadlock.
    both = host.run(
        ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' e >&2; cat"], stdin=text, timeout=60
    )
    assert both.ok and both.stdout == text and both.stderr == "e" * 3_000_000

    # A command that never reads its (large) stdin still returns.
    assert host.run(["true"], stdin=text, timeout=30).ok
    print(f"4 MB cat round trip: {cat_s:.2f}s")


@pytest.mark.ssh
def test_30_concurrent_runs_share_one_connection_within_max_channels(rig, pool):
    first = rig_host(rig, pool, max_channels=8)
    second = rig_host(rig, pool)  # same identity: same pool entry, same connection
    assert second.connection is first.connection

    results: dict[int, str] = {}
    errors: list[BaseException] = []
    script = 's=$(date +%s.%N); sleep 0.3; echo "$s $(date +%s.%N) $0"'

    def one(i: int) -> None:
        host = first if i % 2 else second
        try:
            results[i] = host.run(["sh", "-c", script, str(i)], timeout=60).stdout
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    elapsed = time.monotonic() - start

    assert not errors, errors
    assert sorted(results) == list(range(30))
    spans = []
    for i, out in results.items():
        began, ended, tag = out.split()
        assert tag == str(i)
        spans.append((float(began), float(ended)))
    # Server-side evidence of the channel cap: never more than 8 commands at once.
    events = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert 1 < peak <= 8, peak
    assert first.connections_opened == 1 and second.connections_opened == 1
    assert first.calls["sh"] + second.calls["sh"] == 30
    print(f"30 runs, peak {peak} concurrent channels, 1 connection, {elapsed:.2f}s")


@pytest.mark.ssh
def test_sessions_refused_by_max_sessions_are_waited_out_on_the_same_connection(rig, pool):
    # max_channels above the rig's MaxSessions (10): sshd refuses the extra session channels;
    # they are retried after a pause, and the connection (running 10 commands) is kept.
    host = rig_host(rig, pool, max_channels=14)
    outputs: list[str] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            outputs.append(host.run(["sh", "-c", "sleep 1; echo $0", str(i)]).stdout)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(14)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(int(out) for out in outputs) == list(range(14))
    assert host.connections_opened == 1


@pytest.mark.ssh
def test_timeout_raises_maybe_ran_and_stops_the_command(rig, pool):
    host = rig_host(rig, pool)
    marker = unique_sleep()
    start = time.monotonic()
    with pytest.raises(SSHCommandTimeout) as info:
        host.run(["sleep", marker], timeout=1.0)
    assert 0.9 < time.monotonic() - start < 5
    assert maybe_ran(info.value) and isinstance(info.value, SSHCommandInterrupted)
    assert "1s" in str(info.value)
    # The command was signalled (sshd "signal" request), and the connection is still good.
    assert wait_until(lambda: not find_processes(f"sleep {marker}"), 5)
    assert host.run(["echo", "still"]).stdout == "still\n"
    assert host.connections_opened == 1


def test_closed_host_refuses_and_last_close_releases_the_connection(pool):
    host = SSHHost("127.0.0.1", closed_port(), "alice", "/nonexistent/key", pool=pool)
    other = SSHHost("127.0.0.1", host.target.port, "alice", "/nonexistent/key", pool=pool)
    assert len(pool) == 1 and other.connection is host.connection
    host.close()
    assert len(pool) == 1
    other.close()
    assert len(pool) == 0
    with pytest.raises(HostError, match="closed"):
        host.run(["true"])


# --------------------------------------------------------------------------- key errors


def test_missing_key(tmp_path, pool):
    path = tmp_path / "nope_ed25519"
    host = SSHHost("127.0.0.1", closed_port(), "alice", str(path), pool=pool)
    expect_error(host, SSHKeyError, str(path), "does not exist")


def test_key_with_loose_permissions_is_refused(tmp_path, pool):
    path = tmp_path / "loose_ed25519"
    write_key(path)
    path.chmod(0o644)
    host = SSHHost("127.0.0.1", closed_port(), "alice", str(path), pool=pool)
    expect_error(host, SSHKeyError, str(path), "0644", "group or others", "chmod 600")


@pytest.mark.ssh
def test_rig_key_copy_with_loose_permissions_is_refused(rig, tmp_path, pool):
    copy = tmp_path / f"{rig.user}_ed25519"
    copy.write_bytes(Path(rig.key()).read_bytes())
    copy.chmod(0o644)
    expect_error(rig_host(rig, pool, key_path=str(copy)), SSHKeyError, str(copy), "0644")
    copy.chmod(0o600)  # the same bytes, properly protected, work
    assert rig_host(rig, pool, key_path=str(copy)).run(["true"]).ok


def test_garbage_key_file(tmp_path, pool):
    path = tmp_path / "garbage_ed25519"
    path.write_text("this is not a key\n")
    path.chmod(0o600)
    host = SSHHost("127.0.0.1", closed_port(), "alice", str(path), pool=pool)
    expect_error(host, SSHKeyError, str(path), "not a private key")


def test_public_key_given_instead_of_private(tmp_path, pool):
    path = tmp_path / "id.pub"
    path.write_text(write_key(tmp_path / "id") + "\n")
    path.chmod(0o600)
    host = SSHHost("127.0.0.1", closed_port(), "alice", str(path), pool=pool)
    expect_error(host, SSHKeyError, str(path), "looks like a public key")


def test_encrypted_key(tmp_path, pool):
    path = tmp_path / "enc_ed25519"
    write_key(path, password=b"secret")
    host = SSHHost("127.0.0.1", closed_port(), "alice", str(path), pool=pool)
    expect_error(host, SSHKeyError, str(path), "passphrase")


def test_key_path_not_a_file(tmp_path, pool):
    host = SSHHost("127.0.0.1", closed_port(), "alice", str(tmp_path), pool=pool)
    expect_error(host, SSHKeyError, str(tmp_path), "not a regular file")


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("ed25519", paramiko.Ed25519Key), ("ecdsa", paramiko.ECDSAKey), ("rsa", paramiko.RSAKey)],
)
def test_supported_key_types_load(tmp_path, kind, cls):
    path = tmp_path / f"id_{kind}"
    write_key(path, kind)
    assert isinstance(load_private_key(str(path)), cls)


def test_key_owned_by_another_user_with_0600_is_accepted(tmp_path):
    path = tmp_path / "other_ed25519"
    write_key(path)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)  # like the rig's keys: owned by slurmsrv, read as root
    assert isinstance(load_private_key(str(path)), paramiko.Ed25519Key)


# --------------------------------------------------------------------------- server errors


@pytest.mark.ssh
def test_unknown_host_key(rig, tmp_path, pool):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    message = expect_error(
        rig_host(rig, pool, known_hosts=str(empty)), SSHHostKeyError, "unknown", str(empty)
    )
    assert "CHANGED" not in message


@pytest.mark.ssh
def test_changed_host_key(rig, tmp_path, pool):
    other = write_key(tmp_path / "impostor").split()
    known = tmp_path / "known_hosts"
    known.write_text(f"{known_hosts_name(rig.host, rig.port)} {other[0]} {other[1]}\n")
    message = expect_error(
        rig_host(rig, pool, known_hosts=str(known)),
        SSHHostKeyError,
        "CHANGED",
        "MAN-IN-THE-MIDDLE",
        str(known),
    )
    assert "unknown" not in message


@pytest.mark.ssh
def test_authentication_refused(rig, tmp_path, pool):
    stranger = tmp_path / "stranger_ed25519"
    write_key(stranger)
    host = rig_host(rig, pool, key_path=str(stranger))
    expect_error(host, SSHAuthError, f"{rig.user}@{rig.host}:{rig.port}", str(stranger))


def test_unreachable_closed_port(pool, tmp_path):
    key = tmp_path / "id_ed25519"
    write_key(key)
    port = closed_port()
    host = SSHHost("127.0.0.1", port, "alice", str(key), pool=pool)
    expect_error(host, SSHConnectError, f"127.0.0.1:{port}", "refused")


def test_unresolvable_host_name(pool, tmp_path):
    key = tmp_path / "id_ed25519"
    write_key(key)
    host = SSHHost("no-such-host.invalid", 22, "alice", str(key), pool=pool, connect_timeout=3)
    expect_error(host, SSHConnectError, "no-such-host.invalid")


def test_silent_server_times_out_within_connect_timeout(pool, tmp_path):
    key = tmp_path / "id_ed25519"
    write_key(key)
    with socket.socket() as tarpit:  # accepts TCP, never says a word
        tarpit.bind(("127.0.0.1", 0))
        tarpit.listen(8)
        host = SSHHost(
            "127.0.0.1", tarpit.getsockname()[1], "alice", str(key), pool=pool, connect_timeout=2
        )
        start = time.monotonic()
        expect_error(host, SSHConnectError, "did not finish within 2s")
        assert 1.5 < time.monotonic() - start < 4


# --------------------------------------------------------------------------- dropped connections


def server_side(rig: SSHRig, host: SSHHost) -> int:
    """The rig's per-connection sshd process serving host's live connection."""
    client = host.connection.local_address()
    assert client is not None
    return server_process_of(client[1], rig.port, rig.listener_pid())


@pytest.mark.ssh
def test_reconnects_after_the_server_side_sshd_is_killed(rig, pool):
    if os.geteuid() != 0:
        pytest.skip("signalling the rig's sshd needs root")
    host = rig_host(rig, pool)
    assert host.run(["echo", "one"]).stdout == "one\n"
    old = host.connection.local_address()
    os.kill(server_side(rig, host), signal.SIGTERM)
    assert wait_until(lambda: not host.connection.connected, 10), "the drop was not noticed"

    start = time.monotonic()
    assert host.run(["echo", "two"]).stdout == "two\n"
    print(f"run after the kill (reconnect included): {time.monotonic() - start:.2f}s")
    assert host.connections_opened == 2
    assert host.connection.local_address() != old


@pytest.mark.ssh
def test_drop_while_the_command_runs_is_flagged_maybe_ran(rig, pool):
    if os.geteuid() != 0:
        pytest.skip("signalling the rig's sshd needs root")
    host = rig_host(rig, pool)
    assert host.run(["true"]).ok
    server = server_side(rig, host)
    marker = unique_sleep()
    outcome: dict[str, BaseException] = {}

    def long_run() -> None:
        try:
            host.run(["sleep", marker], timeout=60)
        except BaseException as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=long_run)
    runner.start()
    try:
        # Our command runs under our connection's sshd: now cut that connection.
        assert wait_until(lambda: bool(find_processes(f"sleep {marker}", server)), 10)
        os.kill(server, signal.SIGTERM)
        runner.join(ERROR_BUDGET_S)
        assert not runner.is_alive()
    finally:
        for pid in find_processes(f"sleep {marker}"):  # our orphaned command, if any
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    error = outcome["error"]
    assert type(error) is SSHCommandInterrupted and maybe_ran(error), repr(error)
    assert "may have run" in str(error)
    assert host.run(["echo", "again"]).stdout == "again\n"
    assert host.connections_opened == 2


@pytest.mark.ssh
def test_drop_under_load_flags_running_commands_and_reconnects_once(rig, pool):
    if os.geteuid() != 0:
        pytest.skip("signalling the rig's sshd needs root")
    host = rig_host(rig, pool, max_channels=8)
    assert host.run(["true"]).ok
    server = server_side(rig, host)
    pause = f"{0.5 + secrets.randbelow(10**6) / 10**8:.8f}"  # unique: marks our commands
    done: list[str] = []
    interrupted: list[BaseException] = []
    other: list[BaseException] = []

    def one(i: int) -> None:
        try:
            done.append(host.run(["sh", "-c", f"sleep {pause}; echo $0", str(i)]).stdout)
        except SSHCommandInterrupted as exc:
            interrupted.append(exc)
        except BaseException as exc:  # pragma: no cover - reported below
            other.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: bool(find_processes(f"sleep {pause}", server)), 10)
    os.kill(server, signal.SIGTERM)
    for thread in threads:
        thread.join(60)

    assert not other, other
    # Only commands already sent (at most the 8 open channels) may have run; all are flagged.
    assert 1 <= len(interrupted) <= 8 and all(maybe_ran(exc) for exc in interrupted)
    # The queued ones ran on ONE new connection, not one reconnection each.
    assert len(done) + len(interrupted) == 40
    assert host.connections_opened == 2


@pytest.mark.ssh
def test_reconnection_gives_up_with_connect_error_then_recovers(rig, pool, tmp_path):
    proxy = TcpProxy((rig.host, rig.port)).start()
    try:
        known = rig_known_hosts_for_port(rig, proxy.port, tmp_path / "known_hosts")
        host = SSHHost(
            "127.0.0.1",
            proxy.port,
            rig.user,
            rig.key(),
            known,
            pool=pool,
            reconnect_delays=(0.2, 0.4, 0.8),
        )
        assert host.run(["echo", "via proxy"]).stdout == "via proxy\n"
        proxy.stop()  # the connection drops and nothing listens any more
        assert wait_until(lambda: not host.connection.connected, 10)

        start = time.monotonic()
        with pytest.raises(SSHConnectError) as info:
            host.run(["true"])
        elapsed = time.monotonic() - start
        assert not maybe_ran(info.value)
        assert "4 reconnection attempts failed" in str(info.value)
        assert 1.3 <= elapsed < ERROR_BUDGET_S, elapsed

        proxy.start()  # back on the same port
        assert host.run(["echo", "back"]).stdout == "back\n"
        assert host.connections_opened == 2
        print(f"gave up after 4 attempts in {elapsed:.2f}s; recovered on connection 2")
    finally:
        proxy.close()


# --------------------------------------------------------------------------- output and policy


@pytest.mark.ssh
def test_output_is_decoded_with_replacement_and_capped(rig, pool):
    host = rig_host(rig, pool)
    bad = host.run(["printf", "ok \\377\\376 \\351t\\351"])
    assert bad.ok and bad.stdout == "ok \ufffd\ufffd \ufffdt\ufffd"
    code = "seq 1 300000; echo the end; head -c 3000000 /dev/zero >&2"
    head = host.run(["sh", "-c", code], max_output=1000)
    assert head.ok and head.stdout.startswith("1\n2\n3\n") and len(head.stdout) == 1000
    assert head.stdout_dropped > 1_000_000 and head.stderr_dropped == 3_000_000 - 1000
    tail = host.run(["sh", "-c", code], max_output=100, keep_tail=True)
    assert tail.stdout.endswith("299999\n300000\nthe end\n") and len(tail.stdout) == 100


def _counting_uid_checks(monkeypatch) -> list[int]:
    asked: list[int] = []
    real = SSHHost._remote_uid

    def counted(self, transport, channel):
        uid = real(self, transport, channel)
        asked.append(uid)
        return uid

    monkeypatch.setattr(SSHHost, "_remote_uid", counted)
    return asked


@pytest.mark.ssh
def test_remote_uid_is_checked_once_per_connection_before_any_command(rig, pool, monkeypatch):
    from slurmrunner.config import ImpersonationPolicy
    from slurmrunner.policy import uid_checker

    asked = _counting_uid_checks(monkeypatch)
    host = rig_host(rig, pool, check_uid=uid_checker(ImpersonationPolicy()))
    uid = int(host.run(["id", "-u"]).stdout)
    for _ in range(3):
        assert host.run(["true"]).ok
    assert asked == [uid] and uid >= 1000
    assert host.calls["id"] == 1  # the check itself is not one of the caller's commands
    # A new connection is checked again.
    host.connection.invalidate(host.connection.transport())
    assert host.run(["true"]).ok
    assert asked == [uid, uid] and host.connections_opened == 2


@pytest.mark.ssh
def test_a_refused_uid_runs_nothing(rig, pool, monkeypatch):
    from slurmrunner.config import ImpersonationPolicy
    from slurmrunner.errors import PolicyError
    from slurmrunner.policy import uid_checker

    asked = _counting_uid_checks(monkeypatch)
    probe = rig_host(rig, pool)  # same identity, same connection, no check
    uid = int(probe.run(["id", "-u"]).stdout)
    strict = SSHHost(
        rig.host,
        rig.port,
        rig.user,
        rig.key(),
        rig.known_hosts,
        pool=ConnectionPool(),  # a connection of its own: checked from its start
        check_uid=uid_checker(ImpersonationPolicy(min_uid=uid + 1)),
    )
    marker = f"/tmp/slurmrunner-policy-{secrets.token_hex(6)}"
    try:
        for _ in range(2):
            with pytest.raises(PolicyError, match=f"uid {uid} on the SSH host.*min_uid={uid + 1}"):
                strict.run(["mkdir", marker])
        assert not os.path.exists(marker)
        assert asked == [uid]  # refused from what the connection already told
        with pytest.raises(PolicyError):
            strict.connect()
    finally:
        strict.close()
