"""A watcher's reading of results files: at most one `cat` per cluster identity per cycle,
shared by all of that account's runs (sharedcat.py cuts it), and the grouping of runs.

Each run's part of a shared cat is cut with the separator token learnt from an earlier look,
never with what the output seems to say, and the cut is accepted only if it is exact
(sharedcat.cut_shared). A run whose token is not known yet has its separator file read at the
end of the shared cat (fenced by a known run's separator) and joins the next one; with no run
known yet, one unknown run is read alone per cycle, the others wait a cycle or two. When a
shared cat cannot be cut exactly (a run's separator file was changed, a file holds another
run's token, output cut short), every run in it is read again alone in that cycle, each cut at
its own token; a run whose look alone is not clean (UNREADABLE, cut short, another run's token
in it) is read alone from then on, until a look of it is clean again. So one run's separator
file or files can only ever cost calls, never another run's records, and while nothing is off
the runs of an account share one cat. Runs whose last looks were big are split over several
cats (SHARED_CAT_CHARS each), so that honest volume never cuts a shared one short.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .chunks import SEPARATOR
from .errors import HostError
from .hosts.base import DEFAULT_MAX_OUTPUT
from .local_queue import default_queue_path
from .pacing import ReadPace
from .profiles import Profile
from .sharedcat import Part, cut_shared, shared_cat_paths
from .submission import NOT_TRANSIENT, run_as_user
from .watchstats import WatcherStats

if TYPE_CHECKING:
    from .reading import Look, ReadPlan
    from .run import Run
    from .store import JobRow

log = logging.getLogger("slurmrunner")

#: What one shared cat may carry, by its runs' last looks: half of what a host keeps, so that
#: what is written between two looks does not cut it short (it would be read again alone).
SHARED_CAT_CHARS = DEFAULT_MAX_OUTPUT // 2
#: Shared cats in which a run's separator file held no token before it is read alone.
LEARN_TRIES = 3


@dataclass(frozen=True)
class RunKeys:
    scheduler: str  # the runs whose jobs one poll answers
    identity: str  # the runs whose files one cat reads: one cluster account


def run_keys(profile: Profile, local_queue: str | None = None) -> RunKeys:
    """The groups of a run of `profile`. SSH runs of different users do not share a poll: it
    goes through one user's connection (backends.py), and a cluster that hides other users'
    jobs (PrivateData=jobs) would show theirs as gone."""
    if profile.backend == "local":
        return RunKeys(f"local:{local_queue or default_queue_path()}", "local")
    if profile.backend == "slurm_sudo":
        return RunKeys("slurm_sudo", f"slurm_sudo:{profile.username}")
    where = f"slurm_ssh:{profile.username}@{profile.host}:{profile.port}"
    return RunKeys(where, where)


@dataclass(eq=False)
class Entry:
    run: Run
    keys: RunKeys
    resume: bool  # submit its jobs not yet submitted at its first step
    start: bool  # start it (run folder, submission) at its first step
    rows: list[JobRow] = field(default_factory=list)
    ok: bool = True  # no step of it failed in this cycle
    news: bool = False
    errors: int = 0  # failed steps in a row
    retry_at: float = float("-inf")
    flushed_at: float = float("-inf")  # when its call counters were last saved
    submitted: int | None = None  # jobs it submitted in this cycle (None: all it has, started)
    asked: bool = False  # the scheduler answered for its jobs in this cycle
    # Its first read that found results (watcher's clock, results then): the pace since then
    # predicts when its last result lands (pacing.ReadPace's read aimed at the end).
    paced_from: tuple[float, int] | None = None

    def eta(self, now: float) -> float | None:
        """Seconds until its last result, at the pace results came since its first ones."""
        done, total = len(self.run._finished), self.run.n_tasks
        if self.paced_from is None:
            if done:
                self.paced_from = (now, done)
            return None
        since, before = self.paced_from
        if done <= before or now <= since or done >= total:
            return None
        return (total - done) * (now - since) / (done - before)


@dataclass
class Identity:
    key: str
    pace: ReadPace
    next_read: float = 0.0
    tokens: dict[str, str] = field(default_factory=dict)  # separator line -> run id
    alone: set[str] = field(default_factory=set)  # runs read alone (see the module doc)
    sizes: dict[str, int] = field(default_factory=dict)  # run id -> its last look's size
    unlearnt: Counter[str] = field(default_factory=Counter)
    turn: int = 0  # which unknown run a cycle with no known run reads


Planned = tuple[Entry, "ReadPlan"]


class SharedReads:
    """The reading part of a Watcher (see watcher.Watcher, which holds the state named here)."""

    stats: WatcherStats
    if TYPE_CHECKING:  # defined by Watcher

        def _guard(self, e: Entry, fn: Callable[..., Any], *args: Any) -> Any: ...

        def _count(self, kind: str, group: str, n: int) -> None: ...

        def _fail_all(self, entries: list[Entry], exc: BaseException) -> None: ...

    def _read(self, ident: Identity, group: list[Entry], now: float) -> bool:
        """At most one cat for the identity's runs (see the module doc for the others).
        Returns whether runs to be read wait for the next look, which a separator learnt in
        this one lets go further (one whose files never say anything makes no such claim)."""
        planned: list[Planned] = []
        for e in group:
            plan = self._guard(e, e.run._read_plan, e.rows, now, e.asked)
            if plan is not None:
                planned.append((e, plan))
        alone: list[Planned] = []
        known: list[Planned] = []
        unknown: list[Planned] = []
        for e, p in planned:
            if e.run.id in ident.alone:
                alone.append((e, p))
            elif ident.tokens.get(e.run._sep_token or "") == e.run.id:
                known.append((e, p))
            else:
                unknown.append((e, p))
        bins: list[list[Planned]] = []
        size = 0
        for e, p in sorted(known, key=lambda ep: ep[1].cut_looks):  # cut short last
            more = ident.sizes.get(e.run.id, 0)
            if not bins or size + more > SHARED_CAT_CHARS:
                bins.append([])
                size = 0
            bins[-1].append((e, p))
            size += more
        waiting = bool(unknown)  # learning their separators now, read at the next look
        if unknown and not bins:
            ident.turn += 1
            alone.append(unknown[ident.turn % len(unknown)])  # the others wait for it
            waiting = len(unknown) > 1
            unknown = []
        known_before = len(ident.tokens)
        for e, p in alone:
            self._alone(ident, e, p)
        for k, shared in enumerate(bins):
            self._shared(ident, shared, unknown if k == 0 else [])
        return waiting and len(ident.tokens) > known_before

    def _alone(self, ident: Identity, e: Entry, plan: ReadPlan) -> None:
        foreign = {t for t, owner in ident.tokens.items() if owner != e.run.id}
        look = self._guard(e, self._look_alone, e, plan, foreign)
        if look is None or not look.ran:
            return
        e.news |= look.news
        ident.sizes[e.run.id] = look.size
        if look.empty:
            return  # nothing written yet: nothing to learn or judge
        if e.run._sep_token is None and look.token is not None:
            self._learn(ident, e, look.token)
        if look.clean and look.token is not None and look.token == e.run._sep_token:
            ident.alone.discard(e.run.id)
        elif not look.clean:
            ident.alone.add(e.run.id)

    def _look_alone(self, e: Entry, plan: ReadPlan, foreign: set[str]) -> Look:
        before = e.run.calls["cat"]
        try:
            return e.run._read_alone(plan, foreign)
        finally:
            self._count("cat", e.keys.identity, e.run.calls["cat"] - before)

    def _learn(self, ident: Identity, e: Entry, token: str) -> None:
        owner = ident.tokens.setdefault(token, e.run.id)
        if owner == e.run.id:
            e.run._sep_token = token
            ident.unlearnt.pop(e.run.id, None)
        else:  # its separator file holds another run's: it is never read with that one
            ident.alone.add(e.run.id)

    def _shared(self, ident: Identity, shared: list[Planned], learners: list[Planned]) -> None:
        if len(shared) == 1 and not learners:
            self._alone(ident, *shared[0])
            return
        parts = [Part(e.run.run_dir, e.run._sep_token or "", p.files) for e, p in shared]
        argv = ["cat", *shared_cat_paths(parts, [e.run.run_dir for e, _ in learners])]
        everyone = [e for e, _ in shared + learners]
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1

        try:
            result = run_as_user(shared[0][0].run.backend.user_host, argv, attempt)
            error: HostError | None = None
        except HostError as exc:
            result, error = None, exc
        except Exception as exc:
            self._fail_all(everyone, exc)
            return
        finally:
            self._count("cat", ident.key, attempts)
            for e in everyone if attempts else []:
                self._guard(e, e.run.calls.update, {"cat": attempts})
        if result is None:
            if isinstance(error, NOT_TRANSIENT):
                self._fail_all(everyone, error)
            else:
                for e in everyone:
                    self._guard(e, e.run._cat_failed, error)
            return
        # cat's complaints, each to the run whose file it names (chunks not there yet aside)
        other = [ln for ln in result.stderr.splitlines() if "No such file or directory" not in ln]
        for e in everyone if other else []:
            mine = [ln for ln in other if f"{e.run.run_dir}/" in ln]
            if mine:
                self._guard(e, e.run._cat_errors, "\n".join(mine))
        cut = None if result.stdout_dropped else cut_shared(result.stdout, parts, len(learners))
        if cut is None:  # read each again alone, cut at its own token (module doc)
            self.stats.fell_back(ident.key)
            log.info("a shared cat of %s could not be cut: its runs are read alone", ident.key)
            for e, p in shared + learners:
                self._alone(ident, e, p)
            return
        for (e, p), pieces, size in zip(shared, cut.pieces, cut.sizes, strict=True):
            if self._guard(e, e.run._apply_read, p, pieces):
                e.news = True
            ident.sizes[e.run.id] = size
        for (e, _), text in zip(learners, cut.learnt, strict=True):
            if SEPARATOR.fullmatch(text):
                self._learn(ident, e, text)
            elif text:  # something, but not a separator line: after a few, read it alone
                ident.unlearnt[e.run.id] += 1
                if ident.unlearnt[e.run.id] >= LEARN_TRIES:
                    ident.alone.add(e.run.id)
