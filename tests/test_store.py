"""The run store on every database it lives in: the CLI's own SQLite file, the service's SQLite
database (by URL, tables made elsewhere) and, when $SLURMRUNNER_TEST_PG_URL names one
(scripts/pg-up --fresh-db NAME), PostgreSQL. Concurrency is tested with real processes.
Upgrades of files written by the raw-sqlite3 versions and the service's migration are in
test_store_upgrades.py.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from slurmrunner import store_schema
from slurmrunner.errors import RunNotFoundError
from slurmrunner.results import TaskError, TaskResult
from slurmrunner.store import JobRow, Store

PG_ENV = "SLURMRUNNER_TEST_PG_URL"


def pg_schema_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL whose connections work in a schema of their own (dropped after the test)."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL: ${PG_ENV} is not set (scripts/pg-up --fresh-db gives one)")
    name = f"t_{secrets.token_hex(6)}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={name}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["file", "sqlite-url", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """What Store() is given: the CLI's file path, or a URL whose tables exist already (the
    service's migrations make them; here store_schema's create_all stands in)."""
    if request.param == "file":
        yield str(tmp_path / "state" / "runs.sqlite")
        return
    urls = (
        pg_schema_url(request)
        if request.param == "postgresql"
        else iter([f"sqlite:///{tmp_path / 'service.sqlite'}"])
    )
    for url in urls:
        engine = create_engine(url)
        store_schema.metadata.create_all(engine)
        engine.dispose()
        yield url


@pytest.fixture
def store(target: str) -> Iterator[Store]:
    opened = Store(target)
    yield opened
    opened.close()


def make_run(store: Store, run_id: str = "r", n: int = 10, sizes=(5, 5), **owner) -> None:
    store.create_run(run_id, {"command": ["true"]}, [{"x": i} for i in range(n)], sizes, **owner)


def result(i: int, status: str = "ok") -> TaskResult:
    if status == "ok":
        return TaskResult(i, "ok", {"value": i}, None, 0.5, 12.5, "42", f"/logs/{i}.log")
    return TaskResult(i, status, None, TaskError("exit", f"task {i}", "tail"), 1.0, None, "42")


# Several processes on one store, started together: each opens its own Store, says "ready",
# waits for the go file, then acts. The target travels in the environment (a PostgreSQL URL
# holds a password: never on a command line).
WORKER = r"""
import json, os, sys, time
from slurmrunner.results import TaskResult
from slurmrunner.store import JobRow, Store
go, action, *args = sys.argv[1:]
store = Store(os.environ["STORE_TARGET"])
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
if action == "claim":
    print(json.dumps(store.claim_job("r", JobRow(**json.loads(args[0])), args[1])))
else:  # save STATUS FIRST LAST BATCH: results FIRST..LAST-1, in batches
    status, first, last, batch = args[0], int(args[1]), int(args[2]), int(args[3])
    for lo in range(first, last, batch):
        store.save_results("r", [TaskResult(i, status) for i in range(lo, min(lo + batch, last))])
    print("done")
