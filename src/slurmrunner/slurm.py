"""The SLURM client: sbatch/squeue/sacct/scancel argv and the parsing of their output.

It runs commands on the hosts it is given: `submit_host` acts as the job's owner (sbatch,
scancel), `query_host` asks the controller and its accounting (squeue, sacct). The only thing
it knows of users is the owner's name, so that a job is found again by name *and* owner, never
another user's job.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import ClassVar

from .batching import PartitionShape
from .directives import pinned_options
from .errors import HostError, SchedulerError, SubmitLimitError, TransientSchedulerError
from .hosts.base import CommandResult, Host
from .jobstate import GONE, TERMINAL_STATES, JobState
from .units import parse_time_minutes

log = logging.getLogger("slurmrunner")

# stderr fragments meaning "the controller did not answer this time", not "the job is gone".
_TRANSIENT = (
    "socket timed out",
    "unable to contact slurm controller",
    "connection refused",
    "zero bytes were transmitted",
    "transport endpoint",
    "temporarily unavailable",
    "communication connection failure",
    "connection timed out",
    "slurm_load_jobs error: unexpected message",
    "slurmctld not responding",
    "insane message length",
    "resource temporarily unavailable",
)
# sbatch names the limit on a line of its own: QOSMaxSubmitJobPerUserLimit,
# AssocMaxSubmitJobLimit, QOSGrpSubmitJobsLimit, ... (other accounting limits are final).
_SUBMIT_LIMIT = ("maxsubmitjob", "grpsubmitjob")
_INVALID_JOB_ID = "invalid job id specified"
_SQUEUE_FORMAT = "%i|%T|%r|%j"
_FIND_FORMAT = "%i|%u|%j"
_SINFO_FORMAT = "%P|%c|%m|%D|%t|%l"
_SACCT_FORMAT = "JobIDRaw,State,ExitCode,Reason"
#: What sacct says when the cluster keeps no accounting (no slurmdbd): it cannot know, ever.
_NO_ACCOUNTING = "accounting storage is disabled"
#: The states sacct prints for a job (long names); any other word is not understood.
SACCT_STATES = TERMINAL_STATES | {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "RESIZING",
    "SUSPENDED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
}
_SACCT_LINE = re.compile(r"(\d{1,18})\|([A-Z_]+)(?: by \d+)?\|(\d+:\d+)\|([^|\n]{0,200})")
# Node states (sinfo's short names) in which a node takes no new job.
_UNUSABLE = ("down", "drain", "drng", "fail", "maint", "inval", "unk", "futr", "pow_dn", "npc")


def is_transient(stderr: str) -> bool:
    low = stderr.lower()
    return any(text in low for text in _TRANSIENT)


def _raise_for(result: CommandResult, what: str) -> None:
    err = result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}"
    if is_transient(err):
        raise TransientSchedulerError(f"{what}: {err}")
    if any(text in err.lower() for text in _SUBMIT_LIMIT):
        raise SubmitLimitError(f"{what}: {err}")
    raise SchedulerError(f"{what}: {err}")


def parse_sbatch_parsable(stdout: str) -> str:
    """`sbatch --parsable` prints `jobid` or `jobid;cluster`."""
    text = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = text.split(";", 1)[0]
    if not job_id.isdigit():
        raise SchedulerError(f"sbatch printed no job id: {stdout!r}")
    return job_id


def parse_squeue(stdout: str) -> dict[str, tuple[JobState, str]]:
    """Lines `id|STATE|reason|name` -> id -> (state, name)."""
    states: dict[str, tuple[JobState, str]] = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4:
            job_id, state, reason, name = parts
            # "CANCELLED by 1001" -> "CANCELLED"
            states[job_id] = (JobState(state.split()[0], reason), name)
    return states


def sacct_argv(job_ids: list[str]) -> list[str]:
    """One sacct for every id: allocations only (-X, no steps), no header, `|` between fields.
    With --jobs the time window is all time; --allusers since the server asks for every user."""
    return [
        "sacct",
        "--allocations",
        "--noheader",
        "--parsable2",
        "--allusers",
        f"--jobs={','.join(job_ids)}",
        f"--format={_SACCT_FORMAT}",
    ]


def parse_sacct(stdout: str, job_ids: list[str]) -> dict[str, JobState]:
    """Lines `id|STATE|exit:signal|reason` -> the state of each asked id sacct knows.

    Strict: a line that is not exactly that, an id not asked for, or a state word sacct does not
    print is skipped (unknown, never an outcome). `CANCELLED by 1000` is CANCELLED. A requeued
    job has one line (its last attempt) without --duplicates; were there more, the last wins.
    """
    wanted = set(job_ids)
    found: dict[str, JobState] = {}
    for line in stdout.splitlines():
        m = _SACCT_LINE.fullmatch(line.strip())
        if m is None or m[1] not in wanted or m[2] not in SACCT_STATES:
            continue
        reason = m[4].strip()
        words = [reason] if reason and reason != "None" else []
        if m[3] != "0:0":
            words.append(f"exit code {m[3]}")
        found[m[1]] = JobState(m[2], ", ".join([*words, "from sacct"]))
    return found


def parse_squeue_owners(stdout: str) -> dict[str, tuple[str, str]]:
    """Lines `id|user|name` -> id -> (user, name)."""
    found: dict[str, tuple[str, str]] = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) == 3:
            found[parts[0]] = (parts[1], parts[2])
    return found


def parse_sinfo(stdout: str, partition: str | None) -> PartitionShape | None:
    """Lines `partition|cpus|memory MB|nodes|state|time limit` (one per distinct kind of node;
    the default partition is marked `*`) -> the usable nodes of `partition`."""
    nodes: dict[tuple[int, int | None], int] = {}
    max_time: int | None = None
    found = False
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6:
            continue
        name, cpus, mem, count, state, limit = parts
        if (name.rstrip("*") != partition) if partition else not name.endswith("*"):
            continue
        found = True
        if state.rstrip("*~#!%$@^-+").startswith(_UNUSABLE) or state.endswith("*"):
            continue
        if not (cpus.isdigit() and count.isdigit()):
            continue
        key = (int(cpus), int(mem) if mem.isdigit() else None)
        nodes[key] = nodes.get(key, 0) + int(count)
        if limit not in ("infinite", "UNLIMITED", "n/a"):
            try:
                # A bound for the plan: whole minutes within it (rounded down). Under a
                # minute stays 1, the least a job can ask for (it then waits for ever and the
                # run fails on PartitionTimeLimit, saying why).
                max_time = max(1, parse_time_minutes(limit, round_up=False))
            except ValueError:
                max_time = None
    if not found or not nodes:
        return None
    return PartitionShape(tuple((c, m, k) for (c, m), k in sorted(nodes.items())), max_time)


class SharedSqueue:
    """One `squeue` for every job this process watches through one query host.

    Each run asks for its own jobs; the call covers every id asked for in the last `window`
    seconds (all runs, all users the query identity can see), and an answer younger than
    `max_age` seconds is served again without asking the controller.
    """

    def __init__(self, host: Host, max_age: float = 0.5, window: float = 120.0) -> None:
        self.host = host
        self.max_age = max_age
        self.window = window
        self._lock = threading.Lock()
        self._wanted: dict[str, float] = {}
        self._answer: dict[str, tuple[JobState, str]] = {}
        self._answered: set[str] = set()
        self._answered_at = float("-inf")

    def query(self, selector: list[str]) -> dict[str, tuple[JobState, str]]:
        return parse_squeue(self.ask(selector, _SQUEUE_FORMAT))

    def ask(self, selector: list[str], fmt: str) -> str:
        """squeue's answer for `selector` in `fmt` ('' when the one id asked for is gone)."""
        argv = ["squeue", "--noheader", "--states=all", f"--format={fmt}", *selector]
        result = self.host.run(argv)
        if not result.ok:
            if _INVALID_JOB_ID in result.stderr.lower():
                return ""  # the one requested id is not known any more
            _raise_for(result, "squeue failed")
        return result.stdout

    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        with self._lock:
            now = time.monotonic()
            fresh = now - self._answered_at < self.max_age
            if not (fresh and self._answered.issuperset(job_ids)):
                for job_id in job_ids:
                    self._wanted[job_id] = now
                self._wanted = {j: t for j, t in self._wanted.items() if now - t < self.window}
                ids = sorted(self._wanted, key=int)
                self._answer = self.query([f"--jobs={','.join(ids)}"])
                self._answered, self._answered_at = set(ids), time.monotonic()
            return {j: self._answer[j][0] if j in self._answer else GONE for j in job_ids}


