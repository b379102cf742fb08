"""Local and sudo hosts: output decoded with replacement and capped (head or tail) without
deadlock; sudo by absolute path with LC_ALL=C. (The SSH host: tests/test_ssh_host.py.)"""

from __future__ import annotations

import os
import sys
import time

import pytest

from slurmrunner.errors import HostError, ImpersonationError
from slurmrunner.hosts.base import OutputBuffer
from slurmrunner.hosts.local import LocalHost
from slurmrunner.hosts.sudo import SudoHost

PY = sys.executable


def py(code: str) -> list[str]:
    return [PY, "-c", code]


def test_invalid_utf8_is_replaced_never_raised():
    host = LocalHost()
    result = host.run(
        py(
            "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe \\xe9t\\xe9\\n');"
            "sys.stderr.buffer.write(b'\\xc3(')"
        )
    )
    assert result.ok
    assert result.stdout == "ok \ufffd\ufffd \ufffdt\ufffd\n"
    assert result.stderr == "\ufffd("


def test_stdout_capped_keeps_the_head_and_counts_the_rest():
    result = LocalHost().run(py("print('a' * 1000 + 'b' * 1000, end='')"), max_output=1500)
    assert result.stdout == "a" * 1000 + "b" * 500
    assert (result.stdout_dropped, result.truncated) == (500, True)


def test_tail_keeps_the_end_of_job_output():
    code = "import sys\nfor i in range(100000): print(f'line {i}')\nprint('the end')"
    result = LocalHost().run(py(code), max_output=100, keep_tail=True)
    assert result.stdout.endswith("line 99999\nthe end\n")
    assert len(result.stdout.encode()) == 100
    assert result.stdout_dropped > 1_000_000


def test_a_cut_inside_a_character_is_replaced():
    result = LocalHost().run(py("print('é' * 10, end='')"), max_output=5)
    assert result.stdout == "éé\ufffd"


def test_big_producers_with_big_stdin_neither_deadlock_nor_fill_memory():
    # 20 MB on stdout and 20 MB on stderr while 8 MB are written to its stdin, which it reads
    # only after writing: a host that fed stdin before reading would block forever.
    code = (
        "import sys\n"
        "chunk = b'x' * (1 << 20)\n"
        "for _ in range(20):\n"
        "    sys.stdout.buffer.write(chunk); sys.stderr.buffer.write(chunk)\n"
        "sys.stdout.flush(); sys.stderr.flush()\n"
        "print(len(sys.stdin.buffer.read()), file=sys.stderr)\n"
    )
    data = "y" * (8 << 20)
    start = time.monotonic()
    result = LocalHost().run(py(code), stdin=data, timeout=60, max_output=1 << 20)
    assert result.ok, result.stderr[-200:]
    assert len(result.stdout) == 1 << 20 and result.stdout_dropped == 19 << 20
    assert result.stderr_dropped > 0 and len(result.stderr) == 1 << 20
    assert time.monotonic() - start < 30


def test_a_command_that_never_reads_its_stdin_still_returns():
    result = LocalHost().run(["true"], stdin="z" * (4 << 20))
    assert result.ok


def test_timeout_kills_and_says_so():
    start = time.monotonic()
    with pytest.raises(HostError, match="did not finish within"):
        LocalHost().run(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - start < 10


def test_missing_program_is_a_host_error():
    with pytest.raises(HostError, match="not found"):
        LocalHost().run(["/nonexistent/slurmrunner-test-program"])


def test_output_buffer_head_and_tail_count_what_they_drop():
    head, tail = OutputBuffer(4), OutputBuffer(4, tail=True)
    for chunk in (b"ab", b"cdef", b"gh"):
        head.add(chunk)
        tail.add(chunk)
    assert (head.text(), head.dropped) == ("abcd", 4)
    assert (tail.text(), tail.dropped) == ("efgh", 4)


# --------------------------------------------------------------------------- sudo

# A stand-in for sudo: records its environment and arguments, refuses user "refused" in the
# words of the locale it was given (as real sudo does), runs the command for anyone else.
FAKE_SUDO = """#!/bin/sh
printf '%s\\n' "LC_ALL=$LC_ALL" "$*" >> "$0.log"
if [ "$3" = refused ]; then
    if [ "$LC_ALL" = C ]; then echo "sudo: a password is required" >&2
    else echo "sudo: Es ist ein Passwort erforderlich" >&2; fi
    exit 1
fi
shift 4
exec "$@"
"""


@pytest.fixture
def fake_sudo(tmp_path):
    path = tmp_path / "sudo"
    path.write_text(FAKE_SUDO)
    path.chmod(0o755)
    return path


def test_sudo_runs_by_absolute_path_with_lc_all_c(fake_sudo, monkeypatch):
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    host = SudoHost("alice", sudo=str(fake_sudo))
    result = host.run(py("import sys; sys.stdout.buffer.write(b'\\xff')"))
    assert result.stdout == "\ufffd"
    log = (fake_sudo.parent / "sudo.log").read_text().splitlines()
    assert log[0] == "LC_ALL=C"
    assert log[1].startswith("-n -u alice -- ")
    assert host.calls[os.path.basename(PY)] == 1


def test_sudo_refusal_is_recognised_whatever_the_servers_locale(fake_sudo, monkeypatch):
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    with pytest.raises(ImpersonationError, match="a password is required"):
        SudoHost("refused", sudo=str(fake_sudo)).run(["cat", "/etc/hostname"])


def test_a_failing_command_is_not_a_refusal(fake_sudo):
    result = SudoHost("alice", sudo=str(fake_sudo)).run(["cat", "/nonexistent"])
    assert result.returncode != 0


def test_sudo_from_path_is_refused():
    with pytest.raises(ValueError, match="absolute path"):
        SudoHost("alice", sudo="sudo")
    assert SudoHost("alice")._prefix()[0] == "/usr/bin/sudo"
