#!/usr/bin/python3
"""Bench S1 (issue 11): the multi-user service, 8 users x 5 runs x 500 no-op tasks POSTed to
its API at once, against the floor: the same tasks as 40 hand-written sbatch jobs (one per
run, `xargs -P 2`, the script of harness_floor.py) submitted at once by the same 8 users.

    bench/service.py                  # as root, rig and PostgreSQL up (scripts/cluster-up,
                                      # scripts/pg-up, scripts/server-install): 1 repeat
    bench/service.py --repeats 3      # floor and service interleaved, medians (min-max)
    bench/service.py --help

Writes bench/RESULTS-service.md (see bench/README.md, "S1"). Standard library only, like
bench.py, whose setup, machine description and queue tools it uses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness_floor  # noqa: E402
from service_rig import (  # noqa: E402
    Http,
    Probe,
    Server,
    at_once,
    drop_database,
    fresh_database,
    metric,
    metrics,
    pct,
)

import bench  # noqa: E402

USERS = bench.RIG_ENV.get("RIG_USERS", "alice bob").split()[:8]
S1 = bench.Workload("S1", 500, "noop", 50, "8 users x 5 runs x 500 no-op tasks")
ACTIVE = "slurmrunner_active_runs"
CYCLES_CPU = "slurmrunner_watcher_cpu_seconds_total"
OUT = HERE / "RESULTS-service.md"


def user_dir(user: str, *parts: str) -> Path:
    return Path(f"/home/{user}/bench-service", *parts)


# ------------------------------------------------------------------------------- floor


def floor_once(tag: str, opts: argparse.Namespace) -> dict[str, Any]:
    jobs = []
    for user in USERS:
        for k in range(opts.runs_per_user):
            d = user_dir(user, f"floor-{tag}", f"run-{k}")
            d.mkdir(parents=True, mode=0o700)
            spec = {
                "dir": str(d),
                "command": str(bench.TASKS / "noop.sh"),
                "n_tasks": opts.tasks,
                "parallel": 2,
                "partition": bench.PARTITION,
                "mem_mb": 200,
            }
            (d / "floor.sh").write_text(harness_floor.floor_script(spec))
            jobs.append((user, d))
    for user in USERS:
        subprocess.run(["chown", "-R", f"{user}:{user}", str(user_dir(user))], check=True)

    def sbatch(user: str, d: Path) -> Any:
        return lambda: subprocess.run(
            ["runuser", "-u", user, "--", "sbatch", "--parsable", str(d / "floor.sh")],
            cwd=str(d),
            capture_output=True,
            text=True,
            check=True,
        )

    t_submit = time.time()
    at_once([sbatch(u, d) for u, d in jobs])
    deadline = time.monotonic() + opts.timeout
    while not all((d / "ended").exists() for _, d in jobs):
        if time.monotonic() > deadline:
            raise RuntimeError(f"floor jobs not ended within {opts.timeout}s")
        time.sleep(0.05)
    ends = [float((d / "ended").read_text()) for _, d in jobs]
    ok = sum((d / "status").read_text().strip() == "0" for _, d in jobs)
    if not opts.keep:
        for user in USERS:
            shutil.rmtree(user_dir(user, f"floor-{tag}"), ignore_errors=True)
    return {"wall_s": max(ends) - t_submit, "jobs": len(jobs), "runs_ok": ok}


# ----------------------------------------------------------------------------- service


def bootstrap(server: Server, work: Path) -> str:
    """From the shell: a slurm_sudo Resource with the bench's limits and a superuser with a
    Profile (a superuser may list every user's runs, one request); their API token."""
    config = {**bench.limits_config(S1, bench.Limits()), "python": bench.SYSTEM_PY}
    path = work / "config.json"
    path.write_text(json.dumps(config))
    path.chmod(0o644)
    server.admin("create-resource", "bench", "--type", "slurm_sudo", "--config", str(path))
    server.admin(
        *("create-profile", "p-admin", "--resource", "bench", "--username", USERS[0]),
        *("--jobs-remote-dir", str(user_dir(USERS[0], "admin"))),
    )
    token = server.admin("create-user", "admin@bench.test", "--superuser", "--profile", "p-admin")
    return token.split()[-1]


def make_users(admin: Http) -> dict[str, Http]:
    """Through the admin API: a Profile, a user and a token for each of the 8 users."""
    resource = admin.json("GET", "/api/v1/admin/resources")[0]["id"]
    clients = {}
    for user in USERS:
        body = {"name": f"p-{user}", "resource_id": resource, "username": user}
        body["jobs_remote_dir"] = str(user_dir(user))
        profile = admin.json("POST", "/api/v1/admin/profiles", body, 201)
        new = {"email": f"{user}@bench.test", "profile_id": profile["id"]}
        made = admin.json("POST", "/api/v1/admin/users", new, 201)
        issued = admin.json("POST", f"/api/v1/admin/users/{made['id']}/tokens", {}, 201)
        clients[user] = Http(f"http://{admin.host}:{admin.port}", issued["token"])
    return clients


def cycles_cpu(admin: Http) -> float:
    """The watcher thread's own CPU so far (/metrics: time.thread_time over its cycles)."""
    return sum(metric(metrics(admin.call("GET", "/metrics")[1].decode()), CYCLES_CPU))


def last_job_end(run_ids: set[str]) -> float:
    """When the last job of the runs ended, as SLURM says (whole seconds): what of the wall
    is the jobs' and what is the service seeing their end."""
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%j|%e"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ends = [
        time.mktime(time.strptime(end.strip(), "%Y-%m-%dT%H:%M:%S"))
        for name, _, end in (line.partition("|") for line in out.splitlines())
        if name.split("-")[1:2] and "-".join(name.split("-")[1:4]) in run_ids
    ]
    return max(ends, default=float("nan"))


