"""Hostile job output: the cases, the task that writes them, and the checks of each outcome.

Shared by the local-backend test (tests/test_hostile_local.py, watched in the test process) and
the rig test (tests/integration/test_hostile_rig.py, watched by the server user as alice's jobs
write the bytes). Imports only slurmrunner and the standard library: the rig copies this file
next to its driver and runs it with the server's own Python.

Every case is one job of 3 tasks (run one at a time) whose middle task appends crafted bytes to
its own job's results chunk (`<run_dir>/results/K.jsonl`, the run folder being two levels above
its --out-json) before writing its result; the cases share N_RUNS runs, so each also shares its
`cat` with other jobs. These runs and one honest run are watched together by one process, as the
service watches every user's. For each case: nothing raises, the honest tasks keep their true
outcome, the honest run gets every result right, and status, wait, cancel and a reattach still
work on the hostile run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from slurmrunner import Profile, Runner, SlurmRunnerConfig, Store, TaskResources
from slurmrunner.cli.failures import describe_failure
from slurmrunner.cli.output import progress_line

# The task: honest unless its input names a case; then it appends that case's bytes first.
TASK = r"""
import json, os, sys
argv = sys.argv
args = json.load(open(argv[argv.index("--args-json") + 1]))
out = argv[argv.index("--out-json") + 1]
run_dir = os.path.dirname(os.path.dirname(out))
x = args["x"]
job = args.get("job", 0)

def rec(**kw):
    base = {"i": x, "job": job, "status": "ok", "result": {"forged": True}}
    base.update(kw)
    return json.dumps(base).encode()

def line(base, **kw):
    return json.dumps(dict(base, **kw)).encode()

def err(cause, message):
    return {"cause": cause, "message": message, "log_tail": ""}

END0 = {"event": "end", "job": job, "chunk": 0, "t": 1.0}
NEXT = {"event": "next", "job": job}
OTHER_JOB = args.get("other", 3) // 3
CASES = {
    "no status": lambda: json.dumps({"i": x, "job": job}).encode(),
    "error as a string": lambda: rec(status="failed", error="boom"),
    "chunk x in next": lambda: line(NEXT, chunk="x", records=1),
    "i of 5,000 digits": lambda: b'{"i": ' + b"7" * 5000 + b', "job": 0, "status": "ok"}',
    "deeply nested": lambda: rec()[:-1] + b', "deep": ' + b"[" * 200000,
    "job as a list": lambda: rec(job=[job]),
    "i is true": lambda: rec(i=True),
    "i as a string": lambda: rec(i=str(x)),
    "negative i": lambda: rec(i=-1),
    "NUL bytes": lambda: rec()[:-1] + b"\x00}",
    "invalid UTF-8 structure": lambda: b"\xff\xfe" + rec(),
    "invalid UTF-8 key": lambda: rec()[:-1] + b', "\xff": 1}',
    "invalid UTF-8 in own result": lambda: rec().replace(b"true", b'true, "s": "\xc3("'),
    "10 MB line": lambda: b"x" * 10_000_000,
    "20 MB of lines": lambda: (b"y" * 1000 + b"\n") * 20_000,
    "duplicate of a finished sibling": lambda: rec(i=x - 1),
    "own record first": lambda: rec(),
    "forged end, another job": lambda: line(END0, job=OTHER_JOB, records=1, tasks=1),
    "forged end, wrong counts": lambda: line(END0, records=9, tasks=9),
    "forged end, no counts": lambda: json.dumps({"event": "end", "job": job, "t": 1.0}).encode(),
    "next to chunk 10**9": lambda: line(NEXT, chunk=10**9, records=1),
    "next with a wrong count": lambda: line(NEXT, chunk=1, records=0),
    "record for another job": lambda: rec(i=args["other"], job=OTHER_JOB),
    "rich markup in own record": lambda: rec(
        status="failed", result=None, error=err("exit_code", "[/oops] [bold red]x\x1b[2J")
    ),
    "truncated line": lambda: rec()[:25],
    "not an object": lambda: b"[1, 2, 3]",
    "blank lines": lambda: b"\n\n   \n",
    "NaN": lambda: rec(duration_s=float("nan")),
    "1e999": lambda: rec()[:-1] + b', "duration_s": 1e999}',
    "unknown event": lambda: json.dumps({"event": "begin", "job": job}).encode(),
    "unknown key": lambda: rec(retries=2),
    "unknown status": lambda: rec(status="done"),
    "unknown cause": lambda: rec(status="failed", error=err("lost", "")),
    "message of 100 KB": lambda: rec(status="failed", error=err("exit_code", "m" * 100_000)),
    "lone surrogate": lambda: rec(status="failed", error=err("exit_code", "\udc80")),
    "separator look-alike": lambda: b"SLURMRUNNER-SEPARATOR-" + b"0" * 32,
    "terminal escapes": lambda: b"\x1b[2J\x1b]0;pwned\x07\x1b[31m",
}
case = args.get("case")
if case in CASES:
    with open(os.path.join(run_dir, "results", "%d.jsonl" % job), "ab") as fh:
        data = CASES[case]()
        fh.write(data if case == "truncated line" else data + b"\n")