class SlurmScheduler:
    cheap_poll = False
    call_names: ClassVar[dict[str, str]] = {
        "submit": "sbatch",
        "poll": "squeue",
        "history": "sacct",
        "cancel": "scancel",
        "shape": "sinfo",
    }

    def __init__(self, submit_host: Host, query: SharedSqueue, user: str) -> None:
        self.submit_host = submit_host
        self.squeue = query
        self.user = user  # whose jobs these are on the cluster

    def submit(self, script: str) -> str:
        # The script's managed options again on the command line, where they win over any
        # #SBATCH line and over SBATCH_* variables of the submitting environment.
        argv = ["sbatch", "--parsable", *pinned_options(script)]
        result = self.submit_host.run(argv, stdin=script)
        if not result.ok:
            _raise_for(result, "sbatch refused the job")
        return parse_sbatch_parsable(result.stdout)

    def poll(self, job_ids: list[str]) -> dict[str, JobState]:
        return self.squeue.states(job_ids) if job_ids else {}

    def find(self, job_names: list[str]) -> dict[str, str]:
        if not job_names:
            return {}
        selector = [f"--user={self.user}", f"--name={','.join(job_names)}"]
        known = parse_squeue_owners(self.squeue.ask(selector, _FIND_FORMAT))
        return {
            name: job_id
            for job_id, (user, name) in known.items()
            if user == self.user and name in job_names
        }

    def history(self, job_ids: list[str]) -> dict[str, JobState]:
        """What accounting (slurmdbd) knows of jobs gone from squeue: one sacct for all, as
        the server's query identity. Ids it does not know are left out; so is everything when
        sacct is missing or the cluster keeps no accounting (it cannot know). A controller or
        database that did not answer this time raises TransientSchedulerError."""
        if not job_ids:
            return {}
        try:
            result = self.squeue.host.run(sacct_argv(job_ids))
        except HostError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return {}  # no sacct on this host
            raise
        if result.ok:
            return parse_sacct(result.stdout, job_ids)
        err = result.stderr.strip() or result.stdout.strip()
        if is_transient(err):
            raise TransientSchedulerError(f"sacct failed: {err[:300]}")
        # no accounting, no sacct (127), or a refusal: cannot know, which is not an outcome
        if _NO_ACCOUNTING not in err.lower():
            log.warning("sacct failed (%s): gone jobs are not looked up", err[:300])
        return {}

    def cancel(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        result = self.submit_host.run(["scancel", *job_ids])
        if not result.ok and _INVALID_JOB_ID not in result.stderr.lower():
            _raise_for(result, "scancel failed")

    def partition_shape(self, partition: str | None) -> PartitionShape | None:
        argv = ["sinfo", "--noheader", "--exact", f"--format={_SINFO_FORMAT}"]
        try:
            result = self.squeue.host.run(argv)
        except HostError as exc:
            if getattr(exc, "maybe_ran", False):
                return None  # the connection dropped mid-way: plan without the shape
            raise  # the cluster cannot be reached at all: the run could not start anyway
        return parse_sinfo(result.stdout, partition) if result.ok else None