def service_once(tag: str, opts: argparse.Namespace, probing: bool = True) -> dict[str, Any]:
    name = f"sr_bench_s1_{tag}"
    work = bench.WORK / f"S1-{tag}"
    work.mkdir(parents=True, mode=0o755)
    log_path = work / "serve.log"
    server = Server(opts.python, bench.SERVER, fresh_database(name), log_path, opts.server_log)
    try:
        token = bootstrap(server, work)
        server.start()
        admin = Http(server.url, token)
        clients = make_users(admin)
        orders = [(u, k) for k in range(opts.runs_per_user) for u in USERS]
        body = {"command": [str(bench.TASKS / "noop.sh")]}

        def post(user: str, k: int) -> Any:
            def call() -> tuple[str, float]:
                inputs = [{"run": k, "i": i} for i in range(opts.tasks)]
                t = time.perf_counter()
                made = clients[user].json("POST", "/api/v1/runs", {**body, "inputs": inputs}, 201)
                return made["id"], time.perf_counter() - t

            return call

        calls = [post(u, k) for u, k in orders]  # inputs are built in the threads, before the gate
        # The machine is shared (other engineers' tests, the rig): its load goes in the report.
        load_before = os.getloadavg()[0]
        cpu0, cycles_cpu0 = server.cpu(), cycles_cpu(admin)
        t0, t0_epoch = time.monotonic(), time.time()
        posted = at_once(calls)
        t_posted = time.monotonic() - t0
        failed = [p for p in posted if isinstance(p, Exception)]
        if failed:
            raise RuntimeError(f"{len(failed)} POSTs failed, first: {failed[0]}")
        ids = {run_id for run_id, _ in posted}
        by_user: dict[str, list[str]] = {u: [] for u in USERS}
        for (user, _), (run_id, _) in zip(orders, posted, strict=True):
            by_user[user].append(run_id)
        probe = Probe(clients, by_user, USERS)
        if probing:
            probe.start()
        deadline = time.monotonic() + opts.timeout
        # The end is seen in /metrics (a count of the unfinished runs in the database: three
        # aggregates), cheap enough to ask every 0.25 s without loading the server under test.
        while sum(metric(metrics(admin.call("GET", "/metrics")[1].decode()), ACTIVE)) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"runs not finished within {opts.timeout}s")
            time.sleep(0.25)
        wall = time.monotonic() - t0
        cpu1, cycles_cpu1 = server.cpu(), cycles_cpu(admin)
        load_after = os.getloadavg()[0]
        listed = admin.json("GET", "/api/v1/runs?all_users=true&limit=1000")
        mine = {r["id"]: r for r in listed if r["id"] in ids}
        probe.halt.set()
        if probe.is_alive():
            probe.join(10)
        status, text = admin.call("GET", "/metrics")
        samples = metrics(text.decode())
        ok_runs = sum(
            r["state"] == "done" and r["counts"] == {"ok": opts.tasks} for r in mine.values()
        )
        n_tasks = len(ids) * opts.tasks

        def total(name: str, **kw: str) -> float:
            return sum(metric(samples, name, **kw))

        def most(kind: str) -> float:
            return max(
                metric(samples, "slurmrunner_watcher_most_calls_per_cycle", kind=kind), default=0
            )

        cycles = total("slurmrunner_watcher_cycles_total")
        polls = total("slurmrunner_watcher_calls_total", kind="poll")
        return {
            "wall_s": wall,
            "post_all_s": t_posted,
            "post_p50_ms": 1000 * pct([p[1] for p in posted], 50),
            "post_max_ms": 1000 * max(p[1] for p in posted),
            "jobs": sum(r["n_jobs"] for r in mine.values()),
            "runs_ok": ok_runs,
            "cycles": cycles,
            "squeue_most_per_cycle": most("poll"),
            "squeue_total": polls,
            "squeue_per_cycle_mean": polls / cycles if cycles else float("nan"),
            "cat_most_per_cycle": most("cat"),
            "cat_total": total("slurmrunner_watcher_calls_total", kind="cat"),
            "sbatch_total": total("slurmrunner_watcher_calls_total", kind="submit"),
            "sacct_total": total("slurmrunner_watcher_calls_total", kind="history"),
            "cpu_s": cpu1[0] - cpu0[0],
            "cpu_children_s": cpu1[1] - cpu0[1],
            "cpu_ms_per_task": 1000 * (cpu1[0] - cpu0[0]) / n_tasks,
            "cycles_cpu_s": cycles_cpu1 - cycles_cpu0,
            "last_job_end_s": last_job_end(ids) - t0_epoch,
            "api_n": len(probe.latencies),
            "api_p50_ms": 1000 * pct(probe.latencies, 50),
            "api_p99_ms": 1000 * pct(probe.latencies, 99),
            "api_max_ms": 1000 * max(probe.latencies, default=float("nan")),
            "api_errors": probe.errors,
            **{f"api_{k}_p99_ms": 1000 * pct(v, 99) for k, v in probe.by_kind.items()},
            **{f"api_{k}_p50_ms": 1000 * pct(v, 50) for k, v in probe.by_kind.items()},
            "metrics_status": status,
            "load_before": load_before,
            "load_after": load_after,
        }
    finally:
        server.stop()
        drop_database(name)
        if not opts.keep:
            for user in USERS:
                shutil.rmtree(user_dir(user, ".slurmrunner"), ignore_errors=True)
                shutil.rmtree(user_dir(user, "admin"), ignore_errors=True)


