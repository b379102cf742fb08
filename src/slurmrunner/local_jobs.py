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
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

from .batching import PartitionShape
from .errors import SchedulerError
from .jobstate import GONE, JobState
from .local_queue import (
    Queue,
    cpu_capacity,
    default_queue_path,
    job_id_text,
    process_alive,
    row_id,
)
from .local_supervisor import CANCEL_GRACE_S, supervisor_running, wake_supervisor

_DIRECTIVE_RE = re.compile(
    r"^#SBATCH\s+--(cpus-per-task|output|chdir|job-name)=(.+?)\s*$", re.MULTILINE
)
_SUPERVISOR_MAIN = (
    "import sys; from slurmrunner.local_supervisor import run; sys.exit(run(sys.argv[1]))"
)
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
        self._spawned: subprocess.Popen[bytes] | None = None

    def submit(self, script: str) -> str:
        opts = job_directives(script)
        try:
            cpus = max(1, int(opts.get("cpus-per-task", "1")))
        except ValueError:
            raise SchedulerError("#SBATCH --cpus-per-task: not a number") from None
        env = dict(os.environ) if self.inherit_env else minimal_env()
        with self.queue.write() as db:
            cur = db.execute(
                "INSERT INTO jobs (name, script, cpus, output, chdir, env, state, submitted) "
                "VALUES (?, ?, ?, ?, ?, ?, 'PENDING', ?)",
                (
                    opts.get("job-name", ""),
                    script,
                    min(cpus, self.max_cpus),
                    opts.get("output"),
                    opts.get("chdir"),
                    json.dumps(env),
                    time.time(),
                ),
            )
            new_id = int(cur.lastrowid or 0)
            # Checked inside the write lock: a supervisor about to leave either sees this job
            # or has let go of its lock, never neither (see local_supervisor.run).
            running = supervisor_running(self.queue)
        self._ensure_supervisor(running)
        return job_id_text(new_id)

    def _ensure_supervisor(self, running: bool | None = None) -> None:
        if running is None:
            running = supervisor_running(self.queue)
        # One this process started may not hold its lock yet: do not start another beside it.
        if running or (self._spawned is not None and self._spawned.poll() is None):
            wake_supervisor(self.queue)
            return
        log = open(self.queue.path.with_name(self.queue.path.name + ".supervisor.log"), "ab")  # noqa: SIM115
        try:
            self._spawned = subprocess.Popen(
                [sys.executable, "-c", _SUPERVISOR_MAIN, str(self.queue.path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # no terminal, no SIGHUP, not in the caller's group
                close_fds=True,
            )
        except OSError as exc:
            raise SchedulerError(f"cannot start the local job supervisor: {exc}") from exc
        finally:
            log.close()

    def partition_shape(self, partition: str | None) -> PartitionShape | None:
        # This machine is the only node, whatever partition the config names.
        return PartitionShape(((self.max_cpus, None, 1),))

    def poll(self, job_ids: list[str]) -> dict[str, JobState]:
        wanted = {job_id: row_id(job_id) for job_id in job_ids}
        rows = self.queue.by_ids([i for i in wanted.values() if i is not None])
        states: dict[str, JobState] = {}
        unattended = False
        for job_id, rid in wanted.items():
            row = rows.get(rid) if rid is not None else None
            if row is None:
                states[job_id] = GONE
                continue
            # Ended or waiting jobs need a supervisor to record or start them; if none runs
            # (killed, machine rebooted), start one rather than guess an outcome here.
            unattended |= row.state == "PENDING" or (row.live and row.state == "RUNNING")
            states[job_id] = JobState(row.state, row.reason)
        if unattended and not supervisor_running(self.queue):
            self._ensure_supervisor(False)
        return states

    def find(self, job_names: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for name in job_names:
            rows = self.queue.rows("name = ?", (name,))
            if rows:
                found[name] = rows[-1].job_id
        return found

    def cancel(self, job_ids: list[str]) -> None:
        ids = [i for i in (row_id(j) for j in job_ids) if i is not None]
        to_stop: list[tuple[int, int | None]] = []
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self.queue.write() as db:
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
            self._ensure_supervisor()
