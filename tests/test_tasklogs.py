"""A task's log read a page at a time (tasklogs.read_log): its end, earlier pages, its start;
the same bytes whether read from the file (local runs) or streamed by `cat` (cluster runs)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from slurmrunner.hosts.local import LocalHost
from slurmrunner.tasklogs import read_log

K = 1 << 10


@pytest.fixture
def log(tmp_path: Path) -> bytes:
    # 450,000 bytes, with bytes that are not UTF-8 (a task may print anything): offsets are
    # the file's own, however they decode.
    data = b"".join(b"line %06d\xff\xe2\x82\n" % i for i in range(30_000))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "5.log").write_bytes(data)
    return data


@pytest.mark.parametrize("backend", ["local", "slurm_sudo"])
def test_pages_of_a_log(tmp_path: Path, log: bytes, backend: str) -> None:
    spec = SimpleNamespace(run_dir=str(tmp_path), profile=SimpleNamespace(backend=backend))
    host = LocalHost()

    def read(**kw):  # type: ignore[no-untyped-def]
        return read_log(spec, host, 5, 64 * K, **kw)  # type: ignore[arg-type]

    end = read()
    assert end.size == len(log) and end.data == log[-64 * K :]
    assert end.offset == len(log) - 64 * K and end.end == len(log)
    before = read(skip_last=64 * K)
    assert before.data == log[-128 * K : -64 * K] and before.offset == len(log) - 128 * K
    first = read(from_start=True)
    assert first.data == log[: 64 * K] and first.offset == 0 and first.size == len(log)
    # Further back than the log is long: what there is, from its first byte.
    deep = read(skip_last=400 * K)
    assert deep.offset == 0 and deep.data == log[: len(log) - 400 * K]
    assert read_log(spec, host, 6, 64 * K) is None  # type: ignore[arg-type]
