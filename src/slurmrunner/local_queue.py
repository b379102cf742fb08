"""The local backend's job queue: one SQLite file per user, shared by all their processes.

Each local job is a row: its script, CPUs, environment, and once started the pid, process
group and start time of its detached process, so any process of the same user can tell a
running job from a gone one (a pid alone could have been reused). The queue is separate from
the run store because every local run of the user shares it: that is what shares the CPUs.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .store import default_store_path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    script TEXT NOT NULL,
    cpus INTEGER NOT NULL,
    output TEXT,
    chdir TEXT,
    env TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    pid INTEGER,
    start_ticks INTEGER,
    exit_code INTEGER,
    submitted REAL NOT NULL,
    started REAL,
    ended REAL,
    kill_at REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_name ON jobs (name);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (ended, state);
"""

JOB_ID_PREFIX = "local-"


def default_queue_path() -> Path:
    """$SLURMRUNNER_LOCAL_QUEUE, else `local-queue.sqlite` beside the default run store."""
    if env := os.environ.get("SLURMRUNNER_LOCAL_QUEUE"):
        return Path(env)
    return default_store_path().parent / "local-queue.sqlite"


def job_id_text(queue_id: str, row_id: int) -> str:
    return f"{JOB_ID_PREFIX}{queue_id}-{row_id}"


def parse_job_id(job_id: str) -> tuple[str, int] | None:
    """(queue id, row id) of `local-<queue id>-<n>`: an id only means something in its queue."""
    if not job_id.startswith(JOB_ID_PREFIX):
        return None
    queue_id, _, digits = job_id[len(JOB_ID_PREFIX) :].rpartition("-")
    if not queue_id or not digits.isdigit() or len(digits) > 18:
        return None
    return queue_id, int(digits)


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None if gone or not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields count from the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, ticks: int | None) -> bool:
    """Whether the process that was started as (pid, ticks) still exists (not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if ticks is None or not os.path.exists("/proc/self/stat"):
        return True  # no /proc to tell a reused pid apart: trust the pid
    if start_ticks(pid) != ticks:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return stat[stat.rfind(b")") + 2 :][:1] != b"Z"
    except OSError:
        return False


def _cgroup_quota_cpus() -> int | None:
    """CPUs the cgroup's CPU quota allows this process (v2 cpu.max or v1 cfs), if limited."""
    with contextlib.suppress(OSError):
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
        best: int | None = None
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            controllers, path = parts[1].split(","), parts[2]
            if parts[1] == "":
                bases = [("/sys/fs/cgroup", "cpu.max")]
            elif "cpu" in controllers:
                bases = [("/sys/fs/cgroup/cpu,cpuacct", "cfs"), ("/sys/fs/cgroup/cpu", "cfs")]
            else:
                continue
            for base, kind in bases:
                here = path
                while True:
                    quota = _read_quota(f"{base}{here.rstrip('/')}", kind)
                    if quota is not None:
                        best = quota if best is None else min(best, quota)
                    if here in ("", "/"):
                        break
                    here = os.path.dirname(here)
        return best
    return None


def _read_quota(folder: str, kind: str) -> int | None:
    try:
        if kind == "cpu.max":
            with open(f"{folder}/cpu.max") as fh:
                quota_text, period_text = fh.read().split()[:2]
            if quota_text == "max":
                return None
            quota, period = int(quota_text), int(period_text)
        else:
            with open(f"{folder}/cpu.cfs_quota_us") as fh:
                quota = int(fh.read())
            with open(f"{folder}/cpu.cfs_period_us") as fh:
                period = int(fh.read())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def cpu_capacity() -> int:
    """CPUs local jobs may use: this process's CPU affinity, within its cgroup's quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota_cpus()
    return max(1, min(cpus, quota) if quota else cpus)


@dataclass(frozen=True)
class QueuedJob:
    id: int
    name: str
    cpus: int
    output: str | None
    chdir: str | None
    state: str
    reason: str
    pid: int | None
    start_ticks: int | None
    exit_code: int | None
    started: float | None
    ended: float | None
    kill_at: float | None

    @property
    def live(self) -> bool:
        """Started and not yet seen to end: it holds its CPUs."""
        return self.started is not None and self.ended is None


_COLUMNS = (
    "id, name, cpus, output, chdir, state, reason, pid, start_ticks, exit_code, started, "
    "ended, kill_at"
)


class Queue:
    """The queue file. Every change is one short transaction; readers never block writers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            self.path.touch(mode=0o600)  # environments may hold secrets
        self._db = sqlite3.connect(
            str(self.path), timeout=30, check_same_thread=False, isolation_level=None
        )
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('queue_id', ?)", (secrets.token_hex(4),)
            )
            self.queue_id = str(
                self._db.execute("SELECT value FROM meta WHERE key = 'queue_id'").fetchone()[0]
            )

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".supervisor.lock")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction: the check and the change it guards are one."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def rows(self, where: str, params: tuple[object, ...] = ()) -> list[QueuedJob]:
        with self._lock:
            found = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE {where} ORDER BY id", params
            ).fetchall()
        return [QueuedJob(*r) for r in found]

    def by_ids(self, ids: list[int]) -> dict[int, QueuedJob]:
        found: dict[int, QueuedJob] = {}
        for start in range(0, len(ids), 500):  # SQLite's bound on parameters
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            found.update((j.id, j) for j in self.rows(f"id IN ({marks})", tuple(part)))
        return found

    def script_and_env(self, job_id: int) -> tuple[str, str]:
        with self._lock:
            row = self._db.execute(
                "SELECT script, env FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return str(row[0]), str(row[1])

    def close(self) -> None:
        self._db.close()
