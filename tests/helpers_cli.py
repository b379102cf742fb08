"""Calling the CLI as a user does, in its own process, through the interpreter that runs the
tests (`python -m slurmrunner`): never a `slurmrunner` that happens to be on PATH."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from slurmrunner.cli import app, defaults


def argv(*args: Any) -> list[str]:
    return [sys.executable, "-m", "slurmrunner", *[str(a) for a in args]]


def slurmrunner(*args: Any, cwd: Any = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv(*args), capture_output=True, text=True, cwd=cwd, timeout=timeout)


def _default_signals() -> None:
    # A shell that starts a test run in the background (`cmd &`, nohup) makes the tests
    # inherit INT or HUP ignored, and slurmrunner keeps an ignored signal ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def start_slurmrunner(*args: Any, cwd: Any = None, **popen: Any) -> subprocess.Popen:
    """The CLI running in the background, its signals at their defaults."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    popen.setdefault("preexec_fn", _default_signals)
    return subprocess.Popen(argv(*args), cwd=cwd, **popen)


def isolate_cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No config, Profile or store of the person running the tests leaks into them (for the
    CLI run in-process and for the processes the test starts)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("SLURMRUNNER_STORE", str(tmp_path / "store.sqlite"))
    monkeypatch.delenv("SLURMRUNNER_CONFIG", raising=False)
    monkeypatch.delenv("SLURMRUNNER_PROFILE", raising=False)
    monkeypatch.setattr(defaults, "SYSTEM_DIR", tmp_path / "etc-slurmrunner")


def cli(*args: Any) -> Result:
    """The CLI in this process (for output and parsing; commands that run tasks use
    `slurmrunner`, a process of their own)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Rich wraps long lines on stderr: compare with whitespace runs folded to one space."""
    return re.sub(r"\s+", " ", text)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_inputs(path: Path, inputs: Any) -> Path:
    """A JSON-lines inputs file, one task a line."""
    path.write_text("".join(json.dumps(x) + "\n" for x in inputs))
    return path
