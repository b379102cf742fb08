"""A job's state as a scheduler reports it (shared by the SLURM and local schedulers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .batching import PartitionShape

TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)


@dataclass(frozen=True)
class JobState:
    state: str  # SLURM's long names: PENDING, RUNNING, COMPLETED, OUT_OF_MEMORY, ...
    reason: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


#: A job the scheduler no longer knows (polled successfully, absent from the answer).
GONE = JobState("UNKNOWN", "no longer known to the scheduler")


class Scheduler(Protocol):
    """Submits job scripts, reports their states, cancels them."""

    #: True when poll() costs no controller RPC (the local scheduler): poll every cycle.
    cheap_poll: bool
    #: What the run summary calls submit / poll / history / cancel (e.g. sbatch / squeue /
    #: sacct / scancel), and partition_shape when it costs a call ("shape": sinfo).
    call_names: dict[str, str]

    def submit(self, script: str) -> str:
        """Submit; return the job id. TransientSchedulerError: retry; SchedulerError: refused."""
        ...

    def poll(self, job_ids: list[str]) -> dict[str, JobState]:
        """One query for all ids; an absent id maps to GONE.

        TransientSchedulerError when the scheduler did not answer."""
        ...

    def history(self, job_ids: list[str]) -> dict[str, JobState]:
        """One query for jobs poll() reported GONE: the states the scheduler's history still
        knows. An id it does not know is left out: that is "cannot know", never an outcome.

        TransientSchedulerError when the history did not answer this time."""
        ...

    def find(self, job_names: list[str]) -> dict[str, str]:
        """job name -> id, for jobs the scheduler still knows (finds a lost submission)."""
        ...

    def cancel(self, job_ids: list[str]) -> None: ...

    def partition_shape(self, partition: str | None) -> PartitionShape | None:
        """The nodes a job of `partition` (None: the default one) can run on, or None when
        unknown (batching works without it). HostError only when the cluster cannot be
        reached at all, as for any other command."""
        ...
