"""Stores a finished copy of a run, `n` tasks long, in the service's database:
`python copy_run.py RUN_ID N TASKS_PER_JOB JOB_BASE` with $SLURMRUNNER_DB set; prints the new
run's id, its number of tasks and of jobs.

Run by test_web_browser.py with the server's own Python (the server venv, as the server user):
the rows are written by the very code that serves them, whatever the test's tree holds.

Made through the Store as the service makes a run: the spec of the finished run RUN_ID (same
user, Resource, Profile, command, config, resources) planned anew for N tasks of TASKS_PER_JOB
a job by the real batching; every task gets a copy of one of RUN_ID's real results (status, cause,
error, duration, memory as the worker recorded them), with its job's id; every job COMPLETED.
Nothing is submitted: the run is stored as `done`, so no watcher takes it.
"""

import dataclasses
import os
import sys
from collections.abc import Callable

from sqlalchemy import create_engine

from slurmrunner.runspec import RunSpec, new_run_id
from slurmrunner.store import Store

SAVE_BATCH = 250


def copy_run(
    store: Store,
    template_id: str,
    n_tasks: int,
    tasks_per_job: int,
    job_base: int,
    after_insert: Callable[[], None] = lambda: None,
) -> str:
    template = store.run(template_id)
    spec = RunSpec.from_dict(template.spec)
    run_id = new_run_id()
    resources = spec.resources.model_copy(update={"tasks_per_job": tasks_per_job})
    spec = dataclasses.replace(spec, run_id=run_id, n_tasks=n_tasks, resources=resources)
    plan = spec.plan
    args = store.task_args(template_id, range(template.n_tasks))
    store.create_run(
        run_id,
        spec.to_dict(),
        [args[i % len(args)] for i in range(n_tasks)],
        plan.job_sizes,
        user_id=template.user_id,
        resource_id=template.resource_id,
        profile_id=template.profile_id,
    )
    store.set_run_state(run_id, "done")
    after_insert()
    seen = store.results_in_order(template_id)
    if not seen:
        raise SystemExit(f"run {template_id} has no results to copy")
    results = []
    for k, tasks in enumerate(plan.job_ranges()):
        job_id = str(job_base + k)
        results += [
            dataclasses.replace(seen[i % len(seen)], index=i, job_id=job_id, log=None)
            for i in tasks
        ]
        store.update_job(run_id, k, job_id=job_id, state="COMPLETED", reason="None", done=True)
    # In batches of the size the watcher saves (a results chunk read in one cycle).
    for start in range(0, len(results), SAVE_BATCH):
        store.save_results(run_id, results[start : start + SAVE_BATCH])
    return run_id


def analyze(url: str) -> None:
    """ANALYZE the tasks table, as autovacuum does within a minute of a bulk insert. Without
    it, PostgreSQL plans Store.save_results' UPDATE ... FROM json_to_recordset as a nested loop
    over every unsaved task of the run for each batch: 20,000 results then take a minute."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE tasks")
    finally:
        engine.dispose()


if __name__ == "__main__":
    url = os.environ["SLURMRUNNER_DB"]
    store = Store(url)
    try:
        run_id = copy_run(
            store, sys.argv[1], *map(int, sys.argv[2:5]), after_insert=lambda: analyze(url)
        )
        print(run_id, store.run(run_id).n_tasks, len(store.jobs(run_id)))
    finally:
        store.close()
