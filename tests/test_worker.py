"""The worker program, run as the job runs it: a subprocess with a payload."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurmrunner.worker_ship import worker_program

# The program a job runs: the worker's parts joined (worker_ship.py).
WORKER_SOURCE = worker_program()

# One program for every behaviour, driven by its arguments.
TASK = r"""
import json, os, signal, sys, time
argv = sys.argv
if "--args-json" in argv:
    args = json.load(open(argv[argv.index("--args-json") + 1]))
    out = argv[argv.index("--out-json") + 1]
else:  # call: stdin
    args = json.load(sys.stdin)
    out = os.environ["SLURMRUNNER_OUT_JSON"]
start = time.time()
if args.get("pid_dir"):
    with open(os.path.join(args["pid_dir"], "%d.pid" % os.getpid()), "w") as fh:
        fh.write("started")
if args.get("chmod_off"):
    os.chmod(args["chmod_off"], 0o644)
if args.get("ignore_term"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if args.get("stdout"):
    print(args["stdout"], flush=True)
if args.get("stderr"):
    print(args["stderr"], file=sys.stderr, flush=True)
if args.get("mem_mb"):
    blob = bytearray(args["mem_mb"] * 1024 * 1024)
    for k in range(0, len(blob), 4096):
        blob[k] = 1
if args.get("sleep"):
    time.sleep(args["sleep"])
if args.get("signal"):
    os.kill(os.getpid(), getattr(signal, args["signal"]))
if args.get("exit"):
    sys.exit(args["exit"])
if args.get("bad_out"):
    with open(out, "w") as fh:
        fh.write("{not json")
elif not args.get("no_out"):
    with open(out, "w") as fh:
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        json.dump({"args": args, "start": start, "end": time.time(), "argv": argv[1:],
                   "cwd": os.getcwd(), "index": os.environ.get("SLURMRUNNER_TASK_INDEX"),
                   "own_session": os.getsid(0) == os.getpid(),
                   "blocked": int(status["SigBlk"], 16), "ignored": int(status["SigIgn"], 16)},
                  fh)
"""

RECORD_KEYS = {
    *("i", "job", "attempt", "status", "exit_code", "signal", "duration_s", "max_rss_mb", "log")
}


@pytest.fixture
def task(tmp_path):
    path = tmp_path / "task.py"
    path.write_text(TASK)
    return path


def payload(run_dir, tasks, command, parallel=1, call="fractal", workdir=None, job_index=0):
    """A payload as script.worker_payload makes it; the run folder made as Run.start does."""
    Path(run_dir).mkdir(mode=0o700, exist_ok=True)
    return {
        "version": 1,
        "run_id": "RUN",
        "job_index": job_index,
        "run_dir": str(run_dir),
        "workdir": workdir,
        "results": f"results/{job_index}.jsonl",
        "command": [str(c) for c in command],
        "call": call,
        "parallel": parallel,
        "tasks": [{"i": i, "args": args} for i, args in enumerate(tasks)],
    }


# The worker as a module with posix_spawn and sigwaitinfo switched off: the path of platforms
# without them (macOS).
FORK_BOOT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("worker", sys.argv[1])
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)
worker._POSIX_SPAWN = False
worker._SIGWAIT = False
sys.exit(worker.main(json.load(open(sys.argv[2]))))
"""


@pytest.fixture(params=["posix_spawn", "fork"])
def launcher(request):
    return request.param


def start_worker(tmp_path, data, launcher="posix_spawn"):
    path = tmp_path / "payload.json"
    path.write_text(json.dumps(data))
    program = tmp_path / "worker.py"
    program.write_text(WORKER_SOURCE)
    boot = ["-c", FORK_BOOT] if launcher == "fork" else []
    return subprocess.Popen(
        [sys.executable, *boot, str(program), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run_worker(tmp_path, tasks, command, timeout=60, launcher="posix_spawn", **kw):
    run_dir = tmp_path / "run"
    data = payload(run_dir, tasks, command, **kw)
    proc = start_worker(tmp_path, data, launcher)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()
    return read_lines(run_dir, data["job_index"])


def read_lines(run_dir, job_index=0):
    text = (Path(run_dir) / "results" / f"{job_index}.jsonl").read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def task_records(lines):
    return {rec["i"]: rec for rec in lines if "i" in rec}


def check_frame(lines, n_tasks, job=0):
    assert lines[0]["event"] == "start" and lines[0]["job"] == job
    assert lines[0]["n_tasks"] == n_tasks
    assert lines[-1]["event"] == "end" and lines[-1]["job"] == job
    assert [r.get("event") for r in lines[1:-1]] == [None] * n_tasks
    assert sorted(r["i"] for r in lines[1:-1]) == list(range(n_tasks))


def max_overlap(intervals):
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = peak = 0
    for _, step in events:  # an end at the same instant as a start sorts first
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_parallel_cap_respected(tmp_path, task, parallel):
    n = 7
    lines = run_worker(
        tmp_path,
        [{"sleep": 0.25, "x": i} for i in range(n)],
        [sys.executable, task],
        parallel=parallel,
    )
    check_frame(lines, n)
    records = task_records(lines)
    intervals = [(r["result"]["start"], r["result"]["end"]) for r in records.values()]
    assert max_overlap(intervals) == parallel
    for i, rec in records.items():
        assert rec["status"] == "ok"
        assert rec["result"]["args"] == {"sleep": 0.25, "x": i}


def test_record_fields(tmp_path, task, launcher):
    lines = run_worker(
        tmp_path,
        [{"sleep": 0.3, "stdout": "hello out", "stderr": "hello err", "mem_mb": 60}],
        [sys.executable, task],
        launcher=launcher,
    )
    check_frame(lines, 1)
    rec = lines[1]
    assert set(rec) >= RECORD_KEYS
    assert rec["i"] == 0 and rec["job"] == 0
    assert rec["status"] == "ok" and rec["exit_code"] == 0 and rec["signal"] is None
    assert 0.3 <= rec["duration_s"] < 10
    # its end time: the timeline draws it from t_end - duration_s to t_end
    assert lines[0]["t"] + rec["duration_s"] <= rec["t_end"] + 0.01 <= lines[-1]["t"] + 0.02
    assert rec["max_rss_mb"] >= 60  # the task's own peak, not the worker's
    assert "error" not in rec
    log = Path(rec["log"]).read_text()
    assert "hello out" in log and "hello err" in log
    assert Path(rec["log"]) == tmp_path / "run" / "logs" / "0.log"
    assert rec["result"]["index"] == "0"
    assert rec["result"]["cwd"] == str(tmp_path / "run")  # no workdir: the run folder
    # its own session (the worker signals the group), nothing blocked or ignored from the worker
    assert rec["result"]["own_session"] is True
    assert rec["result"]["blocked"] == 0
    assert rec["result"]["ignored"] & (1 << (signal.SIGTERM - 1)) == 0


def test_workdir_and_fractal_argv(tmp_path, task, launcher):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    lines = run_worker(
        tmp_path,
        [{"x": 1}],
        [sys.executable, task, "extra"],
        workdir=str(workdir),
        launcher=launcher,
    )
    result = lines[1]["result"]
    assert result["cwd"] == str(workdir)
    run = tmp_path / "run"
    assert result["argv"] == [
        "extra",
        "--args-json",
        str(run / "tasks" / "0.args.json"),
        "--out-json",
        str(run / "tasks" / "0.out.json"),
    ]


def test_exit_3_is_failed_with_log_tail(tmp_path, task):
    tasks = [{"x": 0}, {"exit": 3, "stderr": "failing on purpose: boom"}, {"x": 2}]
    lines = run_worker(tmp_path, tasks, [sys.executable, task], parallel=2)
    check_frame(lines, 3)
    recs = task_records(lines)
    bad = recs[1]
    assert bad["status"] == "failed"
    assert bad["exit_code"] == 3 and bad["signal"] is None
    assert bad["error"]["cause"] == "exit_code"
    assert "3" in bad["error"]["message"]
    assert "failing on purpose: boom" in bad["error"]["log_tail"]
    assert "result" not in bad
    assert recs[0]["status"] == recs[2]["status"] == "ok"


def test_log_tail_is_the_end_of_a_long_log(tmp_path, task):
    noise = "\n".join(f"noise line {k}" for k in range(2000))
    lines = run_worker(
        tmp_path, [{"stdout": noise, "stderr": "LAST WORDS", "exit": 1}], [sys.executable, task]
    )
    tail = lines[1]["error"]["log_tail"]
    assert tail.rstrip().endswith("LAST WORDS")
    assert len(tail.encode()) <= 2048
    assert "noise line 0\n" not in tail


def test_invalid_out_json_is_bad_output(tmp_path, task):
    lines = run_worker(tmp_path, [{"bad_out": True}, {"x": 1}], [sys.executable, task])
    recs = task_records(lines)
    assert recs[0]["status"] == "failed"
    assert recs[0]["exit_code"] == 0
    assert recs[0]["error"]["cause"] == "bad_output"
    assert recs[1]["status"] == "ok"


def test_no_out_json_is_ok_with_null_result(tmp_path, task):
    lines = run_worker(tmp_path, [{"no_out": True}], [sys.executable, task])
    assert lines[1]["status"] == "ok" and lines[1]["result"] is None


def test_missing_program_is_launch_error_and_worker_goes_on(tmp_path, launcher):
    missing = tmp_path / "no-such-program"
    lines = run_worker(
        tmp_path, [{"x": i} for i in range(4)], [missing], parallel=2, launcher=launcher
    )
    check_frame(lines, 4)
    for rec in task_records(lines).values():
        assert rec["status"] == "failed"
        assert rec["error"]["cause"] == "launch_error"
        assert "no-such-program" in rec["error"]["message"]
        assert "cannot start" in rec["error"]["log_tail"]


def test_launch_error_siblings_still_run(tmp_path, task, launcher):
    # the program stops being executable mid-run (task 1 takes its x bit away): the tasks
    # launched after that are launch errors, the one already running still ends ok
    prog = tmp_path / "prog"
    prog.write_text(f'#!/bin/sh\nexec {sys.executable} {task} "$@"\n')
    prog.chmod(0o755)
    tasks = [{"sleep": 1.0}, {"chmod_off": str(prog)}, {"x": 2}, {"x": 3}]
    lines = run_worker(tmp_path, tasks, [prog], parallel=2, launcher=launcher)
    check_frame(lines, 4)
    recs = task_records(lines)
    assert recs[0]["status"] == recs[1]["status"] == "ok"
    for i in (2, 3):
        assert recs[i]["status"] == "failed"
        assert recs[i]["error"]["cause"] == "launch_error"
        assert "Permission denied" in recs[i]["error"]["message"]


def test_program_found_on_path(tmp_path, task, launcher):
    # a bare name is looked up on PATH, as a shell would
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "my-task"
    prog.write_text(f'#!/bin/sh\nexec {sys.executable} {task} "$@"\n')
    prog.chmod(0o755)
    env_path = f"{bindir}:{os.environ['PATH']}"
    data = payload(tmp_path / "run", [{"x": 7}], ["my-task"])
    path = tmp_path / "payload.json"
    path.write_text(json.dumps(data))
    program = tmp_path / "worker.py"
    program.write_text(WORKER_SOURCE)
    boot = ["-c", FORK_BOOT] if launcher == "fork" else []
    proc = subprocess.run(
        [sys.executable, *boot, str(program), str(path)],
        env={**os.environ, "PATH": env_path},
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert read_lines(tmp_path / "run")[1]["result"]["args"] == {"x": 7}


def test_missing_workdir_is_a_launch_error_per_task(tmp_path, task):
    gone = tmp_path / "no-such-dir"
    lines = run_worker(tmp_path, [{"x": 1}, {"x": 2}], [sys.executable, task], workdir=str(gone))
    check_frame(lines, 2)
    for rec in task_records(lines).values():
        assert rec["error"]["cause"] == "launch_error"
        assert str(gone) in rec["error"]["message"]
        assert "working directory" in rec["error"]["log_tail"]


def test_missing_script_is_the_programs_failure(tmp_path):
    # python exists, its script does not: the program ran and failed (not a launch error)
    lines = run_worker(tmp_path, [{"x": 1}], [sys.executable, tmp_path / "nope.py"])
    err = lines[1]["error"]
    assert err["cause"] == "exit_code" and "nope.py" in err["log_tail"]


def test_stdin_call_form(tmp_path, task):
    lines = run_worker(
        tmp_path, [{"x": 5, "s": "é'\n"}, {"x": 6}], [sys.executable, task, "plain"], call="stdin"
    )
    recs = task_records(lines)
    assert recs[0]["result"]["args"] == {"x": 5, "s": "é'\n"}
    assert recs[0]["result"]["argv"] == ["plain"]  # no --args-json/--out-json
    assert recs[1]["result"]["args"] == {"x": 6}


@pytest.mark.parametrize("sig", ["SIGABRT", "SIGSEGV", "SIGUSR1"])
def test_task_killed_by_signal(tmp_path, task, sig):
    lines = run_worker(tmp_path, [{"signal": sig}, {"x": 1}], [sys.executable, task])
    rec = task_records(lines)[0]
    assert rec["status"] == "failed"
    assert rec["signal"] == getattr(signal, sig)
    assert rec["exit_code"] is None
    assert rec["error"]["cause"] == "signal"
    assert sig in rec["error"]["message"]
    assert task_records(lines)[1]["status"] == "ok"


def wait_for_pids(pid_dir, n, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [int(p.stem) for p in Path(pid_dir).glob("*.pid")]
        if len(pids) >= n:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"only {len(pids)} of {n} tasks started")


def alive(pid):
    """A process that still runs (a zombie waiting for init to reap it is not running)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" not in state.split()[1]


def wait_gone(pids, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return
        time.sleep(0.05)
    raise AssertionError(f"orphans left: {[p for p in pids if alive(p)]}")


@pytest.mark.parametrize("ignore_term", [False, True], ids=["polite", "stubborn"])
def test_sigterm_records_unfinished_and_leaves_no_orphans(tmp_path, task, ignore_term, launcher):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    tasks = [{"x": 0}, {"x": 1}] + [
        {"sleep": 60, "pid_dir": str(pid_dir), "ignore_term": ignore_term} for _ in range(4)
    ]
    run_dir = tmp_path / "run"
    data = payload(run_dir, tasks, [sys.executable, task], parallel=2)
    proc = start_worker(tmp_path, data, launcher)
    try:
        pids = wait_for_pids(pid_dir, 2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert took < 15
    wait_gone(pids)
    lines = read_lines(run_dir)
    assert lines[0]["event"] == "start"
    end = lines[-1]
    assert end.pop("t") >= lines[0]["t"]  # when the job started and ended, for timelines
    assert end == {
        "event": "end",
        "job": 0,
        "chunk": 0,
        "records": 6,
        "tasks": 6,
        "interrupted": "SIGTERM",
    }
    recs = task_records(lines)
    assert sorted(recs) == list(range(6))
    assert len([r for r in lines if "i" in r]) == 6  # one record per task, no duplicates
    assert recs[0]["status"] == recs[1]["status"] == "ok"
    for i in range(2, 6):
        assert recs[i]["status"] == "interrupted"
        assert recs[i]["error"]["cause"] == "interrupted"
        assert "SIGTERM" in recs[i]["error"]["message"]
    assert len(pids) == 2  # the queued tasks were never started


def test_sigint_is_an_interruption_too(tmp_path, task):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    run_dir = tmp_path / "run"
    data = payload(run_dir, [{"sleep": 60, "pid_dir": str(pid_dir)}], [sys.executable, task])
    proc = start_worker(tmp_path, data)
    pids = wait_for_pids(pid_dir, 1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT
    wait_gone(pids)
    lines = read_lines(run_dir)
    assert lines[1]["status"] == "interrupted"
    assert lines[-1]["interrupted"] == "SIGINT"


def test_results_file_appends_and_is_private(tmp_path, task):
    run_dir = tmp_path / "run"
    run_worker(tmp_path, [{"x": 1}], [sys.executable, task])
    run_worker(tmp_path, [{"x": 1}], [sys.executable, task])  # a requeued job appends
    lines = read_lines(run_dir)
    # ... and does not run again what its earlier attempt finished
    assert [line.get("event") for line in lines] == ["start", None, "end", "start", "end"]
    assert (run_dir / "results" / "0.jsonl").stat().st_mode & 0o077 == 0
    assert (run_dir / "logs").stat().st_mode & 0o077 == 0


def test_a_requeued_job_marks_its_attempt_and_runs_only_what_was_not_finished(
    tmp_path, task, monkeypatch
):
    run_dir = tmp_path / "run"
    tasks = [{"x": 1}, {"signal": "SIGSEGV"}, {"exit": 3}]
    data = payload(run_dir, tasks, [sys.executable, task])
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert start_worker(tmp_path, data).wait(timeout=60) == 0
    first = read_lines(run_dir)
    assert {line["attempt"] for line in first if line.get("event", "start") == "start"} == {0}
    segv = task_records(first)[1]
    assert (segv["error"]["cause"], segv["signal"]) == ("signal", signal.SIGSEGV)
    assert segv["error"]["message"] == "killed by SIGSEGV (signal 11)"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert start_worker(tmp_path, data).wait(timeout=60) == 0
    again = read_lines(run_dir)[len(first) :]
    assert again[0]["event"] == "start" and again[0]["attempt"] == 1
    assert again[0]["n_tasks"] == 1  # only the task killed by a signal runs again
    assert [(r["i"], r["attempt"]) for r in again if "i" in r] == [(1, 1)]
    assert (again[-1]["event"], again[-1]["tasks"]) == ("end", 4)


def test_worker_is_stdlib_only_python38():
    tree = ast.parse(WORKER_SOURCE, feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module
            imported.add(node.module.split(".")[0])
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names
    assert "__future__" not in imported  # the script prepends _PAYLOAD before the source


def test_worker_runs_from_embedded_payload(tmp_path, task):
    # as in the job script: `_PAYLOAD = '...'` prepended to the source, fed on stdin
    data = payload(tmp_path / "run", [{"x": 3}], [sys.executable, task])
    source = f"_PAYLOAD = {json.dumps(data)!r}\n{WORKER_SOURCE}"
    proc = subprocess.run([sys.executable, "-"], input=source.encode(), capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert read_lines(tmp_path / "run")[1]["result"]["args"] == {"x": 3}


def test_worker_never_inherits_results_fd(tmp_path):
    # a task sees only stdin/stdout/stderr: nothing of the worker's files leaks into it
    probe = tmp_path / "fds.py"
    probe.write_text(
        "import json, os, sys\n"
        "json.dump(sorted(int(f) for f in os.listdir('/proc/self/fd')), open(sys.argv[-1], 'w'))\n"
    )
    lines = run_worker(tmp_path, [{}], [sys.executable, probe])
    fds = lines[1]["result"]
    assert set(fds) - {0, 1, 2} <= {max(fds)}  # at most listdir's own descriptor
    assert os.path.exists(lines[1]["log"])


def test_results_come_in_chunks_each_closed_by_a_next_line(tmp_path):
    run_dir = tmp_path / "run"
    # Tasks killed by a signal (the scheduler's, maybe) run again in a requeued job's next
    # attempt: the second attempt below has all ten to run.
    suicide = ["sh", "-c", "kill -USR1 $$"]
    data = payload(run_dir, [{} for _ in range(10)], suicide, parallel=2, call="stdin")
    data["chunk_records"] = 3
    proc = start_worker(tmp_path, data)
    assert proc.wait(timeout=60) == 0
    chunks = [run_dir / "results" / "0.jsonl"] + [
        run_dir / "results" / f"0.{c}.jsonl" for c in range(1, 4)
    ]
    assert sorted((run_dir / "results").iterdir()) == sorted([*chunks, run_dir / "results/sep"])
    lines = [[json.loads(x) for x in c.read_text().splitlines()] for c in chunks]
    for c, chunk in enumerate(lines[:-1]):
        assert chunk[-1] == {"event": "next", "job": 0, "chunk": c + 1, "records": 3}
        assert len([r for r in chunk if "i" in r]) == 3
    assert lines[0][0]["event"] == "start"
    end = lines[-1][-1]
    assert (end["event"], end["chunk"], end["records"], end["tasks"]) == ("end", 3, 1, 10)
    records = [r for chunk in lines for r in chunk if "i" in r]
    assert sorted(r["i"] for r in records) == list(range(10))
    # a requeued job goes on from the last chunk, so the reader, already there, sees it all
    proc = start_worker(tmp_path, data)
    assert proc.wait(timeout=60) == 0
    again = [json.loads(x) for x in chunks[-1].read_text().splitlines()]
    assert [r.get("event") for r in again[:3]] == [None, "end", "start"]
    files = [p for p in (run_dir / "results").iterdir() if p.name != "sep"]
    everything = [json.loads(x) for p in files for x in p.read_text().splitlines()]
    assert len([r for r in everything if "i" in r]) == 20
    ends = sorted((r for r in everything if r.get("event") == "end"), key=lambda r: r["t"])
    assert len(ends) == 2
    # the second attempt counted what the first left in the chunk it went on with (1 record
    # in chunk 3, so 2 more filled it) and in all chunks
    assert [r.get("event") for r in again[-2:]] == [None, "next"]
    assert again[-1]["records"] == 3
    assert (ends[1]["chunk"], ends[1]["records"], ends[1]["tasks"]) == (6, 2, 20)


def test_a_result_over_max_result_bytes_stays_in_its_file(tmp_path, task):
    run_dir = tmp_path / "run"
    data = payload(run_dir, [{"pad": "x" * 5000}, {"x": 1}], [sys.executable, task])
    data["max_result_bytes"] = 4096
    assert start_worker(tmp_path, data).wait(timeout=60) == 0
    recs = task_records(read_lines(run_dir))
    err = recs[0]["error"]
    assert (recs[0]["status"], err["cause"]) == ("failed", "result_too_large")
    out = run_dir / "tasks" / "0.out.json"
    assert str(out.stat().st_size) in err["message"] and str(out) in err["message"]
    assert "result" not in recs[0]
    assert recs[1]["status"] == "ok"


@pytest.mark.parametrize(
    ("content", "why"),
    [("[" * 100 + "]" * 100, "nests deeper"), ('{"a": NaN}', "NaN"), ('{"a": 1e999}', "finite")],
)
def test_a_result_the_server_would_refuse_is_bad_output(tmp_path, content, why):
    prog = tmp_path / "writes.py"
    prog.write_text(
        f"import sys\nopen(sys.argv[sys.argv.index('--out-json') + 1], 'w').write({content!r})\n"
    )
    lines = run_worker(tmp_path, [{}], [sys.executable, prog])
    err = lines[1]["error"]
    assert err["cause"] == "bad_output" and why in err["message"]


def test_chunks_close_on_bytes_too(tmp_path):
    run_dir = tmp_path / "run"
    data = payload(run_dir, [{} for _ in range(6)], ["true"], call="stdin")
    data["chunk_bytes"] = 100  # each record is bigger: one per chunk
    assert start_worker(tmp_path, data).wait(timeout=60) == 0
    chunks = sorted((run_dir / "results").glob("0*.jsonl"))
    # one record per chunk (the start line, with a long host name, may fill one of its own)
    records = [[x for x in c.read_text().splitlines() if '"i":' in x] for c in chunks]
    assert sorted(len(r) for r in records)[-6:] == [1] * 6 and len(chunks) <= 7


def test_nothing_planted_in_the_run_folder_is_written_or_read_through(tmp_path, task):
    run_dir = tmp_path / "run"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for sub in ("logs", "tasks"):
        (run_dir / sub).mkdir(parents=True)
    (run_dir / "logs" / "0.log").symlink_to(victim)
    (run_dir / "tasks" / "0.args.json").symlink_to(victim)
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    prog = tmp_path / "links.py"  # its --out-json is a link to a file it should not hand over
    prog.write_text(
        "import os, sys\n"
        f"os.symlink({str(secret)!r}, sys.argv[sys.argv.index('--out-json') + 1])\n"
        "print('to the log')\n"
    )
    lines = run_worker(tmp_path, [{}], [sys.executable, prog])
    assert victim.read_text() == "precious\n"
    assert "to the log" in (run_dir / "logs" / "0.log").read_text()
    assert not (run_dir / "logs" / "0.log").is_symlink()
    err = lines[1]["error"]
    assert err["cause"] == "bad_output" and "secret" not in json.dumps(lines)


def test_a_fifo_for_out_json_does_not_block_the_worker(tmp_path):
    prog = tmp_path / "fifo.py"
    prog.write_text("import os, sys\nos.mkfifo(sys.argv[sys.argv.index('--out-json') + 1])\n")
    lines = run_worker(tmp_path, [{}, {}], [sys.executable, prog], timeout=20)
    assert [r["error"]["cause"] for r in task_records(lines).values()] == ["bad_output"] * 2


def test_a_run_folder_that_is_a_link_is_refused(tmp_path, task):
    real = tmp_path / "elsewhere"
    real.mkdir()
    data = payload(tmp_path / "real-run", [{}], [sys.executable, task])
    (tmp_path / "link-run").symlink_to(real)
    data["run_dir"] = str(tmp_path / "link-run")
    proc = start_worker(tmp_path, data)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and (b"symbolic links" in err or b"Not a directory" in err)
    assert list(real.iterdir()) == []


def test_a_line_a_task_left_unfinished_does_not_swallow_the_next_record(tmp_path):
    prog = tmp_path / "partial.py"
    prog.write_text(
        "import os, sys\n"
        "out = sys.argv[sys.argv.index('--out-json') + 1]\n"
        "run = os.path.dirname(os.path.dirname(out))\n"
        "open(os.path.join(run, 'results', '0.jsonl'), 'a').write('{\"i\": 1, \"st')\n"
    )
    run_dir = tmp_path / "run"
    assert start_worker(tmp_path, payload(run_dir, [{}, {}], [sys.executable, prog])).wait(30) == 0
    text = (run_dir / "results" / "0.jsonl").read_text().splitlines()
    assert '{"i": 1, "st' in text  # a line of its own now, read as a bad line
    good = [json.loads(x) for x in text if x.startswith('{"i":') and x.endswith("}")]
    assert sorted(r["i"] for r in good) == [0, 1]
