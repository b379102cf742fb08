"""Micro-benchmark of the watcher's read path, per task result: the server's CPU from a line
of a job's results chunk to its row in the run store. No SLURM, no worker, no service.

    .venv/bin/python bench/results_path.py                     # SQLite (a temporary file)
    .venv/bin/python bench/results_path.py --db postgresql+psycopg://u:p@127.0.0.1/db
    .venv/bin/python bench/results_path.py -n 2000 --repeats 1  # a quick check

N lines (20,000 by default) written as the worker writes them (worker_records.Results: compact
JSON, one record a line, a `start` and an `end` line per job of 500 tasks: one chunk each)
go through the functions the watcher calls, in its order:

- parse: chunks.JobWatch.take over each chunk's text (records.parse_line for every line);
- accept: reading.Reading._accept on each record (results.from_record), into a look's list;
- save: store.Store.save_results, one call per look: a job's records, as _apply_read saves
  them when a look brings a whole job (batch 500), or a few (batch 20: tasks ending a few at a
  time between two looks).

Two kinds of result: `null` (a no-op task, W1-W4 of bench/run) and `500 B` (W5's echo: a
500-byte object); 2% of the records are failures (exit status 3). CPU is time.process_time of
this process (on PostgreSQL the database's own CPU is not counted: the watcher's is), the best
of --repeats runs; each save runs on a fresh run of N unsaved tasks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from slurmrunner import store_schema
from slurmrunner.chunks import JobWatch, Piece
from slurmrunner.reading import Reading
from slurmrunner.results import TaskResult
from slurmrunner.store import Store
from slurmrunner.store_rows import JobRow

JOB_TASKS = 500
CHUNK_RECORDS = 1000
RUN_DIR = "/home/alice/.slurmrunner/runs/r-20260101-abcdef"


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))  # as worker_records.Results.add


def _result(i: int, size: int) -> Any:
    """null, or W5's input echoed back: {"i": I, "s": HEX} of exactly `size` bytes."""
    if size <= 0:
        return None
    pad = size - len(_compact({"i": i, "s": ""}))
    return {"i": i, "s": hashlib.shake_256(str(i).encode()).hexdigest(pad // 2 + 1)[:pad]}


def _record(i: int, job: int, size: int) -> dict[str, Any]:
    """A task's record as worker.Worker.finish writes it."""
    t_end = 1767225600.0 + i * 0.013
    rec: dict[str, Any] = {
        "i": i,
        "job": job,
        "attempt": 0,
        "status": "ok",
        "exit_code": 0,
        "signal": None,
        "duration_s": round(0.004 + (i % 97) / 1000, 3),
        "max_rss_mb": round(3.0 + (i % 13) / 10, 1),
        "t_end": round(t_end, 3),
        "log": f"{RUN_DIR}/logs/{i}.log",
    }
    if i % 50 == 7:  # a failure: the worker writes no result, an error instead
        rec.update(status="failed", exit_code=3)
        rec["error"] = {"cause": "exit_code", "message": "exited with status 3", "log_tail": "x"}
    else:
        rec["result"] = _result(i, size)
    return rec


def job_chunks(n: int, size: int) -> list[tuple[JobRow, list[str]]]:
    """Each job's row and its chunks' text."""
    jobs = []
    for job, first in enumerate(range(0, n, JOB_TASKS)):
        tasks = range(first, min(first + JOB_TASKS, n))
        row = JobRow(job, first, len(tasks), str(70000 + job), "RUNNING", "", False)
        chunks, lines, in_chunk = [], [_compact({"event": "start", "job": job, "t": 1.5})], 0
        for i in tasks:
            lines.append(_compact(_record(i, job, size)))
            in_chunk += 1
            if in_chunk == CHUNK_RECORDS and i != tasks[-1]:
                lines.append(
                    _compact({"event": "next", "job": job, "chunk": len(chunks) + 1,
                              "records": in_chunk})
                )  # fmt: skip
                chunks.append("\n".join(lines) + "\n")
                lines, in_chunk = [], 0
        end = {"event": "end", "job": job, "chunk": len(chunks), "records": in_chunk}
        lines.append(_compact({**end, "tasks": len(tasks), "t": 2.5}))
        chunks.append("\n".join(lines) + "\n")
        jobs.append((row, chunks))
    return jobs


class _Reader(Reading):
    """What Reading._accept needs of a run (run.Run's, for a run without retries)."""

    def __init__(self) -> None:
        self.run_dir = RUN_DIR
        self._finished: set[int] = set()
        self._watch = {}

    def _job_of_attempt(self, index: int, default: int) -> int:
        return default


def _cpu(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def parse_all(jobs: list[tuple[JobRow, list[str]]]) -> list[tuple[JobRow, JobWatch, list[Any]]]:
    out = []
    for row, chunks in jobs:
        w = JobWatch(row.idx, row.task_range, 1024 * 1024)
        recs = [rec for c, t in enumerate(chunks) for rec in w.take(c, Piece(t, True), False)]
        out.append((row, w, recs))
    return out


def accept_all(parsed: list[tuple[JobRow, JobWatch, list[Any]]]) -> list[list[TaskResult]]:
    reader = _Reader()
    looks = []
    for row, w, recs in parsed:
        fresh: list[TaskResult] = []
        taken: set[int] = set()
        for rec in recs:
            reader._accept(row, w, rec, fresh, taken)
        looks.append(fresh)
    return looks


@contextmanager
def stores(db: str | None) -> Iterator[Store]:
    """A store with the run store's tables: a temporary SQLite file, or a schema of its own
    in the PostgreSQL database `db` (dropped after)."""
    if db is None:
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp, "runs.sqlite"))
            try:
                yield store
            finally:
                store.close()
        return
    schema = f"bench_{secrets.token_hex(6)}"
    admin = create_engine(db)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(db).update_query_dict({"options": f"-csearch_path={schema}"})
        store = Store(url)
        store_schema.metadata.create_all(store._engine)
        try:
            yield store
        finally:
            store.close()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def save_all(store: Store, n: int, looks: list[list[TaskResult]]) -> tuple[float, float]:
    """CPU and wall time of saving every look's results into a fresh run of n tasks."""
    run_id = f"r-{secrets.token_hex(6)}"
    store.create_run(run_id, {}, [{"i": i} for i in range(n)], [JOB_TASKS] * (n // JOB_TASKS))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for fresh in looks:
        store.save_results(run_id, fresh)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    saved = store.results(run_id)
    assert len(saved) == n and store.status_counts(run_id).total() == n, "not all saved"
    for fresh in looks[:1]:
        for r in fresh[:50]:
            assert saved[r.index] == r, (saved[r.index], r)
    return cpu, wall


def measure(
    n: int, size: int, repeats: int, dbs: list[tuple[str, str | None]], batches: list[int]
) -> list[str]:
    jobs = job_chunks(n, size)
    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    for _ in range(repeats):
        cpu, parsed = _cpu(lambda: parse_all(jobs))
        keep("parse", cpu)
        cpu, looks = _cpu(lambda p=parsed: accept_all(p))
        keep("accept", cpu)
        assert sum(map(len, looks)) == n
    for name, db in dbs:
        with stores(db) as store:
            for batch in batches:
                # A look brings a job's results, or (tasks ending one by one) a few at a time.
                cut = [f[k : k + batch] for f in looks for k in range(0, len(f), batch)]
                for _ in range(repeats):
                    cpu, wall = save_all(store, n, cut)
                    keep(f"save {name} {batch}", cpu)
                    keep(f"save {name} {batch} wall", wall)
    us = {k: v / n * 1e6 for k, v in best.items()}
    kind = "null" if size <= 0 else f"{size} B"
    out = []
    for name, _ in dbs:
        for batch in batches:
            save = us[f"save {name} {batch}"]
            total = us["parse"] + us["accept"] + save
            out.append(
                f"| {kind} | {name} | {batch} | {us['parse']:.1f} | {us['accept']:.1f} | "
                f"{save:.1f} ({us[f'save {name} {batch} wall']:.1f} wall) | {total:.1f} |"
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=20_000, help="results (a multiple of 500)")
    ap.add_argument("--db", help="a PostgreSQL URL: save there too (in a schema of its own)")
    ap.add_argument("--repeats", type=int, default=3, help="the best of this many runs")
    ap.add_argument("--sizes", default="0,500", help="result sizes in bytes (0: null)")
    ap.add_argument("--batches", default="500,20", help="results per save_results call")
    args = ap.parse_args()
    dbs: list[tuple[str, str | None]] = [("SQLite", None)]
    if args.db:
        dbs.append(("PostgreSQL", args.db))
    print(f"{args.n} results, best of {args.repeats}; µs of CPU per result")
    batches = [int(b) for b in args.batches.split(",")]
    print("| result | store | batch | parse | accept | save | total |")
    print("|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        for line in measure(args.n, size, args.repeats, dbs, batches):
            print(line, flush=True)


if __name__ == "__main__":
    main()
