"""The Python API on the embedded local backend: run, submit/poll/cancel, attach."""

import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurmrunner import (
    PollPolicy,
    Profile,
    Runner,
    SlurmRunnerConfig,
    Store,
    TaskResources,
    script,
)
from slurmrunner.backends import backend_for
from slurmrunner.errors import ConfigError, HostError, SubmitLimitError, TaskFailedError
from slurmrunner.runner import Run
from slurmrunner.store import claim_is_live, new_claim

TASK = str(Path(__file__).resolve().parents[1] / "examples" / "task.py")


def runner(tmp_path):
    profile = Profile(backend="local", project_dir=str(tmp_path / "proj"))
    return Runner(SlurmRunnerConfig(), profile, Store(tmp_path / "store.sqlite"))


def test_run_returns_results_in_input_order(tmp_path):
    results = runner(tmp_path).run([sys.executable, TASK], [{"x": i} for i in range(12)])
    assert [r.result["square"] for r in results] == [i * i for i in range(12)]
    assert all(r.status == "ok" and r.duration_s is not None for r in results)


def test_submit_then_cancel_reports_every_task_cancelled(tmp_path):
    r = runner(tmp_path)
    run = r.submit([sys.executable, TASK], [{"sleep": 60} for _ in range(4)])
    deadline = time.monotonic() + 20
    while run.poll().jobs.get("RUNNING", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run.cancel() >= 1
    results = run.results()
    assert [x.status for x in results] == ["cancelled"] * 4
    assert all(x.error.cause == "cancelled" for x in results)


def test_attach_finds_the_run_and_its_results(tmp_path):
    r = runner(tmp_path)
    run = r.submit([sys.executable, TASK], [{"x": 2}, {"x": 3}])
    first = run.wait(timeout=60)
    again = Runner.attach(run.id, r.store)
    assert again.results() == first
    assert again.status().done
    assert again.status().calls["local_submit"] == 2


def test_explicit_batching_is_honoured(tmp_path):
    res = TaskResources(tasks_per_job=3, parallel_tasks_per_job=1)
    results = runner(tmp_path).run([sys.executable, TASK], [{"x": i} for i in range(7)], res)
    assert len({x.job_id for x in results}) == 3


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _unsubmitted_run(tmp_path, monkeypatch, n_inputs=6):
    """A run stored with its jobs but none submitted, as if its process died at once."""
    r = runner(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(Run, "_submit_missing", lambda self: None)
        run = r.submit([sys.executable, TASK], [{"x": i} for i in range(n_inputs)])
    return r, run


def test_a_claim_is_taken_once_even_from_a_stale_view(tmp_path, monkeypatch):
    r, run = _unsubmitted_run(tmp_path, monkeypatch)
    dead = f"{socket.gethostname()}|{_dead_pid()}|x|{time.time():.0f}"
    for row in r.store.jobs(run.id):
        r.store.update_job(run.id, row.idx, state="SUBMITTING", claim=dead)
    a = Runner.attach(run.id, Store(r.store.path))
    b = Runner.attach(run.id, Store(r.store.path))
    stale = a.store.jobs(run.id)  # A read the rows, then B did everything
    b._submit_missing()
    n_jobs = len(stale)
    assert b.calls["local_submit"] == n_jobs
    monkeypatch.setattr(a.store, "jobs", lambda run_id: stale)
    a._submit_missing()
    assert a.calls["local_submit"] == 0  # every claim it tried had moved on
    monkeypatch.undo()
    assert all(row.job_id for row in Store(r.store.path).jobs(run.id))
    assert [x.result["square"] for x in b.wait(timeout=60)] == [i * i for i in range(6)]


def test_a_live_claim_is_left_alone_and_a_dead_one_taken_over(tmp_path, monkeypatch):
    r, run = _unsubmitted_run(tmp_path, monkeypatch, n_inputs=2)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        live = f"{socket.gethostname()}|{holder.pid}|x|{time.time():.0f}"
        for row in r.store.jobs(run.id):
            r.store.update_job(run.id, row.idx, state="SUBMITTING", claim=live)
        again = Runner.attach(run.id, Store(r.store.path))
        again._submit_missing()
        assert again.calls["local_submit"] == 0
    finally:
        holder.kill()
        holder.wait()
    again._submit_missing()  # the holder is gone: look for its job, then submit
    assert again.calls["local_submit"] == len(r.store.jobs(run.id))


def test_claim_liveness():
    mine = new_claim()
    host = socket.gethostname()
    assert not claim_is_live("", mine)
    assert not claim_is_live(mine, mine)
    assert claim_is_live(new_claim(), mine)  # another run object of this process
    assert claim_is_live(f"{host}|1|x|0", mine)  # pid 1 runs
    assert not claim_is_live(f"{host}|{_dead_pid()}|x|0", mine)
    assert claim_is_live(f"elsewhere|1|x|{time.time():.0f}", mine)  # cannot look: trusted
    assert not claim_is_live("elsewhere|1|x|0", mine)  # ... for ten minutes
    assert not claim_is_live("garbage", mine)


def test_a_job_of_many_chunks_is_read_whole_and_each_chunk_once(tmp_path):
    # 2,500 tasks in one job: results in three chunks of at most 1,000 records
    r = runner(tmp_path)
    res = TaskResources(tasks_per_job=2500, parallel_tasks_per_job=2)
    run = r.submit(["true"], [{} for _ in range(2500)], res, call="stdin")
    results = run.wait(timeout=120)
    assert [x.index for x in results] == list(range(2500))
    assert all(x.status == "ok" for x in results)
    chunks = sorted(p.name for p in Path(run.run_dir, "results").iterdir())
    assert chunks == ["0.1.jsonl", "0.2.jsonl", "0.jsonl", "sep"]
    assert run._watch[0].chunk == 2


def test_a_reattaching_reader_catches_up_on_many_chunks_in_few_looks(tmp_path, monkeypatch):
    monkeypatch.setattr(script, "RESULTS_CHUNK_RECORDS", 10)
    r = runner(tmp_path)
    res = TaskResources(tasks_per_job=300, parallel_tasks_per_job=2)
    run = r.submit(["true"], [{} for _ in range(300)], res, call="stdin")
    run.wait(timeout=120)
    assert len(list(Path(run.run_dir, "results").glob("*.jsonl"))) == 30
    # forget what was read, as a process that starts watching a finished job would
    db = sqlite3.connect(r.store.path)
    with db:
        db.execute("UPDATE tasks SET result = NULL")
        db.execute("DELETE FROM status_counts")  # kept with the results
        db.execute("UPDATE jobs SET done = 0, state = 'RUNNING'")
    db.close()
    cats_before = r.store.counters(run.id).get("cat", 0)
    again = Runner.attach(run.id, Store(r.store.path))
    results = again.wait(timeout=60)
    assert [x.index for x in results] == list(range(300))
    assert all(x.status == "ok" for x in results)
    # 30 chunks: one look each would take 30; reading ahead 1, 2, 4, 8, 16 takes 5
    assert again.status().calls["cat"] - cats_before <= 6


def test_cancel_keeps_the_outcome_of_tasks_that_had_ended(tmp_path):
    r = runner(tmp_path)
    res = TaskResources(tasks_per_job=4, parallel_tasks_per_job=2)
    inputs = [{"x": 3}, {"x": 4}, {"sleep": 60}, {"sleep": 60}]
    run = r.submit([sys.executable, TASK], inputs, res)
    results_file = Path(run.run_dir, "results", "0.jsonl")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the two quick ones are written, nobody has read them
        if results_file.exists() and results_file.read_text().count('"status":"ok"') == 2:
            break
        time.sleep(0.05)
    assert run.cancel() == 1
    out = run.results()
    assert [x.status for x in out] == ["ok", "ok", "cancelled", "cancelled"]
    assert [x.result["square"] for x in out[:2]] == [9, 16]


def test_a_failed_look_at_an_ended_job_concludes_nothing(tmp_path, monkeypatch):
    r = runner(tmp_path)
    run = r.submit([sys.executable, TASK], [{"x": 5}, {"x": 6}])
    job_ids = run.job_ids()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # ended, and nobody has looked at its files
        if all(s.terminal for s in run.backend.scheduler.poll(job_ids).values()):
            break
        time.sleep(0.05)
    real_run = run.backend.user_host.run

    def unreachable(argv, *a, **k):
        if argv[0] == "cat":
            raise HostError("cluster unreachable for a moment")
        return real_run(argv, *a, **k)

    monkeypatch.setattr(run.backend.user_host, "run", unreachable)
    run.poll()
    run.poll()
    assert run.results() == [] or all(x.status == "ok" for x in run.results())
    assert not run.status().done
    monkeypatch.undo()
    results = run.wait(timeout=30)
    assert [x.result["square"] for x in results] == [25, 36]


def test_a_full_user_queue_delays_jobs_and_loses_nothing(tmp_path, monkeypatch):
    # As sbatch does under MaxSubmitJobsPerUser=1: a second job is refused while one is queued.
    r = runner(tmp_path)
    r.poll_policy = PollPolicy(submit_limit_retry_s=0.2)
    scheduler = backend_for(r.profile).scheduler
    real_submit = scheduler.submit
    queued_at_once = []
    submitted: list[str] = []

    def limited_submit(script_text):
        live = [s for s in scheduler.poll(submitted).values() if not s.terminal]
        queued_at_once.append(len(live))
        if live:
            raise SubmitLimitError(
                "sbatch refused the job: sbatch: error: QOSMaxSubmitJobPerUserLimit"
            )
        submitted.append(real_submit(script_text))
        return submitted[-1]

    monkeypatch.setattr(scheduler, "submit", limited_submit)
    res = TaskResources(tasks_per_job=2, parallel_tasks_per_job=2)
    run = r.submit([sys.executable, TASK], [{"x": i} for i in range(8)], res)
    results = run.wait(timeout=60)
    assert [x.result["square"] for x in results] == [i * i for i in range(8)]
    assert len(set(run.job_ids())) == 4
    assert max(queued_at_once) >= 1  # the limit was met...
    assert run.status().calls["local_submit"] > 4  # ... and waited out, not failed
    assert any("room in the user's queue" in w for w in run.warnings)


def test_api_takes_a_generator_and_plain_dict_resources(tmp_path):
    inputs = ({"x": i} for i in range(5))  # read once, however long
    results = runner(tmp_path).run([sys.executable, TASK], inputs, {"tasks_per_job": 2})
    assert [r.result["square"] for r in results] == [0, 1, 4, 9, 16]
    assert all(r.ok for r in results)
    assert len({r.job_id for r in results}) == 3


def test_as_completed_yields_each_result_once(tmp_path):
    run = runner(tmp_path).submit([sys.executable, TASK], [{"x": i} for i in range(6)])
    seen = [r.index for r in run.as_completed(timeout=60)]
    assert sorted(seen) == list(range(6))
    again = Runner.attach(run.id, run.store)
    assert sorted(r.index for r in again.as_completed(timeout=5)) == list(range(6))


def test_raise_on_failure_carries_every_result(tmp_path):
    inputs = [{"x": 1}, {"x": 2, "fail": 4}, {"x": 3}]
    with pytest.raises(TaskFailedError) as caught:
        runner(tmp_path).run([sys.executable, TASK], inputs, raise_on_failure=True)
    assert [r.index for r in caught.value.failed] == [1]
    assert [r.ok for r in caught.value.results] == [True, False, True]
    assert "task 1" in str(caught.value) and "exit_code" in str(caught.value)


def test_bad_inputs_are_refused_before_anything_is_stored(tmp_path):
    r = runner(tmp_path)
    with pytest.raises(ConfigError, match=r"inputs\[1\]"):
        r.submit([sys.executable, TASK], [{"x": 1}, {"x": object()}])
    with pytest.raises(ConfigError, match="command"):
        r.submit("python3 task.py", [{"x": 1}])
    assert r.store.runs() == []


def test_a_run_folder_that_exists_is_refused_and_nothing_is_submitted(tmp_path):
    r = runner(tmp_path)
    run = r.prepare([sys.executable, TASK], [{"x": 1}])
    planted = Path(run.run_dir)
    planted.mkdir(parents=True)
    (planted / "logs").symlink_to(tmp_path)  # what a plant would hold
    with pytest.raises(HostError, match="must not exist"):
        run.start()
    assert run.job_ids() == []
    assert [p.name for p in planted.iterdir()] == ["logs"]


@pytest.mark.parametrize(
    ("mode", "refused"), [(0o775, True), (0o757, True), (0o1777, False), (0o755, False)]
)
def test_a_project_folder_others_may_write_is_refused(tmp_path, mode, refused):
    r = runner(tmp_path)
    project = tmp_path / "proj"
    project.mkdir()
    project.chmod(mode)
    if refused:
        with pytest.raises(ConfigError, match=rf"{project} may be written by other users.*go-w"):
            r.submit([sys.executable, TASK], [{"x": 1}])
        assert r.store.jobs(r.store.runs()[0].id)[0].job_id is None
    else:
        assert [x.result["square"] for x in r.run([sys.executable, TASK], [{"x": 3}])] == [9]
    if refused:  # refused before anything was made in it
        assert list(project.iterdir()) == []
    (tmp_path / "proj").chmod(0o700)
    (project / ".slurmrunner").mkdir(exist_ok=True)
    (project / ".slurmrunner").chmod(0o777)
    with pytest.raises(ConfigError, match=r"\.slurmrunner may be written"):
        r.submit([sys.executable, TASK], [{"x": 1}])


def test_folder_checks_read_ls_as_it_prints():
    from slurmrunner.run_folders import check_folders

    parents = ["/p", "/p/.slurmrunner", "/p/.slurmrunner/runs"]
    ok = "drwx------ 2 1000 1000 40 Nov 30 14:27 {}"
    listing = "\n".join(ok.format(p) for p in [*parents, "/p/.slurmrunner/runs/R"])
    check_folders(listing, parents, "/p/.slurmrunner/runs/R")
    iso = listing.replace("Nov 30 14:27", "2024-11-30 14:27")  # another locale's dates
    check_folders(iso, parents, "/p/.slurmrunner/runs/R")
    first = "2 1000 1000 40 Nov 30 14:27 /p\n"
    foreign = listing.replace(first, first.replace("1000", "1001"))
    with pytest.raises(ConfigError, match="belongs to another account"):
        check_folders(foreign, parents, "/p/.slurmrunner/runs/R")
    rooted = listing.replace(first, first.replace("1000", "0"))
    check_folders(rooted, parents, "/p/.slurmrunner/runs/R")
    with pytest.raises(HostError, match="cannot check"):
        check_folders("", parents, "/p/.slurmrunner/runs/R")


def test_max_result_bytes_reaches_the_worker(tmp_path):
    # A result over the admin's bound stays in the task's file and the task says so.
    config = SlurmRunnerConfig(max_result_bytes=2048)
    r = Runner(config, Profile(backend="local", project_dir=str(tmp_path / "p")), Store(":memory:"))
    big = tmp_path / "big.py"
    big.write_text(
        "import json, sys\n"
        "out = sys.argv[sys.argv.index('--out-json') + 1]\n"
        "n = json.load(open(sys.argv[sys.argv.index('--args-json') + 1]))['n']\n"
        "json.dump({'blob': 'x' * n}, open(out, 'w'))\n"
    )
    small, large = r.run([sys.executable, str(big)], [{"n": 100}, {"n": 5000}])
    assert small.ok and small.result == {"blob": "x" * 100}
    assert not large.ok and large.error.cause == "result_too_large"
    assert "max_result_bytes=2048" in large.error.message


def test_a_connection_drop_while_making_the_run_folder_is_survived(tmp_path, monkeypatch):
    # As over SSH: the mkdir ran, then the connection dropped before its answer came.
    from slurmrunner.hosts.ssh import SSHCommandInterrupted

    r = runner(tmp_path)
    run = r.prepare([sys.executable, TASK], [{"x": 3}])
    host = run.backend.user_host
    real_run = host.run
    dropped = []

    def drop_once(argv, *a, **k):
        result = real_run(argv, *a, **k)
        if argv[:3] == ["mkdir", "-m", "700"] and not dropped:
            dropped.append(argv)
            raise SSHCommandInterrupted("connection dropped while it ran")
        return result

    monkeypatch.setattr(host, "run", drop_once)
    run.start()
    monkeypatch.undo()
    assert dropped
    assert [x.result["square"] for x in run.wait(timeout=60)] == [9]


@pytest.mark.parametrize(
    ("how", "name", "number"), [("SIGSEGV", "SIGSEGV", 11), ("abort", "SIGABRT", 6)]
)
def test_a_task_that_kills_itself_stays_signal_with_its_number(tmp_path, how, name, number):
    prog = tmp_path / "crash.py"
    kill = "os.abort()" if how == "abort" else f"os.kill(os.getpid(), signal.{how})"
    prog.write_text(f"import os, signal\n{kill}\n")
    (r,) = runner(tmp_path).run([sys.executable, str(prog)], [{}])
    assert (r.status, r.error.cause) == ("failed", "signal")
    assert r.error.message == f"killed by {name} (signal {number})"


def test_folders_are_looked_at_before_anything_is_made_in_them():
    from slurmrunner.run_folders import check_before_making

    subs = ["/p/.slurmrunner", "/p/.slurmrunner/runs"]
    base = "drwx------ 2 1000 1000 40 Nov 30 14:27 /p/"
    assert check_before_making(base, "/p", subs) == subs  # nothing made yet: fine, both missing
    mine = base + "\ndrwx------ 2 1000 1000 40 Nov 30 14:27 /p/.slurmrunner"
    assert check_before_making(mine, "/p", subs) == ["/p/.slurmrunner/runs"]
    both = mine + "\ndrwx------ 2 1000 1000 40 Nov 30 14:27 /p/.slurmrunner/runs"
    assert check_before_making(both, "/p", subs) == []  # nothing to make: no mkdir
    planted = base + "\nlrwxrwxrwx 1 1001 1001 9 Nov 30 14:27 /p/.slurmrunner -> /home/bob"
    with pytest.raises(ConfigError, match=r"\.slurmrunner is a link"):
        check_before_making(planted, "/p", subs)
    with pytest.raises(ConfigError, match="may be written by other users"):
        check_before_making(base.replace("drwx------", "drwxrwxrwx"), "/p", subs)
    foreign = base + "\ndrwx------ 2 1001 1001 40 Nov 30 14:27 /p/.slurmrunner"
    with pytest.raises(ConfigError, match="belongs to another account"):
        check_before_making(foreign, "/p", subs)
    sticky_root = "drwxrwxrwt 2 0 0 40 Nov 30 14:27 /p/"
    check_before_making(sticky_root + foreign[len(base) :], "/p", subs)  # checked after
    with pytest.raises(HostError, match="cannot check"):
        check_before_making("", "/p", subs)


def test_our_own_folders_that_others_may_write_are_refused_even_sticky():
    """Under a shared scratch (root's, 1777) another account may make .slurmrunner/runs first,
    sticky and world-writable: the user's mkdir would then work in a folder whose owner can
    swap the run folder for one of its own before the check. Only the project folder itself
    may be sticky."""
    from slurmrunner.run_folders import check_before_making, check_folders

    subs = ["/s/.slurmrunner", "/s/.slurmrunner/runs"]
    scratch = "drwxrwxrwt 2 0 0 40 Nov 30 14:27 /s/"
    theirs = "drwxrwxrwt 2 1001 1001 40 Nov 30 14:27 "
    listing = "\n".join([scratch, theirs + subs[0], theirs + subs[1]])
    with pytest.raises(ConfigError, match=r"\.slurmrunner may be written by other users"):
        check_before_making(listing, "/s", subs)
    after = "\n".join(
        [scratch[:-1], theirs + subs[0], theirs + subs[1], theirs + "/s/.slurmrunner/runs/R"]
    )
    with pytest.raises(ConfigError, match="may be written by other users"):
        check_folders(after, ["/s", *subs], "/s/.slurmrunner/runs/R")


def test_a_link_whose_target_fakes_a_line_of_ls_is_refused():
    """ls prints a link's target as it is: a newline in it and a line of the planter's making
    must not pass for a real folder (nor for the project folder's own line)."""
    from slurmrunner.run_folders import check_before_making

    subs = ["/p/.slurmrunner", "/p/.slurmrunner/runs"]
    base = "drwx------ 2 1000 1000 40 Nov 30 14:27 /p/"
    fake = "drwx------ 2 1000 1000 40 Nov 30 14:27 /p/.slurmrunner"
    link = f"lrwxrwxrwx 1 1000 1000 9 Nov 30 14:27 /p/.slurmrunner -> /home/bob\n{fake}"
    with pytest.raises(HostError, match="cannot check"):
        check_before_making(f"{base}\n{link}", "/p", subs)
    with pytest.raises(HostError, match="cannot check"):  # a second line for the project
        check_before_making(f"{base}\n{base}", "/p", subs)


def test_a_users_later_runs_make_only_their_own_folders(tmp_path):
    """The project's .slurmrunner/runs is looked at before each run but made once: a run
    costs a listing, its folder, a listing and its subfolders (each call is a sudo or an SSH
    command); the first also makes the project folder and its parents."""
    r = runner(tmp_path)
    first, second = (r.submit([sys.executable, TASK], [{"x": 1}]) for _ in range(2))
    for run in (first, second):
        run.wait()
    calls = [r.store.counters(run.id) for run in (first, second)]
    assert (calls[0]["ls"], calls[0]["mkdir"]) == (3, 4)  # the project folder was missing
    assert (calls[1]["ls"], calls[1]["mkdir"]) == (2, 2)


def test_a_link_planted_for_the_run_folders_is_refused_before_it_is_followed(tmp_path):
    project, trap = tmp_path / "proj", tmp_path / "trap"
    project.mkdir()
    trap.mkdir()
    (project / ".slurmrunner").symlink_to(trap)
    r = Runner(
        SlurmRunnerConfig(), Profile(backend="local", project_dir=str(project)), Store(":memory:")
    )
    with pytest.raises(ConfigError, match=r"\.slurmrunner is a link"):
        r.submit([sys.executable, TASK], [{"x": 1}])
    assert list(trap.iterdir()) == []
