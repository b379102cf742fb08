#!/usr/bin/python3
"""slurmrunner benchmark: the orchestrator (run as root by bench/run; standard library only).

For every workload x contender x repeat it starts one harness process as the right user
(slurmsrv for the server-side runners, alice for submitit and the floor), collects what the
harness measured in-process (wall, CPU of the process and its children, peak RSS, results) and
what the call-counting shims logged (sbatch / squeue / sacct / sudo invocations), then prints
the table and writes bench/RESULTS.md and bench/results.json.

See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BENCH_HOME = Path(os.environ.get("BENCH_HOME", "/opt/slurmrunner-bench"))
WORK = BENCH_HOME / "work"
SHIMS = BENCH_HOME / "shims"
TASKS = BENCH_HOME / "tasks"
HARNESS = BENCH_HOME / "harness"
FRACTAL_PY = BENCH_HOME / "fractal-venv/bin/python"
SUBMITIT_PY = BENCH_HOME / "submitit-venv/bin/python"
SLURMRUNNER_PY = Path(os.environ.get("BENCH_SLURMRUNNER_PY", "/opt/slurmrunner/venv/bin/python"))
#: --alt NAME=PYTHON: other installs of slurmrunner, run as contenders `slurmrunner-sudo@NAME`
#: and `slurmrunner-ssh@NAME` interleaved with the others (an A/B comparison in one sitting).
ALTS: dict[str, Path] = {}
SYSTEM_PY = "/usr/bin/python3"

RIG_ENV = {
    k: v.strip('"')
    for k, _, v in (
        line.partition("=")
        for line in (REPO / "scripts/rig.env").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
}
SERVER = RIG_ENV.get("RIG_SERVER_USER", "slurmsrv")
USER = RIG_ENV.get("RIG_USERS", "alice bob").split()[0]  # alice
PARTITION = RIG_ENV.get("RIG_PARTITION", "main")
USER_BENCH_DIR = f"/home/{USER}/bench"

SHIMMED = ("sbatch", "squeue", "sacct", "scancel", "sudo")

TASK_SCRIPTS = {
    "noop": "#!/bin/sh\n# bench no-op task: accepts any arguments, does nothing\nexit 0\n",
    "sleep2": "#!/bin/sh\n# bench task: accepts any arguments, sleeps 2 s\nexec sleep 2\n",
    # W5: the task's input back as its result, with shell builtins only (no process more
    # than a no-op): `--args-json A --out-json B` (slurmrunner) copies A to B; the floor's
    # `--line 'I JSON'` writes JSON to $BENCH_OUT/I.json.
    "echo": "#!/bin/sh\n# bench echo task: writes its input back as its result\n"
    'if [ "$1" = --line ]; then\n'
    '  printf \'%s\\n\' "${2#* }" > "$BENCH_OUT/${2%% *}.json"\n'
    "else\n"
    '  while IFS= read -r line || [ -n "$line" ]; do printf \'%s\\n\' "$line"; done'
    ' < "$2" > "$4"\n'
    "fi\n",
}


@dataclass(frozen=True)
class Workload:
    name: str
    n_tasks: int
    task: str
    max_num_jobs: int
    what: str
    input_bytes: int = 0  # each input's JSON padded to this size (0: {"i": i})


@dataclass
class Limits:
    target_num_jobs: int = 4
    max_num_jobs: int = 50
    target_cpus_per_job: int = 2
    max_cpus_per_job: int = 2
    target_mem_per_job_mb: int = 1000
    max_mem_per_job_mb: int = 2000
    cpus_per_task: int = 1
    mem_per_task_mb: int = 100


WORKLOADS = {
    "W1": Workload("W1", 1000, "noop", 50, "1,000 no-op tasks (1 CPU, 100 MB each)"),
    "W2": Workload("W2", 64, "sleep2", 50, "64 tasks that each sleep 2 s (1 CPU, 100 MB each)"),
    "W3": Workload("W3", 5000, "noop", 10, "5,000 no-op tasks, max_num_jobs 10"),
    # scale (issue 13), not in the default set: minutes per run
    "W4": Workload("W4", 100_000, "noop", 50, "100,000 no-op tasks, max_num_jobs 50"),
    "W5": Workload(
        "W5",
        100_000,
        "echo",
        50,
        "100,000 inputs of 500 bytes each, each task's result its input; max_num_jobs 50",
        input_bytes=500,
    ),
}
DEFAULT_WORKLOADS = "W1,W2,W3"

CONTENDERS = {
    "slurmrunner-sudo": "slurmrunner, `slurm_sudo` backend (server user slurmsrv -> sudo -u alice)",
    "slurmrunner-ssh": "slurmrunner, `slurm_ssh` backend (slurmsrv -> ssh alice@127.0.0.1:2222)",
    "slurmrunner-local": "slurmrunner, `local` backend (same job scripts as local processes "
    "of slurmsrv; no SLURM)",
    "fractal-sudo": "fractal-server 2.18.5 SlurmSudoRunner.multisubmit (slurmsrv -> sudo -u alice)",
    "fractal-sudo-bigmem": "fractal-server as above, W3 only, with 4000 MB per task instead of "
    "100 MB (its job then survives the 500 `srun` it starts at once; see notes)",
    "submitit": "submitit SlurmExecutor.map_array, one job array (as alice)",
    "floor": "one hand-written sbatch job, `xargs -P 2` (as alice)",
}
ALT_BASES = ("slurmrunner-sudo", "slurmrunner-ssh", "slurmrunner-local")
REFERENCE = ("fractal-sudo", "fractal-sudo-bigmem", "submitit")
ONLY = {
    "submitit": ("W1", "W2"),
    "fractal-sudo": ("W1", "W2", "W3"),
    "fractal-sudo-bigmem": ("W3",),
}
BIGMEM_MB = 4000


# --------------------------------------------------------------------------- helpers


def sh(*argv: str, check: bool = True, **kw: Any) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw).stdout


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def chown(path: Path, user: str) -> None:
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)


def limits_config(w: Workload, lim: Limits) -> dict[str, Any]:
    """The admin config every runner gets (fractal-server's schema; slurmrunner reads it too)."""
    return {
        "default_slurm_config": {
            "partition": PARTITION,
            "cpus_per_task": lim.cpus_per_task,
            "mem": f"{lim.mem_per_task_mb}M",
        },
        "batching_config": {
            "target_num_jobs": lim.target_num_jobs,
            "max_num_jobs": w.max_num_jobs,
            "target_cpus_per_job": lim.target_cpus_per_job,
            "max_cpus_per_job": lim.max_cpus_per_job,
            "target_mem_per_job": lim.target_mem_per_job_mb,
            "max_mem_per_job": lim.max_mem_per_job_mb,
        },
    }


# --------------------------------------------------------------------------- setup


def setup() -> None:
    """Tasks, shims and harness copies where the server user and alice can read them."""
    for d in (BENCH_HOME, WORK, SHIMS, TASKS, HARNESS):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
    for name, text in TASK_SCRIPTS.items():
        p = TASKS / f"{name}.sh"
        p.write_text(text)
        p.chmod(0o755)
    for prog in SHIMMED:
        p = SHIMS / prog
        p.write_text(
            "#!/bin/sh\n"
            "# bench call counter: log one line, then run the real program\n"
            f'[ -n "$BENCH_CALL_LOG" ] && printf \'%s\\n\' "{prog} $*" >> "$BENCH_CALL_LOG"\n'
            f'exec /usr/bin/{prog} "$@"\n'
        )
        p.chmod(0o755)
    for src in HERE.glob("harness_*.py"):
        dst = HARNESS / src.name
        shutil.copyfile(src, dst)
        dst.chmod(0o644)


def rig_up() -> None:
    if subprocess.run([str(REPO / "scripts/cluster-status")], capture_output=True).returncode:
        log("rig not up: running scripts/cluster-up")
        subprocess.run([str(REPO / "scripts/cluster-up")], check=True)


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    cfg = sh("scontrol", "show", "config", check=False)

    def conf(key: str) -> str:
        m = re.search(rf"^{key}\s*=\s*(.*)$", cfg, re.M)
        return m.group(1).strip() if m else "?"

    node = sh("scontrol", "show", "node", check=False)
    cpus = re.search(r"CPUTot=(\d+)", node)
    real = re.search(r"RealMemory=(\d+)", node)
    os_name = "?"
    if Path("/etc/os-release").exists():
        m = re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text())
        os_name = m.group(1) if m else "?"
    cpu_model = "?"
    m = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    if m:
        cpu_model = m.group(1).strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": os_name,
        "slurm": sh("sinfo", "--version", check=False).strip(),
        "slurm_node": f"1 node, CPUTot={cpus.group(1) if cpus else '?'}, "
        f"RealMemory={real.group(1) if real else '?'} MB",
        "slurm_select": f"{conf('SelectType')} {conf('SelectTypeParameters')}",
        "slurm_sched": f"{conf('SchedulerType')} {conf('SchedulerParameters')}",
        "slurm_accounting": conf("AccountingStorageType"),
        "python_server": sh(SYSTEM_PY, "--version").strip(),
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    out: dict[str, str] = {}

    def pkg(py: Path, name: str) -> str:
        if not py.exists():
            return "not installed"
        return (
            sh(
                str(py),
                "-c",
                f"import importlib.metadata as m; print(m.version({name!r}))",
                check=False,
            ).strip()
            or "?"
        )

    out["fractal-server"] = pkg(FRACTAL_PY, "fractal-server")
    out["submitit"] = pkg(SUBMITIT_PY, "submitit")
    out["paramiko"] = pkg(SLURMRUNNER_PY, "paramiko")
    rev = sh("git", "-C", str(REPO), "rev-parse", "--short", "HEAD", check=False).strip()
    dirty = sh("git", "-C", str(REPO), "status", "--porcelain", "src", check=False).strip()
    diff = sh("git", "-C", str(REPO), "diff", "HEAD", "--", "src", check=False)
    import hashlib

    tag = hashlib.sha1(diff.encode()).hexdigest()[:10]
    out["slurmrunner"] = rev + (
        f" + uncommitted changes in src/ (diff sha1 {tag})" if dirty else ""
    )
    out["slurmrunner_installed"] = installed_matches_src()
    return out


