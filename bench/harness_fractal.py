"""Bench harness: fractal-server's SLURM sudo runner (SlurmSudoRunner.multisubmit), as the
server user, with its database calls replaced by no-ops. Nothing else of it is changed.

Run by bench/bench.py as `slurmsrv` with the fractal-server venv's python (made from
/usr/bin/python3, so the worker interpreter on the node is the same file and fractal skips its
remote version check):

    python harness_fractal.py SPEC.json

SPEC: {"config": <fractal JobRunnerConfigSLURM dict>, "user": "alice", "command": "/path/task",
       "n_tasks": N, "root_local": dir (server-owned, readable by the user),
       "root_remote": dir (created by the user with `sudo mkdir -p`),
       "poll_interval": s}
Prints one line `BENCH_RESULT {json}` on stdout.

What is replaced (monkeypatched in this process only, in the module namespace of
fractal_server.runner.executors.slurm_common.base_slurm_runner, where multisubmit looks the
names up):

* get_sync_db                       -> yields a dummy session whose methods do nothing
* bulk_update_status_of_history_unit -> no-op
* update_status_of_history_unit      -> no-op
* create_accounting_record_slurm     -> no-op

`Resource` and `Profile` (SQLModel rows in fractal-server's database) are given as plain
objects with the attributes the runner reads (jobs_runner_config, jobs_poll_interval,
jobs_slurm_python_worker; username). The call sequence mirrors fractal-server's own
`run_v2_task_parallel`: get_slurm_config (its batching heuristics) ->
enrich_task_files_multisubmit -> SlurmSudoRunner(...).multisubmit(task_type="parallel").

What is timed: from constructing the runner (it makes its folders, as the user with sudo)
until multisubmit returns every task's outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

# fractal-server reads its settings when imported: a database name and a JWT secret must be
# set even though this harness never connects to a database.
os.environ.setdefault("POSTGRES_DB", "bench-no-database")
os.environ.setdefault("JWT_SECRET_KEY", "bench-not-a-secret")


def cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


class _NoDB:
    """Stands in for a SQLAlchemy session: every method is a no-op."""

    def __getattr__(self, name):  # add, commit, refresh, execute, ...
        return lambda *a, **k: None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _no_db_session():
    yield _NoDB()


def _noop(*args, **kwargs):
    return None


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    import fractal_server
    import fractal_server.runner.executors.slurm_common.base_slurm_runner as base
    from fractal_server.runner.executors.slurm_common.get_slurm_config import get_slurm_config
    from fractal_server.runner.executors.slurm_sudo.runner import SlurmSudoRunner
    from fractal_server.runner.task_files import TaskFiles, enrich_task_files_multisubmit

    # --- the only changes: database calls become no-ops -----------------------------------
    base.get_sync_db = _no_db_session
    base.bulk_update_status_of_history_unit = _noop
    base.update_status_of_history_unit = _noop
    base.create_accounting_record_slurm = _noop

    n = spec["n_tasks"]
    root_local = Path(spec["root_local"])
    root_remote = Path(spec["root_remote"])
    resource_row = SimpleNamespace(
        jobs_runner_config=spec["config"],
        jobs_poll_interval=spec["poll_interval"],
        jobs_slurm_python_worker=sys.executable,
    )
    profile_row = SimpleNamespace(username=spec["user"])
    wftask = SimpleNamespace(
        meta_parallel=None,
        meta_non_parallel=None,
        order=0,
        task_id=1,
        task=SimpleNamespace(name="bench_task"),
    )
    list_parameters = [{"zarr_url": f"/bench/image-{i}"} for i in range(n)]

    from harness_inputs import start_at_phase  # next to this file

    start_at_phase(spec.get("phase"))
    c_self, c_kids = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with SlurmSudoRunner(
        root_dir_local=root_local,
        root_dir_remote=root_remote,
        common_script_lines=None,
        resource=resource_row,
        profile=profile_row,
        user_cache_dir=str(root_remote / "cache"),
        slurm_account=None,
    ) as runner:
        config = get_slurm_config(
            shared_config=runner.shared_config,
            wftask=wftask,
            which_type="parallel",
            tot_tasks=n,
        )
        tasks_per_job, parallel = config.tasks_per_job, config.parallel_tasks_per_job
        task_files = TaskFiles(
            root_dir_local=root_local,
            root_dir_remote=root_remote,
            task_order=wftask.order,
            task_name=wftask.task.name,
        )
        list_task_files = enrich_task_files_multisubmit(
            base_task_files=task_files,
            tot_tasks=n,
            batch_size=config.batch_size,
        )
        results, exceptions = runner.multisubmit(
            base_command=spec["command"],
            workflow_task_order=wftask.order,
            workflow_task_id=wftask.task_id,
            task_name=wftask.task.name,
            list_parameters=list_parameters,
            history_unit_ids=list(range(n)),
            list_task_files=list_task_files,
            task_type="parallel",
            config=config,
            user_id=1,
        )
    wall = time.monotonic() - t0
    cpu_self = cpu(resource.RUSAGE_SELF) - c_self
    cpu_kids = cpu(resource.RUSAGE_CHILDREN) - c_kids
    first_error = None
    if exceptions:
        k = min(exceptions)
        first_error = f"task {k}: {type(exceptions[k]).__name__}: {exceptions[k]}"[:2000]
    out = {
        "wall_s": wall,
        "cpu_self_s": cpu_self,
        "cpu_children_s": cpu_kids,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "n_jobs": -(-n // tasks_per_job),
        "tasks_per_job": tasks_per_job,
        "parallel_tasks_per_job": parallel,
        "ok": len(results),
        "failed": len(exceptions),
        "n_results": len(results) + len(exceptions),
        "first_error": first_error,
        "fractal_server": fractal_server.__VERSION__,
    }
    print("BENCH_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
