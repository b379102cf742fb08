"""The worker alone against `xargs -P` over the same no-op tasks (issue 13). No SLURM.

    .venv/bin/python bench/worker.py                     # 5,000 no-ops, 2 at once, 5 repeats
    .venv/bin/python bench/worker.py -n 1000 --repeats 3 --task true
    .venv/bin/python bench/worker.py --help

The worker runs the way a job script runs it (script.render_script): the interpreter the rig's
jobs use (`/usr/bin/python3` when present) reads `_PAYLOAD = '<json>'` followed by the worker's
source on its standard input in one read (script.RUN_STDIN), in a fresh run folder, with the
payload script.worker_payload makes (fractal call form, `parallel` tasks at once, chunks of
1,000 records). `xargs` runs the same command the bench's floor job runs:
`seq 0 N-1 | xargs -P 2 -I{} TASK --index {}`.

Tasks: `noop` (default) is W1/W3's task, a `/bin/sh` script that exits 0; `true` is
`/bin/true`. Both ignore their arguments.

Figures, per contender, medians over the repeats (the order changes with each repeat, so
the machine's load falls on both alike): wall time from start to exit, CPU (user + system of
the process tree), and for the worker the time between its `start` and `end` lines (the part
inside a job: the rest is the interpreter starting). The ratio is worker / xargs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "src"))

from slurmrunner.runspec import worker_source  # noqa: E402
from slurmrunner.script import RESULTS_CHUNK_RECORDS, RUN_STDIN, results_relpath  # noqa: E402

NOOP = "#!/bin/sh\n# bench no-op task: accepts any arguments, does nothing\nexit 0\n"
TARGET_RATIO = 1.3


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def payload(run_dir: str, command: str, n: int, parallel: int, call: str) -> dict:
    """As script.worker_payload makes it for one job of n tasks."""
    return {
        "version": 1,
        "run_id": "bench",
        "job_index": 0,
        "run_dir": run_dir,
        "workdir": None,
        "results": results_relpath(0),
        "chunk_records": RESULTS_CHUNK_RECORDS,
        "output": f"{run_dir}/jobs/0.out",
        "command": [command],
        "call": call,
        "parallel": parallel,
        "max_result_bytes": 1024 * 1024,
        "tasks": [{"i": i, "args": {"index": i}} for i in range(n)],
    }


def payload_line(data: dict) -> str:
    """The script's `_PAYLOAD = ...` line, as script.render_script writes it."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    try:
        from slurmrunner.payload import payload_line as line  # compressed when large
    except ImportError:
        return f"_PAYLOAD = {text!r}"
    return line(text)


def run_worker(
    work: Path, python: str, source: str, command: str, n: int, parallel: int, call: str
) -> dict:
    run_dir = tempfile.mkdtemp(prefix="run-", dir=work)
    os.mkdir(os.path.join(run_dir, "jobs"), 0o700)
    data = payload(run_dir, command, n, parallel, call)
    body = f"{payload_line(data)}\n{source.rstrip()}\n".encode()
    stdin = os.path.join(run_dir, "jobs", "0.sh")  # bash gives a here-document as a file
    with open(stdin, "wb") as fh:
        fh.write(body)
    with open(stdin, "rb") as fh, open(os.path.join(run_dir, "jobs", "0.out"), "wb") as out:
        c0, t0 = children_cpu(), time.monotonic()
        rc = subprocess.call(
            [python, "-c", RUN_STDIN], stdin=fh, stdout=out, stderr=out, cwd=run_dir
        )
        wall, cpu = time.monotonic() - t0, children_cpu() - c0
    lines = []
    results = Path(run_dir, "results")
    for chunk in sorted(results.glob("0*.jsonl")):
        lines += [json.loads(line) for line in chunk.read_text().splitlines()]
    events = {rec["event"]: rec for rec in lines if "event" in rec and rec["event"] != "next"}
    ok = sum(1 for rec in lines if rec.get("status") == "ok")
    if rc != 0 or ok != n or "end" not in events:
        raise SystemExit(f"worker run failed: rc={rc}, {ok}/{n} ok; see {run_dir}")
    files = sum(len(os.listdir(os.path.join(run_dir, d))) for d in ("tasks", "logs"))
    shutil.rmtree(run_dir)
    inner = events["end"]["t"] - events["start"]["t"]
    return {"wall_s": wall, "cpu_s": cpu, "inner_s": inner, "files_left": files}


