"""A job, as the text of its submission script. Pure and deterministic.

Layout: shebang; the #SBATCH lines the runner manages; the config's `extra_lines` verbatim and
in order (except that directive lines among them go before the first shell command: sbatch reads
no directive after one, and merged layers would otherwise lose a later layer's directives);
`umask 077`; the user's exports; then the worker and its payload (the job's task list) as a
here-document fed to python, so the script alone carries everything the job needs. The payload
is one line defining `_PAYLOAD` (payload.py: plain when small, compressed when large).

Python reads that program with one read (`-c` and `sys.stdin.buffer.read()`), not as
`python3 -`: CPython's parser reads a program from standard input one byte per read(2), 40,000
system calls for a job of 1,000 tasks (about 15 ms of system time per job start, measured with
strace on this rig's Python 3.11). The bytes are compiled as a source file's are (UTF-8 unless
a coding line says otherwise) and run as `__main__`, as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .batching import BatchPlan
from .config import JobResources
from .directives import directive_kind
from .errors import ConfigError
from .payload import payload_line
from .quoting import directive_value, shell_word
from .units import format_time_minutes

_HEREDOC_END = "SLURMRUNNER_PAYLOAD_END"
#: The program `python -c` runs: the here-document's bytes, read at once, as the main module.
RUN_STDIN = 'import sys;exec(compile(sys.stdin.buffer.read(),"<slurmrunner-worker>","exec"))'


@dataclass(frozen=True)
class JobSpec:
    """Everything one job script is made of."""

    run_id: str
    job_index: int
    run_dir: str
    resources: JobResources
    plan: BatchPlan
    command: tuple[str, ...]
    tasks: tuple[tuple[int, Any], ...]  # (input index, args)
    exports: dict[str, str] = field(default_factory=dict)  # NAME -> absolute path
    call: str = "fractal"
    workdir: str | None = None
    python: str = "python3"
    max_result_bytes: int = 1024 * 1024  # a bigger result stays in the task's own file
    # Run by the local scheduler, which reads quoted paths: any folder name works there.
    local: bool = False

    @property
    def job_name(self) -> str:
        return job_name(self.run_id, self.job_index)

    @property
    def results_file(self) -> str:
        return f"{self.run_dir}/{results_relpath(self.job_index)}"

    @property
    def output_file(self) -> str:
        return f"{self.run_dir}/jobs/{self.job_index}.out"


def job_name(run_id: str, job_index: int) -> str:
    """The tag a job carries in the scheduler: finds it again after a lost submission."""
    return f"sr-{run_id}-{job_index}"


# Task records per results file: a look at a job reads at most its open file and the next.
RESULTS_CHUNK_RECORDS = 1000


def results_relpath(job_index: int, chunk: int = 0) -> str:
    """Where a job's worker writes its records (chunks of RESULTS_CHUNK_RECORDS)."""
    return f"results/{job_index}.jsonl" if chunk == 0 else f"results/{job_index}.{chunk}.jsonl"


def sbatch_directives(job: JobSpec) -> list[str]:
    res, plan = job.resources, job.plan
    opts: list[tuple[str, str | int]] = [
        ("job-name", job.job_name),
        ("ntasks", 1),
        ("cpus-per-task", plan.cpus_per_job),
    ]
    if plan.mem_per_job_mb is not None:
        if res.use_mem_per_cpu:
            opts.append(("mem-per-cpu", f"{-(-plan.mem_per_job_mb // plan.cpus_per_job)}M"))
        else:
            opts.append(("mem", f"{plan.mem_per_job_mb}M"))
    if plan.time_per_job_minutes is not None:
        opts.append(("time", format_time_minutes(plan.time_per_job_minutes)))
    for key in ("partition", "account", "qos", "gres", "gpus", "constraint", "exclude"):
        value = getattr(res, key)
        if value is not None:
            opts.append((key, value))
    if res.nodelist is not None:
        opts.append(("nodelist", res.nodelist))
    lines = [f"#SBATCH --{key}={directive_value(key, value)}" for key, value in opts]
    for key, path in (("output", job.output_file), ("chdir", job.run_dir)):
        value = shell_word(path) if job.local else directive_value(key, path)
        lines.append(f"#SBATCH --{key}={value}")
    # sbatch translates #PBS/#BSUB lines after reading ours unless told not to; extra_lines
    # may not hold any, and this keeps it so whatever the script holds.
    lines.append("#SBATCH --ignore-pbs")
    return lines


def worker_payload(job: JobSpec) -> dict[str, Any]:
    return {
        "version": 1,
        "run_id": job.run_id,
        "job_index": job.job_index,
        "run_dir": job.run_dir,
        "workdir": job.workdir,
        "results": results_relpath(job.job_index),
        "chunk_records": RESULTS_CHUNK_RECORDS,
        "output": job.output_file,
        "command": list(job.command),
        "call": job.call,
        "parallel": job.plan.parallel_tasks_per_job,
        "max_result_bytes": job.max_result_bytes,
        "tasks": [{"i": i, "args": args} for i, args in job.tasks],
    }


def render_script(job: JobSpec, worker_source: str) -> str:
    """The whole script; `worker_source` is the text of slurmrunner/worker.py."""
    payload = json.dumps(worker_payload(job), sort_keys=True, separators=(",", ":"))
    extra = job.resources.extra_lines
    directives = [line for line in extra if directive_kind(line)]
    others = [line for line in extra if not directive_kind(line)]
    lines = [job.resources.shebang_line, *sbatch_directives(job), *directives, *others]
    lines.append("umask 077")
    for name, path in job.exports.items():
        lines.append(f"export {name}={shell_word(path)}")
    lines.append(f"exec {shell_word(job.python)} -c {shell_word(RUN_STDIN)} <<'{_HEREDOC_END}'")
    body = f"{payload_line(payload)}\n{worker_source.rstrip()}\n"
    if any(line.strip() == _HEREDOC_END for line in body.splitlines()):
        raise ConfigError("the worker payload contains the here-document end marker")
    return "\n".join(lines) + "\n" + body + _HEREDOC_END + "\n"


def check_script_size(script: str, limit: int, job_index: int) -> None:
    size = len(script.encode())
    if size > limit:
        raise ConfigError(
            f"job {job_index}'s script is {size} bytes, over max_script_bytes={limit} "
            "(SLURM's default limit is 4 MB): give fewer inputs per job (resources.tasks_per_job, "
            "or none: the plan then splits the jobs itself) or smaller arguments"
        )
