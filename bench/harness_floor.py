"""Bench harness: the floor. One hand-written sbatch job that runs the workload's commands with
the same parallelism (`xargs -P`), as the cluster user, with Debian's /usr/bin/python3.

    python3 harness_floor.py SPEC.json

SPEC: {"dir": dir under the user's home, "command": "/path/task", "n_tasks": N,
       "parallel": 2, "partition": "main", "mem_mb": 200, "timeout_s": s,
       "input_bytes": 0, or each input's size}

With input_bytes (W5), the inputs (harness_inputs.bench_input) are first written to one file,
a line `I JSON` each, and the job gives each line to a task (`TASK --line 'I JSON'`, which
writes JSON to $BENCH_OUT/I.json): that file's writing is timed too, like slurmrunner's
shipping of the inputs. Every task's output is checked against its input after the timing.
Prints one line `BENCH_RESULT {json}` on stdout.

Timed from just before `sbatch` until the job's own last line (`date` written by the job when
the last command has ended): submission to completion, with no polling delay of ours in it.
The harness learns of the end by looking for that file (no SLURM call).
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
import time


def cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def floor_script(spec: dict) -> str:
    """The floor's job: the workload's commands with `xargs -P`, its own start and end times
    written into spec["dir"] (also used by bench/service.py, one such job per run)."""
    d, n, parallel = spec["dir"], spec["n_tasks"], spec["parallel"]
    q = shlex.quote
    if spec.get("input_bytes"):
        tasks = (
            f"export BENCH_OUT={q(d)}/out\n"
            f"xargs -P {parallel} -d '\\n' -n 1 {q(spec['command'])} --line < {q(d)}/inputs.txt"
        )
    else:
        tasks = f"seq 0 {n - 1} | xargs -P {parallel} -I{{}} {q(spec['command'])} --index {{}}"
    return f"""#!/bin/bash
#SBATCH --job-name=bench-floor
#SBATCH --partition={spec["partition"]}
#SBATCH --ntasks=1
#SBATCH --cpus-per-task={parallel}
#SBATCH --mem={spec["mem_mb"]}M
#SBATCH --output={d}/floor.out
date +%s.%N > {q(d)}/started
{tasks}
echo $? > {q(d)}/status
date +%s.%N > {q(d)}/ended.tmp && mv {q(d)}/ended.tmp {q(d)}/ended
"""


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    d = spec["dir"]
    os.makedirs(d, mode=0o700, exist_ok=True)
    n = spec["n_tasks"]
    script = floor_script(spec)
    path = os.path.join(d, "floor.sh")
    with open(path, "w") as fh:
        fh.write(script)
    ended = os.path.join(d, "ended")
    size = spec.get("input_bytes", 0)
    inputs = None
    if size:
        from harness_inputs import bench_input, compact  # next to this file

        inputs = [bench_input(i, size) for i in range(n)]
        os.makedirs(os.path.join(d, "out"), mode=0o700, exist_ok=True)
    from harness_inputs import start_at_phase  # next to this file

    start_at_phase(spec.get("phase"))
    c_self, c_kids = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    t_submit = time.time()
    t0 = time.monotonic()
    if inputs is not None:
        with open(os.path.join(d, "inputs.txt"), "w") as fh:
            fh.writelines(f"{i} {compact(x)}\n" for i, x in enumerate(inputs))
    job_id = (
        subprocess.run(["sbatch", "--parsable", path], check=True, capture_output=True, text=True)
        .stdout.strip()
        .split(";")[0]
    )
    deadline = t0 + spec.get("timeout_s", 1800)
    while not os.path.exists(ended):
        if time.monotonic() > deadline:
            raise SystemExit(f"floor job {job_id} did not end within {spec.get('timeout_s')}s")
        time.sleep(0.05)
    seen = time.time()
    t_end = float(open(ended).read())
    t_start = float(open(os.path.join(d, "started")).read())
    status = int(open(os.path.join(d, "status")).read().strip() or 1)
    c_self, c_kids = cpu(resource.RUSAGE_SELF) - c_self, cpu(resource.RUSAGE_CHILDREN) - c_kids
    wrong = []
    if inputs is not None:  # every output checked, after the timing
        for i, x in enumerate(inputs):
            try:
                with open(os.path.join(d, "out", f"{i}.json")) as fh:
                    ok = json.loads(fh.read()) == x
            except (OSError, ValueError):
                ok = False
            if not ok:
                wrong.append(i)
    out = {
        "wall_s": t_end - t_submit,
        "queue_s": t_start - t_submit,
        "run_s": t_end - t_start,
        "seen_after_end_s": seen - t_end,
        "cpu_self_s": c_self,
        "cpu_children_s": c_kids,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "n_jobs": 1,
        "job_ids": [job_id],
        "sbatch": 1,
        "squeue": 0,
        "ok": n if status == 0 else 0,
        "failed": 0 if status == 0 else n,
        "n_results": n,
        "wrong": len(wrong),
        "first_wrong": wrong[0] if wrong else None,
        "first_error": None if status == 0 else f"xargs exit status {status}",
    }
    print("BENCH_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
