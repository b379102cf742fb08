"""A job's state as a scheduler reports it (shared by the SLURM and local schedulers)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

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


#: Pending reasons that waiting never clears (SLURM's job_reason_codes): the job asks for more
#: than a per-job limit allows, or for what the cluster does not offer. Only an admin changing
#: the cluster could start it, so the run fails, saying why, instead of waiting for ever: once
#: the reason has held for a while (settling.PENDING_GRACE_S), as some show briefly (an invalid
#: account or QOS after an association change or a slurmdbd reconnect, bad constraints while
#: the nodes with the feature are down).
#: (On a cluster with EnforcePartLimits, sbatch refuses most of these at submission.)
NEVER_CLEARS = {
    "PartitionTimeLimit": "the job's time limit is over its partition's MaxTime",
    "QOSMaxWallDurationPerJobLimit": "the job's time limit is over its QOS's MaxWall",
    "AssocMaxWallDurationPerJobLimit": "the job's time limit is over its association's MaxWall",
    "BadConstraints": "the job's constraints can never be satisfied",
    "InvalidAccount": "the job's account is invalid",
    "InvalidQOS": "the job's QOS is invalid",
    "AccountNotAllowed": "the job's account may not use the partition",
    "QOSNotAllowed": "the job's QOS may not use the partition",
    "DependencyNeverSatisfied": "the job's dependency can never be satisfied",
    "MaxMemPerLimit": "the job's memory is over MaxMemPerCPU/MaxMemPerNode",
}
#: QOSMax*/AssocMax* limits per job or per node, and QOS minimums: the job's own request is
#: out of bounds (not so the aggregate Grp* limits, nor per-user or per-account counts, which
#: clear as other jobs end).
_NEVER_CLEARS_RE = re.compile(r"^(?:(?:QOS|Assoc)Max\w*Per(?:Job|Node)\w*|QOSMin\w+)$")
#: Pending reasons that may well never clear but can (a node down or drained, a partition
#: down, a hold, a node limit that also means "required nodes are DOWN or DRAINED"): the run
#: keeps waiting and says so once. ReqNodeNotAvail is also shown for a while by a busy
#: controller's backfill for nodes that are fine (reframe-hpc/reframe#1049): never a failure.
MAY_NOT_CLEAR = {
    "ReqNodeNotAvail": "a node the job requires is not available (down, drained or reserved)",
    "Nodes required for job are DOWN": "a node the job requires is down, drained or reserved",
    "PartitionNodeLimit": "the job's node count is outside its partition's limits, or the "
    "nodes it needs are down or drained",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "PartitionConfig": "the partition configuration it requests is not available now",
    "NodeDown": "a node the job requires is down",
    "JobHeldAdmin": "an administrator holds it (scontrol release)",
    "JobHeldUser": "it is held (scontrol release)",
    "launch failed requeued held": "its launch failed and it is held (scontrol release)",
}


def reason_name(reason: str) -> str:
    """squeue's reason without its details: "ReqNodeNotAvail, UnavailableNodes:n1" ->
    "ReqNodeNotAvail"."""
    return reason.strip().strip("()").split(",", 1)[0].strip()


def pending_verdict(state: JobState) -> tuple[Literal["fail", "warn"], str] | None:
    """For a PENDING job, whether its reason means it will never start ("fail", why), may
    never start ("warn", why), or is an ordinary wait (None: Priority, Resources, Grp*, ...).
    squeue's reason may carry details after a comma ("ReqNodeNotAvail, UnavailableNodes:n1")."""
    if state.state != "PENDING" or not state.reason:
        return None
    key = reason_name(state.reason)
    if key in NEVER_CLEARS:
        return "fail", NEVER_CLEARS[key]
    if _NEVER_CLEARS_RE.match(key):
        if key.startswith("QOSMin"):
            return "fail", "the job's request is under a minimum of its QOS"
        return "fail", "the job's request is over a per-job limit of its QOS or association"
    for prefix, why in MAY_NOT_CLEAR.items():
        if key.startswith(prefix):
            return "warn", why
    return None


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
