"""Persistent run state (embedded SQLite): a run outlives the process that started it.

A job row is written *before* sbatch (state `submitting`) and gets its id right after, so a
process killed in between is found out on reattach and the job is looked up, not resubmitted
blindly. Results are written once per task; a second writer cannot overwrite them, and the
count of each status moves in the same transaction, so a status costs the same at task 10 and
at task 150,000.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RunNotFoundError
from .results import TaskResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, created REAL NOT NULL, state TEXT NOT NULL, spec TEXT NOT NULL,
    n_tasks INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, first_task INTEGER NOT NULL,
    n_tasks INTEGER NOT NULL, job_id TEXT, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0, claim TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, args TEXT NOT NULL, result TEXT,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS counters (
    run_id TEXT NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (run_id, name)
);
"""
# Finished tasks by status, kept with the results (see save_results); a store written by an
# earlier version gets it counted once.
_STATUS_COUNTS = (
    "CREATE TABLE status_counts (run_id TEXT NOT NULL, status TEXT NOT NULL, "
    "n INTEGER NOT NULL, PRIMARY KEY (run_id, status))",
    "INSERT INTO status_counts SELECT run_id, json_extract(result, '$.status'), COUNT(*) "
    "FROM tasks WHERE result IS NOT NULL GROUP BY 1, 2",
)


def default_store_path() -> Path:
    if env := os.environ.get("SLURMRUNNER_STORE"):
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "slurmrunner" / "runs.sqlite"


# A claim on an unsubmitted job: "host|pid|nonce|unix time"; the nonce tells apart two runs
# watched by one process.
_FOREIGN_CLAIM_TTL_S = 600.0


def new_claim() -> str:
    return f"{socket.gethostname()}|{os.getpid()}|{secrets.token_hex(4)}|{time.time():.0f}"


def claim_is_live(claim: str, mine: str) -> bool:
    """Whether another, still running, process (or run object) holds `claim`."""
    if not claim or claim == mine:
        return False
    try:
        host, pid_text, _, since = claim.split("|")
        pid = int(pid_text)
        since_s = float(since)
    except ValueError:
        return False
    if host != socket.gethostname():  # cannot look: trust it for a while
        return time.time() - since_s < _FOREIGN_CLAIM_TTL_S
    if pid == os.getpid():
        return True  # another Run of this very process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user
    return True


@dataclass(frozen=True)
class JobRow:
    idx: int
    first_task: int
    n_tasks: int
    job_id: str | None
    state: str
    reason: str
    done: bool
    claim: str = ""  # who is submitting it (state SUBMITTING), see Store.claim_job

    @property
    def task_range(self) -> range:
        return range(self.first_task, self.first_task + self.n_tasks)


@dataclass(frozen=True)
class RunRow:
    id: str
    created: float
    state: str
    spec: dict[str, Any]
    n_tasks: int


