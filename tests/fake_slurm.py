"""A fake SLURM for unit tests of the run's decisions (not SLURM tests): canned squeue and sacct
answers from a fake query host, chunk lines written by the test, the real Run in between."""

from __future__ import annotations

import json
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

from slurmrunner import PollPolicy, Profile, Runner, SlurmRunnerConfig, Store, TaskResources
from slurmrunner.backends import Backend
from slurmrunner.hosts.base import CommandResult
from slurmrunner.hosts.local import LocalHost
from slurmrunner.run import Run
from slurmrunner.slurm import SharedSqueue, SlurmScheduler

#: squeue every cycle: each poll() is one squeue (and one sacct when a job is gone)
EVERY_CYCLE = PollPolicy(squeue_min_s=0.0, squeue_max_s=0.0)


class FakeQueryHost:
    """The server's query identity on a fake cluster. `states`: job id -> squeue's state (an
    absent id is gone); `sacct`: sacct's stdout, or (returncode, stderr), or an exception."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.argvs: list[list[str]] = []
        self.states: dict[str, str] = {}
        self.sacct: str | tuple[int, str] | Exception = ""

    def run(self, argv: list[str], stdin: str | None = None, *a: Any, **k: Any) -> CommandResult:
        self.calls[argv[0]] += 1
        self.argvs.append(argv)
        if argv[0] == "squeue":
            ids = next(x for x in argv if x.startswith("--jobs=")).split("=", 1)[1].split(",")
            out = "".join(f"{j}|{self.states[j]}|None|name\n" for j in ids if j in self.states)
            return CommandResult(tuple(argv), 0, out, "")
        if argv[0] == "sacct":
            if isinstance(self.sacct, Exception):
                raise self.sacct
            if isinstance(self.sacct, tuple):
                return CommandResult(tuple(argv), self.sacct[0], "", self.sacct[1])
            return CommandResult(tuple(argv), 0, self.sacct, "")
        raise AssertionError(f"the query host does not run {argv}")

    def close(self) -> None:
        pass


class FakeSubmitHost:
    """The user's identity: sbatch answers ids 101, 102, ...; scancel does nothing."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.next_id = 101

    def run(self, argv: list[str], stdin: str | None = None, *a: Any, **k: Any) -> CommandResult:
        self.calls[argv[0]] += 1
        if argv[0] == "sbatch":
            self.next_id += 1
            return CommandResult(tuple(argv), 0, f"{self.next_id - 1}\n", "")
        return CommandResult(tuple(argv), 0, "", "")

    def close(self) -> None:
        pass


def fake_run(
    tmp_path: Path, n_tasks: int, tasks_per_job: int, poll: PollPolicy = EVERY_CYCLE
) -> tuple[Run, FakeQueryHost]:
    """A run of `n_tasks` submitted to the fake cluster (jobs 101, 102, ...); nothing runs."""
    profile = Profile(backend="local", project_dir=str(tmp_path / "proj"))
    runner = Runner(SlurmRunnerConfig(), profile, Store(tmp_path / "store.sqlite"), poll)
    res = TaskResources(tasks_per_job=tasks_per_job, parallel_tasks_per_job=1)
    run = runner.prepare(["true"], [{} for _ in range(n_tasks)], res)
    query = FakeQueryHost()
    scheduler = SlurmScheduler(FakeSubmitHost(), SharedSqueue(query, max_age=0), "alice")
    run.backend = Backend(LocalHost(), scheduler)  # the run folder is made here, in tmp_path
    run.start()
    for job_id in run.job_ids():
        query.states[job_id] = "RUNNING"
    return run, query


def write(run: Run, job: int, *lines: dict[str, Any]) -> None:
    """Append lines to job `job`'s first chunk, as its worker would."""
    results = Path(run.run_dir, "results")
    sep = results / "sep"
    if not sep.exists():
        sep.write_text(f"SLURMRUNNER-SEPARATOR-{secrets.token_hex(16)}\n")
    with open(results / f"{job}.jsonl", "a") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in lines)


def start(job: int, attempt: int = 0) -> dict[str, Any]:
    return {"event": "start", "job": job, "attempt": attempt, "t": 1.0, "n_tasks": 1}


def ok(i: int, job: int, attempt: int = 0) -> dict[str, Any]:
    return {"i": i, "job": job, "attempt": attempt, "status": "ok", "result": {"attempt": attempt}}


def failed(
    i: int, job: int, cause: str, attempt: int = 0, sig: int | None = None
) -> dict[str, Any]:
    status = "interrupted" if cause == "interrupted" else "failed"
    error = {"cause": cause, "message": f"{cause} here", "log_tail": ""}
    return {"i": i, "job": job, "attempt": attempt, "status": status, "signal": sig, "error": error}


def end(job: int, records: int, interrupted: str | None = None) -> dict[str, Any]:
    line = {"event": "end", "job": job, "chunk": 0, "records": records, "tasks": records, "t": 2.0}
    return {**line, "interrupted": interrupted} if interrupted else line