def installed_matches_src() -> str:
    site = sh(
        str(SLURMRUNNER_PY),
        "-c",
        "import slurmrunner, os; print(os.path.dirname(slurmrunner.__file__))",
        check=False,
    ).strip()
    if not site:
        return "not installed"
    src = REPO / "src/slurmrunner"
    differ = [
        str(p.relative_to(src))
        for p in sorted(src.rglob("*.py"))
        if not (Path(site) / p.relative_to(src)).exists()
        or (Path(site) / p.relative_to(src)).read_bytes() != p.read_bytes()
    ]
    return "same as src/" if not differ else "DIFFERS from src/ in " + ", ".join(differ)


# --------------------------------------------------------------------------- the queue


def queue() -> list[tuple[str, str, str, str]]:
    """(id, user, name, state) of every job the controller holds that is not finished."""
    out = sh("squeue", "--noheader", "--format=%i|%u|%j|%T", check=False)
    return [tuple(line.split("|", 3)) for line in out.splitlines() if line.count("|") == 3]


def sdiag_counts() -> dict[str, int]:
    """slurmctld's RPC counts by message type since it started (all users)."""
    text = sh("sdiag", check=False)
    part = text.split("by message type", 1)[-1].split("by user", 1)[0]
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^\s*(\w+)\s+\(\s*\d+\)\s+count:(\d+)", part, re.M)
    }


