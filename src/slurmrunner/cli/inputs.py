"""Reading what the user gives, all checked before anything is submitted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..config import TaskResources, load_json_or_toml, parse_resources
from ..errors import ConfigError, SlurmRunnerError
from ..runner import Run, Runner
from ..store import Store
from .defaults import load_config, load_profile
from .output import fail


def read_inputs(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        fail(f"{path}: cannot read: {exc.strerror}")
    inputs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            fail(f"{path}:{n}: not JSON: {exc.msg}")
        if not isinstance(value, dict):
            fail(f"{path}:{n}: each line must be a JSON object of arguments")
        inputs.append(value)
    if not inputs:
        fail(f"{path}: no inputs")
    return inputs


def read_resources(value: str | None) -> TaskResources | None:
    if value is None:
        return None
    return parse_resources(resources_data(value))


def resources_data(value: str) -> Any:
    """--resources as given: a .json/.toml file's content, or the JSON itself (unchecked: a
    service checks it against its own admin's config)."""
    if Path(value).is_file():
        return load_json_or_toml(value)
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--resources: neither a file nor JSON ({exc.msg})") from None


def check_results_path(path: Path | None) -> None:
    """Refuse an output file that could not be written, before any task runs (exit 2)."""
    if path is None:
        return
    if path.is_dir():
        fail(f"--results {path}: is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        fail(f"--results {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        fail(f"--results {path}: cannot write in {folder}")
    if path.exists() and not os.access(path, os.W_OK):
        fail(f"--results {path}: the file exists and cannot be overwritten")


def make_runner(config: Path | None, profile: Path | None, store: Path | None) -> Runner:
    try:
        cfg, _ = load_config(config)
        prof, _ = load_profile(profile)
    except SlurmRunnerError as exc:
        fail(str(exc))
    return Runner(cfg, prof, Store(store) if store else None)


def open_store(store: Path | None) -> Store:
    return Store(store) if store else Store()


def attach(text: str, store: Path | None) -> Run:
    """The run a person means by `text`: a whole id, a unique prefix, or `last`."""
    st = open_store(store)
    try:
        return Runner.attach(st.resolve_run_id(text), st)
    except SlurmRunnerError as exc:
        fail(str(exc))
