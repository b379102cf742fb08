"""`slurmrunner config ...`: check an admin config file, show what a run would use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..config import load_config_file
from ..errors import SlurmRunnerError
from .defaults import key_sources, load_config, load_profile
from .options import ConfigOpt, ProfileOpt
from .output import fail, say, write_json


def check(file: Annotated[Path, typer.Argument(help="Config file to check.")]) -> None:
    """Exit 0 if FILE is a valid admin config, else print what is wrong (key named), exit 2."""
    try:
        cfg = load_config_file(file)
    except SlurmRunnerError as exc:
        fail(str(exc))
    parts = cfg.default_slurm_config.partition or "(cluster default)"
    say(
        f"[green]ok[/]: {escape(str(file))} (partition {escape(parts)}, gpu config: "
        f"{'yes' if cfg.gpu_slurm_config else 'no'})"
    )


def show(config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """Print the config and Profile a run would use (JSON), and where each part came from."""
    try:
        cfg, cfg_source = load_config(config)
        prof, prof_source = load_profile(profile)
    except SlurmRunnerError as exc:
        fail(str(exc))
    write_json(
        {
            "config": cfg.model_dump(mode="json"),
            "profile": prof.model_dump(mode="json"),
            "files": {"config": cfg_source.describe(), "profile": prof_source.describe()},
            "sources": {
                **key_sources(cfg, cfg_source, "config"),
                **key_sources(prof, prof_source, "profile"),
            },
        }
    )