if case in ("rewrites its run's separator", "copies another run's separator"):
    import glob, time
    time.sleep(args.get("delay", 0))  # the watcher has learnt the run's separator by then
    text = "SLURMRUNNER-SEPARATOR-" + "f" * 32 + "\n"
    if case == "copies another run's separator":
        pattern = os.path.join(os.path.dirname(run_dir), "*", "results", "sep")
        others = sorted(p for p in glob.glob(pattern) if not p.startswith(run_dir + os.sep))
        text = open(others[0]).read() if others else text
    with open(os.path.join(run_dir, "results", "sep"), "w") as fh:
        fh.write(text)
with open(out, "w") as fh:
    if case == "50 MB result":
        fh.write('{"blob": "' + "z" * 50_000_000 + '"}')
    else:
        json.dump({"x": x, "square": x * x}, fh)
"""

TRUE = ("ok", None)
# What the hostile task itself ends as: its own record, unless its forged one came first.
CASES: dict[str, tuple[str, str | None]] = {
    name: TRUE
    for name in (
        "10 MB line",
        "20 MB of lines",
        "deeply nested",
        "no status",
        "error as a string",
        "chunk x in next",
        "i of 5,000 digits",
        "job as a list",
        "i is true",
        "i as a string",
        "negative i",
        "NUL bytes",
        "invalid UTF-8 structure",
        "invalid UTF-8 key",
        "duplicate of a finished sibling",
        "forged end, another job",
        "forged end, wrong counts",
        "forged end, no counts",
        "next to chunk 10**9",
        "next with a wrong count",
        "record for another job",
        "truncated line",
        "not an object",
        "blank lines",
        "NaN",
        "1e999",
        "unknown event",
        "unknown key",
        "unknown status",
        "unknown cause",
        "message of 100 KB",
        "lone surrogate",
        "separator look-alike",
        "terminal escapes",
    )
}
CASES = {
    "50 MB result": ("failed", "result_too_large"),
    **CASES,
    "own record first": ("ok", "forged"),  # its own outcome is its own to lie about
    "invalid UTF-8 in own result": ("ok", "forged"),
    "rich markup in own record": ("failed", "exit_code"),
}
CLEAN = {"blank lines", "50 MB result"}  # every other case leaves a warning for its job
N_RUNS = 4


def square(i: int) -> dict:
    return {"x": i, "square": i * i}


def local_runner(tmp: Path) -> tuple[Runner, list[str]]:
    """A local-backend runner in `tmp` and the command of the cases' task (written there)."""
    task = tmp / "task.py"
    task.write_text(TASK)
    profile = Profile(backend="local", project_dir=str(tmp / "proj"))
    runner = Runner(SlurmRunnerConfig(), profile, Store(tmp / "store.sqlite"))
    return runner, [sys.executable, "-S", str(task)]


def watch_cases(runner: Runner, command: list[str], timeout: float = 120) -> dict[str, Any]:
    """The cases' runs and an honest one, submitted together and watched by this process."""
    res = TaskResources(tasks_per_job=3, parallel_tasks_per_job=1)
    groups = [list(CASES)[n::N_RUNS] for n in range(N_RUNS)]
    where = {}  # case -> (run, its job)
    runs = []
    for group in groups:
        inputs = []
        for k, case in enumerate(group):
            other = 3 * (k + 1 if k + 1 < len(group) else k - 1)  # a task of another job
            hostile = {"x": 3 * k + 1, "case": case, "job": k, "other": other}
            inputs += [{"x": 3 * k}, hostile, {"x": 3 * k + 2}]
        run = runner.submit(command, inputs, res)
        runs.append(run)
        where.update({case: (run, k) for k, case in enumerate(group)})
    honest = runner.submit(command, [{"x": i} for i in range(6)], res)
    statuses = {}
    deadline = time.monotonic() + timeout
    while len(statuses) < len(runs) + 1:
        assert time.monotonic() < deadline, "the runs did not finish"
        for run in [*runs, honest]:
            if run.id not in statuses:
                status = run.poll()
                progress_line(status)  # what the CLI prints each cycle
                if status.done:
                    statuses[run.id] = status
        time.sleep(0.05)
    return {"store": runner.store, "where": where, "honest": honest, "statuses": statuses}


