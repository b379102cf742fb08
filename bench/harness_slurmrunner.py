"""Bench harness: one slurmrunner run through the Python API, as the server user.

Run by bench/bench.py as `slurmsrv` with /opt/slurmrunner/venv/bin/python:

    python harness_slurmrunner.py SPEC.json

SPEC: {"config": {...}, "profile": {...}, "store": path, "command": [...], "n_tasks": N}
Prints one line `BENCH_RESULT {json}` on stdout.

What is timed: from `Runner.submit` (plan, mkdir as the user, every sbatch) until `Run.wait`
returns with every task's result, i.e. what a server pays for one run; the interpreter's
start and imports are not (the orchestrator reports the whole process separately).

The only thing added to the product is a counter around `Run._cycle` (one watching cycle), so
the report can say how many `squeue` calls were made per cycle; it calls the original.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    from slurmrunner import Runner, Store, parse_config, parse_profile
    from slurmrunner.runner import Run

    if spec["profile"]["backend"] == "slurm_ssh":
        # slurmrunner imports paramiko when a run first needs SSH; imports are not timed
        # here (nor for any contender), the connection itself is.
        import slurmrunner.hosts.ssh  # noqa: F401

    cycles = 0
    original_cycle = Run._cycle

    def counting_cycle(self: Run) -> bool:
        nonlocal cycles
        cycles += 1
        return original_cycle(self)

    Run._cycle = counting_cycle  # type: ignore[method-assign]

    config = parse_config(spec["config"])
    profile = parse_profile(spec["profile"])
    store = Store(spec["store"])
    runner = Runner(config, profile, store)
    inputs = [{"i": i} for i in range(spec["n_tasks"])]

    prof = None
    if spec.get("profile_out"):
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    c_self, c_kids = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    run = runner.submit(spec["command"], inputs)
    t_submitted = time.monotonic()
    try:
        results = run.wait()
    except BaseException:
        run.cancel()
        raise
    wall = time.monotonic() - t0
    cpu_self = cpu(resource.RUSAGE_SELF) - c_self
    cpu_kids = cpu(resource.RUSAGE_CHILDREN) - c_kids
    if prof is not None:
        prof.disable()
        prof.dump_stats(spec["profile_out"])
    status = run.status()
    calls = dict(status.calls)
    out = {
        "wall_s": wall,
        "submit_s": t_submitted - t0,
        "cpu_self_s": cpu_self,
        "cpu_children_s": cpu_kids,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "n_jobs": len(run.job_ids()),
        "job_ids": run.job_ids(),
        "sbatch": calls.get("sbatch", 0),
        "squeue": calls.get("squeue", 0),
        "cat": calls.get("cat", 0),
        "ssh_connections": calls.get("ssh_connections", 0),
        "calls": calls,
        "cycles": cycles,
        "ok": sum(1 for r in results if r.status == "ok"),
        "failed": sum(1 for r in results if r.status != "ok"),
        "n_results": len(results),
        "first_error": next((r.to_dict() for r in results if r.status != "ok"), None),
        "run_dir": run.run_dir,
        "run_id": run.id,
        "warnings": status.warnings[:5],
    }
    print("BENCH_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
