"""The hostile-output cases of tests/hostile_cases.py on the rig: alice's jobs write the bytes
(through sudo as alice, on SLURM), the server user's one process watches every run. Each case
is checked inside that process (tests/integration/hostile_driver.py) and reported here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ..hostile_cases import CASES, TASK
from .conftest import CONFIG, SERVER, SHARED, Srv, profiles

# Many small jobs (3 tasks each), and room for the task that writes a 50 MB result.
HOSTILE_CONFIG = {
    **CONFIG,
    "default_slurm_config": {**CONFIG["default_slurm_config"], "mem": "400M"},
    "batching_config": {
        **CONFIG["batching_config"],
        "target_num_jobs": 20,
        "max_num_jobs": 20,
        "target_mem_per_job": "400M",
    },
}


@pytest.fixture(scope="module")
def report(rig: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = SHARED / f"hostile-{tmp_path_factory.getbasetemp().name}"
    work.mkdir(mode=0o755, exist_ok=True)
    here = Path(__file__).parent
    for src in (here / "hostile_driver.py", here.parent / "hostile_cases.py"):
        shutil.copy(src, work / src.name)
    (work / "task.py").write_text(TASK)
    srv = Srv(work, f"/home/{SERVER}/store-hostile-{work.name}.sqlite")
    config = srv.write("config.json", HOSTILE_CONFIG)
    profile = srv.write("profile.json", profiles()["sudo"])
    for path in work.iterdir():
        path.chmod(0o644)
    driver = str(work / "hostile_driver.py")
    proc = srv.python(
        driver, config, profile, srv.store, str(work / "task.py"), cwd=str(work), timeout=1200
    )
    shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_the_honest_run_watched_beside_them_is_right(report: dict[str, Any]) -> None:
    assert report["honest"] == "ok", report["honest"]


@pytest.mark.parametrize("case", CASES)
def test_hostile_output_as_alice(report: dict[str, Any], case: str) -> None:
    assert report["cases"][case] == "ok", report["cases"][case]