store.close()
"""


def run_together(target: str, tmp_path: Path, argvs: list[list[str]]) -> list[str]:
    go = tmp_path / f"go-{secrets.token_hex(4)}"
    env = {**os.environ, "STORE_TARGET": target}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(go), *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    go.touch()
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outs.append(out.strip())
    return outs


def test_a_run_reads_back_as_written(store: Store) -> None:
    make_run(store, n=7, sizes=(4, 3))
    run = store.run("r")
    assert (run.id, run.state, run.n_tasks, run.spec) == (
        "r",
        "submitting",
        7,
        {"command": ["true"]},
    )
    assert (run.user_id, run.resource_id, run.profile_id) == (None, None, None)
    jobs = store.jobs("r")
    assert [(j.idx, j.task_range, j.state, j.job_id, j.done, j.claim) for j in jobs] == [
        (0, range(0, 4), "NEW", None, False, ""),
        (1, range(4, 7), "NEW", None, False, ""),
    ]
    assert store.task_args("r", range(2, 5)) == [{"x": 2}, {"x": 3}, {"x": 4}]
    store.set_run_state("r", "running")
    store.update_job("r", 1, job_id="123", state="PENDING", reason="Priority")
    store.update_job("r", 0, state="COMPLETED", done=1)
    assert store.run("r").state == "running"
    assert store.jobs("r")[1] == JobRow(1, 4, 3, "123", "PENDING", "Priority", False)
    assert store.jobs("r")[0].done is True
    assert store.status_counts("r") == Counter() and store.results("r") == {}
    assert store.counters("r") == {}


def test_an_unknown_run_names_the_store_without_its_password(store: Store, target: str) -> None:
    with pytest.raises(RunNotFoundError, match="no run 'nope' in") as caught:
        store.run("nope")
    password = make_url(target).password if "://" in target else None
    assert str(store.path) in str(caught.value)
    if password:
        assert password not in str(caught.value) and password not in str(store.path)
    with pytest.raises(RunNotFoundError):
        store.run_owner("nope")


def test_resolve_run_id_last_exact_prefix_and_like_escaped(store: Store) -> None:
    with pytest.raises(RunNotFoundError, match="no runs yet"):
        store.resolve_run_id("last")
    for run_id in ("abc", "abcd", "ab_1", "abX1", "zz%9", "zzz9"):
        make_run(store, run_id, n=1, sizes=(1,))
    assert store.resolve_run_id("last") == "zzz9"
    assert store.resolve_run_id("abc") == "abc"  # exact, though also a prefix of abcd
    assert store.resolve_run_id("abcd") == "abcd"
    assert store.resolve_run_id("ab_") == "ab_1"  # `_` is a character, not LIKE's wildcard
    assert store.resolve_run_id("zz%") == "zz%9"  # `%` too
    with pytest.raises(RunNotFoundError, match="matches several runs"):
        store.resolve_run_id("ab")
    with pytest.raises(RunNotFoundError, match="no run 'q'"):
        store.resolve_run_id("q")


def test_runs_newest_first_by_owner_and_the_active_ones(store: Store) -> None:
    owners = {"r1": 1, "r2": 2, "r3": 1, "r4": None, "r5": 1}
    for run_id, user in owners.items():
        make_run(store, run_id, n=2, sizes=(2,), user_id=user, resource_id=7, profile_id=9)
    assert [r.id for r in store.runs()] == ["r5", "r4", "r3", "r2", "r1"]
    assert [r.id for r in store.runs(limit=2)] == ["r5", "r4"]
    assert [r.id for r in store.runs(user_id=1)] == ["r5", "r3", "r1"]
    assert [r.id for r in store.runs(limit=1, user_id=2)] == ["r2"]
    assert store.runs(user_id=3) == []
    assert store.run("r3").resource_id == 7 and store.run("r3").profile_id == 9
    assert {run_id: store.run_owner(run_id) for run_id in owners} == owners
    for run_id, state in (("r1", "done"), ("r2", "cancelled"), ("r3", "failed"), ("r4", "running")):
        store.set_run_state(run_id, state)
    assert store.active_runs() == ["r4", "r5"]  # oldest first; r5 still `submitting`


def test_claim_job_is_a_compare_and_set(store: Store) -> None:
    make_run(store)
    seen = store.jobs("r")[0]
    assert store.claim_job("r", seen, "me|1|a|0")
    assert not store.claim_job("r", seen, "you|2|b|0")  # changed since `seen` was read
    now = store.jobs("r")[0]
    assert (now.state, now.claim) == ("SUBMITTING", "me|1|a|0")
    assert store.claim_job("r", now, "you|2|b|0")  # taken over from what was seen
    store.update_job("r", 0, job_id="77", state="PENDING")
    assert not store.claim_job("r", store.jobs("r")[0], "me|1|a|0")  # submitted: never again
    store.update_job("r", 1, done=1)
    assert not store.claim_job("r", store.jobs("r")[1], "me|1|a|0")  # done: never again


def test_of_processes_claiming_a_job_at_once_one_wins(
    store: Store, target: str, tmp_path: Path
) -> None:
    make_run(store)
    seen = json.dumps(store.jobs("r")[0].__dict__)
    outs = run_together(target, tmp_path, [["claim", seen, f"p{k}|1|x|0"] for k in range(6)])
    assert outs.count("true") == 1 and outs.count("false") == 5
    assert store.jobs("r")[0].claim == f"p{outs.index('true')}|1|x|0"


def test_a_result_is_written_once_and_counted_once(store: Store) -> None:
    make_run(store)
    store.save_results("r", [result(0), result(1, "failed"), result(2)])
    # again, as another watcher would: a different outcome for 1, nothing may change
    store.save_results("r", [result(1), result(2, "cancelled"), result(3, "cancelled")])
    # twice in one batch: the first given wins, as before the port
    store.save_results("r", [result(4, "failed"), result(4), result(5), result(5, "failed")])
    store.save_results("r", [])
    saved = store.results("r")
    assert {i: r.status for i, r in saved.items()} == {
        0: "ok",
        1: "failed",
        2: "ok",
        3: "cancelled",
        4: "failed",
        5: "ok",
    }
    assert saved[0] == result(0) and saved[1] == result(1, "failed")  # every field kept
    assert store.status_counts("r") == Counter(ok=3, failed=2, cancelled=1)
    assert store.finished_indices("r") == {0, 1, 2, 3, 4, 5}


def test_results_of_one_run_do_not_touch_another(store: Store) -> None:
    make_run(store, "a")
    make_run(store, "b")
    store.save_results("a", [result(i) for i in range(10)])
    store.save_results("b", [result(i, "failed") for i in range(3)])
    assert store.status_counts("a") == Counter(ok=10)
    assert store.status_counts("b") == Counter(failed=3)
    assert store.finished_indices("b") == {0, 1, 2}


def test_a_batch_larger_than_a_select_is_saved_whole(store: Store) -> None:
    make_run(store, n=2600, sizes=(2600,))
    store.save_results("r", [result(i, "ok" if i % 3 else "failed") for i in range(2600)])
    store.save_results("r", [result(i, "cancelled") for i in range(2600)])  # all taken
    assert store.status_counts("r") == Counter(ok=1733, failed=867)
    assert len(store.finished_indices("r")) == 2600


@pytest.mark.parametrize("batch", ["100", "37"])
def test_two_processes_saving_overlapping_results_count_each_once(
    store: Store, target: str, tmp_path: Path, batch: str
) -> None:
    make_run(store, n=3000, sizes=(1000, 1000, 1000))
    # a saves 0..1999 as ok, b 1000..2999 as failed: both race over 1000..1999
    a = ["save", "ok", "0", "2000", "100"]
    b = ["save", "failed", "1000", "3000", batch]
    assert run_together(target, tmp_path, [a, b]) == ["done", "done"]
    saved = store.results("r")
    assert sorted(saved) == list(range(3000))
    assert store.status_counts("r") == Counter(r.status for r in saved.values())
    assert {saved[i].status for i in range(1000)} == {"ok"}
    assert {saved[i].status for i in range(2000, 3000)} == {"failed"}


def test_a_call_interrupted_midway_leaves_nothing_half_done(store: Store) -> None:
    # The CLI's signal handlers raise a KeyboardInterrupt wherever the code is: SQLAlchemy then
    # drops the connection it was using; the transaction goes with it, the store lives on.
    make_run(store)
    store.save_results("r", [result(0)])
    armed = [True]

    def interrupt(conn, cursor, statement: str, *args) -> None:
        if armed and statement.startswith("UPDATE tasks"):
            armed.clear()
            raise KeyboardInterrupt

    event.listen(store._engine, "before_cursor_execute", interrupt)
    with pytest.raises(KeyboardInterrupt):
        store.save_results("r", [result(1), result(2, "failed")])
    assert store.status_counts("r") == Counter(ok=1)  # nothing of the interrupted batch
    assert store.finished_indices("r") == {0}
    store.save_results("r", [result(1), result(2, "failed")])
    assert store.status_counts("r") == Counter(ok=2, failed=1)


def test_counters_add_up(store: Store) -> None:
    make_run(store)
    store.add_counters("r", Counter(squeue=2, cat=1, sbatch=0))
    store.add_counters("r", Counter(squeue=3))
    store.add_counters("r", Counter())
    assert store.counters("r") == {"cat": 1, "squeue": 5}


def test_one_store_driven_from_many_threads(store: Store) -> None:
    make_run(store, n=800, sizes=(800,))
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for lo in range(k * 100, k * 100 + 100, 10):
                store.save_results("r", [result(i) for i in range(lo, lo + 10)])
                store.add_counters("r", Counter(cat=1))
                assert sum(store.status_counts("r").values()) >= 10
                store.jobs("r")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.status_counts("r") == Counter(ok=800)
    assert store.counters("r") == {"cat": 80}


def test_an_in_memory_store_works_from_threads() -> None:
    store = Store(":memory:")
    make_run(store, n=200, sizes=(200,))
    threads = [
        threading.Thread(
            target=store.save_results, args=("r", [result(i) for i in range(k, 200, 4)])
        )
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.status_counts("r") == Counter(ok=200)
    assert Store(":memory:").runs() == []  # each its own database


def test_the_cli_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "runs.sqlite"
    store = Store(path)
    assert store.path == path
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    db = store._fast  # the connection every call of this store uses
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    store.close()


def test_the_default_path_is_as_before(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SLURMRUNNER_STORE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert Store().path == tmp_path / "xdg" / "slurmrunner" / "runs.sqlite"
    monkeypatch.setenv("SLURMRUNNER_STORE", str(tmp_path / "elsewhere.sqlite"))
    assert Store().path == tmp_path / "elsewhere.sqlite"


def test_a_url_store_masks_its_password_and_makes_no_tables(tmp_path: Path) -> None:
    # No connection is made by Store() on a URL: the service's migrations make the tables.
    store = Store("postgresql+psycopg://svc:s3cret@127.0.0.1:1/runs")
    assert store.path == "postgresql+psycopg://svc:***@127.0.0.1:1/runs"
    url = f"sqlite:///{tmp_path / 'service.sqlite'}"
    Store(url).close()
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT name FROM sqlite_master").all() == []
    engine.dispose()
