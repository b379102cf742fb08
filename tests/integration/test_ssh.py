"""SSH only: one connection per run, dropped connections, and every bad Profile."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import RIG_ENV, SERVER, TASK, Srv, parse_results, profiles, squeue

PORT = int(RIG_ENV.get("RIG_SSH_PORT", "2222"))


def _sshd_peer_of(pid: int) -> int | None:
    """The server-side sshd process serving the SSH connection that process `pid` holds."""
    out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, check=True).stdout
    local_port = None
    for line in out.splitlines():
        if f"pid={pid}," in line and f"127.0.0.1:{PORT} " in line + " ":
            local_port = line.split()[3].rsplit(":", 1)[1]
    if local_port is None:
        return None
    for line in out.splitlines():
        cols = line.split()
        if cols[3].endswith(f":{PORT}") and cols[4].endswith(f":{local_port}"):
            m = re.search(r'"sshd",pid=(\d+)', line)
            if m:
                return int(m.group(1))
    return None


def _kill_connection(pid: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        peer = _sshd_peer_of(pid)
        if peer:
            os.kill(peer, signal.SIGKILL)
            return peer
        time.sleep(0.05)
    raise AssertionError("the runner holds no SSH connection")


def test_sshd_of_the_live_connection_killed_twice(srv: Srv) -> None:
    profile = profiles()["ssh"]
    inputs = [{"x": i, "sleep": 1} for i in range(20)]
    runner = srv.popen("run", *srv.files(profile, inputs), "--", TASK)
    killed = [_kill_connection(runner.pid)]  # as early as possible: during mkdir or sbatch
    time.sleep(3)
    killed.append(_kill_connection(runner.pid))
    out, err = runner.communicate(timeout=300)
    assert runner.returncode == 0, err
    results = parse_results(out)
    assert [r["result"]["square"] for r in results] == [i * i for i in range(20)]
    run_id = err.split("run ", 1)[1].split(":", 1)[0]
    names = [n for n in squeue("--format=%j").split() if n.startswith(f"sr-{run_id}-")]
    assert len(names) == len(set(names)), f"a job was submitted twice: {sorted(names)}"
    assert len(set(names)) == len({r["job_id"] for r in results})
    calls = next(line for line in err.splitlines() if "calls" in line)
    opened = int(re.search(r"ssh_connections: (\d+)", calls).group(1))
    assert opened >= 2, calls


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
    expect = {
        "missing key": r"(?i)key.*(not found|no such|missing|does not exist)",
        "unreadable key": r"(?i)(permission denied|cannot read|not readable|unreadable)",
        "loose key": r"(?i)(permissions|too open|accessible by others|group|mode)",
        "unknown host": r"(?i)unknown",
        "changed host": r"(?i)(changed|mismatch|differ|man-in-the-middle)",
        "refused": r"(?i)(refused|denied|authenticat)",
        "unreachable": r"(?i)connection to 127\.0\.0\.1:9 refused",
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
        profile["port"] = 9  # discard: nothing listens on it here
    assert known  # the rig's known_hosts exists (used by the other cases)
    before = squeue("--format=%i").split()
    t0 = time.monotonic()
    proc, results = srv.run_inputs(profile, [{"x": 1}])
    elapsed = time.monotonic() - t0
    assert elapsed < 15, f"{case}: took {elapsed:.1f}s"
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())  # rich wraps long lines
    assert re.search(expect, message), message
    assert "Traceback" not in proc.stderr
    assert results == []
    assert squeue("--format=%i").split() == before
