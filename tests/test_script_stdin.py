"""The job script hands its worker to python in one read, not one read(2) per byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slurmrunner.config import parse_config
from slurmrunner.profiles import Profile
from slurmrunner.runner import Runner
from slurmrunner.script import RUN_STDIN
from slurmrunner.store import Store

CONFIG = {
    "default_slurm_config": {"partition": "main", "cpus_per_task": 1, "mem": "100M"},
    "batching_config": {"target_num_jobs": 1, "max_num_jobs": 1, "target_cpus_per_job": 2},
    "python": sys.executable,
}

ECHO = """\
import json, sys
argv = sys.argv
with open(argv[argv.index("--args-json") + 1], encoding="utf-8") as fh:
    args = json.load(fh)
with open(argv[argv.index("--out-json") + 1], "w", encoding="utf-8") as fh:
    json.dump(args, fh)
"""


def scripts(tmp_path: Path, inputs: list, command: list[str] | None = None) -> tuple[str, str]:
    runner = Runner(
        parse_config(CONFIG),
        Profile(backend="local", project_dir=str(tmp_path / "proj")),
        store=Store(":memory:"),
    )
    command = command or ["true"]
    (job,) = runner.plan(command, inputs, run_id="R1")
    (script,) = runner.render(command, inputs, run_id="R1")
    Path(job.run_dir, "jobs").mkdir(parents=True, exist_ok=True)
    return script, job.run_dir


def records(run_dir: str) -> list[dict]:
    text = Path(run_dir, "results", "0.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_the_worker_is_run_with_c_reading_the_here_document(tmp_path):
    script, _ = scripts(tmp_path, [{"x": 1}])
    head, _, body = script.partition("\n_PAYLOAD = ")
    line = head.splitlines()[-1]
    assert line == f"exec {sys.executable} -c '{RUN_STDIN}' <<'SLURMRUNNER_PAYLOAD_END'"
    assert "'" not in RUN_STDIN  # one single-quoted shell word
    assert body.endswith("\nSLURMRUNNER_PAYLOAD_END\n")


def test_non_ascii_inputs_round_trip_in_the_c_locale(tmp_path):
    """The program's bytes are compiled as source (UTF-8), not decoded with the job's
    locale; today they are ASCII anyway (the payload's JSON escapes the rest): a guard."""
    task = tmp_path / "echo.py"
    task.write_text(ECHO)
    inputs = [{"s": "é ü 漢字 🎉 \u2028 end"}, {"s": "'\"$`\\\n"}]
    script, run_dir = scripts(tmp_path, inputs, [sys.executable, str(task)])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONUTF8"))}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    proc = subprocess.run(["bash", "-s"], input=script.encode(), env=env, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    got = {r["i"]: r["result"] for r in records(run_dir) if "i" in r}
    assert got == dict(enumerate(inputs))


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_python_reads_the_program_in_few_reads(tmp_path):
    # Inputs that do not compress (the payload is compressed when large): a big program.
    inputs = [{"x": i, "pad": os.urandom(3000).hex()} for i in range(20)]
    script, run_dir = scripts(tmp_path, inputs)
    path = tmp_path / "job.sh"
    path.write_text(script)
    trace = tmp_path / "trace"
    # Not -f: bash execs python in the same process; the tasks' own reads are not counted.
    proc = subprocess.run(
        ["strace", "-e", "trace=read", "-o", str(trace), "bash", str(path)],
        capture_output=True,
    )
    if proc.returncode != 0 and b"ptrace" in proc.stderr:
        pytest.skip("strace not permitted here")
    assert proc.returncode == 0, proc.stderr.decode()
    assert [r["status"] for r in records(run_dir) if "i" in r] == ["ok"] * 20
    reads = trace.read_text().count("read(")
    # `python3 -` made one read per byte of the program: more than len(script) here
    assert len(script) > 40_000 and reads < 2_000
