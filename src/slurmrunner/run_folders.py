"""The run folders, made as the user: fresh and private, in folders no other account may write.

Whoever can rename an entry of a parent could swap a run's files for links to files of the
account the job runs as, so the parents are looked at before anything is made in them (a
folder another account may write, or a link planted where our own folders go, is refused
before a mkdir could follow it) and again, through links, once the run folder is made.

Each call is a `sudo` or an SSH command (~10 ms of the server's CPU each with sudo), so the
runs of one account started in the same watcher cycle share them: one look, one mkdir of every
new run folder, one check, one mkdir of their subfolders, the same four calls as one run's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ConfigError, HostError
from .hosts.base import CommandResult

#: A command as the user: (argv, check=..., idempotent=...) -> its result (Submission._user).
UserCall = Callable[..., CommandResult]

SUBDIRS = ("jobs", "logs", "tasks", "results")


def parents_of(base: str) -> list[str]:
    return [base, f"{base}/.slurmrunner", f"{base}/.slurmrunner/runs"]


def make_parents(user: UserCall, base: str, also: list[str] | None = None) -> dict[str, Any]:
    """Check the project folder and make its `.slurmrunner/runs` when missing (a user's first
    run). `also`: paths listed in the same look (the run folders to be made). Returns what the
    look listed of `also` (mode, owner): a run folder already there is a plant."""
    parents, also = parents_of(base), also or []
    look = ["ls", "-ldn", f"{base}/", *parents[1:], *also]  # missing ones: rc 2
    before = user(look).stdout
    try:
        missing = check_before_making(before, base, parents[1:], also)
    except HostError:  # base could not be listed: made (or refused by mkdir), looked again
        user(["mkdir", "-p", "-m", "700", base], check=True)
        before = user(look).stdout
        missing = check_before_making(before, base, parents[1:], also)
    if missing:
        user(["mkdir", "-p", "-m", "700", *parents], check=True)
    seen = listed(before, look[2:])
    return {path: seen[path] for path in also if path in seen}


def make_run_folders(user: UserCall, base: str, run_dirs: list[str]) -> dict[str, Exception]:
    """Make each of `run_dirs` (new runs' folders under `base`) fresh, checked, with its
    subfolders. Returns the runs' folders that were refused or not made, with why; the others
    are ready. An error that concerns them all (the project folder refused, the host down)
    is raised."""
    planted = make_parents(user, base, run_dirs)
    exists = "it exists (it must not exist before the run)"
    refused: dict[str, Exception] = {
        d: HostError(f"cannot create the run folder {d}: {exists}") for d in planted
    }
    fresh = [d for d in run_dirs if d not in planted]
    if fresh:
        refused |= _make_fresh(user, fresh)
    made = [d for d in fresh if d not in refused]
    if made:
        refused |= finish_folders(user, base, made)
    return refused


def _make_fresh(user: UserCall, run_dirs: list[str]) -> dict[str, Exception]:
    # No -p: refused if one exists (a run id is new, so only a plant would be there), and not
    # run again after a dropped connection, when "exists" could be our own doing.
    try:
        made = user(["mkdir", "-m", "700", *run_dirs], idempotent=False)
    except HostError as exc:
        if not getattr(exc, "maybe_ran", False):
            raise
        return _after_drop(user, run_dirs)  # the connection dropped: they may be made, by us
    if made.ok:
        return {}
    # Listed as missing a moment ago, in parents only the user (or root) may write: which of
    # them the user made meanwhile cannot be told apart from ours, so none is used.
    why = HostError(
        f"cannot create the run folders of {len(run_dirs)} runs started together: "
        f"{made.stderr.strip()[:300]} (a run's folder must not exist before the run)"
    )
    return dict.fromkeys(run_dirs, why)


def _after_drop(user: UserCall, run_dirs: list[str]) -> dict[str, Exception]:
    # Parents no other account may write (checked after this, in finish_folders) leave only
    # the user able to have made them, so an empty folder is that mkdir's.
    user(["mkdir", "-p", "-m", "700", *run_dirs], check=True)
    refused: dict[str, Exception] = {}
    for d in run_dirs:
        if user(["ls", "-A", d], check=True).stdout.strip():
            refused[d] = HostError(f"the run folder {d} is not empty: refusing it")
    return refused


def finish_folders(user: UserCall, base: str, run_dirs: list[str]) -> dict[str, Exception]:
    """Once the run folders are there: their parents checked again, through links (one `ls`
    for all), then the subfolders of those that pass (one `mkdir`)."""
    parents = parents_of(base)
    listing = user(["ls", "-ldnL", *parents, *run_dirs], check=True).stdout
    refused: dict[str, Exception] = {}
    for d in run_dirs:
        try:
            check_folders(listing, parents, d, run_dirs)
        except (ConfigError, HostError) as exc:
            refused[d] = exc
    ready = [d for d in run_dirs if d not in refused]
    if ready:
        subdirs = [f"{d}/{sub}" for d in ready for sub in SUBDIRS]
        user(["mkdir", "-p", "-m", "700", *subdirs], check=True)
    return refused


# Pure: what `ls -ldn` said.
def listed(listing: str, paths: list[str]) -> dict[str, tuple[str, str]]:
    """path -> (mode, owner uid) for each of `paths` that `listing` names (a link's line is
    matched by the name before its ` -> `; a folder asked with a trailing / is keyed without).
    HostError: a line that names none of them, or one named twice. ls prints a link's target
    as it is, so a planted link whose target holds a newline and a line of its own making
    could otherwise pass for a folder, or for the project folder's line."""
    seen: dict[str, tuple[str, str]] = {}
    for line in listing.splitlines():
        fields = line.split()
        # Matched by the name at the end: the date before it takes 2 or 3 fields by locale.
        name = line.split(" -> ", 1)[0] if fields[:1] and fields[0].startswith("l") else line
        found = [p for p in paths if len(fields) >= 4 and name.endswith(" " + p)]
        key = found[0].rstrip("/") or "/" if found else None
        if key is None or key in seen:
            raise HostError(f"cannot check the run's folders: ls said {listing[:300]!r}")
        seen[key] = (fields[0], fields[2])
    return seen


def _problem(mode: str, base: bool = False) -> str | None:
    # The sticky bit excuses a shared project folder (a scratch like /scratch, 1777: no one
    # renames another's entries there), never our own .slurmrunner or runs, made 700: one that
    # others may write is someone else's, whose owner could swap a run folder made in it.
    sticky = base and mode[9:10] in ("t", "T")
    if mode.startswith("l"):
        return "is a link (the run's own folders are never links)"
    if not mode.startswith("d"):
        return "is not a folder"
    if (mode[5:6] == "w" or mode[8:9] == "w") and not sticky:
        return f"may be written by other users ({mode[:10]})"
    return None


def _refuse(path: str, problem: str) -> ConfigError:
    return ConfigError(
        f"project_dir: {path} {problem}: another account could replace a run's files "
        f"there with links to yours. Make it yours and private (chmod go-w {path}), or "
        "set project_dir to a folder of your own"
    )


def check_before_making(
    listing: str, base: str, subs: list[str], also: list[str] | None = None
) -> list[str]:
    """Before the run's folders are made under `base` (`listing` is `ls -ldn BASE/ SUBS...`,
    the missing SUBS absent): `base` must be a folder no other account may write, and each SUB
    already there a real folder (not a link), not writable by others, owned by base's owner
    (any owner when base is root's, like a sticky scratch: the check after making tells).
    The SUBS missing, to be made. HostError: `base` is not in the listing. `also`: other
    paths the listing may name (the run folders about to be made)."""
    seen = listed(listing, [f"{base}/", *subs, *(also or [])])
    if base not in seen:
        raise HostError(f"cannot check the folder {base}: ls said {listing[:300]!r}")
    base_mode, base_owner = seen[base]
    if problem := _problem(base_mode, base=True):
        raise _refuse(base, problem)
    for path in subs:
        if path not in seen:
            continue
        mode, owner = seen[path]
        if problem := _problem(mode):
            raise _refuse(path, problem)
        if owner != base_owner and base_owner != "0":
            raise _refuse(path, f"belongs to another account (uid {owner})")
    return [path for path in subs if path not in seen]


def check_folders(
    listing: str, parents: list[str], run_dir: str, others: list[str] | None = None
) -> None:
    """Refuse parents of the run folder that another account may change: not a folder,
    writable by group or others (without the sticky bit, for the project folder), or owned by
    neither the user (the run folder's owner, just made) nor root. `listing` is `ls -ldnL
    PARENTS... RUN_DIR` (and the `others` run folders made with it)."""
    seen = listed(listing, list(dict.fromkeys([*parents, run_dir, *(others or [])])))
    if run_dir not in seen or any(p not in seen for p in parents):
        raise HostError(f"cannot check the folders of {run_dir}: ls said {listing[:300]!r}")
    user = seen[run_dir][1]
    for path in parents:
        mode, owner = seen[path]
        problem = _problem(mode, base=path == parents[0])
        if problem is None and owner not in (user, "0"):
            problem = f"belongs to another account (uid {owner})"
        if problem:
            raise _refuse(path, problem)