# ------------------------------------------------------------------------------ report

ROWS = [  # (label, key, digits), service figures; the floor has wall, jobs and runs only
    ("wall s: POST of the first run to the last run seen finished", "wall_s", 1),
    ("the last job's end (SLURM, whole seconds), s after the first POST", "last_job_end_s", 0),
    ("SLURM jobs", "jobs", 0),
    ("runs ok (every task ok)", "runs_ok", 0),
    ("POST of every run at once: all answered after s", "post_all_s", 2),
    ("POST latency per request, p50 / max ms", ("post_p50_ms", "post_max_ms"), 0),
    ("watcher cycles", "cycles", 0),
    ("squeue (poll): most in one cycle for one scheduler group", "squeue_most_per_cycle", 0),
    ("squeue: calls / mean per cycle", ("squeue_total", "squeue_per_cycle_mean"), 2),
    ("cat: most in one cycle for one cluster identity", "cat_most_per_cycle", 0),
    ("cat: calls", "cat_total", 0),
    ("sbatch / sacct calls", ("sbatch_total", "sacct_total"), 0),
    ("server CPU s (the serve process, every thread)", "cpu_s", 2),
    ("server CPU ms per task", "cpu_ms_per_task", 3),
    ("of which the watcher thread's own, s", "cycles_cpu_s", 2),
    ("its children's CPU s (sudo, sbatch, cat, ...)", "cpu_children_s", 2),
    (
        "API GET latency during the load, p50 / p99 / max ms",
        ("api_p50_ms", "api_p99_ms", "api_max_ms"),
        1,
    ),
    ("GET /api/v1/runs/{id}, p50 / p99 ms", ("api_detail_p50_ms", "api_detail_p99_ms"), 1),
    ("GET /api/v1/runs (the user's 5), p50 / p99 ms", ("api_list_p50_ms", "api_list_p99_ms"), 1),
    ("API GETs made / answered other than 200", ("api_n", "api_errors"), 0),
    ("machine load (1-minute average) before / after", ("load_before", "load_after"), 1),
]


