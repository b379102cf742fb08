"""`python -m slurmrunner`: the CLI through the interpreter that runs it (tests use this form)."""

from .cli import app

app(prog_name="slurmrunner")