class Store:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_store_path()
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                self.path.touch(mode=0o600)
        self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
            if "claim" not in columns:  # a store written by an earlier version
                self._db.execute("ALTER TABLE jobs ADD COLUMN claim TEXT NOT NULL DEFAULT ''")
            if not self._has_table("status_counts"):
                self._db.execute("BEGIN IMMEDIATE")  # another process may be doing it too
                try:
                    if not self._has_table("status_counts"):
                        for statement in _STATUS_COUNTS:
                            self._db.execute(statement)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    def _has_table(self, name: str) -> bool:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return self._db.execute(query, (name,)).fetchone() is not None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:
            yield self._db

    def close(self) -> None:
        self._db.close()

    # runs
    def create_run(
        self, run_id: str, spec: dict[str, Any], args: list[Any], job_sizes: Iterable[int]
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs VALUES (?, ?, 'submitting', ?, ?)",
                (run_id, time.time(), json.dumps(spec), len(args)),
            )
            db.executemany(
                "INSERT INTO tasks (run_id, idx, args) VALUES (?, ?, ?)",
                ((run_id, i, json.dumps(a)) for i, a in enumerate(args)),
            )
            first, rows = 0, []
            for k, size in enumerate(job_sizes):
                rows.append((run_id, k, first, size))
                first += size
            db.executemany(
                "INSERT INTO jobs (run_id, idx, first_task, n_tasks, state) "
                "VALUES (?, ?, ?, ?, 'NEW')",
                rows,
            )

    def run(self, run_id: str) -> RunRow:
        with self._lock:
            row = self._db.execute(
                "SELECT id, created, state, spec, n_tasks FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.path}")
        return RunRow(row[0], row[1], row[2], json.loads(row[3]), row[4])

    def runs(self, limit: int = 50) -> list[RunRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, created, state, spec, n_tasks FROM runs ORDER BY created DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [RunRow(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def resolve_run_id(self, text: str) -> str:
        """A run id from what a person types: the whole id, `last`, or a unique prefix."""
        with self._lock:
            if text == "last":
                row = self._db.execute(
                    "SELECT id FROM runs ORDER BY created DESC LIMIT 1"
                ).fetchone()
                if row is None:
                    raise RunNotFoundError(f"no runs yet in {self.path}")
                return str(row[0])
            exact = self._db.execute("SELECT id FROM runs WHERE id = ?", (text,)).fetchone()
            if exact:
                return str(exact[0])
            # Escape LIKE's wildcards: an id never holds them, a typo might.
            pattern = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = self._db.execute(
                "SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY created DESC LIMIT 6",
                (pattern,),
            ).fetchall()
        if len(rows) == 1:
            return str(rows[0][0])
        if not rows:
            raise RunNotFoundError(f"no run {text!r} in {self.path}")
        shown = ", ".join(r[0] for r in rows[:5])
        raise RunNotFoundError(f"{text!r} matches several runs ({shown}...): give more of the id")

    def set_run_state(self, run_id: str, state: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET state = ? WHERE id = ?", (state, run_id))

    # jobs
    def jobs(self, run_id: str) -> list[JobRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, first_task, n_tasks, job_id, state, reason, done, claim FROM jobs "
                "WHERE run_id = ? ORDER BY idx",
                (run_id,),
            ).fetchall()
        return [JobRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7]) for r in rows]

    def claim_job(self, run_id: str, seen: JobRow, claim: str) -> bool:
        """Mark a job SUBMITTING for `claim` if nobody changed it since `seen` was read.

        Compare-and-set inside one transaction: of two processes reattaching to a run at the
        same moment, one gets each unsubmitted job, so no job is submitted twice.
        """
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'SUBMITTING', claim = ? WHERE run_id = ? AND idx = ? "
                "AND job_id IS NULL AND done = 0 AND state = ? AND claim = ?",
                (claim, run_id, seen.idx, seen.state, seen.claim),
            )
            return cur.rowcount == 1

    def update_job(self, run_id: str, idx: int, **fields: Any) -> None:
        cols = ", ".join(f"{key} = ?" for key in fields)
        with self._tx() as db:
            db.execute(
                f"UPDATE jobs SET {cols} WHERE run_id = ? AND idx = ?",
                (*fields.values(), run_id, idx),
            )

    # tasks
    def task_args(self, run_id: str, indices: range) -> list[Any]:
        with self._lock:
            rows = self._db.execute(
                "SELECT args FROM tasks WHERE run_id = ? AND idx >= ? AND idx < ? ORDER BY idx",
                (run_id, indices.start, indices.stop),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def save_results(self, run_id: str, results: Iterable[TaskResult]) -> None:
        """Each task's result, unless one was saved before (by any process); the status
        counts move by what was saved, in the same transaction."""
        by_status: dict[str, list[TaskResult]] = {}
        for r in results:
            by_status.setdefault(r.status, []).append(r)
        with self._tx() as db:
            for status, group in by_status.items():
                cur = db.executemany(
                    "UPDATE tasks SET result = ? WHERE run_id = ? AND idx = ? AND result IS NULL",
                    ((json.dumps(r.to_dict()), run_id, r.index) for r in group),
                )
                if cur.rowcount > 0:
                    db.execute(
                        "INSERT INTO status_counts VALUES (?, ?, ?) ON CONFLICT (run_id, status) "
                        "DO UPDATE SET n = n + excluded.n",
                        (run_id, status, cur.rowcount),
                    )

    def results(self, run_id: str) -> dict[int, TaskResult]:
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, result FROM tasks WHERE run_id = ? AND result IS NOT NULL",
                (run_id,),
            ).fetchall()
        return {r[0]: TaskResult.from_dict(json.loads(r[1])) for r in rows}

    def status_counts(self, run_id: str) -> Counter[str]:
        """Finished tasks by status (ok / failed / cancelled), as kept by save_results."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status, n FROM status_counts WHERE run_id = ? AND n > 0", (run_id,)
            ).fetchall()
        return Counter(dict(rows))

    def finished_indices(self, run_id: str) -> set[int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT idx FROM tasks WHERE run_id = ? AND result IS NOT NULL", (run_id,)
            ).fetchall()
        return {r[0] for r in rows}

    # counters
    def add_counters(self, run_id: str, counts: Counter[str]) -> None:
        if not counts:
            return
        with self._tx() as db:
            db.executemany(
                "INSERT INTO counters VALUES (?, ?, ?) "
                "ON CONFLICT (run_id, name) DO UPDATE SET n = n + excluded.n",
                ((run_id, name, n) for name, n in counts.items() if n),
            )

    def counters(self, run_id: str) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, n FROM counters WHERE run_id = ? ORDER BY name", (run_id,)
            ).fetchall()
        return dict(rows)
