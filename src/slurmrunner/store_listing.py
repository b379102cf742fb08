"""Finding runs in the store (store.Store inherits them): the newest runs, with or without
their status counts (GET /runs), the runs a restarted watcher resumes, and the run a person
means by `last` or a prefix of its id.

Apart from store.py, which answers for one run already known by its id: these look across
runs.
"""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Integer, bindparam, literal_column, select

from . import store_schema as schema
from .errors import RunNotFoundError
from .store_rows import RunRow, run_row

_runs, _counts = schema.runs, schema.status_counts


class RunListing:
    if TYPE_CHECKING:  # defined by store.Store
        path: Path | str
        _engine: Engine
        _lock: threading.RLock
        _listings: dict[tuple[bool, bool], schema.Compiled]

        def _read(self) -> AbstractContextManager[Connection]: ...

        def _execute(
            self, reads: list[tuple[schema.Compiled, dict[str, Any]]]
        ) -> list[list[Any]]: ...

    def runs(
        self, limit: int = 50, user_id: int | None = None, state: str | None = None
    ) -> list[RunRow]:
        """The newest runs; only `user_id`'s, only those in `state`, when given."""
        query = select(_runs).order_by(_runs.c.created.desc()).limit(limit)
        if user_id is not None:
            query = query.where(_runs.c.user_id == user_id)
        if state is not None:
            query = query.where(_runs.c.state == state)
        with self._read() as conn:
            return [run_row(r) for r in conn.execute(query)]

    def runs_with_counts(
        self, limit: int = 50, user_id: int | None = None, state: str | None = None
    ) -> list[tuple[RunRow, Counter[str]]]:
        """`runs(...)`, each with its status counts, in one query compiled once (GET /runs)."""
        key = (user_id is not None, state is not None)
        with self._lock:
            compiled = self._listings.get(key)
            if compiled is None:
                stmt = _listing(*key)
                compiled = self._listings[key] = schema.Compiled(stmt, self._engine.dialect)
        params = {"limit": limit, "offset": 0, "user_id": user_id, "state": state}
        (rows,) = self._execute([(compiled, params)])
        found: dict[str, tuple[RunRow, Counter[str]]] = {}
        n_run = len(_runs.c)
        for r in rows:  # a run's row comes once per status it counts: its spec parsed once
            seen = found.get(r[0])
            if seen is None:
                seen = found[r[0]] = (run_row(r[:n_run]), Counter())
            if r[n_run] is not None:
                seen[1][r[n_run]] = r[n_run + 1]
        return list(found.values())

    def active_runs(self) -> list[str]:
        """Ids of the runs not yet done, cancelled or failed, oldest first: what a watcher
        started again (after a restart) has to resume."""
        query = select(_runs.c.id).where(_runs.c.state.not_in(schema.FINAL_RUN_STATES))
        with self._read() as conn:
            return list(conn.execute(query.order_by(_runs.c.created)).scalars())

    def resolve_run_id(self, text: str, user_id: int | None = None) -> str:
        """A run id from what a person types: the whole id, `last`, or a unique prefix; among
        `user_id`'s runs only, when given."""
        newest = select(_runs.c.id).order_by(_runs.c.created.desc())
        if user_id is not None:
            newest = newest.where(_runs.c.user_id == user_id)
        with self._read() as conn:
            if text == "last":
                last = conn.execute(newest.limit(1)).scalar()
                if last is None:
                    raise RunNotFoundError(f"no runs yet in {self.path}")
                return str(last)
            exact = conn.execute(newest.where(_runs.c.id == text)).scalar()
            if exact is not None:
                return str(exact)
            # Escape LIKE's wildcards: an id never holds them, a typo might.
            pattern = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = newest.where(_runs.c.id.like(pattern, escape="\\")).limit(6)
            found = list(conn.execute(query).scalars())
        if len(found) == 1:
            return str(found[0])
        if not found:
            raise RunNotFoundError(f"no run {text!r} in {self.path}")
        shown = ", ".join(found[:5])
        raise RunNotFoundError(f"{text!r} matches several runs ({shown}...): give more of the id")


def _listing(by_user: bool, by_state: bool) -> Any:
    """The newest runs (bound: limit, and user_id, state when asked) joined to their status
    counts, newest first (Store.runs_with_counts)."""
    newest = select(_runs).order_by(_runs.c.created.desc())
    if by_user:
        newest = newest.where(_runs.c.user_id == bindparam("user_id"))
    if by_state:
        newest = newest.where(_runs.c.state == bindparam("state"))
    # OFFSET too (always 0): SQLite's compiler adds one to a bound LIMIT, with a name of its own.
    picked = newest.limit(bindparam("limit", type_=Integer))
    picked = picked.offset(bindparam("offset", type_=Integer)).subquery()
    c = _counts.c
    joined = picked.outerjoin(_counts, (c.run_id == picked.c.id) & (c.n > literal_column("0")))
    return (
        select(*picked.c, c.status, c.n)
        .select_from(joined)
        .order_by(picked.c.created.desc(), picked.c.id)
    )
