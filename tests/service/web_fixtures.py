"""Fixtures of the web pages' tests (test_web*.py import them): an app whose watcher cycles
fast, and each test's own local queue and web secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from slurmrunner.service.app import create_app
from tests.service.test_runs import FAST


@pytest.fixture
def app(db_url: str) -> Any:
    return create_app(db_url, poll=FAST)


@pytest.fixture(autouse=True)
def _own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURMRUNNER_LOCAL_QUEUE", str(tmp_path / "queue.sqlite"))
    monkeypatch.setenv("SLURMRUNNER_STATE_DIR", str(tmp_path / "state"))
