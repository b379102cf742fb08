"""The options and arguments several commands share, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Admin SLURM config (JSON or TOML); default: $SLURMRUNNER_CONFIG, else "
        "config.json|toml in ~/.config/slurmrunner or /etc/slurmrunner.",
        show_default=False,
    ),
]
ProfileOpt = Annotated[
    Path | None,
    typer.Option(
        "--profile",
        "-p",
        help="User Profile (JSON or TOML); default: $SLURMRUNNER_PROFILE, else "
        "profile.json|toml in the same folders, else the local backend.",
        show_default=False,
    ),
]
InputsOpt = Annotated[
    Path, typer.Option("--inputs", "-i", help="JSON lines: one object of arguments per task.")
]
ResourcesOpt = Annotated[
    str | None,
    typer.Option(
        "--resources", "-r", help="Per-task overrides: a JSON object or a .json/.toml file."
    ),
]
CallOpt = Annotated[
    str,
    typer.Option(
        help="How a task is called: 'fractal' (CMD --args-json A --out-json B) or 'stdin' "
        "(arguments on standard input, result path in $SLURMRUNNER_OUT_JSON)."
    ),
]
WorkdirOpt = Annotated[
    str | None,
    typer.Option(help="Tasks' working directory (default: here for local, the run folder else)."),
]
StoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--store", envvar="SLURMRUNNER_STORE", help="Run store (SQLite); default in ~/.local/state."
    ),
]
CommandArg = Annotated[
    list[str], typer.Argument(metavar="COMMAND", help="The task's command, after --.")
]
RunArg = Annotated[
    str,
    typer.Argument(
        metavar="RUN", help="Run id as printed by run/submit, a unique prefix of it, or 'last'."
    ),
]
ResultsOpt = Annotated[
    Path | None,
    typer.Option(
        "--results", "-o", help="Write results here (JSON lines) instead of standard output."
    ),
]
MaxFailuresOpt = Annotated[
    int | None,
    typer.Option(
        "--max-failures",
        min=1,
        help="Once this many tasks failed, cancel the rest and exit 1.",
        show_default=False,
    ),
]
# A service instead of this machine: run and look at runs there, as the token's user.
_REMOTE = "On a service"
ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="SLURMRUNNER_SERVER",
        help="A slurmrunner service's URL (http[s]://host[:port]): the run is there, on your "
        "Profile's Resource. Unset: on this machine.",
        show_default=False,
        rich_help_panel=_REMOTE,
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="SLURMRUNNER_TOKEN",
        help="Your API token for --server (better in $SLURMRUNNER_TOKEN: an option shows in ps).",
        show_default=False,
        rich_help_panel=_REMOTE,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on standard output.")]
