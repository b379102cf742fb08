"""The run routes' reads on one connection (Store.run_view, Store.runs_with_counts) and the
tasks of a run stored many rows per statement (PostgreSQL): the same answers as the reads
they stand for, on both databases."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import update

from slurmrunner.results import TaskError, TaskResult
from slurmrunner.service import migrate
from slurmrunner.service.db import make_engine
from slurmrunner.store import Store
from slurmrunner.store_schema import runs


@pytest.fixture
def store(db_url: str) -> Any:
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    made = Store(engine)
    yield made
    made.close()
    engine.dispose()


def _run(store: Store, run_id: str, n: int, user_id: int, created: float) -> None:
    inputs: list[Any] = [{"i": i, "s": "é\t\"\\'{}[],"} for i in range(n)]
    store.create_run(run_id, {"k": run_id}, inputs, [n - n // 2, n // 2], user_id=user_id)
    # created is the clock's: set apart, so that "newest first" has one answer
    with store._tx() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(created=created))


def test_run_view_is_the_separate_reads(store: Store) -> None:
    _run(store, "r1", 7, user_id=1, created=1.0)
    failed = TaskError(cause="exit_code", message="m")
    oom = TaskError(cause="out_of_memory", message="m")
    store.save_results(
        "r1",
        [
            TaskResult(index=0, status="ok"),
            TaskResult(index=1, status="failed", error=failed),
            TaskResult(index=2, status="failed", error=oom),
            TaskResult(index=3, status="failed", error=failed),
        ],
    )
    store.add_counters("r1", Counter({"squeue": 3, "cat": 2, "retried_tasks": 1}))
    view = store.run_view("r1")
    assert view is not None
    assert view.run == store.run("r1")
    assert view.counts == store.status_counts("r1") == Counter({"ok": 1, "failed": 3})
    assert view.causes == store.cause_counts("r1") == Counter({"exit_code": 2, "out_of_memory": 1})
    assert view.calls == store.counters("r1") and list(view.calls) == sorted(view.calls)
    assert view.jobs == store.jobs("r1") and [j.n_tasks for j in view.jobs] == [4, 3]
    assert store.run_view("nope") is None
    # another user's run: its row only, then None, as for a missing one (no timing to tell)
    seen: list[Any] = []
    assert store.run_view("r1", lambda row: bool(seen.append(row.user_id))) is None
    assert seen == [1]
    assert store.run_view("r1", lambda row: row.user_id == 1) == view


def test_a_new_run_has_empty_tallies(store: Store) -> None:
    _run(store, "r0", 2, user_id=1, created=1.0)
    view = store.run_view("r0")
    assert view is not None
    assert (view.counts, view.causes, view.calls) == (Counter(), Counter(), {})


def test_runs_with_counts_is_runs_and_their_counts(store: Store) -> None:
    for k, (user, state) in enumerate([(1, "running"), (2, "done"), (1, "done"), (1, "running")]):
        _run(store, f"r{k}", 3, user_id=user, created=float(k))
        store.set_run_state(f"r{k}", state)
    store.save_results("r0", [TaskResult(index=0, status="ok"), TaskResult(index=1, status="ok")])
    store.save_results("r3", [TaskResult(index=2, status="cancelled")])
    for limit, user_id, state in [
        (50, None, None),
        (2, None, None),
        (50, 1, None),
        (1, 1, None),
        (50, 1, "done"),
        (50, None, "running"),
        (50, 3, None),
    ]:
        rows = store.runs(limit=limit, user_id=user_id, state=state)
        counts = store.status_counts_of([r.id for r in rows])
        got = store.runs_with_counts(limit=limit, user_id=user_id, state=state)
        assert [(row, dict(c)) for row, c in got] == [(r, dict(counts[r.id])) for r in rows]
    assert [r.id for r, _ in store.runs_with_counts()] == ["r3", "r2", "r1", "r0"]


def test_tasks_stored_in_bulk_keep_their_inputs(store: Store) -> None:
    n = 12_345  # more than one statement's worth on PostgreSQL
    inputs: list[Any] = [{"i": i, "text": f"line\n{i}\u00e9\"'\\"} for i in range(n)]
    inputs[7] = None
    inputs[8] = [1, "two", {"three": 3.5}]
    store.create_run("big", {}, inputs, [n])
    assert store.task_args("big", range(n)) == inputs
    assert store.task_args("big", [12_000, 3, 8]) == [inputs[3], inputs[8], inputs[12_000]]
