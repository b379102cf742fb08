"""The local queue's supervisor: starts queued jobs when CPUs are free, records their end.

One per queue file at a time (an exclusive lock on `<queue>.supervisor.lock`); started
detached by whichever process finds none running, and gone again once the queue has been idle
for a moment. Jobs are its children, so it learns their exit status; jobs it did not start
(its predecessor was killed) are watched by pid and start time instead.

Started as `run(QUEUE_FILE)` in a fresh interpreter (see local_jobs.LocalScheduler).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from .local_queue import (
    Queue,
    QueuedJob,
    cpu_capacity,
    job_id_text,
    process_alive,
    start_ticks,
)

CANCEL_GRACE_S = 8.0  # after SIGTERM, a cancelled job has this long before SIGKILL
LINGER_S = 2.0  # an idle supervisor waits this long for more work before leaving
_WATCH_S = 0.5  # poll interval while jobs it did not start, or kills, need watching


def take_lock(queue: Queue) -> int | None:
    """The supervisor lock as an open descriptor, or None when a supervisor holds it.

    Whoever takes it starts the supervisor and hands the descriptor over (a flock belongs to
    the open file, which the child shares): there is never a moment when a supervisor is on
    its way but the lock looks free, so no second one is started beside it.
    """
    fd = os.open(queue.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _wake_path(queue: Queue) -> Path:
    return queue.path.with_name(queue.path.name + ".wake")


def wake_supervisor(queue: Queue) -> None:
    """Tell a running supervisor to look now (a byte into its FIFO; nobody reading: no-op)."""
    try:
        fd = os.open(_wake_path(queue), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # no FIFO or no reader: the supervisor is starting or leaving, it will look
    with contextlib.suppress(OSError):
        os.write(fd, b".")
    os.close(fd)


class Supervisor:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.capacity = cpu_capacity()
        self.children: dict[int, subprocess.Popen[bytes]] = {}  # row id -> job process

    # one look at the queue
    def tick(self) -> tuple[bool, bool]:
        """Reap, watch, escalate, start. Returns whether anything still needs watching, and
        whether only looking will see it (jobs it did not start, or pending kills)."""
        live = self.queue.rows("ended IS NULL AND started IS NOT NULL")
        for job in live:
            self._watch(job)
        self._escalate()
        self._start_pending()
        busy = self.queue.rows("ended IS NULL AND (started IS NOT NULL OR state = 'PENDING')")
        polling = any(
            (j.started is not None and j.id not in self.children) or j.kill_at is not None
            for j in busy
        )
        return bool(busy), polling

    def _end(self, job_id: int, exit_code: int | None, how: str) -> None:
        with self.queue.write() as db:
            db.execute(
                "UPDATE jobs SET ended = ?, exit_code = ?, kill_at = NULL, "
                "state = CASE WHEN state = 'RUNNING' THEN ? ELSE state END, "
                "reason = CASE WHEN state = 'RUNNING' THEN ? ELSE reason END WHERE id = ?",
                (time.time(), exit_code, "COMPLETED" if exit_code == 0 else "FAILED", how, job_id),
            )

    def _watch(self, job: QueuedJob) -> None:
        proc = self.children.get(job.id)
        if proc is not None:
            rc = proc.poll()
            if rc is None:
                return
            del self.children[job.id]
            how = f"killed by signal {-rc}" if rc < 0 else ("" if rc == 0 else f"exit {rc}")
            self._end(job.id, rc, how)
        elif job.pid is None:
            # Marked started by a supervisor that died before it could spawn the job.
            if job.started is not None and time.time() - job.started > 30:
                self._end(job.id, None, "did not start (its supervisor stopped)")
        elif not process_alive(job.pid, job.start_ticks):
            self._end(job.id, None, "ended while no supervisor watched it (exit status unknown)")

    def _escalate(self) -> None:
        now = time.time()
        for job in self.queue.rows(
            "ended IS NULL AND kill_at IS NOT NULL AND kill_at <= ?", (now,)
        ):
            if job.pid and process_alive(job.pid, job.start_ticks):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.pid, signal.SIGKILL)
            with self.queue.write() as db:
                db.execute("UPDATE jobs SET kill_at = NULL WHERE id = ?", (job.id,))

    def _need(self, job: QueuedJob) -> int:
        # Asked for more than this machine has (or was submitted from a process with more
        # CPUs in its affinity): it runs alone rather than never.
        return min(job.cpus, self.capacity)

    def _start_pending(self) -> None:
        live = self.queue.rows("ended IS NULL AND started IS NOT NULL")
        used = sum(self._need(j) for j in live)
        for job in self.queue.rows("state = 'PENDING' AND started IS NULL"):
            if self._need(job) > self.capacity - used:
                continue  # a smaller job behind it may still fit
            with self.queue.write() as db:
                claimed = db.execute(
                    "UPDATE jobs SET state = 'RUNNING', started = ? WHERE id = ? "
                    "AND state = 'PENDING'",
                    (time.time(), job.id),
                ).rowcount
            if claimed:
                used += self._need(job)
                self._spawn(job)

    def _spawn(self, job: QueuedJob) -> None:
        script, env_json = self.queue.script_and_env(job.id)
        env = {str(k): str(v) for k, v in json.loads(env_json).items()}
        env["SLURMRUNNER_LOCAL_JOB_ID"] = job_id_text(self.queue.queue_id, job.id)
        env["SLURMRUNNER_JOB_NAME"] = job.name
        out = subprocess.DEVNULL
        try:
            # The script as a file bash reads by itself (as slurmd runs it), not on standard
            # input, where the first command that reads stdin would swallow the rest of it.
            with tempfile.TemporaryFile() as held:
                held.write(script.encode())
                held.flush()
                if job.output:  # private to the user, as every file of the run
                    out = os.open(job.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                proc = subprocess.Popen(
                    ["bash", f"/dev/fd/{held.fileno()}"],
                    pass_fds=(held.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=job.chdir,
                    env=env,
                    start_new_session=True,  # its own process group: cancelled as one
                    close_fds=True,
                    umask=0o077,
                )
        except OSError as exc:
            self._end(job.id, None, f"cannot start: {exc}")
            return
        finally:
            if out != subprocess.DEVNULL:
                os.close(out)
        self.children[job.id] = proc
        with self.queue.write() as db:
            # The script and environment (which may hold secrets) are not kept once started.
            db.execute(
                "UPDATE jobs SET pid = ?, start_ticks = ?, script = '', env = '{}' WHERE id = ?",
                (proc.pid, start_ticks(proc.pid), job.id),
            )
            state = db.execute("SELECT state FROM jobs WHERE id = ?", (job.id,)).fetchone()[0]
        if state == "CANCELLED":  # cancelled while it was being started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)


def _open_wake_fifo(queue: Queue) -> int:
    path = _wake_path(queue)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            os.unlink(path)
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o600)
    # Read-write: the FIFO never reports end-of-file while no submitter has it open.
    return os.open(path, os.O_RDWR | os.O_NONBLOCK)


def run(queue_path: str, lock_fd: int) -> int:
    """Supervise until idle; `lock_fd` is the supervisor lock, taken by whoever started us."""
    os.chdir("/")  # hold no folder of anyone's; every job names its own
    queue = Queue(queue_path)
    lock = os.fdopen(lock_fd, "rb")
    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_r, False)
    os.set_blocking(sig_w, False)
    signal.set_wakeup_fd(sig_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a job ended: wake up (via sig_w)
    wake = _open_wake_fifo(queue)
    supervisor = Supervisor(queue)
    idle_since: float | None = None
    while True:
        busy, polling = supervisor.tick()
        if busy:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= LINGER_S:
            with queue.write() as db:
                # Leave only if no job came meanwhile; the lock is let go inside the same write
                # transaction in which a submitter tries to take it (local_jobs.submit).
                waiting = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE ended IS NULL AND "
                    "(started IS NOT NULL OR state = 'PENDING')"
                ).fetchone()[0]
                if not waiting:
                    lock.close()
            if not waiting:
                return 0
            idle_since = None
        timeout = _WATCH_S if polling else LINGER_S
        ready, _, _ = select.select([sig_r, wake], [], [], timeout)
        for fd in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(fd, 4096)
