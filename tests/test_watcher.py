"""One Watcher drives many runs: one poll per scheduler and one cat per cluster identity per
cycle; a shared cat is cut with each run's own learnt separator, and one run's separator file
or files never make another run's records misread; one run's failure never stops the others.

On the local backend (real workers), and on files written by the test (fake_slurm.py) where
the order of events must be exact."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from slurmrunner import PollPolicy, Profile, Runner, SlurmRunnerConfig, Store, TaskResources
from slurmrunner.chunks import Piece
from slurmrunner.sharedcat import Part, cut_shared, shared_cat_paths
from slurmrunner.watcher import RunKeys, Watcher, run_keys
from tests.fake_slurm import EVERY_CYCLE, end, fake_run, ok, start, write

from .hostile_cases import (
    CASES,
    SEP_CASES,
    check_case,
    check_honest,
    check_sep_case,
    local_runner,
    watch_cases_together,
)

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "task.py")
FAST = PollPolicy(read_min_s=0.05, read_max_s=0.5, squeue_min_s=0.2, squeue_max_s=2.0)


def tok(c: str) -> str:
    return f"SLURMRUNNER-SEPARATOR-{c * 32}\n"


# grouping
def test_runs_are_grouped_by_scheduler_and_by_cluster_identity():
    sudo = {"backend": "slurm_sudo", "project_dir": "/home/x/p"}
    alice = run_keys(Profile(**sudo, username="alice"))
    bob = run_keys(Profile(**sudo, username="bob"))
    assert alice.scheduler == bob.scheduler  # one squeue, as the server user, for both
    assert alice.identity != bob.identity  # a cat each
    again = run_keys(Profile(backend="slurm_sudo", username="alice", project_dir="/scratch/a"))
    assert again == alice  # another Profile of the same account shares alice's cat
    ssh = {"backend": "slurm_ssh", "project_dir": "/p", "host": "hpc", "ssh_key_path": "/k"}
    a = run_keys(Profile(**ssh, username="alice"))
    b = run_keys(Profile(**ssh, username="bob"))
    assert a.identity == "slurm_ssh:alice@hpc:22" and a.identity != b.identity
    # squeue goes through a user's own connection: never asked for another user's jobs
    assert a.scheduler != b.scheduler
    assert run_keys(Profile(**ssh, username="alice", port=2222)).identity != a.identity
    local = run_keys(Profile(backend="local"), "/q1")
    assert local == RunKeys("local:/q1", "local")
    assert run_keys(Profile(backend="local"), "/q2").scheduler != local.scheduler


# cutting a shared cat (pure)
def _out(*segments: tuple[str, list[str]]) -> str:
    return "".join(t + t.join(files) + t for t, files in segments)


def test_a_shared_cat_is_cut_at_each_runs_own_token():
    a, b = tok("a"), tok("b")
    parts = [Part("/ra", a, [(0, 0), (1, 0)]), Part("/rb", b, [(0, 0)])]
    assert shared_cat_paths(parts, []) == [
        "/ra/results/sep",
        "/ra/results/0.jsonl",
        "/ra/results/sep",
        "/ra/results/1.jsonl",
        "/ra/results/sep",
        "/rb/results/sep",
        "/rb/results/0.jsonl",
        "/rb/results/sep",
    ]
    lookalike = tok("0")  # no run's token: plain content
    out = _out((a, ["x\n", "y" + lookalike]), (b, ["z\n"]))
    cut = cut_shared(out, parts)
    assert cut is not None
    assert cut.pieces == [[Piece("x\n", True), Piece("y" + lookalike, True)], [Piece("z\n", True)]]
    assert cut.sizes == [len(_out((a, ["x\n", "y" + lookalike]))), len(_out((b, ["z\n"])))]


@pytest.mark.parametrize(
    "out",
    [
        _out((tok("a"), ["x" + tok("b")]), (tok("b"), ["z\n"])),  # another run's token in a file
        _out((tok("a"), ["x" + tok("a")]), (tok("b"), ["z\n"])),  # its own token in a file
        _out((tok("b"), ["x\n"]), (tok("b"), ["z\n"])),  # a's separator file is b's now
        _out((tok("c"), ["x\n"]), (tok("b"), ["z\n"])),  # ... or another token
        _out((tok("a"), ["x\n"]), (tok("b"), ["z\n"]))[:-1],  # cut short
        "junk" + _out((tok("a"), ["x\n"]), (tok("b"), ["z\n"])),  # bytes before
        _out((tok("a"), ["x\n"])) + "junk" + _out((tok("b"), ["z\n"])),  # bytes between runs
        _out((tok("a"), ["x\n"])),  # b's separator file is gone
    ],
)
def test_a_shared_cat_that_cannot_be_cut_exactly_is_refused(out):
    parts = [Part("/ra", tok("a"), [(0, 0)]), Part("/rb", tok("b"), [(0, 0)])]
    assert cut_shared(out, parts) is None


def test_separator_files_read_after_the_parts_offer_tokens_to_learn():
    a = tok("a")
    parts = [Part("/ra", a, [(0, 0)])]
    assert shared_cat_paths(parts, ["/rx", "/ry", "/rz"])[3:] == [
        "/rx/results/sep",
        "/ra/results/sep",
        "/ry/results/sep",
        "/ra/results/sep",
        "/rz/results/sep",
        "/ra/results/sep",
    ]
    out = a + "r\n" + a + tok("c") + a + "" + a + "garbage" + a
    cut = cut_shared(out, parts, 3)
    assert cut is not None and cut.pieces == [[Piece("r\n", True)]]
    assert cut.learnt == [tok("c"), "", "garbage"]
    assert cut_shared(a + "r\n" + a + a + a + a, parts, 3) is not None
    assert cut_shared(a + "r\n" + a + a + a, parts, 3) is None  # a fence missing


# one watcher, many runs, real workers
def _two_users(tmp_path: Path) -> tuple[list[Runner], Store]:
    store = Store(tmp_path / "store.sqlite")
    runners = []
    for user in ("ann", "ben"):
        profile = Profile(backend="local", project_dir=str(tmp_path / user))
        runners.append(Runner(SlurmRunnerConfig(), profile, store, FAST))
    return runners, store


def _as_two_users(run) -> RunKeys:
    # Both profiles run as this process's user; their project folder stands for the account.
    keys = run_keys(run.spec.profile, run.spec.local_queue)
    return RunKeys(keys.scheduler, f"local:{run.spec.profile.project_dir}")


def test_one_watcher_drives_six_runs_of_two_users(tmp_path):
    runners, store = _two_users(tmp_path)
    watcher = Watcher(FAST, keys=_as_two_users)
    stop = threading.Event()
    loop = threading.Thread(target=watcher.run_forever, args=(stop,), daemon=True)
    loop.start()
    res = TaskResources(tasks_per_job=3, parallel_tasks_per_job=2)
    runs = []
    try:
        for k in range(6):  # added while the loop runs; half of them started by it
            inputs = [{"x": 10 * k + i} for i in range(7)]
            runner = runners[k % 2]
            if k < 3:
                run = runner.submit([sys.executable, EXAMPLE], inputs, res)
                watcher.add(run)
            else:
                run = runner.prepare([sys.executable, EXAMPLE], inputs, res)
                watcher.add(run, start=True)
            runs.append(run)
        deadline = time.monotonic() + 120
        while watcher.runs():
            assert time.monotonic() < deadline, "the runs did not finish"
            time.sleep(0.1)
    finally:
        stop.set()
        loop.join(10)
    assert not loop.is_alive()
    for k, run in enumerate(runs):
        results = run.results()
        assert [(r.status, r.result["square"]) for r in results] == [
            ("ok", (10 * k + i) ** 2) for i in range(7)
        ]
        assert store.run(run.id).state == "done"
        assert run.status().calls["cat"] >= 1
    stats = watcher.stats
    assert stats.most("poll") == 1  # one poll per cycle of the one queue, for all six runs
    assert stats.most("cat") == 1  # and at most one cat per identity per cycle
    identities = {group for kind, group in stats.calls if kind == "cat"}
    assert identities == {f"local:{tmp_path / 'ann'}", f"local:{tmp_path / 'ben'}"}
    assert not stats.fallbacks and not stats.errors
    for cycle in stats.recent:
        assert sum(n for (kind, _), n in cycle.calls.items() if kind == "cat") <= 2


# a run's separator file or files, against the others of its identity (exact, written here)
def _fake_runs(tmp_path: Path, n: int, n_tasks: int = 2) -> tuple[Watcher, list, list]:
    runs, queries = [], []
    for k in range(n):
        run, query = fake_run(tmp_path / f"r{k}", n_tasks=n_tasks, tasks_per_job=n_tasks)
        runs.append(run)
        queries.append(query)
    # each fake cluster answers for its own run; one account reads all their files
    watcher = Watcher(EVERY_CYCLE, keys=lambda run: RunKeys(f"fake:{run.id}", "alice"))
    for run in runs:
        watcher.add(run, resume=False)
    return watcher, runs, queries


def _cats(watcher: Watcher) -> int:
    return watcher.stats.recent[-1].calls[("cat", "alice")]


def _sep(run) -> Path:
    return Path(run.run_dir, "results", "sep")


def test_tokens_are_learnt_then_one_cat_reads_every_run(tmp_path):
    watcher, runs, _ = _fake_runs(tmp_path, 3)
    for run in runs:
        write(run, 0, start(0), ok(0, 0))
    watcher.step(read_all=True)  # no token known: one run read alone, its token learnt
    assert _cats(watcher) == 1
    assert sum(bool(r.results()) for r in runs) == 1
    watcher.step(read_all=True)  # it, and the others' separator files after it
    assert _cats(watcher) == 1
    assert all(r._sep_token == _sep(r).read_text() for r in runs)
    watcher.step(read_all=True)
    assert _cats(watcher) == 1
    assert all([x.index for x in r.results()] == [0] for r in runs)
    assert watcher.stats.most("cat") == 1 and not watcher.stats.fallbacks


def test_a_run_that_takes_another_runs_separator_never_misreads_it(tmp_path):
    watcher, runs, queries = _fake_runs(tmp_path, 3)
    a, b, c = runs
    for run in runs:
        write(run, 0, start(0), ok(0, 0))
    for _ in range(3):
        watcher.step(read_all=True)
    _sep(a).write_text(_sep(b).read_text())  # a's task makes a's separator b's
    # ... and writes, in a's file, b's token and lines that would pass for b's
    with open(Path(a.run_dir, "results", "0.jsonl"), "a") as fh:
        fh.write(_sep(b).read_text() + json.dumps({**ok(1, 0), "result": "forged"}) + "\n")
    for run in (b, c):
        write(run, 0, ok(1, 0), end(0, 2))
    for query in queries:
        query.states["101"] = "COMPLETED"
    watcher.step(read_all=True)  # the shared cat cannot be cut: each read alone
    assert watcher.stats.fallbacks["alice"] == 1
    assert _cats(watcher) == 4
    for run in (b, c):
        assert [(r.status, r.result) for r in run.results()] == [
            ("ok", {"attempt": 0}),
            ("ok", {"attempt": 0}),
        ]
        assert run.warnings == []
    assert any("results/sep was changed" in w for w in a.warnings)
    for _ in range(4):  # a alone until its job, over, is concluded with what could be read
        watcher.step(read_all=True)
    assert [(r.status, r.error and r.error.cause) for r in a.results()] == [
        ("ok", None),
        ("failed", "bad_record"),
    ]
    assert watcher.runs() == []


def test_a_file_holding_another_runs_token_gets_its_run_read_alone(tmp_path):
    watcher, runs, queries = _fake_runs(tmp_path, 3, n_tasks=3)
    d, e, f = runs
    for run in runs:
        write(run, 0, start(0), ok(0, 0))
    for _ in range(3):
        watcher.step(read_all=True)
    with open(Path(d.run_dir, "results", "0.jsonl"), "a") as fh:  # e's separator, in d's file
        fh.write(_sep(e).read_text())
    write(d, 0, ok(1, 0))
    write(e, 0, ok(1, 0))
    watcher.step(read_all=True)
    assert watcher.stats.fallbacks["alice"] == 1
    assert [x.index for x in d.results()] == [0, 1]  # d's own records, read alone
    assert [x.index for x in e.results()] == [0, 1]
    write(f, 0, ok(1, 0))
    watcher.step(read_all=True)  # d alone, e and f together: no cut refused any more
    assert watcher.stats.fallbacks["alice"] == 1
    assert _cats(watcher) == 2
    assert [x.index for x in f.results()] == [0, 1]
    for run in runs:
        write(run, 0, ok(2, 0), end(0, 3))
    for query in queries:
        query.states["101"] = "COMPLETED"
    watcher.step(read_all=True)
    assert watcher.runs() == []
    assert [len(run.results()) for run in runs] == [3, 3, 3]
    assert all(r.ok for run in runs for r in run.results())


# the hostile-output cases, all driven by one watcher
@pytest.fixture(scope="module")
def together(tmp_path_factory):
    runner, command = local_runner(tmp_path_factory.mktemp("together"))
    return watch_cases_together(runner, command, timeout=240)


def test_the_honest_run_in_one_watcher_with_hostile_ones_is_right(together):
    check_honest(together)
    stats = together["watcher"].stats
    assert stats.most("poll") == 1 and not stats.errors


@pytest.mark.parametrize("case", CASES)
def test_hostile_output_in_one_watcher(together, case):
    check_case(together, case)


@pytest.mark.parametrize("case", SEP_CASES)
def test_a_run_whose_separator_a_task_rewrote(together, case):
    check_sep_case(together, case)


# failures
def test_a_run_whose_step_fails_does_not_stop_the_others(tmp_path, monkeypatch):
    runners, _ = _two_users(tmp_path)
    res = TaskResources(tasks_per_job=2, parallel_tasks_per_job=2)
    runs = [
        runners[k % 2].submit([sys.executable, EXAMPLE], [{"x": k}, {"x": k + 1}], res)
        for k in range(3)
    ]
    bad = runs[0]  # ann's: its reads fail twice, then its scheduler's poll fails twice
    failures = {"read": 2, "poll": 2}
    real_plan, real_poll = bad._read_plan, bad.backend.scheduler.poll

    def read_plan(*a, **k):
        if failures["read"]:
            failures["read"] -= 1
            raise RuntimeError("a bug in reading")
        return real_plan(*a, **k)

    def poll(*a, **k):
        if not failures["read"] and failures["poll"]:
            failures["poll"] -= 1
            raise RuntimeError("a bug in polling")
        return real_poll(*a, **k)

    monkeypatch.setattr(bad, "_read_plan", read_plan)
    monkeypatch.setattr(bad.backend.scheduler, "poll", poll)
    # ann's runs and ben's are polled apart here, so a failing poll is one group's
    watcher = Watcher(FAST, keys=lambda run: RunKeys(*[_as_two_users(run).identity] * 2))
    for run in runs:
        watcher.add(run)
    deadline = time.monotonic() + 90
    while watcher.runs():
        assert time.monotonic() < deadline, "the runs did not finish"
        watcher.step()
        time.sleep(watcher.pause())
    assert failures == {"read": 0, "poll": 0}
    errors = watcher.stats.errors
    assert errors[bad.id] >= 2 and set(errors) <= {bad.id, runs[2].id}  # ann's: the poll too
    for k, run in enumerate(runs):
        assert [r.result["square"] for r in run.results()] == [k * k, (k + 1) ** 2]
    assert any("watching this run failed" in w for w in bad.warnings)
    assert not any("failed" in w for w in runs[1].warnings)


def test_runs_come_and_go_while_the_loop_runs(tmp_path):
    runners, store = _two_users(tmp_path)
    res = TaskResources(tasks_per_job=2, parallel_tasks_per_job=1)
    watcher = Watcher(FAST)
    stop = threading.Event()
    loop = threading.Thread(target=watcher.run_forever, args=(stop,), daemon=True)
    loop.start()
    try:
        slow = runners[0].submit([sys.executable, EXAMPLE], [{"sleep": 60}, {"x": 1}], res)
        # (on two CPUs, quick's job waits for slow's to be cancelled)
        left = runners[1].submit([sys.executable, EXAMPLE], [{"sleep": 60}], res)
        quick = runners[1].prepare([sys.executable, EXAMPLE], [{"x": 3}, {"x": 4}], res)
        for run in (slow, left, slow):  # a run added twice is watched once
            watcher.add(run)
        watcher.add(quick, start=True)
        deadline = time.monotonic() + 120
        while slow.status().jobs.get("RUNNING", 0) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert watcher.cancel(slow.id) == 1  # from this thread, while the loop runs
        watcher.remove(left.id)  # no longer watched here; its job goes on
        while watcher.runs():
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop.set()
        loop.join(10)
    assert [r.result["square"] for r in quick.results()] == [9, 16]
    assert [r.status for r in slow.results()] == ["cancelled", "cancelled"]
    assert store.run(slow.id).state == "cancelled"
    assert store.run(left.id).state == "running" and left.results() == []
    left.cancel()


def test_a_run_that_cannot_start_fails_alone(tmp_path):
    runners, store = _two_users(tmp_path)
    (tmp_path / "file").write_text("")
    res = TaskResources(tasks_per_job=2, parallel_tasks_per_job=1)
    profile = Profile(backend="local", project_dir=str(tmp_path / "file"))
    broken = Runner(SlurmRunnerConfig(), profile, store, FAST).prepare(["true"], [{}], res)
    good = runners[0].prepare([sys.executable, EXAMPLE], [{"x": 5}], res)
    watcher = Watcher(FAST)
    watcher.add(broken, start=True)
    watcher.add(good, start=True)
    deadline = time.monotonic() + 60
    while watcher.runs():
        assert time.monotonic() < deadline
        watcher.step()
        time.sleep(watcher.pause())
    assert store.run(broken.id).state == "failed"
    assert watcher.stats.errors == {broken.id: 1}
    assert [r.result["square"] for r in good.results()] == [25]


def test_a_job_the_scheduler_just_called_pending_is_not_read_in_that_cycle(tmp_path):
    """Each look is a `sudo cat` or an SSH command: a job squeue called PENDING a moment ago,
    in the same cycle, has no worker yet. In a cycle without squeue, a just-submitted job is
    read on the read pace (it may have started since)."""
    run, query = fake_run(tmp_path, n_tasks=2, tasks_per_job=2)
    (job_id,) = run.job_ids()
    query.states[job_id] = "PENDING"
    policy = PollPolicy(read_min_s=0.0, read_max_s=0.0, squeue_min_s=60.0, squeue_max_s=60.0)
    watcher = Watcher(policy, keys=lambda r: RunKeys("fake", "alice"))
    watcher.add(run, resume=False)
    watcher.step()
    calls = watcher.stats.recent[-1].calls
    assert calls[("poll", "fake")] == 1 and calls[("cat", "alice")] == 0
    write(run, 0, start(0), ok(0, 0), ok(1, 0), end(0, 2))
    watcher.step()
    calls = watcher.stats.recent[-1].calls
    assert calls[("poll", "fake")] == 0 and calls[("cat", "alice")] == 1
    assert run.all_ended


def test_runs_of_one_account_started_together_share_their_folder_calls(tmp_path):
    """A server starts many runs of one user in a cycle: their folders take four calls as the
    user in all (a look, one mkdir of every run folder, a check, one mkdir of their
    subfolders), not four per run. A folder planted where one run's goes fails that run
    alone, and nothing is made in it."""
    store = Store(tmp_path / "store.sqlite")
    profile = Profile(backend="local", project_dir=str(tmp_path / "proj"))
    runner = Runner(SlurmRunnerConfig(), profile, store, FAST)
    runs = [runner.prepare([sys.executable, EXAMPLE], [{"x": k}]) for k in range(4)]
    planted = Path(runs[2].run_dir)
    planted.mkdir(parents=True)
    watcher = Watcher(FAST)
    for run in runs:
        watcher.add(run, start=True)
    deadline = time.monotonic() + 60
    while watcher.runs():
        assert time.monotonic() < deadline, "the runs did not finish"
        watcher.step()
        time.sleep(watcher.pause())
    calls = [store.counters(run.id) for run in runs]
    assert sum(c.get("ls", 0) for c in calls) == 2 and sum(c.get("mkdir", 0) for c in calls) == 2
    failed = store.run(runs[2].id)
    assert failed.state == "failed" and "exists" in (failed.message or "")
    assert list(planted.iterdir()) == []
    for k in (0, 1, 3):
        assert store.run(runs[k].id).state == "done"
        assert [r.result["square"] for r in runs[k].results()] == [k * k]


def test_a_job_squeue_sees_start_is_read_in_that_cycle(tmp_path):
    """A user's job pending for long lets the reads back off (up to read_max_s): when squeue
    says it runs, its files are read in that cycle, not up to 2 s later (S1: the last user's
    last job ran 0.5 s and its end was seen 0.7 to 2.6 s after it)."""
    run, query = fake_run(tmp_path, n_tasks=2, tasks_per_job=2)
    (job_id,) = run.job_ids()
    query.states[job_id] = "PENDING"
    t = [0.0]
    policy = PollPolicy(read_min_s=0.2, read_max_s=2.0, squeue_min_s=1.0, squeue_max_s=1.0)
    watcher = Watcher(policy, keys=lambda r: RunKeys("fake", "alice"), clock=lambda: t[0])
    watcher.add(run, resume=False)
    for k in range(60):  # 30 s pending
        t[0] = k * 0.5
        watcher.step()
    ident, sched = watcher._identities["alice"], watcher._schedulers["fake"]
    assert ident.pace.interval == 2.0  # backed off
    t[0] = sched.next_at
    while ident.next_read <= t[0]:  # a cycle where squeue is due and the read is not
        watcher.step()
        t[0] = sched.next_at
    query.states[job_id] = "RUNNING"
    write(run, 0, start(0), ok(0, 0), ok(1, 0), end(0, 2))
    watcher.step()
    calls = watcher.stats.recent[-1].calls
    assert calls[("poll", "fake")] == 1 and calls[("cat", "alice")] == 1
    assert run.all_ended


def _pending_for_30_s(runs: list, queries: list, policy: PollPolicy) -> tuple[Watcher, list]:
    """A watcher (on a clock of the test's) whose runs' jobs were PENDING for 30 s: the
    account's reads have backed off to read_max_s."""
    t = [0.0]
    watcher = Watcher(policy, keys=lambda r: RunKeys("fake", "alice"), clock=lambda: t[0])
    for run, query in zip(runs, queries, strict=True):
        for job_id in run.job_ids():
            query.states[job_id] = "PENDING"
        watcher.add(run, resume=False)
    for k in range(60):
        t[0] = k * 0.5
        watcher.step()
    assert watcher._identities["alice"].pace.interval == policy.read_max_s
    return watcher, t


def test_the_loop_wakes_for_squeue_when_the_reads_have_backed_off(tmp_path):
    """squeue keeps its own pace (a start or end it sees wakes the reads): the loop's pause
    ends when squeue is due, not at the next read (S1: 1.7 s between two squeue at a 1 s pace,
    and an end seen that much later)."""
    run, query = fake_run(tmp_path, n_tasks=2, tasks_per_job=2)
    policy = PollPolicy(read_min_s=0.2, read_max_s=2.0, squeue_min_s=1.0, squeue_max_s=1.0)
    watcher, t = _pending_for_30_s([run], [query], policy)
    sched, ident = watcher._schedulers["fake"], watcher._identities["alice"]
    t[0] = sched.next_at - 0.001  # squeue due in a moment, the next read later
    if ident.next_read < sched.next_at + 0.5:
        ident.next_read = sched.next_at + 1.0
    assert watcher.pause() == pytest.approx(0.001, abs=1e-6)


def _cycles_in(watcher: Watcher, t: list[float], seconds: float) -> int:
    """run_forever on the test's clock: the cycles made in `seconds` (a loop whose pause
    stays 0 never gets there)."""
    n, until = 0, t[0] + seconds
    while t[0] < until:
        watcher.step()
        n += 1
        assert n < 1000, "the loop spins"
        t[0] += watcher.pause()
    return n


def test_a_loop_with_nothing_due_does_not_spin(tmp_path, monkeypatch):
    """Nothing to read or ask yet (no job of the run submitted: it waits for room in the
    user's queue), or a run whose step fails and waits out its backoff: the loop sleeps,
    whatever squeue's pace says."""
    policy = PollPolicy(read_min_s=0.2, read_max_s=2.0, squeue_min_s=1.0, squeue_max_s=1.0)
    t = [0.0]
    run, _ = fake_run(tmp_path / "a", n_tasks=2, tasks_per_job=2)
    run.store.update_job(run.id, 0, done=1)  # no job to read or ask about
    watcher = Watcher(policy, keys=lambda r: RunKeys("fake", "alice"), clock=lambda: t[0])
    watcher.add(run, resume=False)
    assert _cycles_in(watcher, t, 10.0) <= 12  # about one per read_max_s, not thousands

    failing, _ = fake_run(tmp_path / "b", n_tasks=2, tasks_per_job=2)
    watcher = Watcher(policy, keys=lambda r: RunKeys("fake", "bob"), clock=lambda: t[0])
    watcher.add(failing, resume=False)

    def broken(e: object) -> None:
        raise RuntimeError("the store is down")

    monkeypatch.setattr(watcher, "_prepare", broken)
    assert _cycles_in(watcher, t, 10.0) <= 8  # backoff 1, 2, 4, 8 s
    assert watcher.stats.errors[failing.id] >= 3


def _one_account(tmp_path: Path, n: int) -> tuple[Watcher, list, list, list[float]]:
    """n runs of one job each (each on a fake cluster of its own, squeue every cycle) whose
    files are one account's, and a watcher on a clock of the test's (not watching them yet)."""
    runs, queries = [], []
    for k in range(n):
        run, query = fake_run(tmp_path / f"r{k}", n_tasks=1, tasks_per_job=1)
        runs.append(run)
        queries.append(query)
    policy = PollPolicy(read_min_s=0.2, read_max_s=2.0, squeue_min_s=0.0, squeue_max_s=0.0)
    t = [0.0]
    watcher = Watcher(policy, keys=lambda r: RunKeys(f"fake:{r.id}", "alice"), clock=lambda: t[0])
    return watcher, runs, queries, t


def test_runs_of_an_account_that_all_ended_unread_are_read_at_the_minimum_pace(tmp_path):
    """Runs whose separator is not known yet are read one per look while no run of the
    account is known (watchreads.py): the looks that follow come at the minimum pace, not at
    a pace that backed off while the jobs were pending (S1: short jobs squeue never saw
    running, whose ends were seen 2-3.5 s late)."""
    watcher, runs, queries, t = _one_account(tmp_path, 3)
    policy = watcher.poll_policy
    for run, query in zip(runs, queries, strict=True):
        query.states[run.job_ids()[0]] = "PENDING"
        watcher.add(run, resume=False)
    for k in range(60):
        t[0] = k * 0.5
        watcher.step()
    ident = watcher._identities["alice"]
    assert ident.pace.interval == 2.0
    for run, query in zip(runs, queries, strict=True):  # all ran and ended between two polls
        query.states[run.job_ids()[0]] = "COMPLETED"
        write(run, 0, start(0), ok(0, 0), end(0, 1))
    ended_at = t[0] = 30.0
    while True:
        watcher.step()
        assert _cats(watcher) <= 1  # one run read alone per look
        if all(r.all_ended for r in runs):
            break
        t[0] = max(ident.next_read, t[0])
        assert t[0] - ended_at < 1.0
    assert t[0] - ended_at <= 2 * policy.read_min_s + 1e-9


def test_runs_whose_files_never_say_anything_do_not_speed_up_the_reads(tmp_path):
    """Two running jobs whose workers never wrote their separator: each look reads one alone
    and learns nothing, so the account's reads keep their backed-off pace (no cat every
    read_min_s for as long as such jobs run)."""
    watcher, runs, _, t = _one_account(tmp_path, 2)
    policy = watcher.poll_policy
    for run in runs:
        watcher.add(run, resume=False)  # RUNNING, nothing written
    cats = 0
    for k in range(120):
        t[0] = k * 0.5
        watcher.step()
        cats += _cats(watcher)
    ident = watcher._identities["alice"]
    assert ident.pace.interval == policy.read_max_s
    assert cats < 60 / 1.0  # backed off: far fewer looks than one per read_min_s
    assert not ident.tokens
