"""Runs the hostile-output cases as the server user, alice's jobs writing the bytes (rig).

Usage: python hostile_driver.py CONFIG.json PROFILE.json STORE TASK.py -> one JSON report on
stdout: {"honest": "ok" | error, "cases": {case: "ok" | error}}. Run with the server's own
Python (scripts/server-install); hostile_cases.py lies next to this file.
"""

import json
import sys
import traceback
from pathlib import Path

from hostile_cases import CASES, check_case, check_honest, watch_cases

from slurmrunner import Runner, Store
from slurmrunner.config import SlurmRunnerConfig
from slurmrunner.profiles import Profile


def outcome(check, *args) -> str:
    try:
        check(*args)
    except Exception:  # the report says which case failed and how
        return traceback.format_exc(limit=3)[-3000:]
    return "ok"


def main() -> None:
    config, profile, store, task = sys.argv[1:5]
    runner = Runner(
        SlurmRunnerConfig.model_validate(json.loads(Path(config).read_text())),
        Profile.model_validate(json.loads(Path(profile).read_text())),
        Store(store),
    )
    watched = watch_cases(runner, ["/usr/bin/python3", "-S", task], timeout=900)
    report = {
        "honest": outcome(check_honest, watched),
        "cases": {case: outcome(check_case, watched, case) for case in CASES},
    }
    print(json.dumps(report))


main()
