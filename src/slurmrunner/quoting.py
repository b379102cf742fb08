"""How values enter shell text and #SBATCH lines: the one place that decides quoting.

Every value placed in a script or a command line passes through one of these.
"""

from __future__ import annotations

import os
import re
import shlex

from .errors import ConfigError

_POSIX_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$", re.IGNORECASE)
# #SBATCH lines are parsed by sbatch, not by a shell: refuse anything that could split a value.
_DIRECTIVE_VALUE_RE = re.compile(r"^[A-Za-z0-9_.,:=/@%+\-\[\]]+$")
_SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9_.,:=@%+\-/]*$")


def shell_word(value: str | int) -> str:
    """One shell word, quoted only when it needs to be."""
    return shlex.quote(str(value))


def shell_command(argv: list[str]) -> str:
    """A command line with every word quoted (for SSH, which takes a string)."""
    return shlex.join(argv)


def directive_value(key: str, value: str | int) -> str:
    """A value for `#SBATCH --key=value`; refused (naming the key) if it could be misparsed."""
    text = str(value)
    if not _DIRECTIVE_VALUE_RE.fullmatch(text):
        raise ConfigError(
            f"{key}: value {text!r} has characters not allowed in an #SBATCH line "
            "(allowed: letters, digits and _ . , : = / @ % + - [ ])"
        )
    return text


def posix_username(name: str, key: str = "username") -> str:
    """A valid POSIX user name, or ConfigError naming the key (nothing else reaches sudo/ssh)."""
    if not isinstance(name, str) or not _POSIX_USER_RE.fullmatch(name):
        raise ConfigError(
            f"{key}: {name!r} is not a valid POSIX user name "
            "(letters, digits, _ and -, not starting with a digit or -, at most 32 characters)"
        )
    return name


def cluster_path(path: str, key: str) -> str:
    """An absolute path on the cluster that is safe in #SBATCH lines and commands."""
    if not _SAFE_PATH_RE.fullmatch(path) or "/../" in f"{path}/" or "/./" in f"{path}/":
        raise ConfigError(
            f"{key}: {path!r} cannot be used on a cluster: sbatch reads it unquoted, so it must "
            "be an absolute, normalised path of letters, digits and _ . , : = @ % + - / "
            "(no spaces, quotes, accents or '..'). Use a folder whose path has none of these."
        )
    return path.rstrip("/") or "/"


def local_path(path: str, key: str) -> str:
    """A path on this machine, made absolute against the current folder. Any name works
    (spaces, accents: it is always quoted); only what cannot sit on one line is refused."""
    if not isinstance(path, str) or not path or any(c in path for c in "\0\n\r"):
        raise ConfigError(f"{key}: {path!r} must be a non-empty path on one line")
    return os.path.normpath(os.path.abspath(path))