def check_honest(watched: dict[str, Any]) -> None:
    honest = watched["honest"]
    results = honest.results()
    assert [(r.status, r.result) for r in results] == [("ok", square(i)) for i in range(6)]
    assert honest.warnings == []


def check_case(watched: dict[str, Any], case: str) -> None:
    store: Store = watched["store"]
    run, k = watched["where"][case]
    results = run.results()
    assert [r.index for r in results] == list(range(run.n_tasks))
    hostile_index = 3 * k + 1
    for r in results[3 * k : 3 * k + 3]:
        if r.index != hostile_index:  # honest tasks keep their true outcome, their own log
            assert (r.status, r.result) == ("ok", square(r.index)), r
            assert r.log == f"{run.run_dir}/logs/{r.index}.log"
    hostile = results[hostile_index]
    status, detail = CASES[case]
    assert hostile.status == status, hostile
    if status == "ok":
        if detail is None:
            assert hostile.result == square(hostile_index)
        else:
            assert hostile.result["forged"] is True
            if case == "invalid UTF-8 in own result":  # decoded with replacement
                assert hostile.result["s"] == "\ufffd("
    else:
        assert hostile.error and hostile.error.cause == detail
        describe_failure(hostile)  # printable: markup and escapes are the CLI's to escape
    warnings = [w for w in watched["statuses"][run.id].warnings if w.startswith(f"job {k} ")]
    if case in CLEAN:
        assert warnings == []
    else:  # reported once for the job, escaped
        assert len(warnings) == 1, warnings
        assert warnings[0].isprintable() and len(warnings[0]) < 2000
    # The run still answers: status, wait, cancel, and a process that reattaches.
    assert run.status().done
    assert run.wait(timeout=5) == results
    assert run.cancel() == 0
    assert store.run(run.id).state == "done"  # a finished run is not made "cancelled"
    assert run.results() == results
    again = Runner.attach(run.id, Store(store.path))
    assert again.status().counts == run.status().counts
    assert again.results() == results


#: Each in a run of its own (the whole run's files can no longer be cut): a task rewrites its
#: run's separator file, with a token of its own or another run's of the same user.
SEP_CASES = ("rewrites its run's separator", "copies another run's separator")


def watch_cases_together(
    runner: Runner, command: list[str], timeout: float = 120
) -> dict[str, Any]:
    """The cases' runs, the SEP_CASES runs and an honest one, driven by one Watcher (the
    service's loop): one poll and, while nothing is off, one cat per cycle for all of them."""
    from slurmrunner.watcher import Watcher

    res = TaskResources(tasks_per_job=3, parallel_tasks_per_job=1)
    groups = [list(CASES)[n::N_RUNS] for n in range(N_RUNS)]
    where = {}
    runs = []
    for group in groups:
        inputs = []
        for k, case in enumerate(group):
            other = 3 * (k + 1 if k + 1 < len(group) else k - 1)
            hostile = {"x": 3 * k + 1, "case": case, "job": k, "other": other}
            inputs += [{"x": 3 * k}, hostile, {"x": 3 * k + 2}]
        run = runner.submit(command, inputs, res)
        runs.append(run)
        where.update({case: (run, k) for k, case in enumerate(group)})
    sep_runs = {}
    for case in SEP_CASES:
        inputs = [{"x": i} for i in range(6)]
        inputs[1] = {"x": 1, "case": case, "job": 0, "delay": 3}
        sep_runs[case] = runner.submit(command, inputs, res)
    honest = runner.submit(command, [{"x": i} for i in range(6)], res)
    everyone = [*runs, *sep_runs.values(), honest]
    watcher = Watcher(runner.poll_policy)
    for run in everyone:
        watcher.add(run)
    statuses = {}
    deadline = time.monotonic() + timeout
    while len(statuses) < len(everyone):
        assert time.monotonic() < deadline, "the runs did not finish"
        watcher.step()
        watching = {run.id for run in watcher.runs()}
        for run in everyone:
            if run.id not in watching and run.id not in statuses:
                statuses[run.id] = status = run.status()
                progress_line(status)
        time.sleep(min(watcher.pause(), 0.2))
    return {
        "store": runner.store,
        "where": where,
        "honest": honest,
        "statuses": statuses,
        "sep_runs": sep_runs,
        "watcher": watcher,
    }


def check_sep_case(watched: dict[str, Any], case: str) -> None:
    """The run whose separator a task rewrote ends, and never with a forged value: each task
    is its true result, or failed (its record could not be read any more)."""
    run = watched["sep_runs"][case]
    results = run.results()
    assert [r.index for r in results] == list(range(6))
    for r in results:
        if r.status == "ok":
            assert r.result == square(r.index), r
        else:
            assert r.status == "failed" and r.error is not None, r
    assert watched["store"].run(run.id).state == "done"