def run_xargs(command: str, n: int, parallel: int) -> dict:
    script = f"seq 0 {n - 1} | xargs -P {parallel} -I{{}} {command} --index {{}}"
    c0, t0 = children_cpu(), time.monotonic()
    rc = subprocess.call(["/bin/bash", "-c", script])
    wall, cpu = time.monotonic() - t0, children_cpu() - c0
    if rc != 0:
        raise SystemExit(f"xargs failed: rc={rc}")
    return {"wall_s": wall, "cpu_s": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", "--tasks", type=int, default=5000)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--task", choices=("noop", "true"), default="noop")
    ap.add_argument("--call", choices=("fractal", "stdin"), default="fractal")
    default_py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    ap.add_argument("--python", default=default_py, help="interpreter of the worker")
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("--dir", help="where the run folders go (default: the system's temp dir)")
    ap.add_argument(
        "--baseline",
        help="another worker program to run alongside, e.g. the committed one: "
        "git show HEAD:src/slurmrunner/worker.py > /tmp/w0.py",
    )
    args = ap.parse_args()

    contenders = {"worker": worker_source()}
    if args.baseline:
        contenders["baseline"] = Path(args.baseline).read_text()
    rows: dict[str, list[dict]] = {name: [] for name in [*contenders, "xargs"]}
    with tempfile.TemporaryDirectory(prefix="bench-worker-", dir=args.dir) as tmp:
        work = Path(tmp)
        if args.task == "noop":
            command = str(work / "noop")
            Path(command).write_text(NOOP)
            os.chmod(command, 0o755)
        else:
            command = "/bin/true"
        names = list(rows)
        for k in range(args.repeats):
            # a different order each repeat, so none always runs on a warmer machine
            order = names[k % len(names) :] + names[: k % len(names)]
            for name in order:
                if name == "xargs":
                    got = run_xargs(command, args.tasks, args.parallel)
                else:
                    got = run_worker(
                        work,
                        args.python,
                        contenders[name],
                        command,
                        args.tasks,
                        args.parallel,
                        args.call,
                    )
                rows[name].append(got)
            print(
                f"  repeat {k + 1}: "
                + "  ".join(f"{name} {rows[name][-1]['wall_s']:.3f} s" for name in names),
                flush=True,
            )

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name])

    n = args.tasks
    x_wall, x_cpu = med("xargs", "wall_s"), med("xargs", "cpu_s")
    print()
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}; worker python: {args.python}; "
        f"run folders in {args.dir or tempfile.gettempdir()}"
    )
    print(
        f"{n} tasks ({args.task}, call {args.call}), {args.parallel} at once, "
        f"medians of {args.repeats}"
    )
    print(
        f"{'':10}{'wall s':>9}{'ms/task':>9}{'cpu s':>9}{'cpu ms/task':>13}"
        f"{'start-end s':>13}{'x xargs':>9}{'files left':>12}"
    )
    for name in names:
        wall, cpu = med(name, "wall_s"), med(name, "cpu_s")
        inner = f"{med(name, 'inner_s'):13.3f}" if name != "xargs" else f"{'':13}"
        left = f"{med(name, 'files_left'):12.0f}" if name != "xargs" else f"{'':12}"
        print(
            f"{name:10}{wall:9.3f}{1000 * wall / n:9.3f}{cpu:9.3f}{1000 * cpu / n:13.3f}"
            f"{inner}{wall / x_wall:9.2f}{left}"
        )
    paired = statistics.median(
        w["wall_s"] / x["wall_s"] for w, x in zip(rows["worker"], rows["xargs"], strict=True)
    )
    print(f"worker / xargs, repeat by repeat (same load): median {paired:.2f}x")
    ratio = med("worker", "wall_s") / x_wall
    verdict = "within" if ratio <= TARGET_RATIO else "OVER"
    print(
        f"worker / xargs: wall {ratio:.2f}x ({verdict} {TARGET_RATIO}x), "
        f"cpu {med('worker', 'cpu_s') / x_cpu:.2f}x"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
