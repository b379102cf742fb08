"""The embedded default scheduler: runs the very same job scripts with bash, here.

It reads only what sbatch would need to place the job (`--cpus-per-task`, `--output`,
`--chdir`) and starts a job when enough of this machine's CPUs are free, so a laptop
behaves like a one-node cluster. Job ids live only in this process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import ClassVar

from .batching import PartitionShape
from .errors import SchedulerError
from .jobstate import GONE, JobState

_DIRECTIVE_RE = re.compile(r"^#SBATCH\s+--(cpus-per-task|output|chdir)=(\S+)\s*$", re.MULTILINE)


@dataclass
class _LocalJob:
    script: str
    cpus: int
    output: str | None
    chdir: str | None
    proc: subprocess.Popen[bytes] | None = None
    state: str = "PENDING"


class LocalScheduler:
    _ids = itertools.count(1)
    # Polling also starts queued jobs, so it must happen every cycle, and it costs nothing.
    cheap_poll = True
    call_names: ClassVar[dict[str, str]] = {
        "submit": "local_submit",
        "poll": "local_poll",
        "cancel": "local_cancel",
    }

    def __init__(self, max_cpus: int | None = None) -> None:
        self.max_cpus = max_cpus or os.cpu_count() or 1
        self._jobs: dict[str, _LocalJob] = {}
        self._lock = threading.Lock()

    def submit(self, script: str) -> str:
        opts = dict(_DIRECTIVE_RE.findall(script))
        job = _LocalJob(
            script,
            min(int(opts.get("cpus-per-task", "1")), self.max_cpus),
            opts.get("output"),
            opts.get("chdir"),
        )
        job_id = f"local-{os.getpid()}-{next(self._ids)}"
        with self._lock:
            self._jobs[job_id] = job
            self._schedule()
        return job_id

    def partition_shape(self, partition: str | None) -> PartitionShape | None:
        # This machine is the only node, whatever partition the config names.
        return PartitionShape(((self.max_cpus, None, 1),))

    def _used_cpus(self) -> int:
        return sum(j.cpus for j in self._jobs.values() if j.state == "RUNNING")

    def _schedule(self) -> None:
        for job in self._jobs.values():
            if job.proc is not None and job.state == "RUNNING":
                rc = job.proc.poll()
                if rc is not None:
                    job.state = "COMPLETED" if rc == 0 else "FAILED"
        free = self.max_cpus - self._used_cpus()
        for job in self._jobs.values():
            if job.state == "PENDING" and job.cpus <= free:
                self._start(job)
                free -= job.cpus

    def _start(self, job: _LocalJob) -> None:
        out = open(job.output, "ab") if job.output else subprocess.DEVNULL  # noqa: SIM115
        try:
            job.proc = subprocess.Popen(
                ["bash", "-s"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=job.chdir,
                start_new_session=True,
            )
        except OSError as exc:
            job.state = "FAILED"
            raise SchedulerError(f"cannot start bash for a local job: {exc}") from exc
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        assert job.proc.stdin is not None
        try:
            job.proc.stdin.write(job.script.encode())
            job.proc.stdin.close()
        except BrokenPipeError:
            pass
        job.state = "RUNNING"

    def poll(self, job_ids: list[str]) -> dict[str, JobState]:
        with self._lock:
            self._schedule()
            return {
                job_id: JobState(self._jobs[job_id].state) if job_id in self._jobs else GONE
                for job_id in job_ids
            }

    def find(self, job_names: list[str]) -> dict[str, str]:
        return {}

    def cancel(self, job_ids: list[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                if job is None or job.state not in ("PENDING", "RUNNING"):
                    continue
                if job.proc is not None and job.proc.poll() is None:
                    # The worker records its unfinished tasks, then stops its children.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(job.proc.pid, signal.SIGTERM)
                job.state = "CANCELLED"
