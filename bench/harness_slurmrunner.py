"""Bench harness: one slurmrunner run through the Python API, as the server user.

Run by bench/bench.py as `slurmsrv` with /opt/slurmrunner/venv/bin/python:

    python harness_slurmrunner.py SPEC.json

SPEC: {"config": {...}, "profile": {...}, "store": path, "command": [...], "n_tasks": N,
       "input_bytes": 0 or each input's size (harness_inputs.bench_input)}
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


def install_trace(trace: list[list], t0: object) -> None:
    """Record when each watching cycle ran and what it did: its squeue (the states it saw),
    its read of the results files, the pace's next wait, the tasks finished after it."""
    from slurmrunner.pacing import ReadPace
    from slurmrunner.watcher import Watcher

    def at() -> float:
        return round(time.monotonic() - t0(), 4)  # type: ignore[operator]

    original_step, original_poll = Watcher.step, Watcher._poll
    original_read, original_after = Watcher._read, ReadPace.after_read

    def step(self: Watcher, read_all: bool = False) -> bool:
        trace.append([at(), "cycle", None])
        cpu = time.process_time()
        news = original_step(self, read_all)
        cpu_ms = round((time.process_time() - cpu) * 1000, 1)
        done = sum(len(e.run._finished) for e in self._entries.values())
        trace.append([at(), "cycle_end", {"news": news, "finished": done, "cpu_ms": cpu_ms}])
        return news

    def poll(self: Watcher, sched: object, group: list) -> None:
        trace.append([at(), "squeue", None])
        original_poll(self, sched, group)
        states = sorted({str(getattr(r, "state", "?")) for e in group for r in e.rows})
        trace.append([at(), "squeue_end", {"rows": states}])

    def read(self: Watcher, ident: object, group: list, now: float) -> bool:
        trace.append([at(), "cat", None])
        waiting = original_read(self, ident, group, now)
        trace.append([at(), "cat_end", {"news": any(e.news for e in group)}])
        return waiting

    def after_read(self: ReadPace, news: bool, now: float, eta: float | None = None) -> float:
        wait = original_after(self, news, now, eta)
        shown = None if eta is None else round(eta, 3)
        trace.append([at(), "pace", {"news": news, "wait": round(wait, 3), "eta": shown}])
        return wait

    def traced_run(cls: type) -> None:
        original = cls.run

        def run(self: object, argv: list[str], *args: object, **kw: object) -> object:
            name = argv[0].rsplit("/", 1)[-1] if argv else "?"
            trace.append([at(), "host", {"run": name}])
            try:
                return original(self, argv, *args, **kw)
            finally:
                trace.append([at(), "host_end", {"run": name}])

        cls.run = run  # type: ignore[attr-defined]

    from slurmrunner.hosts.local import LocalHost
    from slurmrunner.hosts.ssh import SSHHost

    traced_run(LocalHost)
    traced_run(SSHHost)
    Watcher.step = step  # type: ignore[method-assign]
    Watcher._poll = poll  # type: ignore[method-assign]
    Watcher._read = read  # type: ignore[method-assign]
    ReadPace.after_read = after_read  # type: ignore[method-assign]


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

    trace: list[list] = []  # spec["trace"]: [seconds since t0, what, detail] per event
    if spec.get("trace"):
        install_trace(trace, lambda: t0)

    config = parse_config(spec["config"])
    profile = parse_profile(spec["profile"])
    store = Store(spec["store"])
    runner = Runner(config, profile, store)
    from harness_inputs import bench_input  # next to this file

    size = spec.get("input_bytes", 0)
    inputs = [bench_input(i, size) for i in range(spec["n_tasks"])]

    prof = None
    if spec.get("profile_out"):
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    from harness_inputs import start_at_phase  # next to this file

    start_at_phase(spec.get("phase"))
    c_self, c_kids = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    t0_epoch = time.time()
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
    # every result checked (not timed): an echo task's (input_bytes) is its input
    wrong = [r.index for r in results if r.status == "ok" and size and r.result != inputs[r.index]]
    in_order = [r.index for r in results] == list(range(len(inputs)))
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
        "wrong": len(wrong) + (0 if in_order else 1),
        "first_wrong": wrong[0] if wrong else (None if in_order else "results out of order"),
        "first_error": next((r.to_dict() for r in results if r.status != "ok"), None),
        "run_dir": run.run_dir,
        "run_id": run.id,
        "warnings": status.warnings[:5],
    }
    if spec.get("trace"):
        out["t0_epoch"] = t0_epoch
        out["trace"] = trace
    print("BENCH_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