def wait_idle(max_s: float) -> float:
    """Wait until no job is pending/running on the cluster (ours or anyone's)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        if not [q for q in queue() if q[3] in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING")]:
            return time.monotonic() - t0
        time.sleep(0.5)
    return -1.0


BENCH_FILES = {"calls.log", "harness.out", "harness.err", "spec.json"}


def tree_size(*roots: str | Path) -> int:
    """How many files lie below the given folders, but the bench's own: every runner makes
    files per task (results, logs, pickles), so this grows while a run makes progress. Not
    bytes: a wedged job may keep appending errors to its output."""
    n = 0
    for root in roots:
        for _, _, files in os.walk(root):
            n += sum(1 for f in files if f not in BENCH_FILES)
    return n


SLURMD_LOG = Path(RIG_ENV.get("RIG_SLURMD_LOG", "/var/log/slurm/slurmd.log"))


def log_offset() -> int:
    try:
        return SLURMD_LOG.stat().st_size
    except OSError:
        return 0


def kernel_ooms(since: float = -1.0) -> list[float]:
    """Kernel timestamps of the memory-cgroup OOM kills of the cluster user's processes
    (dmesg) after `since`. Timestamps, not a count: the ring buffer drops old lines."""
    uid = pwd.getpwnam(USER).pw_uid
    out = []
    for line in sh("dmesg", check=False).splitlines():
        if "Memory cgroup out of memory: Killed process" in line and f"UID:{uid} " in line:
            m = re.match(r"\[\s*(\d+\.\d+)\]", line)
            if m and float(m.group(1)) > since:
                out.append(float(m.group(1)))
    return out


def oom_events(offset: int, job_ids: set[str]) -> list[str]:
    """slurmd's oom-kill lines since `offset` for the given jobs (why a job was wedged)."""
    try:
        with open(SLURMD_LOG, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    out = []
    for m in re.finditer(r"oom-kill event\(s\) in StepId=(\d+)\.(\w+)", text):
        if m.group(1) in job_ids:
            out.append(f"{m.group(1)}.{m.group(2)}")
    return out


def daemon_pids() -> dict[str, str]:
    """slurmctld and slurmd pids from the rig's pid files: a change means someone restarted
    the rig during a run (other engineers' fault tests do), which voids the run."""
    out = {}
    for name in ("slurmctld", "slurmd"):
        key = f"RIG_{name.upper()}_PIDFILE"
        try:
            out[name] = (
                Path(RIG_ENV.get(key, f"/run/slurmrunner-rig/{name}.pid")).read_text().strip()
            )
        except OSError:
            out[name] = "down"
    return out


class QueueSampler(threading.Thread):
    """Samples the queue (as root) during a run, to tell whether others' jobs shared it."""

    def __init__(self, every_s: float = 3.0) -> None:
        super().__init__(daemon=True)
        self.every_s = every_s
        self.seen: dict[str, tuple[str, str]] = {}
        self._stop_evt = threading.Event()
        self.pids_at_start = daemon_pids()
        self.restarted: str | None = None
        self.calls = 0

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.calls += 1
            for job_id, user, name, _ in queue():
                self.seen[job_id] = (user, name)
            now = daemon_pids()
            if now != self.pids_at_start and self.restarted is None:
                changed = [k for k in now if now[k] != self.pids_at_start.get(k)]
                self.restarted = (
                    f"{' and '.join(changed)} restarted during the run (not by the bench)"
                )
            self._stop_evt.wait(self.every_s)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(5)


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    workload: str
    contender: str
    rep: int
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    proc: dict[str, Any] = field(default_factory=dict)
    foreign_jobs: list[str] = field(default_factory=list)
    idle_wait_s: float = 0.0
    phase_s: float = -1.0  # fraction of the second the run started at (-1: not aligned)
    error: str | None = None
    rig_restarted: str | None = None
    attempt: int = 1
    oom: list[str] = field(default_factory=list)
    rpc: dict[str, int] = field(default_factory=dict)
    rpc_total: int | None = None


def count_calls(path: Path) -> tuple[dict[str, int], list[int]]:
    """Shim log -> {'sbatch': n, 'squeue': n, 'sacct': n, 'scancel': n, 'sudo': n,
    'sudo cat': n, ...} and, per squeue call, how many job ids it asked about."""
    counts: dict[str, int] = {}
    squeue_ids: list[int] = []
    if not path.exists():
        return counts, squeue_ids
    for line in path.read_text().splitlines():
        words = line.split()
        if not words:
            continue
        prog = words[0]
        if prog == "sudo":
            counts["sudo"] = counts.get("sudo", 0) + 1
            try:
                k = words.index("-u") + 2
            except ValueError:
                continue
            if k < len(words) and words[k] == "--":
                k += 1
            cmd = words[k].rsplit("/", 1)[-1] if k < len(words) else "?"
            counts[f"sudo {cmd}"] = counts.get(f"sudo {cmd}", 0) + 1
            if cmd in ("sbatch", "scancel"):
                counts[cmd] = counts.get(cmd, 0) + 1
            continue
        counts[prog] = counts.get(prog, 0) + 1
        if prog == "squeue":
            joined = " ".join(words[1:])
            m = re.search(r"--jobs[= ]'?([\d,]+)", joined)
            squeue_ids.append(len(m.group(1).split(",")) if m else 0)
    return counts, squeue_ids


def phase_of(rep: int, opts: argparse.Namespace) -> float:
    """The fraction of the wall-clock second at which run `rep` starts its timing (-1: any).

    slurmctld starts a freshly submitted job at its next once-a-second scheduling pass, which
    falls at a fixed fraction of the wall-clock second (it drifts slowly). Run k of n of every
    contender starts its clock at fraction (k - 0.5) / n (the harness waits for it after its
    own imports and setup: harness_inputs.start_at_phase), so each contender samples the same
    spread of waits for its first job, and run k of two contenders is a like-for-like pair.
    """
    if not opts.align_phase:
        return -1.0
    return ((rep - 1) + 0.5) / opts.repeats


def run_one(
    w: Workload, contender: str, rep: int, lim: Limits, opts: argparse.Namespace
) -> RunResult:
    tag = f"{w.name}-{contender}-r{rep}-{time.strftime('%H%M%S')}"
    work = WORK / tag
    work.mkdir(parents=True)
    work.chmod(0o755)
    user_dir = f"{USER_BENCH_DIR}/{tag}"
    calls_log = work / "calls.log"
    task = str(TASKS / f"{w.task}.sh")
    config = limits_config(w, lim)
    server_side = contender.startswith(("slurmrunner", "fractal"))
    run_as = SERVER if server_side else USER
    calls_log.touch()
    chown(work, run_as)
    chown(calls_log, run_as)
    # The user's project folder exists before the clock starts, as a user's project does (the
    # floor's harness makes its own folder before its clock too); what a run makes in it is timed.
    # Made as the user (root making it in her home, then chown, would follow a link of hers).
    subprocess.run(["runuser", "-u", USER, "--", "mkdir", "-p", "-m", "700", user_dir], check=True)

    keys = RIG_ENV.get("RIG_KEYS_DIR", "/etc/slurmrunner-rig/keys")
    if contender.startswith("slurmrunner"):
        backend, _, alt = contender.split("-", 1)[1].partition("@")
        profile: dict[str, Any] = {
            "sudo": {"backend": "slurm_sudo", "username": USER, "project_dir": user_dir},
            "ssh": {
                "backend": "slurm_ssh",
                "host": RIG_ENV.get("RIG_SSH_HOST", "127.0.0.1"),
                "port": int(RIG_ENV.get("RIG_SSH_PORT", "2222")),
                "username": USER,
                "ssh_key_path": f"{keys}/{USER}_ed25519",
                "known_hosts": RIG_ENV.get("RIG_KNOWN_HOSTS", "/etc/slurmrunner-rig/known_hosts"),
                "project_dir": user_dir,
            },
            "local": {"backend": "local", "project_dir": str(work / "local-project")},
        }[backend]
        spec = {
            "config": {**config, "python": SYSTEM_PY},
            "profile": profile,
            "store": str(work / "store.sqlite"),
            "command": [task],
            "n_tasks": w.n_tasks,
            "input_bytes": w.input_bytes,
        }
        if opts.profile_server:
            spec["profile_out"] = str(work / "server.prof")
        if opts.trace:
            spec["trace"] = True
        python = ALTS[alt] if alt else SLURMRUNNER_PY
        argv = [str(python), str(HARNESS / "harness_slurmrunner.py")]
    elif contender.startswith("fractal-sudo"):
        if contender == "fractal-sudo-bigmem":
            config = limits_config(
                w,
                Limits(
                    target_num_jobs=lim.target_num_jobs,
                    mem_per_task_mb=BIGMEM_MB,
                    target_mem_per_job_mb=2 * BIGMEM_MB,
                    max_mem_per_job_mb=2 * BIGMEM_MB,
                ),
            )
        spec = {
            "config": config,
            "user": USER,
            "command": task,
            "n_tasks": w.n_tasks,
            "root_local": str(work / "fractal-local"),
            "root_remote": f"{user_dir}/fractal-remote",
            "poll_interval": opts.fractal_poll_interval,
        }
        argv = [str(FRACTAL_PY), str(HARNESS / "harness_fractal.py")]
    elif contender == "submitit":
        spec = {
            "folder": f"{user_dir}/submitit",
            "command": task,
            "n_tasks": w.n_tasks,
            "partition": PARTITION,
            "cpus_per_task": lim.cpus_per_task,
            "mem": f"{lim.mem_per_task_mb}M",
            "array_parallelism": opts.submitit_array_parallelism,
        }
        argv = [str(SUBMITIT_PY), str(HARNESS / "harness_submitit.py")]
    elif contender == "floor":
        parallel = lim.max_cpus_per_job // lim.cpus_per_task
        spec = {
            "dir": f"{user_dir}/floor",
            "command": task,
            "n_tasks": w.n_tasks,
            "parallel": parallel,
            "partition": PARTITION,
            "mem_mb": parallel * lim.mem_per_task_mb,
            "timeout_s": opts.timeout,
            "input_bytes": w.input_bytes,
        }
        argv = [SYSTEM_PY, str(HARNESS / "harness_floor.py")]
    else:
        raise ValueError(contender)

    spec["phase"] = phase_of(rep, opts)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    chown(spec_path, run_as)
    res = RunResult(w.name, contender, rep, ok=False)
    res.idle_wait_s = wait_idle(opts.idle_wait)
    res.phase_s = spec["phase"]

    env = {
        "HOME": pwd.getpwnam(run_as).pw_dir,
        "USER": run_as,
        "LOGNAME": run_as,
        "PATH": f"{SHIMS}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "BENCH_CALL_LOG": str(calls_log),
    }
    out_path, err_path = work / "harness.out", work / "harness.err"
    rpc_before = sdiag_counts()
    load_before = os.getloadavg()[0]
    sampler = QueueSampler()
    sampler.start()
    slurmd_offset = log_offset()
    ooms_before = max(kernel_ooms(), default=-1.0)
    t0 = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            [*argv, str(spec_path)],
            user=run_as,
            group=run_as,
            extra_groups=[],
            env=env,
            cwd=str(work),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        timed_out = False
        stalled = None
        deadline = t0 + opts.timeout
        progress, last_progress_t, next_check = None, t0, t0 + 20
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.monotonic()
            if now >= next_check:  # no file grew for opts.stall seconds: the run is wedged
                next_check = now + 10
                p = tree_size(work, user_dir)
                # after an oom-kill in one of the bench's jobs, 30 s without progress is enough
                names = {"bench_task", "submitit", "bench-floor"}
                oom = oom_events(
                    slurmd_offset,
                    {j.split("_")[0] for j, (u, n) in list(sampler.seen.items()) if n in names},
                )
                k_oom = len(kernel_ooms(ooms_before))
                oom = oom or k_oom > 0
                limit = 30.0 if oom else opts.stall
                if p != progress:
                    progress, last_progress_t = p, now
                elif now - last_progress_t > limit:
                    stalled = f"stalled: no file of the run changed for {limit:.0f} s" + (
                        " after an oom-kill in its job" if oom else ""
                    )
            if (
                now > deadline
                or stalled
                or (sampler.restarted and now - t0 > 5 and opts.abort_on_restart)
            ):
                timed_out = True
                os.killpg(proc.pid, signal.SIGTERM)
                time.sleep(5)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
        proc.returncode = os.waitstatus_to_exitcode(status)
    proc_wall = time.monotonic() - t0
    sampler.stop()
    rpc_after = sdiag_counts()
    if not sampler.restarted and rpc_after:
        # minus the bench's own: 3 RPCs per squeue of the sampler, 1 for the first sdiag
        res.rpc = {
            k: v - rpc_before.get(k, 0)
            for k, v in rpc_after.items()
            if v - rpc_before.get(k, 0) > 0
        }
        res.rpc_total = max(0, sum(res.rpc.values()) - 3 * sampler.calls - 1)
    res.proc = {
        "wall_s": proc_wall,
        "cpu_s": rusage.ru_utime + rusage.ru_stime,
        "maxrss_mb_any_descendant": rusage.ru_maxrss / 1024.0,
        "returncode": proc.returncode,
    }
    line = next(
        (ln for ln in out_path.read_text().splitlines() if ln.startswith("BENCH_RESULT ")), None
    )
    res.rig_restarted = sampler.restarted
    load = {"load_before": load_before, "load_after": os.getloadavg()[0]}
    if line is None or timed_out:
        tail = err_path.read_text()[-1500:]
        why = (
            "stopped: " + sampler.restarted
            if sampler.restarted
            else (stalled or f"timed out after {opts.timeout}s")
        )
        res.error = why if timed_out else f"harness exit {proc.returncode}: {tail}"
        cleanup_jobs(contender, sampler, work)
    else:
        res.data = json.loads(line[len("BENCH_RESULT ") :])
        res.data.update(load)  # the 1-minute load average: the machine is shared
        res.ok = (
            res.data.get("failed", 1) == 0
            and res.data.get("n_results") == w.n_tasks
            and not res.data.get("wrong")
        )
        if not res.ok and res.data.get("wrong"):
            res.error = (
                f"{res.data['wrong']} results wrong, the first: {res.data.get('first_wrong')}"
            )
        elif not res.ok:
            res.error = f"{res.data.get('failed')} tasks failed: {res.data.get('first_error')}"
    bench_names = {"bench_task", "submitit", "bench-floor"}
    run_jobs = {
        jid.split("_")[0]
        for jid, (user, name) in sampler.seen.items()
        if user == USER and (jid in ours_ids(res) or name in bench_names)
    }
    res.oom = oom_events(slurmd_offset, run_jobs)
    new_k = len(kernel_ooms(ooms_before))
    if new_k > 0:
        res.oom.append(f"kernel memory-cgroup OOM kills of {USER}'s processes (dmesg: {new_k})")
    if res.oom and res.error:
        res.error += f" [OOM: {'; '.join(sorted(set(res.oom))[:6])}]"
    res.calls, squeue_ids = count_calls(calls_log)
    res.data["squeue_ids_per_call"] = squeue_ids
    ours = set(res.data.get("job_ids", [])) | set(res.data.get("array_job_ids", []))
    our_names = {
        "fractal-sudo": "bench_task",
        "fractal-sudo-bigmem": "bench_task",
        "submitit": "submitit",
        "floor": "bench-floor",
    }
    for job_id, (user, name) in sampler.seen.items():
        base_id = job_id.split("_")[0]
        if base_id in ours or job_id in ours:
            continue
        if user == USER and name == our_names.get(contender):
            continue
        res.foreign_jobs.append(f"{job_id}:{user}:{name}")
    if opts.trace and res.data.get("trace") is not None:
        res.data["trace"] += job_events(res.data)
        res.data["trace"].sort(key=lambda ev: ev[0])
        log(format_trace(res.data["trace"]))
    if opts.profile_server and (work / "server.prof").exists():
        keep = HERE / "profiles"
        keep.mkdir(exist_ok=True)
        shutil.copyfile(work / "server.prof", keep / f"{w.name}-{contender}.prof")
    if not opts.keep:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(user_dir, ignore_errors=True)
    return res


def job_events(data: dict[str, Any]) -> list[list[Any]]:
    """The worker's own times, read (as root) from the run's results files: each job's
    start and end lines, its first and last task's end, as seconds since the harness's t0."""
    t0, run_dir = data.get("t0_epoch"), data.get("run_dir")
    if t0 is None or not run_dir or not Path(run_dir).is_dir():
        return []
    events: list[list[Any]] = []
    ends: dict[Any, list[float]] = {}
    for path in sorted(Path(run_dir).rglob("*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") in ("start", "end") and "t" in rec:
                events.append(
                    [round(rec["t"] - t0, 4), "job_" + rec["event"], {"job": rec.get("job")}]
                )
            elif "t_end" in rec:
                ends.setdefault(rec.get("job"), []).append(rec["t_end"] - t0)
    for job, ts in ends.items():
        events.append([round(min(ts), 4), "first_task_end", {"job": job}])
        events.append([round(max(ts), 4), "last_task_end", {"job": job, "tasks": len(ts)}])
    return events


def format_trace(trace: list[list[Any]]) -> str:
    """One line per event: seconds since the run's start, what, detail."""
    lines = []
    for t, what, detail in trace:
        lines.append(f"      {t:7.3f}  {what:<15} {'' if detail is None else json.dumps(detail)}")
    return "\n".join(lines)


def ours_ids(res: RunResult) -> set[str]:
    return {str(j) for j in res.data.get("job_ids", [])} | {
        str(j) for j in res.data.get("array_job_ids", [])
    }


def cleanup_jobs(contender: str, sampler: QueueSampler, work: Path) -> None:
    """After an aborted run: cancel the jobs it left (only ones this bench submitted: by the
    bench's own job names, or slurmrunner's run folder) and end the job processes left on the
    node whose command line names this run's folder (after a rig restart, srun processes of a
    job whose slurmstepd is gone may be left behind)."""
    names = {
        "fractal-sudo": "bench_task",
        "fractal-sudo-bigmem": "bench_task",
        "submitit": "submitit",
        "floor": "bench-floor",
    }
    name = names.get(contender)
    if name:
        subprocess.run(["scancel", f"--user={USER}", f"--name={name}"], check=False)
    tag = work.name
    ids = [
        jid
        for jid, (user, jname) in sampler.seen.items()
        if user == USER and jname.startswith("sr-")
    ]
    # slurmrunner jobs: only those whose output file lies in this run's folder
    for jid in ids:
        info = sh("scontrol", "show", "job", jid, check=False)
        if tag in info:
            subprocess.run(["scancel", jid], check=False)
    time.sleep(2)
    for line in sh("ps", "-eo", "pid=,args=", check=False).splitlines():
        pid, _, args = line.strip().partition(" ")
        if tag in args and "bench.py" not in args and pid.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)


# --------------------------------------------------------------------------- report


def row_values(w: Workload, c: str, runs: list[RunResult]) -> dict[str, Any] | None:
    good = [r for r in runs if r.data.get("wall_s") is not None]
    if not good:
        return None

    def med(values: list[float]) -> float:
        return statistics.median(values)

    walls = [r.data["wall_s"] for r in good]
    sbatch, squeue = [], []
    for r in good:
        if c == "slurmrunner-local":  # no SLURM: its jobs are local processes
            continue
        if c.partition("@")[0] == "slurmrunner-ssh":
            sbatch.append(r.data.get("sbatch", 0))
            squeue.append(r.data.get("squeue", 0))
        else:  # counted outside the process by the shims
            sbatch.append(r.calls.get("sbatch", 0))
            squeue.append(r.calls.get("squeue", 0) + r.calls.get("sacct", 0))
    jobs = []
    for r in good:
        if c.startswith("fractal-sudo"):
            jobs.append(r.calls.get("sbatch", r.data.get("n_jobs", 0)))
        else:
            jobs.append(r.data.get("n_jobs", 0))
    cpu = [r.data["cpu_self_s"] + r.data["cpu_children_s"] for r in good]
    rpcs = [r.rpc_total for r in good if r.rpc_total is not None]
    steps = [r.rpc.get("REQUEST_JOB_STEP_CREATE", 0) for r in good if r.rpc_total is not None]
    return {
        "wall": med(walls),
        "wall_min": min(walls),
        "wall_max": max(walls),
        "n": len(good),
        "failed_runs": len(runs) - sum(1 for r in runs if r.ok),
        "jobs": med(jobs),
        "sbatch": med(sbatch) if sbatch else None,
        "squeue": med(squeue) if squeue else None,
        "cpu": med(cpu),
        "cpu_self": med([r.data["cpu_self_s"] for r in good]),
        "cpu_ms_task": med(cpu) * 1000 / w.n_tasks,
        "rss": med([r.data["maxrss_mb"] for r in good]),
        "cycles": med([r.data.get("cycles", 0) for r in good])
        if c.startswith("slurmrunner")
        else None,
        "rpc": med(rpcs) if rpcs else None,
        "step_creates": med(steps) if steps else None,
        "sudo": med([r.calls.get("sudo", 0) for r in good]),
        "cat": med([r.data.get("cat", 0) or r.calls.get("sudo cat", 0) for r in good]),
    }


def fmt(x: float | None, nd: int = 1) -> str:
    if x is None:
        return "–"
    if float(x).is_integer() and nd <= 1:
        return f"{int(x)}"
    return f"{x:.{nd}f}"


def build_table(
    results: list[RunResult], workloads: list[str], contenders: list[str]
) -> tuple[str, dict[tuple[str, str], dict[str, Any]]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    head = (
        "| workload | contender | wall s, median (min–max) | × floor | SLURM jobs | sbatch "
        "| squeue (+sacct) | slurmctld RPCs | server CPU s | CPU ms/task | server peak RSS MB "
        "| runs ok |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for wn in workloads:
        w = WORKLOADS[wn]
        failed: dict[str, str] = {}
        for c in contenders:
            runs = [r for r in results if r.workload == wn and r.contender == c]
            if not runs:
                continue
            v = row_values(w, c, runs)
            if v is None:
                why = (runs[0].error or "?").split(" [")[0][:110]
                failed[c] = f"| {wn} | {c} | failed: {why} | | | | | | | | | 0/{len(runs)} |"
                continue
            rows[(wn, c)] = v
        floor = rows.get((wn, "floor"))
        for c in contenders:
            if c in failed:
                lines.append(failed[c])
            v = rows.get((wn, c))
            if v is None:
                continue
            ratio = f"{v['wall'] / floor['wall']:.2f}" if floor else "–"
            local_note = "¹" if c == "slurmrunner-local" else ""
            lines.append(
                f"| {wn} | {c} | {v['wall']:.1f} ({v['wall_min']:.1f}–{v['wall_max']:.1f}) "
                f"| {ratio} | {fmt(v['jobs'])} | {fmt(v['sbatch'])} | {fmt(v['squeue'])} "
                f"| {fmt(v['rpc'])} "
                f"| {v['cpu']:.2f}{local_note} | {v['cpu_ms_task']:.2f}{local_note} "
                f"| {v['rss']:.0f} | {v['n'] - v['failed_runs']}/{v['n'] + 0} |"
            )
    return head + "\n".join(lines) + "\n", rows


def targets(rows: dict[tuple[str, str], dict[str, Any]], results: list[RunResult]) -> list[str]:
    out = []

    def check(label: str, ok: bool | None, detail: str) -> None:
        mark = "n/a" if ok is None else ("**holds**" if ok else "**misses**")
        out.append(f"| {label} | {mark} | {detail} |")

    for backend in ("slurmrunner-sudo", "slurmrunner-ssh"):
        b = backend.split("-")[1]
        if not any(c == backend for _, c in rows):
            continue
        w1, f1, fl1 = (
            rows.get(("W1", backend)),
            rows.get(("W1", "fractal-sudo")),
            rows.get(("W1", "floor")),
        )
        if w1 and f1:
            check(
                f"W1 ≥ 5× faster than fractal-server ({b})",
                f1["wall"] >= 5 * w1["wall"],
                f"{w1['wall']:.1f} s vs {f1['wall']:.1f} s: {f1['wall'] / w1['wall']:.1f}×",
            )
        else:
            check(f"W1 ≥ 5× faster than fractal-server ({b})", None, "not measured")
        if w1 and fl1:
            check(
                f"W1 within 1.5× of the floor ({b})",
                w1["wall"] <= 1.5 * fl1["wall"],
                f"{w1['wall']:.1f} s vs {fl1['wall']:.1f} s: {w1['wall'] / fl1['wall']:.2f}×",
            )
        w2, fl2 = rows.get(("W2", backend)), rows.get(("W2", "floor"))
        if w2 and fl2:
            check(
                f"W2 within 1.2× of the floor ({b})",
                w2["wall"] <= 1.2 * fl2["wall"],
                f"{w2['wall']:.1f} s vs {fl2['wall']:.1f} s: {w2['wall'] / fl2['wall']:.2f}×",
            )
        w3, f3 = rows.get(("W3", backend)), rows.get(("W3", "fractal-sudo"))
        f3_failed = f3 is None and any(
            r.workload == "W3" and r.contender == "fractal-sudo" for r in results
        )
        if f3 is None:
            f3 = rows.get(("W3", "fractal-sudo-bigmem"))
        if w3:
            check(f"W3 with ≤ 10 jobs ({b})", w3["jobs"] <= 10, f"{fmt(w3['jobs'])} jobs")
        if w3 and f3:
            against = ""
            if f3_failed:
                against = (
                    " (fractal-server failed W3 under the same limits, out of memory; "
                    "this compares with its run with 4000 MB per task)"
                )
            check(
                f"W3 ≥ 5× faster than fractal-server ({b})",
                f3["wall"] >= 5 * w3["wall"],
                f"{w3['wall']:.1f} s vs {f3['wall']:.1f} s: {f3['wall'] / w3['wall']:.1f}×"
                + against,
            )
        elif w3:
            check(f"W3 ≥ 5× faster than fractal-server ({b})", None, "fractal-server not measured")
        # squeue per cycle, over every run of this backend
        runs = [r for r in results if r.contender == backend and r.data.get("cycles")]
        if runs:
            worst = max(runs, key=lambda r: r.data.get("squeue", 0) / max(1, r.data["cycles"]))
            ok = all(r.data.get("squeue", 0) <= r.data["cycles"] for r in runs)
            per_call = [
                n
                for r in runs
                if backend.endswith("sudo")
                for n in r.data.get("squeue_ids_per_call", [])
            ]
            extra = ""
            if per_call:
                extra = f"; each squeue asked about {min(per_call)}–{max(per_call)} job ids at once"
            check(
                f"squeue ≤ 1 per polling cycle ({b})",
                ok,
                f"worst run: {worst.data.get('squeue')} squeue in {worst.data['cycles']} cycles "
                f"({worst.workload}){extra}",
            )
        cpu_rows = [(wn, rows[(wn, backend)]) for wn in ("W1", "W2", "W3") if (wn, backend) in rows]
        if cpu_rows:
            _worst_w, _worst_v = max(cpu_rows, key=lambda x: x[1]["cpu_ms_task"])
            many = [(wn, v) for wn, v in cpu_rows if wn != "W2"]
            w2 = [v for wn, v in cpu_rows if wn == "W2"]
            note = ""
            if w2:
                note = (
                    f"; W2 {w2[0]['cpu_ms_task']:.1f} ms: 64 tasks over {w2[0]['wall']:.0f} s, "
                    f"i.e. {w2[0]['cpu'] / w2[0]['wall'] * 1000:.0f} ms of CPU per second of "
                    "watching, a cost of time, not of tasks (see notes)"
                )
            check(
                f"server CPU ≤ 1 ms per task, W1 and W3 ({b})",
                all(v["cpu_ms_task"] <= 1.0 for _, v in many) if many else None,
                ", ".join(f"{wn} {v['cpu_ms_task']:.2f} ms" for wn, v in many) + note,
            )
    return out


def write_report(
    path: Path,
    mach: dict[str, Any],
    table: str,
    tgt: list[str],
    results: list[RunResult],
    lim: Limits,
    opts: argparse.Namespace,
    rows: dict[tuple[str, str], dict[str, Any]],
    elapsed_s: float,
    discarded: list[RunResult],
) -> None:
    v = mach["versions"]
    details = []
    for (wn, c), r in sorted(rows.items()):
        bits = [
            f"sudo calls {fmt(r['sudo'])}" if r["sudo"] else None,
            f"cat reads {fmt(r['cat'])}" if r["cat"] else None,
            f"polling cycles {fmt(r['cycles'])}" if r["cycles"] else None,
            f"step creations (srun) {fmt(r['step_creates'])}" if r["step_creates"] else None,
            f"CPU of the process itself {r['cpu_self']:.2f} s",
        ]
        details.append(f"- {wn} {c}: " + ", ".join(b for b in bits if b))
    problems = []
    for r in discarded:
        problems.append(
            f"- discarded and run again: {r.workload} {r.contender} run {r.rep} "
            f"attempt {r.attempt}: {(r.rig_restarted or r.error or '')[:300]}"
        )
    for r in results:
        if r.error:
            problems.append(f"- {r.workload} {r.contender} run {r.rep}: {r.error[:600]}")
        if r.foreign_jobs:
            problems.append(
                f"- {r.workload} {r.contender} run {r.rep}: other jobs shared the cluster: "
                f"{', '.join(r.foreign_jobs[:8])}{' ...' if len(r.foreign_jobs) > 8 else ''}"
            )
        if r.idle_wait_s < 0:
            problems.append(
                f"- {r.workload} {r.contender} run {r.rep}: the cluster was not idle "
                f"at the start (waited {opts.idle_wait:.0f} s)"
            )
        for call in ("sbatch", "squeue"):  # the runner's own counts against the shims'
            reported, counted = r.data.get(call), r.calls.get(call)
            if (
                r.contender == "slurmrunner-sudo"
                and reported is not None
                and counted not in (None, reported)
            ):
                problems.append(
                    f"- {r.workload} {r.contender} run {r.rep}: self-reported {call} "
                    f"{reported} != counted {counted}"
                )
    how = "bench/run" + (" --quick" if opts.quick else "")
    reps = (
        f"{opts.repeats} runs per cell for slurmrunner and the floor, "
        f"{opts.reference_repeats} for fractal-server and submitit"
    )
    scaled = f" Task counts scaled by {opts.scale}." if opts.scale != 1.0 else ""
    text = f"""# slurmrunner benchmark results

Written by `{how}`: {reps}; {elapsed_s / 60:.0f} min in all.{scaled} How to reproduce and what
every column means: [README.md](README.md).

## Machine

| | |
|---|---|
| date | {mach["date"]} |
| nproc | {mach["nproc"]} ({mach["cpu_model"]}) |
| memory | {mach["memory_gib"]} GiB |
| kernel | {mach["kernel"]} ({mach["os"]}) |
| SLURM | {mach["slurm"]}; {mach["slurm_node"]}; {mach["slurm_select"]}; {mach["slurm_sched"]}; accounting: {mach["slurm_accounting"]} |
| Python | {mach["python_server"]} (Debian's /usr/bin/python3 for every process) |
| slurmrunner | git {v["slurmrunner"]}; the copy under test ({SLURMRUNNER_PY.parent.parent}): {v["slurmrunner_installed"]}; paramiko {v["paramiko"]} |
| fractal-server | {v["fractal-server"]} |
| submitit | {v["submitit"]} |

## Limits (the same admin config for every runner)

`default_slurm_config`: partition `{PARTITION}`, `cpus_per_task` {lim.cpus_per_task},
`mem` {lim.mem_per_task_mb}M, no `time`. `batching_config`: `target_num_jobs`
{lim.target_num_jobs}, `max_num_jobs` {lim.max_num_jobs} (W1, W2) / 10 (W3),
`target_cpus_per_job` = `max_cpus_per_job` = {lim.max_cpus_per_job}, `target_mem_per_job`
{lim.target_mem_per_job_mb} MB, `max_mem_per_job` {lim.max_mem_per_job_mb} MB. The node has 2
CPUs, so one 2-CPU job runs at a time. fractal-server polls `squeue` every
{opts.fractal_poll_interval} s (its default `jobs_poll_interval`). submitit: 1 CPU and
{lim.mem_per_task_mb} MB per array task, array parallelism {opts.submitit_array_parallelism}
(the node fits 2). The floor: one job with 2 CPUs and {2 * lim.mem_per_task_mb} MB running
`xargs -P 2`.

## Results

{table}
¹ the `local` backend involves no SLURM: its "jobs" are the same job scripts run as child
processes of the server (so no `sbatch`/`squeue`), and its "server CPU" includes those jobs,
i.e. the worker and the tasks themselves; it is not comparable with the SLURM rows.

Per cell: median over the runs of wall (min–max), jobs, calls, CPU and RSS. Counts are
measured outside the runner where possible (see README: shims for `sbatch`, `squeue`,
`sacct`, `sudo`); for `slurmrunner-ssh` (commands run on the far side of SSH) they are the
runner's own counters.

{chr(10).join(details)}

## Targets (issue 5)

| target | | measured (medians) |
|---|---|---|
{chr(10).join(tgt)}

## How to read it

- The node has 2 CPUs, so every runner runs 2 tasks at a time; what differs is the cost around
  the tasks (jobs, their start, per-task overhead inside the job, and how soon the runner
  learns that tasks ended). W1 and W3 measure that overhead, W2 measures a runner that must
  not add to 64 s of real work.
- The floor's wall includes SLURM's own scheduling delay after `sbatch` (0.1 to 0.9 s here,
  the controller's scheduling cycle); so does every runner's, which makes ratios to a ~1 s
  floor noisy: see min–max.
- W2's server CPU is the cost of watching for ~65 s (each look is one `sudo cat` or one SSH
  channel), not a cost per task: 64 tasks cannot amortize it.
- fractal-server runs every task of a job as `srun ... &`, all at once; each `srun` asks the
  controller for a job step, and retries while the job's CPUs are busy ("step creations" in
  the details above); with W3's 500 tasks per job those clients also exceed the job's memory
  (see README).

## Notes on these runs

{chr(10).join(problems) if problems else "- every run finished with all tasks ok."}
{"" if any(r.foreign_jobs for r in results) else "- no other job was seen in the queue during any run."}
"""
    path.write_text(text)


def report_again(src: Path, out: Path, workloads: list[str], contenders: list[str]) -> None:
    raw = json.loads(src.read_text())
    saved = argparse.Namespace(**raw["options"])
    lim = Limits(**raw["limits"])
    results = [RunResult(**r) for r in raw["runs"]]
    discarded = [RunResult(**r) for r in raw.get("discarded_runs", [])]
    if saved.scale != 1.0:
        for key, w in list(WORKLOADS.items()):
            WORKLOADS[key] = replace(w, n_tasks=max(1, round(w.n_tasks * saved.scale)))
    table, rows = build_table(results, workloads, contenders)
    tgt = targets(rows, results)
    write_report(
        out, raw["machine"], table, tgt, results, lim, saved, rows, raw["elapsed_s"], discarded
    )
    log(f"wrote {out} from {src}")


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one run per cell (default: 3)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs per cell for slurmrunner and the floor (default 3; --quick: 1)",
    )
    ap.add_argument(
        "--reference-repeats",
        type=int,
        default=None,
        help="runs per cell for fractal-server and submitit (default 1: they take "
        "minutes per run; 3 makes the full run ~45 min)",
    )
    ap.add_argument(
        "--workloads",
        default=DEFAULT_WORKLOADS,
        help=f"default {DEFAULT_WORKLOADS}; W4, W5: 100,000 tasks (issue 13), minutes per run",
    )
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument(
        "--alt",
        action="append",
        default=[],
        metavar="NAME=PYTHON",
        help="another install of slurmrunner (its venv's python), benchmarked as the "
        "contenders slurmrunner-sudo@NAME and slurmrunner-ssh@NAME",
    )
    ap.add_argument("--target-num-jobs", type=int, default=4)
    ap.add_argument("--fractal-poll-interval", type=int, default=5)
    ap.add_argument("--submitit-array-parallelism", type=int, default=256)
    ap.add_argument("--timeout", type=int, default=1500, help="per run, seconds")
    ap.add_argument(
        "--stall",
        type=float,
        default=180.0,
        help="stop a run when none of its files changed for this many seconds",
    )
    ap.add_argument(
        "--idle-wait",
        type=float,
        default=60.0,
        help="max seconds to wait for an empty queue before each run",
    )
    ap.add_argument(
        "--no-align-phase",
        dest="align_phase",
        action="store_false",
        help="start runs whenever ready, not at run k's phase of the clock's second",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=2,
        help="run a cell again (at most this many times) when the rig was restarted "
        "under it by someone else",
    )
    ap.add_argument(
        "--no-abort-on-restart",
        dest="abort_on_restart",
        action="store_false",
        help="let a run go on when slurmctld/slurmd restart under it",
    )
    ap.add_argument("--keep", action="store_true", help="keep every run's files")
    ap.add_argument(
        "--profile-server",
        action="store_true",
        help="cProfile the slurmrunner server process (bench/profiles/)",
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every workload's task count (development only)",
    )
    ap.add_argument(
        "--trace",
        action="store_true",
        help="print each slurmrunner run's timeline: its cycles, squeue, reads, the pace's "
        "waits and the worker's own times (job start and end, first and last task end)",
    )
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    ap.add_argument(
        "--report-from",
        metavar="JSON",
        help="write the report again from a RESULTS.json, running nothing",
    )
    opts = ap.parse_args()
    opts.repeats = opts.repeats or (1 if opts.quick else 3)
    if opts.reference_repeats is None:
        opts.reference_repeats = 1
    opts.reference_repeats = min(opts.reference_repeats, opts.repeats)
    if os.geteuid() != 0:
        sys.exit("bench/bench.py runs as root (it starts harnesses as slurmsrv and alice)")
    workloads = [w.strip() for w in opts.workloads.split(",") if w.strip()]
    contenders = [c.strip() for c in opts.contenders.split(",") if c.strip()]
    for alt in opts.alt:
        name, _, python = alt.partition("=")
        if not name.isidentifier() or not Path(python).is_file():
            sys.exit(f"--alt {alt!r}: NAME=PYTHON, PYTHON a venv's python")
        ALTS[name] = Path(python)
    for c in contenders:
        base, _, alt = c.partition("@")
        known = base in CONTENDERS and (not alt or (alt in ALTS and base in ALT_BASES))
        if not known:
            sys.exit(f"unknown contender {c!r}: one of {', '.join(CONTENDERS)} (+ @ALT)")
    lim = Limits(target_num_jobs=opts.target_num_jobs)
    if opts.report_from:
        report_again(Path(opts.report_from), Path(opts.out), workloads, contenders)
        return
    if opts.scale != 1.0:
        for key, w in list(WORKLOADS.items()):
            WORKLOADS[key] = replace(
                w,
                n_tasks=max(1, round(w.n_tasks * opts.scale)),
                what=w.what + f" (scaled x{opts.scale})",
            )

    rig_up()
    setup()
    mach = machine()
    log(
        f"machine: {mach['nproc']} CPUs, {mach['memory_gib']} GiB, {mach['slurm']}, "
        f"kernel {mach['kernel']}; slurmrunner installed: "
        f"{mach['versions']['slurmrunner_installed']}"
    )
    results: list[RunResult] = []
    discarded: list[RunResult] = []
    t_start = time.monotonic()
    for rep in range(1, opts.repeats + 1):
        for wn in workloads:
            w = WORKLOADS[wn]
            for c in contenders:
                if c in ONLY and wn not in ONLY[c]:
                    continue
                if c in REFERENCE and rep > opts.reference_repeats:
                    continue
                for attempt in range(1, opts.retries + 2):
                    log(
                        f"[{rep}/{opts.repeats}] {wn} {c}"
                        + (f" (attempt {attempt})" if attempt > 1 else "")
                        + " ..."
                    )
                    r = run_one(w, c, rep, lim, opts)
                    r.attempt = attempt
                    if not r.rig_restarted or attempt > opts.retries:
                        break
                    log(f"    void: {r.rig_restarted}; running it again")
                    discarded.append(r)
                results.append(r)
                d = r.data
                if d.get("wall_s") is not None:
                    log(
                        f"    {d['wall_s']:.1f} s, jobs {d.get('n_jobs')}, "
                        f"cpu {d['cpu_self_s'] + d['cpu_children_s']:.2f} s "
                        f"(self {d['cpu_self_s']:.2f} + children {d['cpu_children_s']:.2f}), "
                        f"rss {d['maxrss_mb']:.0f} MB, ok {d.get('ok')}/{w.n_tasks}, "
                        f"load {d.get('load_before', 0):.1f}-{d.get('load_after', 0):.1f}, "
                        f"calls {r.calls}" + (f"; ERROR {r.error[:300]}" if r.error else "")
                    )
                else:
                    log(f"    FAILED: {r.error}")
    elapsed = time.monotonic() - t_start
    table, rows = build_table(results, workloads, contenders)
    tgt = targets(rows, results)
    print(table)
    print("| target | | measured |\n|---|---|---|\n" + "\n".join(tgt))
    raw = {
        "machine": mach,
        "limits": lim.__dict__,
        "options": vars(opts),
        "elapsed_s": elapsed,
        "runs": [r.__dict__ for r in results],
        "discarded_runs": [r.__dict__ for r in discarded],
    }
    if not opts.no_write:
        write_report(Path(opts.out), mach, table, tgt, results, lim, opts, rows, elapsed, discarded)
        Path(opts.out).with_suffix(".json").write_text(json.dumps(raw, indent=1))
        log(f"wrote {opts.out} and {Path(opts.out).with_suffix('.json')}")
    else:
        Path(WORK / "last-results.json").write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
