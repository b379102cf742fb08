"""SSH only: one connection per run, dropped connections, and every bad Profile."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ..helpers_sshd import (
    SshdConnection,
    client_ports,
    closed_port,
    signal_session,
    sshd_connection,
)
from .conftest import (
    RIG_ENV,
    SERVER,
    TASK,
    Running,
    Srv,
    job_ids,
    jobs_since,
    parse_results,
    profiles,
    run_jobs,
    squeue,
    wait_for,
)

PORT = int(RIG_ENV.get("RIG_SSH_PORT", "2222"))


def _listener() -> int:
    pidfile = RIG_ENV.get("RIG_SSHD_PIDFILE", "/run/slurmrunner-rig/sshd.pid")
    return int(Path(pidfile).read_text().split()[0])


def _kill_live_connection(runner: Running, spare: set[int], timeout: float = 60) -> int:
    """SIGKILL the rig's sshd process serving the runner's SSH connection, once that
    connection is authenticated and has run a command (its session process exists): never
    during the handshake (a first connection that fails its handshake is a bad Profile,
    refused with exit 2, which is another test) and never a process that merely looked like
    it. Connections whose client port is in `spare` are skipped (already killed ones).
    Returns the client port of the connection it cut, after seeing the runner lose it."""
    listener = _listener()

    def live() -> SshdConnection | None:
        runner.ended()
        for port in sorted(client_ports(runner.pid, PORT) - spare):
            conn = sshd_connection(port, PORT, listener)
            if conn and signal_session(conn, signal.SIGKILL):
                return conn
        return None

    conn = wait_for(live, timeout, "an authenticated SSH connection of the runner", step=0.02)
    wait_for(
        lambda: conn.client_port not in client_ports(runner.pid, PORT),
        30,
        f"the runner to lose its connection from port {conn.client_port}",
        step=0.02,
    )
    return conn.client_port


def test_sshd_of_the_live_connection_killed_twice(srv: Srv) -> None:
    profile = profiles()["ssh"]
    inputs = [{"x": i, "sleep": 1} for i in range(20)]
    runner = Running(srv.popen("run", *srv.files(profile, inputs), "--", TASK))
    try:
        # First cut as early as possible: while the run creates its folders or submits.
        killed = {_kill_live_connection(runner, set())}
        # Second cut mid-run: once a job of the run runs, the connection made since.
        run_id = wait_for(
            lambda: runner.stderr_match(r"^run (\S+):") or runner.ended(),
            120,
            "the run id on stderr",
        ).group(1)
        wait_for(
            lambda: "RUNNING" in run_jobs(run_id).values() or runner.ended(),
            120,
            f"a job of run {run_id} to run",
        )
        killed.add(_kill_live_connection(runner, killed))
        returncode, out, err = runner.wait(300)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nthe runner said:\n{''.join(runner.err)}") from None
    finally:
        runner.kill()
    assert len(killed) == 2
    assert returncode == 0, err
    results = parse_results(out)
    assert [r["result"]["square"] for r in results] == [i * i for i in range(20)]
    names = [n for n in squeue("--format=%j").split() if n.startswith(f"sr-{run_id}-")]
    assert len(names) == len(set(names)), f"a job was submitted twice: {sorted(names)}"
    assert len(set(names)) == len({r["job_id"] for r in results})
    calls = next(line for line in err.splitlines() if "calls" in line)
    opened = int(re.search(r"ssh_connections: (\d+)", calls).group(1))
    assert opened >= 3, calls


def _server_file(path: Path, data: bytes, mode: int, owner: str = SERVER) -> str:
    path.write_bytes(data)
    shutil.chown(path, owner, owner)
    path.chmod(mode)
    return str(path)


@pytest.fixture
def bad_dir(srv: Srv) -> Path:
    d = srv.workdir / "bad"
    d.mkdir()
    shutil.chown(d, SERVER, SERVER)
    d.chmod(0o700)
    return d


def _other_host_key(d: Path) -> str:
    key = d / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return (d / "other_host_key.pub").read_text().split()[:2]


CASES = [
    "missing key",
    "unreadable key",
    "loose key",
    "unknown host",
    "changed host",
    "refused",
    "unreachable",
]


@pytest.mark.parametrize("case", CASES)
def test_each_bad_profile_has_its_own_clear_error(srv: Srv, bad_dir: Path, case: str) -> None:
    keys = Path(RIG_ENV.get("RIG_KEYS_DIR", "/etc/slurmrunner-rig/keys"))
    good = (keys / "alice_ed25519").read_bytes()
    known = Path(RIG_ENV.get("RIG_KNOWN_HOSTS", "/etc/slurmrunner-rig/known_hosts")).read_bytes()
    profile = dict(profiles()["ssh"])
    closed = closed_port()  # held bound by this process: nothing can listen there
    expect = {
        "missing key": r"(?i)key.*(not found|no such|missing|does not exist)",
        "unreadable key": r"(?i)(permission denied|cannot read|not readable|unreadable)",
        "loose key": r"(?i)(permissions|too open|accessible by others|group|mode)",
        "unknown host": r"(?i)unknown",
        "changed host": r"(?i)(changed|mismatch|differ|man-in-the-middle)",
        "refused": r"(?i)(refused|denied|authenticat)",
        "unreachable": rf"(?i)connection to 127\.0\.0\.1:{closed} refused",
    }[case]
    if case == "missing key":
        profile["ssh_key_path"] = str(bad_dir / "nope_ed25519")
    elif case == "unreadable key":
        profile["ssh_key_path"] = _server_file(bad_dir / "root_key", good, 0o600, owner="root")
    elif case == "loose key":
        profile["ssh_key_path"] = _server_file(bad_dir / "loose_key", good, 0o644)
    elif case == "unknown host":
        profile["known_hosts"] = _server_file(bad_dir / "empty_known_hosts", b"", 0o644)
    elif case == "changed host":
        kind, blob = _other_host_key(bad_dir)
        line = f"[127.0.0.1]:{PORT} {kind} {blob}\n".encode()
        profile["known_hosts"] = _server_file(bad_dir / "changed_known_hosts", line, 0o644)
    elif case == "refused":
        profile["ssh_key_path"] = str(keys / "bob_ed25519")
    elif case == "unreachable":
        profile["port"] = closed
    assert known  # the rig's known_hosts exists (used by the other cases)
    before = job_ids()
    t0 = time.monotonic()
    proc, results = srv.run_inputs(profile, [{"x": 1}])
    elapsed = time.monotonic() - t0
    assert elapsed < 15, f"{case}: took {elapsed:.1f}s"
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())  # rich wraps long lines
    assert re.search(expect, message), message
    assert "Traceback" not in proc.stderr
    assert results == []
    assert not jobs_since(before)
