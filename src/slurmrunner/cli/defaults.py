"""Where the admin config and the user's Profile come from when not given on the command line.

First found wins: the option, $SLURMRUNNER_CONFIG / $SLURMRUNNER_PROFILE,
$XDG_CONFIG_HOME/slurmrunner/ (default ~/.config), /etc/slurmrunner/, built-in defaults.
In each folder `config.json` (`profile.json`) is looked for before the `.toml`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from ..config import SlurmRunnerConfig, load_config_file
from ..errors import ConfigError
from ..profiles import Profile, load_profile_file

SYSTEM_DIR = Path("/etc/slurmrunner")
BUILT_IN = "built-in defaults"
Kind = Literal["config", "profile"]


@dataclass(frozen=True)
class Source:
    path: Path | None
    how: str  # "--config", "$SLURMRUNNER_CONFIG", "user default", "system default", BUILT_IN

    def describe(self) -> str:
        return BUILT_IN if self.path is None else f"{self.path} ({self.how})"


def user_dir() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec: a relative value is invalid and is ignored.
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"
    return base / "slurmrunner"


def locate(kind: Kind, given: Path | None) -> Source:
    if given is not None:
        return Source(given, f"--{kind}")
    env = f"SLURMRUNNER_{kind.upper()}"
    if value := os.environ.get(env):
        return Source(Path(value), f"${env}")
    for folder, how in ((user_dir(), "user default"), (SYSTEM_DIR, "system default")):
        for suffix in ("json", "toml"):
            path = folder / f"{kind}.{suffix}"
            if path.is_file():
                return Source(path, how)
    return Source(None, BUILT_IN)


def _named(exc: ConfigError, source: Source) -> ConfigError:
    """The error, saying where the file came from when the user did not name it."""
    if source.how.startswith("--"):
        return exc
    return ConfigError(f"{exc} (via {source.how})")


def load_config(given: Path | None) -> tuple[SlurmRunnerConfig, Source]:
    source = locate("config", given)
    if source.path is None:
        return SlurmRunnerConfig(), source
    try:
        return load_config_file(source.path), source
    except ConfigError as exc:
        raise _named(exc, source) from None


def load_profile(given: Path | None) -> tuple[Profile, Source]:
    source = locate("profile", given)
    if source.path is None:
        return Profile(backend="local"), source
    try:
        return load_profile_file(source.path), source
    except ConfigError as exc:
        raise _named(exc, source) from None


def key_sources(model: BaseModel, source: Source, prefix: str) -> dict[str, str]:
    """Each leaf key (dotted) -> the file that set it, or BUILT_IN."""
    out: dict[str, str] = {}
    for name in type(model).model_fields:
        key = f"{prefix}.{name}"
        value = getattr(model, name)
        if isinstance(value, BaseModel) and name in model.model_fields_set:
            out.update(key_sources(value, source, key))
        else:
            out[key] = source.describe() if name in model.model_fields_set else BUILT_IN
    return out