def cell(runs: list[dict[str, Any]], key: str | tuple[str, ...], nd: int) -> str:
    if isinstance(key, tuple):
        return " / ".join(cell(runs, k, nd) for k in key)
    values = [r[key] for r in runs]
    med = statistics.median(values)
    text = f"{med:,.{nd}f}"
    if len(values) > 1 and min(values) != max(values):
        text += f" ({min(values):,.{nd}f}–{max(values):,.{nd}f})"
    return text


QUIET_ROWS = [  # the same load with no API probe: what running the tasks costs the server
    ("wall s", "wall_s", 1),
    ("server CPU ms per task", "cpu_ms_per_task", 3),
    ("server CPU s / of which the watcher thread's own", ("cpu_s", "cycles_cpu_s"), 2),
    ("its children's CPU s (sudo, sbatch, cat, ...)", "cpu_children_s", 2),
    ("machine load (1-minute average) before / after", ("load_before", "load_after"), 1),
]


def report(
    info: dict[str, Any],
    floor: list[dict],
    service: list[dict],
    opts: argparse.Namespace,
    quiet: list[dict] | None = None,
) -> str:
    n_runs = len(USERS) * opts.runs_per_user
    ratio = [s["wall_s"] / f["wall_s"] for s, f in zip(service, floor, strict=True)]
    v = info["versions"]
    lines = [
        "# Bench S1: the multi-user service against the floor",
        "",
        f"Written by `bench/service.py` on {info['date']}: {opts.repeats} repeat(s), floor and "
        "service interleaved; medians (min–max). How it measures: "
        "[README.md](README.md#s1-the-multi-user-service-issue-11).",
        "",
        f"**Workload.** {len(USERS)} users ({', '.join(USERS)}) × {opts.runs_per_user} runs × "
        f"{opts.tasks} no-op tasks ({n_runs * opts.tasks:,} tasks), every run POSTed to "
        "`/api/v1/runs` at once (one thread per run) by its user's token; the server acts as "
        "each user with `sudo -n -u`. Admin config: bench.py's (partition `main`, 1 CPU and 100 MB "
        "per task, `target_num_jobs` 4, `max_num_jobs` 50, 2 CPUs per job). **Floor**: the same "
        f"tasks as {n_runs} hand-written `sbatch` jobs, one per run (harness_floor.py's script: "
        "2 CPUs, `xargs -P 2`), submitted at once by the same users; its wall is from just "
        "before the first `sbatch` to the `date` the last job writes after its last task.",
        "",
        f"Machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB, "
        f"{info['os']}; {info['slurm']}, {info['slurm_node']}; server: slurmrunner "
        f"{v['slurmrunner']} ({opts.python}: {v['slurmrunner_installed']}), PostgreSQL "
        "(scripts/pg-up), `serve --log-level warning`.",
        "",
        "| | floor | service |",
        "|---|---|---|",
        f"| wall s | {cell(floor, 'wall_s', 1)} | {cell(service, 'wall_s', 1)} |",
        f"| × floor | 1.00 | {cell([{'r': r} for r in ratio], 'r', 2)} |",
        f"| SLURM jobs | {cell(floor, 'jobs', 0)} | {cell(service, 'jobs', 0)} |",
        f"| runs ok | {cell(floor, 'runs_ok', 0)}/{n_runs} | {cell(service, 'runs_ok', 0)}/{n_runs} |",
    ]
    shown = ("wall_s", "jobs", "runs_ok")  # above, beside the floor's
    lines += [f"| {lab} | | {cell(service, k, nd)} |" for lab, k, nd in ROWS if k not in shown]
    if quiet:
        lines += [
            "",
            "**The same load with no API probe** (no GETs but the end's /metrics, every 0.25 "
            "s), run after the floor and the probed service in each repeat: the probe's ~40 "
            "GETs a second (each a few ms of the server's CPU) are a load of their own, so what "
            "running the tasks costs the server is measured here.",
            "",
            "| | service, no probe |",
            "|---|---|",
        ]
        q_ratio = [{"r": q["wall_s"] / f["wall_s"]} for q, f in zip(quiet, floor, strict=True)]
        lines.append(f"| × floor | {cell(q_ratio, 'r', 2)} |")
        lines += [f"| {lab} | {cell(quiet, k, nd)} |" for lab, k, nd in QUIET_ROWS]
    lines += ["", "Per repeat:", "", "| repeat | floor wall s | service wall s | × floor |"]
    lines += ["|---|---|---|---|"]
    for k, (f, s) in enumerate(zip(floor, service, strict=True), 1):
        lines.append(
            f"| {k} | {f['wall_s']:.1f} | {s['wall_s']:.1f} | {s['wall_s'] / f['wall_s']:.2f} |"
        )
    shown_json = {"floor": floor, "service": service, "service_no_probe": quiet or []}
    lines += ["", "```json", json.dumps(shown_json, indent=1), "```", ""]
    lines += [NOTES]
    return "\n".join(lines)


