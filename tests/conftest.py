"""Fixtures shared by the fast (no cluster) tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

# The reference document's two JSON snippets, completed into whole files.
DOC_SNIPPET_1 = {
    "default_slurm_config": {
        "partition": "main",
        "extra_lines": ["export SOMEVARIABLE=123", "export ANOTHERVARIABLE=ABC"],
    }
}
DOC_SNIPPET_2 = {
    "user_local_exports": {
        "LIBRARY_1_CACHE_DIR": "somewhere/library_1",
        "LIBRARY_2_FILE": "somewhere/else/library_2.json",
    }
}


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A user's project_dir for the local backend, inside the test's own tmp_path."""
    path = tmp_path / "project"
    path.mkdir()
    return path


@pytest.fixture
def local_profile_file(tmp_path: Path, project_dir: Path) -> Path:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"backend": "local", "project_dir": str(project_dir)}))
    return path
