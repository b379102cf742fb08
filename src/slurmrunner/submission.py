"""A run's submission: the run folder, then each job claimed in the store before its sbatch,
so no job is ever submitted twice, even by two processes reattaching at the same moment.

The run folder is made fresh and private (refused if it exists), in folders that no other
account may write: whoever can rename an entry of a parent could swap the run's files for links
to files of the account the job runs as. The worker then opens everything in it relative to
the folder itself, never following a link.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .backends import Backend
from .errors import (
    ConfigError,
    HostError,
    ImpersonationError,
    SchedulerError,
    SSHAuthError,
    SSHHostKeyError,
    SSHKeyError,
    SubmitLimitError,
    TransientSchedulerError,
)
from .hosts.base import CommandResult, Host
from .pacing import PollPolicy
from .results import TaskError, TaskResult
from .retrying import retry_spec
from .runspec import RunSpec, worker_source
from .script import job_name, render_script
from .store import JobRow, Store, claim_is_live

log = logging.getLogger("slurmrunner")

# Host errors that waiting does not cure: stop at once and say why.
NOT_TRANSIENT = (SSHKeyError, SSHHostKeyError, SSHAuthError, ImpersonationError)


class Submission:
    """The submitting half of a Run (see run.Run, which holds the state named here)."""

    id: str
    store: Store
    spec: RunSpec
    poll_policy: PollPolicy
    backend: Backend
    calls: Counter[str]
    warnings: list[str]
    _claim: str
    _ready_scripts: dict[int, str]
    _retry_submit_at: float | None
    _finished: set[int]

    # Defined by Run: saving results and counting calls belong to watching.
    def _save(self, results: Iterable[TaskResult]) -> None:
        raise NotImplementedError

    def _flush_counters(self) -> None:
        raise NotImplementedError

    def _finish(self, state: str) -> None:
        raise NotImplementedError

    @property
    def user(self) -> str:
        raise NotImplementedError

    def start(self, *, taken_over: bool = False) -> None:
        """Create the run folder as the user and submit every job not yet submitted.
        `taken_over`: the folder may be there already, made by a process that died in its
        own `start` (see resume)."""
        self._make_run_folder(taken_over)
        self._submit_missing()
        self.store.set_run_state(self.id, "running")
        self._flush_counters()

    def resume(self) -> None:
        """Take over a run an earlier process stored: submit the jobs it did not. A run still
        `submitting` is one whose `start` never ended (the process died first, e.g. a server
        killed between storing a run and its watcher's first step): its folder may be missing
        or half made, and a job submitted without it fails to launch. So it is started, taking
        the folder that process may have made."""
        if self.store.run(self.id).state != "submitting":
            self._submit_missing()
            return
        self.start(taken_over=True)

    def _make_run_folder(self, taken_over: bool = False) -> None:
        base = self.spec.profile.resolved_project_dir()
        parents = [base, f"{base}/.slurmrunner", f"{base}/.slurmrunner/runs"]
        # Looked at before anything is made in them: a folder another account may write, or
        # a link planted where our own folders go, is refused before a mkdir could follow it.
        # Made only when missing (a user's first run): each call is a sudo or an SSH command.
        look = ["ls", "-ldn", f"{base}/", *parents[1:]]  # missing ones: rc 2
        before = self._user(look).stdout
        try:
            missing = check_before_making(before, base, parents[1:])
        except HostError:  # base could not be listed: made (or refused by mkdir), looked again
            self._user(["mkdir", "-p", "-m", "700", base], check=True)
            missing = check_before_making(self._user(look).stdout, base, parents[1:])
        if missing:
            self._user(["mkdir", "-p", "-m", "700", *parents], check=True)
        if taken_over:
            # From a process that died in `start`: the folder, if there, is that process's
            # (the parents let no other account write, checked just below) and holds what it made
            # (the jobs it submitted write into it), so it is kept as it is.
            self._user(["mkdir", "-p", "-m", "700", self.run_dir], check=True)
        else:
            self._make_new_run_dir()
        listing = self._user(["ls", "-ldnL", *parents, self.run_dir], check=True)
        check_folders(listing.stdout, parents, self.run_dir)
        subdirs = [f"{self.run_dir}/{sub}" for sub in ("jobs", "logs", "tasks", "results")]
        self._user(["mkdir", "-p", "-m", "700", *subdirs], check=True)

    def _make_new_run_dir(self) -> None:
        # No -p: refused if it exists (a run id is new, so only a plant would be there), and
        # not run again after a dropped connection, when "exists" could be our own doing.
        try:
            made = self._user(["mkdir", "-m", "700", self.run_dir], idempotent=False)
        except HostError as exc:
            if not getattr(exc, "maybe_ran", False):
                raise
            made = None  # the connection dropped while it ran: it may be made, by us
        if made is None:
            # Parents no other account may write (checked after this, in _make_run_folder)
            # leave only the user able to have made it, so an empty folder is that mkdir's.
            self._user(["mkdir", "-p", "-m", "700", self.run_dir], check=True)
            if self._user(["ls", "-A", self.run_dir], check=True).stdout.strip():
                raise HostError(f"the run folder {self.run_dir} is not empty: refusing it")
        elif not made.ok:
            raise HostError(
                f"cannot create the run folder {self.run_dir}: {made.stderr.strip()[:300]} "
                "(it must not exist before the run)"
            )

    def _user(
        self, argv: list[str], check: bool = False, idempotent: bool = True, **host_kw: Any
    ) -> Any:
        """A command as the user (mkdir -p, cat); an idempotent one runs again if the
        connection dropped while it ran. `host_kw`: max_output, keep_tail (see hosts.base)."""

        def count() -> None:
            self.calls[argv[0]] += 1

        result = run_as_user(self.backend.user_host, argv, count, idempotent, **host_kw)
        if check and not result.ok:
            raise HostError(f"{' '.join(argv[:2])} ... failed: {result.stderr.strip()}")
        return result

    def _submit_missing(self) -> None:
        self._retry_submit_at = None
        todo = [j for j in self.store.jobs(self.id) if j.job_id is None and not j.done]
        if not todo:
            return
        plan = self.spec.plan
        submitted: list[str] = []
        for row in todo:
            if row.state == "SUBMITTING" and claim_is_live(row.claim, self._claim):
                continue  # another process is submitting it right now
            if not self.store.claim_job(self.id, row, self._claim):
                continue  # another process claimed it between our read and now
            name = job_name(self.id, row.idx)
            if row.state == "SUBMITTING":  # an earlier process died around sbatch
                found = self._find_patiently(name)
                if found:
                    self._adopt(row, found)
                    submitted.append(found)
                    continue
            # A retry's job is made from its own plan and resources (retrying.py).
            spec = retry_spec(self.spec, row)
            script = self._ready_scripts.pop(row.idx, None) if spec is self.spec else None
            if script is None:
                args = self.store.task_args(self.id, row.task_range)
                job_plan = plan if spec is self.spec else spec.plan
                job = spec.job(row.idx, list(zip(row.tasks, args, strict=True)), job_plan)
                script = render_script(job, worker_source())
            try:
                job_id = self._sbatch(script, name)
            except SubmitLimitError as exc:
                # Not a failure: the job waits in the store until the user's queue has room.
                self.store.update_job(self.id, row.idx, state="NEW")
                self._retry_submit_at = time.monotonic() + self.poll_policy.submit_limit_retry_s
                note = f"job {row.idx} and later wait for room in the user's queue: {exc}"
                if note not in self.warnings:
                    self.warnings.append(note)
                log.warning("run %s: %s", self.id, note)
                self._log_submitted(submitted)
                return  # the jobs after it would meet the same limit
            except SchedulerError as exc:
                if row.idx == 0:
                    self.store.update_job(self.id, row.idx, state="NEW")
                    self._finish("failed", f"the first job was not submitted: {exc}")
                    raise
                log.warning(
                    "run %s job %d not submitted: user=%s %s", self.id, row.idx, self.user, exc
                )
                self._fail_job(row, "submit_failed", str(exc))
                continue
            self._adopt(row, job_id)
            submitted.append(job_id)
        self._log_submitted(submitted)

    def _log_submitted(self, job_ids: list[str]) -> None:
        """One line for the jobs a call submitted (all of a run's at its start)."""
        if job_ids:
            shown = job_ids[0] if len(job_ids) == 1 else f"{job_ids[0]}..{job_ids[-1]}"
            log.info(
                "run %s submitted: user=%s jobs=%d ids=%s", self.id, self.user, len(job_ids), shown
            )

    def _adopt(self, row: JobRow, job_id: str) -> None:
        self.store.update_job(self.id, row.idx, job_id=job_id, state="PENDING")

    def _find(self, names: list[str]) -> dict[str, str]:
        self.calls[self.backend.scheduler.call_names["poll"]] += 1
        return self.backend.scheduler.find(names)

    def _find_patiently(self, name: str) -> str | None:
        """The id of a job submitted under `name`; never guesses while SLURM cannot answer."""
        delays = list(self.poll_policy.submit_retry_s)
        while True:
            try:
                return self._find([name]).get(name)
            except NOT_TRANSIENT:
                raise
            except (TransientSchedulerError, HostError) as exc:
                if not delays:
                    raise SchedulerError(
                        f"cannot tell whether {name} was submitted: {exc}"
                    ) from exc
                time.sleep(delays.pop(0))

    def _sbatch(self, script: str, name: str) -> str:
        """Submit once; after a failure that may have gone through, look before trying again."""
        delays = list(self.poll_policy.submit_retry_s)
        while True:
            try:
                self.calls[self.backend.scheduler.call_names["submit"]] += 1
                return self.backend.scheduler.submit(script)
            except NOT_TRANSIENT:
                raise
            except (TransientSchedulerError, HostError) as exc:
                if not delays:
                    raise SchedulerError(f"gave up submitting {name}: {exc}") from exc
                self.warnings.append(f"sbatch: {exc}; retrying")
                log.warning("sbatch for %s failed (%s); retrying", name, exc)
                time.sleep(delays.pop(0))
                try:
                    found = self._find([name])
                except (TransientSchedulerError, HostError):
                    found = {}
                if name in found:
                    return found[name]

    def _fail_job(self, row: JobRow, cause: str, message: str) -> None:
        results = [
            TaskResult(i, "failed", error=TaskError(cause, message))
            for i in row.task_range
            if i not in self._finished
        ]
        self._save(results)
        self.store.update_job(self.id, row.idx, state="FAILED", done=1)


def run_as_user(
    host: Host,
    argv: list[str],
    on_attempt: Callable[[], None],
    idempotent: bool = True,
    **host_kw: Any,
) -> CommandResult:
    """`argv` on the user's host, run again (up to 3 times) when the connection dropped while
    it ran and running it twice does no harm; `on_attempt` is called before each run."""
    delays = [0.5, 1.0, 2.0]
    while True:
        on_attempt()
        try:
            return host.run(argv, **host_kw)
        except HostError as exc:
            if not idempotent or not getattr(exc, "maybe_ran", False) or not delays:
                raise
            log.warning("%s interrupted (%s); running it again", argv[0], exc)
            time.sleep(delays.pop(0))


def _problem(mode: str) -> str | None:
    sticky = mode[9:10] in ("t", "T")
    if mode.startswith("l"):
        return "is a link (the run's own folders are never links)"
    if not mode.startswith("d"):
        return "is not a folder"
    if (mode[5:6] == "w" or mode[8:9] == "w") and not sticky:
        return f"may be written by other users ({mode[:10]})"
    return None


def _refuse(path: str, problem: str) -> ConfigError:
    return ConfigError(
        f"project_dir: {path} {problem}: another account could replace a run's files "
        f"there with links to yours. Make it yours and private (chmod go-w {path}), or "
        "set project_dir to a folder of your own"
    )


def check_before_making(listing: str, base: str, subs: list[str]) -> list[str]:
    """Before the run's folders are made under `base` (`listing` is `ls -ldn BASE/ SUBS...`,
    the missing SUBS absent): `base` must be a folder no other account may write, and each SUB
    already there a real folder (not a link), not writable by others, owned by base's owner
    (any owner when base is root's, like a sticky scratch: the check after making tells).
    The SUBS missing, to be made. HostError: `base` is not in the listing."""
    seen: dict[str, tuple[str, str]] = {}
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        name = line.split(" -> ", 1)[0] if fields[0].startswith("l") else line
        for path in [f"{base}/", *subs]:
            if name.endswith(" " + path):
                seen[path.rstrip("/") or "/"] = (fields[0], fields[2])
    if base not in seen:
        raise HostError(f"cannot check the folder {base}: ls said {listing[:300]!r}")
    base_mode, base_owner = seen[base]
    if problem := _problem(base_mode):
        raise _refuse(base, problem)
    for path in subs:
        if path not in seen:
            continue
        mode, owner = seen[path]
        if problem := _problem(mode):
            raise _refuse(path, problem)
        if owner != base_owner and base_owner != "0":
            raise _refuse(path, f"belongs to another account (uid {owner})")
    return [path for path in subs if path not in seen]


def check_folders(listing: str, parents: list[str], run_dir: str) -> None:
    """Refuse parents of the run folder that another account may change: not a folder,
    writable by group or others without the sticky bit, or owned by neither the user (the run
    folder's owner, just made) nor root. `listing` is `ls -ldnL PARENTS... RUN_DIR`."""
    seen: dict[str, tuple[str, str]] = {}
    for line in listing.splitlines():
        fields = line.split()
        for path in [*parents, run_dir]:
            # Matched by the name at the end: the date before it takes 2 or 3 fields by locale.
            if len(fields) > 3 and line.endswith(" " + path):
                seen[path] = (fields[0], fields[2])  # mode, links, uid, ...
    if run_dir not in seen or any(p not in seen for p in parents):
        raise HostError(f"cannot check the folders of {run_dir}: ls said {listing[:300]!r}")
    user = seen[run_dir][1]
    for path in parents:
        mode, owner = seen[path]
        problem = _problem(mode)
        if problem is None and owner not in (user, "0"):
            problem = f"belongs to another account (uid {owner})"
        if problem:
            raise _refuse(path, problem)
