"""Bench harness: submitit's SLURM executor, one job array (`map_array`), as the cluster user.

submitit runs `sbatch` as the current user, so bench/bench.py runs this as `alice` with a venv
made from /usr/bin/python3 (the same interpreter then runs the array tasks on the node):

    python harness_submitit.py SPEC.json

SPEC: {"folder": dir under the user's home, "command": "/path/task", "n_tasks": N,
       "partition": "main", "cpus_per_task": 1, "mem": "100M", "array_parallelism": n}
Prints one line `BENCH_RESULT {json}` on stdout.

Each array task is a Python function that runs the same task command as every other contender
(`COMMAND --index I`) with subprocess. Everything else is submitit's default (it launches each
task with `srun`; it asks `sacct` for states, and finds results by their pickle files).

What is timed: from `map_array` (pickling, the one sbatch) until every job's `.result()`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def run_task(command: str, index: int) -> int:
    subprocess.run([command, "--index", str(index)], check=True)
    return index


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    import submitit

    n = spec["n_tasks"]
    executor = submitit.SlurmExecutor(folder=spec["folder"], max_num_timeout=0)
    executor.update_parameters(
        partition=spec["partition"],
        cpus_per_task=spec["cpus_per_task"],
        mem=spec["mem"],
        ntasks_per_node=1,
        nodes=1,
        time=spec.get("time_min", 10),
        array_parallelism=spec["array_parallelism"],
    )
    from harness_inputs import start_at_phase  # next to this file

    start_at_phase(spec.get("phase"))
    c_self, c_kids = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    jobs = executor.map_array(run_task, [spec["command"]] * n, list(range(n)))
    t_submitted = time.monotonic()
    ok, failed, first_error = 0, 0, None
    for job in jobs:
        try:
            job.result()
            ok += 1
        except Exception as exc:
            failed += 1
            if first_error is None:
                first_error = f"{job.job_id}: {type(exc).__name__}: {exc}"[:2000]
    wall = time.monotonic() - t0
    out = {
        "wall_s": wall,
        "submit_s": t_submitted - t0,
        "cpu_self_s": cpu(resource.RUSAGE_SELF) - c_self,
        "cpu_children_s": cpu(resource.RUSAGE_CHILDREN) - c_kids,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "n_jobs": len(jobs),  # array tasks: each one is a SLURM job
        "array_job_ids": sorted({j.job_id.split("_")[0] for j in jobs}),
        "ok": ok,
        "failed": failed,
        "n_results": ok + failed,
        "first_error": first_error,
        "submitit": submitit.__version__,
    }
    print("BENCH_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
