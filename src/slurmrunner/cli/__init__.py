"""The `slurmrunner` command: parse, call the runner, print. Nothing else lives here.

The commands live by concern (run_cmds, inspect_cmds, config_cmds) and are put together
here; `slurmrunner.cli:app` is the installed entry point.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from . import admin_cmds, config_cmds, inspect_cmds, retry_cmds, run_cmds, service_cmds

app = typer.Typer(
    help="Run a command over many inputs on SLURM (or locally), on behalf of a user.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check and show admin configs and Profiles.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(admin_cmds.admin_app, name="admin")


def _version() -> str:
    try:
        return version("slurmrunner")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"slurmrunner {_version()}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Run a command over many inputs on SLURM (or locally), on behalf of a user."""


app.command()(run_cmds.render)
app.command(epilog=run_cmds.EXIT_CODES)(run_cmds.run)
app.command()(run_cmds.submit)
app.command()(inspect_cmds.status)
app.command(epilog=run_cmds.EXIT_CODES)(run_cmds.wait)
app.command("results")(inspect_cmds.results)
app.command()(inspect_cmds.logs)
app.command()(run_cmds.cancel)
app.command(epilog=retry_cmds.EXAMPLES)(retry_cmds.retry)
app.command()(inspect_cmds.runs)
app.command()(service_cmds.serve)
config_app.command("check")(config_cmds.check)
config_app.command("show")(config_cmds.show)

__all__ = ["app"]
