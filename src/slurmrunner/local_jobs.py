"""The embedded default scheduler: the very same job scripts, run here as detached jobs.

`submit` puts the script in the user's queue file (local_queue.py) and makes sure a
supervisor runs: one small detached process per queue that starts queued jobs when enough
CPUs are free (every local run of the user shares them), records how each ended, and exits
when the queue is idle. Jobs run in their own session and process group, so closing the
terminal, or the process that submitted them exiting, does not stop them; any process of the
same user reads their state from the queue and cancels them by process group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from .batching import PartitionShape
from .errors import SchedulerError, TransientSchedulerError
from .jobstate import GONE, JobState
from .local_queue import (
    Queue,
    cpu_capacity,
    default_queue_path,
    job_id_text,
    parse_job_id,
    process_alive,
)
from .local_supervisor import CANCEL_GRACE_S, take_lock, wake_supervisor

_DIRECTIVE_RE = re.compile(
    r"^#SBATCH\s+--(cpus-per-task|output|chdir|job-name)=(.+?)\s*$", re.MULTILINE
)
_SUPERVISOR_MAIN = (
    "import sys; from slurmrunner.local_supervisor import run; "
    "sys.exit(run(sys.argv[1], int(sys.argv[2])))"
)
log = logging.getLogger("slurmrunner")
# What a job started by a server on another user's behalf gets instead of the server's own.
_MINIMAL_ENV_KEYS = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")


def job_directives(script: str) -> dict[str, str]:
    """The first value of each directive the local scheduler uses (paths may be quoted)."""
    opts: dict[str, str] = {}
    for key, raw in _DIRECTIVE_RE.findall(script):
        if key in opts:
            continue
        try:
            words = shlex.split(raw)
        except ValueError as exc:
            raise SchedulerError(f"#SBATCH --{key}: cannot parse {raw!r}: {exc}") from None
        if len(words) != 1:
            raise SchedulerError(f"#SBATCH --{key}: expected one value, got {raw!r}")
        opts[key] = words[0]
    return opts


def minimal_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in _MINIMAL_ENV_KEYS if k in os.environ}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return env


class LocalScheduler:
    # Polling reads one small SQLite query: it costs nothing, so it happens every cycle.
    cheap_poll = True
    call_names: ClassVar[dict[str, str]] = {
        "submit": "local_submit",
        "poll": "local_poll",
        "history": "local_history",
        "cancel": "local_cancel",
    }

    def __init__(
        self,
        queue_path: str | Path | None = None,
        inherit_env: bool = True,
        max_cpus: int | None = None,
    ) -> None:
        self.queue = Queue(queue_path or default_queue_path())
        # A person's jobs see their environment, as a command they type would (an active venv
        # keeps working); a server acting for someone else passes inherit_env=False.
        self.inherit_env = inherit_env
        self.max_cpus = max_cpus or cpu_capacity()

    def submit(self, script: str) -> str:
        opts = job_directives(script)
        try:
            cpus = max(1, int(opts.get("cpus-per-task", "1")))
        except ValueError:
            raise SchedulerError("#SBATCH --cpus-per-task: not a number") from None
        env = dict(os.environ) if self.inherit_env else minimal_env()
        with _transient("submit"), self.queue.write() as db:
            cur = db.execute(
                "INSERT INTO jobs (name, script, cpus, output, chdir, env, state, submitted) "
                "VALUES (?, ?, ?, ?, ?, ?, 'PENDING', ?)",
                (
                    opts.get("job-name", ""),
                    script,
                    cpus,
                    opts.get("output"),
                    opts.get("chdir") or os.getcwd(),  # as sbatch: the submitter's folder
                    json.dumps(env),
                    time.time(),
                ),
            )
            new_id = int(cur.lastrowid or 0)
            # Inside the write lock: a supervisor about to leave either sees this job or has
            # let go of its lock, never neither (see local_supervisor.run).
            lock = take_lock(self.queue)
        self._supervise(lock)
        return job_id_text(self.queue.queue_id, new_id)

    def _supervise(self, lock: int | None) -> None:
        """Start a supervisor with the lock we took, or nudge the one that holds it."""
        if lock is None:
            wake_supervisor(self.queue)
            return
        log_fd = os.open(
            self.queue.path.with_name(self.queue.path.name + ".supervisor.log"),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT,
            0o600,
        )
        try:
            subprocess.Popen(
                [sys.executable, "-c", _SUPERVISOR_MAIN, str(self.queue.path), str(lock)],
                pass_fds=(lock,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_fd,
                start_new_session=True,  # no terminal, no SIGHUP, not in the caller's group
            )
        except OSError as exc:
            # The job is queued all the same; the next poll starts a supervisor again.
            log.warning("cannot start the local job supervisor: %s; will retry", exc)
        finally:
            os.close(log_fd)
            os.close(lock)  # the child holds the lock now (or nobody does, and poll retries)

    def partition_shape(self, partition: str | None) -> PartitionShape | None:
        # This machine is the only node, whatever partition the config names.
        return PartitionShape(((self.max_cpus, None, 1),))

    def _row_ids(self, job_ids: list[str]) -> dict[str, int]:
        """Row ids of this queue's jobs; an id of another queue is not GONE, only unknown here."""
        rows: dict[str, int] = {}
        for job_id in job_ids:
            parsed = parse_job_id(job_id)
            if parsed is None:
                continue
            if parsed[0] != self.queue.queue_id:
                raise TransientSchedulerError(
                    f"job {job_id} belongs to another local queue than {self.queue.path}"
                )
            rows[job_id] = parsed[1]
        return rows

    def poll(self, job_ids: list[str]) -> dict[str, JobState]:
        wanted = self._row_ids(job_ids)
        with _transient("poll"):
            rows = self.queue.by_ids(list(wanted.values()))
        states: dict[str, JobState] = {}
        unattended = False
        for job_id in job_ids:
            row = rows.get(wanted.get(job_id, -1))
            if row is None:
                states[job_id] = GONE
                continue
            # Ended or waiting jobs need a supervisor to record or start them; if none runs
            # (killed, machine rebooted), start one rather than guess an outcome here.
            unattended |= row.state == "PENDING" or (row.live and row.state == "RUNNING")
            states[job_id] = JobState(row.state, row.reason)
        if unattended:
            lock = take_lock(self.queue)
            if lock is not None:
                self._supervise(lock)
        return states

    def history(self, job_ids: list[str]) -> dict[str, JobState]:
        # The queue is the whole history of a local job: what it does not hold, nobody knows.
        return {j: s for j, s in self.poll(job_ids).items() if s is not GONE}

    def find(self, job_names: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        with _transient("find"):
            for name in job_names:
                rows = self.queue.rows("name = ?", (name,))
                if rows:
                    found[name] = job_id_text(self.queue.queue_id, rows[-1].id)
        return found

    def cancel(self, job_ids: list[str]) -> None:
        ids = list(self._row_ids(job_ids).values())
        if not ids:
            return
        to_stop: list[tuple[int, int | None]] = []
        marks = ",".join("?" * len(ids))
        with _transient("cancel"), self.queue.write() as db:
            rows = db.execute(
                "SELECT id, state, pid, start_ticks, started, ended FROM jobs "
                f"WHERE id IN ({marks})",
                ids,
            ).fetchall()
            now = time.time()
            for rid, state, pid, ticks, started, ended in rows:
                if state not in ("PENDING", "RUNNING"):
                    continue
                live = started is not None and ended is None
                db.execute(
                    "UPDATE jobs SET state = 'CANCELLED', reason = 'cancelled', kill_at = ? "
                    "WHERE id = ?",
                    (now + CANCEL_GRACE_S if live else None, rid),
                )
                if live and pid:
                    to_stop.append((pid, ticks))
        for pid, ticks in to_stop:
            if process_alive(pid, ticks):
                # The worker records its unfinished tasks, then stops their process groups;
                # the supervisor sends SIGKILL after the grace if the job is still there.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
        if to_stop:
            self._supervise(take_lock(self.queue))


@contextlib.contextmanager
def _transient(action: str) -> Iterator[None]:
    """A queue file busy past SQLite's timeout is a scheduler that did not answer this time."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise TransientSchedulerError(f"local queue: {action} failed: {exc}") from exc