NOTES = """**fractal-server is not in this table.** Its harness (`harness_fractal.py`) drives one
`SlurmSudoRunner.multisubmit` in one process with its database calls replaced by no-ops: it
has no API, no database and no users, so API latency and one server's CPU over 8 users have
no counterpart there. Forty such processes side by side would stand for fractal-server's one
runner per job, but with these limits fractal-server makes as many 2-task jobs as
`max_num_jobs` allows: 50 jobs per 500-task run, 2,000 SLURM jobs for S1, where W1's 50 jobs
took it 43 s on this rig (bench/RESULTS.md): about half an hour per repeat, and each
process importing fractal-server costs seconds of the same 2 CPUs. Not run.
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--runs-per-user", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=500, help="tasks per run")
    ap.add_argument("--python", default="/opt/slurmrunner/venv/bin/python", help="the server's")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds, per measurement")
    ap.add_argument("--keep", action="store_true", help="keep the runs' folders")
    ap.add_argument(
        "--server-log",
        default="warning",
        choices=["warning", "info"],
        help="serve's --log-level; info logs every run's creation, submission, each job's end "
        "and the run's end (in BENCH_HOME/work/S1-*/serve.log, with --keep a timeline of the "
        "load) and every request, which costs CPU: not for the figures",
    )
    ap.add_argument("--no-probe", action="store_true", help="no API requests during the load")
    ap.add_argument(
        "--no-quiet",
        action="store_true",
        help="skip the measurement without API probes that follows each probed one",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-write", action="store_true")
    opts = ap.parse_args()
    bench.rig_up()
    bench.setup()
    bench.SLURMRUNNER_PY = Path(opts.python)
    info = bench.machine()
    floor: list[dict[str, Any]] = []
    service: list[dict[str, Any]] = []
    quiet: list[dict[str, Any]] = []
    for rep in range(1, opts.repeats + 1):
        tag = f"{time.strftime('%H%M%S')}_{rep}"
        bench.wait_idle(120)
        floor.append(floor_once(tag, opts))
        bench.log(f"repeat {rep}: floor {floor[-1]}")
        bench.wait_idle(120)
        service.append(service_once(tag, opts, probing=not opts.no_probe))
        bench.log(f"repeat {rep}: service {service[-1]}")
        if not (opts.no_quiet or opts.no_probe):
            bench.wait_idle(120)
            quiet.append(service_once(f"{tag}q", opts, probing=False))
            bench.log(f"repeat {rep}: service without probes {quiet[-1]}")
    text = report(info, floor, service, opts, quiet)
    print(text)
    if not opts.no_write:
        opts.out.write_text(text)


if __name__ == "__main__":
    main()
