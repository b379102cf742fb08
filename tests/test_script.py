"""Job scripts: layout, quoting, refusals, and the script itself run with bash."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from slurmrunner import payload
from slurmrunner import script as script_mod
from slurmrunner.config import parse_config, parse_resources
from slurmrunner.errors import ConfigError
from slurmrunner.profiles import Profile
from slurmrunner.quoting import directive_value, shell_command, shell_word
from slurmrunner.runner import Runner, worker_source
from slurmrunner.script import check_script_size, render_script, worker_payload
from slurmrunner.store import Store
from tests.conftest import DOC_SNIPPET_1, DOC_SNIPPET_2, EXAMPLES

CONFIG = {
    "default_slurm_config": {
        "partition": "main",
        "cpus_per_task": 1,
        "mem": "200M",
        "time": "00:10:00",
        "account": "lab-1",
        "extra_lines": [
            "#SBATCH --mail-type=END",
            "export SOMEVARIABLE=123",
            "export ANOTHERVARIABLE=ABC",
            "module load foo  # keep 'me' as \"is\"",
        ],
    },
    "gpu_slurm_config": {"partition": "gpu", "gres": "gpu:1", "extra_lines": ["export GPU=1"]},
    "batching_config": {"target_num_jobs": 4, "max_num_jobs": 4, "target_cpus_per_job": 2},
    **DOC_SNIPPET_2,
    "python": sys.executable,
}

ECHO_TASK = """\
import json, sys
argv = sys.argv
with open(argv[argv.index("--args-json") + 1]) as fh:
    args = json.load(fh)
with open(argv[argv.index("--out-json") + 1], "w") as fh:
    json.dump({"args": args, "argv_tail": argv[1:-4]}, fh)
"""


def make_runner(config=None, project_dir="/home/alice/proj", **profile):
    cfg = parse_config(CONFIG if config is None else config)
    profile.setdefault("backend", "local")
    return Runner(cfg, Profile(project_dir=str(project_dir), **profile), store=Store(":memory:"))


def render(inputs, config=None, project_dir="/home/alice/proj", resources=None, **kw):
    runner = make_runner(config, project_dir)
    return runner.render(["python3", "task.py"], inputs, resources, **kw)


def header(script):
    """The lines before the worker's here-document."""
    return script.split("<<'SLURMRUNNER_PAYLOAD_END'\n", 1)[0].splitlines()


def test_deterministic():
    inputs = [{"x": i, "s": "é\n'\""} for i in range(20)]
    first = render(inputs)
    assert first == render(inputs)
    assert first == make_runner().render(["python3", "task.py"], inputs)
    assert len(set(first)) == 4


def test_layout():
    script = render([{"x": i} for i in range(20)])[0]
    lines = header(script)
    assert lines[0] == "#!/bin/bash"
    # sbatch stops reading directives at the first command: every #SBATCH line comes first
    first_command = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    sbatch = lines[1:first_command]
    assert all(line.startswith("#SBATCH --") for line in sbatch)
    assert sbatch[-1] == "#SBATCH --mail-type=END"  # the extra line, after ours
    assert "#SBATCH --job-name=sr-RUNID-0" in sbatch
    assert "#SBATCH --ntasks=1" in sbatch
    assert "#SBATCH --cpus-per-task=2" in sbatch
    assert "#SBATCH --mem=400M" in sbatch
    assert "#SBATCH --time=00:30:00" in sbatch  # 5 tasks, 2 at a time: 3 waves of 10 min
    assert "#SBATCH --partition=main" in sbatch
    assert "#SBATCH --account=lab-1" in sbatch
    assert "#SBATCH --output=/home/alice/proj/.slurmrunner/runs/RUNID/jobs/0.out" in sbatch
    assert "#SBATCH --chdir=/home/alice/proj/.slurmrunner/runs/RUNID" in sbatch
    assert lines[-1].startswith("exec ")
    assert script.endswith("\nSLURMRUNNER_PAYLOAD_END\n")


def test_extra_lines_verbatim_and_in_order():
    script = render([{"x": 1}])[0]
    lines = header(script)
    extra = CONFIG["default_slurm_config"]["extra_lines"]
    start = lines.index(extra[0])
    assert lines[start : start + len(extra)] == extra
    assert all(line.startswith("#SBATCH --") for line in lines[1:start])
    assert lines.count(extra[0]) == 1


def test_extra_lines_default_then_gpu_then_task():
    resources = parse_resources({"needs_gpu": True, "extra_lines": ["export TASK=1"]})
    config = {**CONFIG, "allow_task_extra_lines": True}
    lines = header(render([{"x": 1}], config=config, resources=resources)[0])
    extra = [*CONFIG["default_slurm_config"]["extra_lines"], "export GPU=1", "export TASK=1"]
    start = lines.index(extra[0])
    assert lines[start : start + len(extra)] == extra
    assert "#SBATCH --partition=gpu" in lines
    assert "#SBATCH --gres=gpu:1" in lines


def test_doc_snippet_1_lines_verbatim():
    lines = header(render([{"x": 1}], config=DOC_SNIPPET_1)[0])
    assert "#SBATCH --partition=main" in lines
    i = lines.index("export SOMEVARIABLE=123")
    assert lines[i + 1] == "export ANOTHERVARIABLE=ABC"


def test_user_local_exports_under_project_cache(tmp_path):
    lines = header(render([{"x": 1}], project_dir=tmp_path)[0])
    assert f"export LIBRARY_1_CACHE_DIR={tmp_path}/.fractal_cache/somewhere/library_1" in lines
    assert f"export LIBRARY_2_FILE={tmp_path}/.fractal_cache/somewhere/else/library_2.json" in lines


def test_cache_dir_override_changes_base():
    runner = make_runner(project_dir="/home/alice/proj", cache_dir="/scratch/alice/cache")
    lines = header(runner.render(["python3", "task.py"], [{"x": 1}])[0])
    assert "export LIBRARY_1_CACHE_DIR=/scratch/alice/cache/somewhere/library_1" in lines
    assert not any(".fractal_cache" in line for line in lines)


def test_exports_come_after_extra_lines_and_umask():
    lines = header(render([{"x": 1}])[0])
    umask = lines.index("umask 077")
    assert lines.index("export ANOTHERVARIABLE=ABC") < umask
    assert all(i > umask for i, line in enumerate(lines) if line.startswith("export LIBRARY"))


def test_mem_per_cpu():
    cfg = {**CONFIG, "default_slurm_config": {"mem": "1G", "use_mem_per_cpu": True}}
    lines = header(render([{"x": i} for i in range(8)], config=cfg)[0])
    assert "#SBATCH --mem-per-cpu=1024M" in lines
    assert not any(line.startswith("#SBATCH --mem=") for line in lines)


def test_custom_shebang_first():
    cfg = {**CONFIG, "default_slurm_config": {"shebang_line": "#!/bin/bash -l"}}
    assert render([{"x": 1}], config=cfg)[0].startswith("#!/bin/bash -l\n#SBATCH ")


@pytest.mark.parametrize(
    "value",
    ["has space", "dollar$HOME", "semi;colon", "it's", 'dq"x', "back`tick`", "nl\nx", "$(id)", ""],
)
def test_shell_word_quotes_and_round_trips(value):
    word = shell_word(value)
    if value:
        assert word != value  # needed quoting
    out = subprocess.run(
        ["bash", "-c", f"printf %s {word}"], capture_output=True, text=True, check=True
    )
    assert out.stdout == value


def test_shell_word_leaves_plain_paths_alone():
    assert shell_word("/home/alice/proj/.fractal_cache/x") == "/home/alice/proj/.fractal_cache/x"
    assert shell_command(["ls", "a b"]) == "ls 'a b'"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("partition", "main; rm -rf /"),
        ("partition", "main rm"),
        ("partition", "main\n"),
        ("account", "a'b"),
        ("gres", 'gpu"1'),
        ("constraint", "a b"),
        ("qos", "$(id)"),
        ("exclude", "n1\nn2"),
        ("nodelist", "n`id`"),
    ],
)
def test_unsafe_directive_values_refused_naming_key(key, value):
    cfg = {"default_slurm_config": {key: value}}
    with pytest.raises(ConfigError) as info:
        render([{"x": 1}], config=cfg)
    assert str(info.value).startswith(f"{key}:")


def test_directive_value_accepts_slurm_syntax():
    for value in ("gpu:a100:2", "node[01-04],gpu7", "intel&avx2".replace("&", ","), "lab-1"):
        assert directive_value("x", value) == value


def test_bad_command_and_call_refused():
    runner = make_runner()
    with pytest.raises(ConfigError, match=r"^command"):
        runner.render([], [{"x": 1}])
    with pytest.raises(ConfigError, match=r"^call"):
        runner.render(["true"], [{"x": 1}], call="argv")
    cluster = make_runner(backend="slurm_sudo", username="alice")
    with pytest.raises(ConfigError, match=r"^workdir.*cannot be used on a cluster"):
        cluster.render(["true"], [{"x": 1}], workdir="relative/dir")


def test_local_paths_resolve_against_the_callers_folder(tmp_path, monkeypatch):
    # One path rule (CLI and API): relative workdir and program paths mean the caller's folder,
    # and on this machine any folder name works, quoted.
    here = tmp_path / "My Project é"
    here.mkdir()
    monkeypatch.chdir(here)
    job = make_runner(project_dir=str(here / "work")).plan(["./task.sh", "a b"], [{"x": 1}])[0]
    assert job.workdir == str(here)
    assert job.command == (str(here / "task.sh"), "a b")
    other = make_runner(project_dir=str(here)).plan(["true"], [{"x": 1}], workdir="sub")[0]
    assert other.workdir == str(here / "sub")
    script = render_script(job, worker_source())
    assert f"#SBATCH --chdir='{here}/work/.slurmrunner/runs/RUNID'" in script


def test_heredoc_marker_in_worker_refused():
    job = make_runner().plan(["true"], [{"x": 1}])[0]
    with pytest.raises(ConfigError, match="end marker"):
        render_script(job, worker_source() + "\nSLURMRUNNER_PAYLOAD_END\n")


def bash_syntax_ok(script, tmp_path):
    path = tmp_path / "job.sh"
    path.write_text(script)
    out = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "config",
    [CONFIG, DOC_SNIPPET_1, DOC_SNIPPET_2, {}, "examples"],
    ids=["test", "doc1", "doc2", "empty", "examples"],
)
def test_bash_n_accepts_every_script(config, tmp_path):
    if config == "examples":
        config = json.loads((EXAMPLES / "config.json").read_text())
    inputs = [{"x": i, "s": "'\"$`\\\n"} for i in range(30)]
    for needs_gpu in (False, True) if "gpu_slurm_config" in config else (False,):
        resources = parse_resources({"needs_gpu": needs_gpu})
        for script in render(inputs, config=config, resources=resources):
            bash_syntax_ok(script, tmp_path)


NASTY = [
    {"s": 'it\'s "quoted" \'\'\'triple\'\'\' """too"""'},
    {"s": "line1\nline2\r\nline3\n"},
    {"s": "unicode: é ü 漢字 🎉 \u2028 \u0000 end"},
    {"s": "SLURMRUNNER_PAYLOAD_END"},
    {"s": "before\nSLURMRUNNER_PAYLOAD_END\nafter"},
    {"s": "$(touch /tmp/slurmrunner-pwned) `id` ${HOME} $HOME \\ \\\\ \\n"},
    {"nested": {"list": [1, 2.5, None, True, "x"], "empty": {}}, "n": -1},
    {},
    {"s": "x" * 10000},
    {"s": "'); import os; os.system('id'); ('"},
]


def run_script(script, run_dir):
    Path(run_dir, "jobs").mkdir(parents=True, exist_ok=True)
    return subprocess.run(["bash", "-s"], input=script.encode(), capture_output=True, timeout=60)


def read_records(run_dir, job_index):
    lines = Path(run_dir, "results", f"{job_index}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_payload_round_trip_through_bash(tmp_path):
    task = tmp_path / "echo_task.py"
    task.write_text(ECHO_TASK)
    project = tmp_path / "proj"
    runner = make_runner(project_dir=project)
    command = [sys.executable, str(task), "arg with space", "it's", "$HOME"]
    jobs = runner.plan(command, NASTY, run_id="R1")
    scripts = runner.render(command, NASTY, run_id="R1")
    assert len(scripts) == len(jobs) == 4
    run_dir = jobs[0].run_dir
    assert run_dir == f"{project}/.slurmrunner/runs/R1"
    seen = {}
    for job, script in zip(jobs, scripts, strict=True):
        proc = run_script(script, run_dir)
        assert proc.returncode == 0, proc.stderr.decode()
        records = read_records(run_dir, job.job_index)
        end = dict(records[-1])
        assert end.pop("t") >= records[0]["t"]
        assert records[0]["event"] == "start"
        assert (end["event"], end["job"]) == ("end", job.job_index)
        for rec in records[1:-1]:
            assert rec["status"] == "ok", rec
            assert rec["job"] == job.job_index
            seen[rec["i"]] = rec["result"]
        assert sorted(r["i"] for r in records[1:-1]) == [i for i, _ in job.tasks]
    assert seen == {
        i: {"args": args, "argv_tail": ["arg with space", "it's", "$HOME"]}
        for i, args in enumerate(NASTY)
    }
    assert not Path("/tmp/slurmrunner-pwned").exists()


def test_nasty_inputs_round_trip_compressed(tmp_path, monkeypatch):
    """The hostile inputs in the compressed form (forced: they are too small to be compressed
    otherwise): the payload line gives back the same JSON, no line of the here-document is
    its end marker, and the job runs them as given."""
    monkeypatch.setattr(script_mod, "payload_line", partial(payload.payload_line, compress=True))
    task = tmp_path / "echo_task.py"
    task.write_text(ECHO_TASK)
    runner = make_runner(project_dir=tmp_path / "proj")
    command = [sys.executable, str(task), "it's", "$HOME"]
    jobs = runner.plan(command, NASTY, run_id="R3")
    seen = {}
    for job in jobs:
        script = render_script(job, worker_source())
        lines = script.splitlines()
        (line,) = [x for x in lines if x.startswith(payload.PAYLOAD_PREFIX)]
        assert payload.is_compressed(line) and line.isascii()
        want = json.dumps(worker_payload(job), sort_keys=True, separators=(",", ":"))
        assert payload.read_payload_line(line) == want
        scope: dict = {}
        exec(line, scope)  # our own line, as the job's python runs it
        assert scope["_PAYLOAD"] == want
        assert [i for i, x in enumerate(lines) if x.strip() == "SLURMRUNNER_PAYLOAD_END"] == [
            len(lines) - 1
        ]
        proc = run_script(script, job.run_dir)
        assert proc.returncode == 0, proc.stderr.decode()
        for rec in read_records(job.run_dir, job.job_index)[1:-1]:
            assert rec["status"] == "ok", rec
            seen[rec["i"]] = rec["result"]["args"]
    assert seen == dict(enumerate(NASTY))
    assert not Path("/tmp/slurmrunner-pwned").exists()


def test_script_exports_reach_the_task(tmp_path):
    task = tmp_path / "env_task.py"
    task.write_text(
        "import json, os, sys\n"
        "names = ['LIBRARY_1_CACHE_DIR', 'LIBRARY_2_FILE', 'SOMEVARIABLE', 'ANOTHERVARIABLE']\n"
        "json.dump({n: os.environ.get(n) for n in names}, open(sys.argv[-1], 'w'))\n"
    )
    project = tmp_path / "proj"
    runner = make_runner(project_dir=project)
    job = runner.plan([sys.executable, str(task)], [{}], run_id="R2")[0]
    proc = run_script(runner.render([sys.executable, str(task)], [{}], run_id="R2")[0], job.run_dir)
    assert proc.returncode == 0, proc.stderr.decode()
    result = read_records(job.run_dir, 0)[1]["result"]
    assert result == {
        "LIBRARY_1_CACHE_DIR": f"{project}/.fractal_cache/somewhere/library_1",
        "LIBRARY_2_FILE": f"{project}/.fractal_cache/somewhere/else/library_2.json",
        "SOMEVARIABLE": "123",
        "ANOTHERVARIABLE": "ABC",
    }


def random_text(n):
    """Text that compression cannot shrink (the script then carries it plain)."""
    return base64.b64encode(os.urandom(n * 3 // 4 + 3)).decode()[:n]


def test_script_over_max_script_bytes_refused(tmp_path):
    # With tasks_per_job given, the plan is the user's: a script over the limit is refused
    # (without it, the plan splits the jobs itself: tests/test_plans.py).
    cfg = {**CONFIG, "max_script_bytes": 64 * 1024}
    two = {"tasks_per_job": 2}
    runner = make_runner(config=cfg, project_dir=tmp_path / "proj")
    # 2 inputs per job; the worker itself takes part of the 64 KB.
    room = 64 * 1024 - len(runner.render(["true"], [{"blob": ""}] * 8, two)[0].encode())
    inputs = [{"blob": random_text(room // 2 - 100)} for _ in range(8)]  # just fits
    for k, script in enumerate(runner.render(["true"], inputs, two)):
        check_script_size(script, runner.config.max_script_bytes, k)
    inputs = [{"blob": random_text(room // 2 + 100)} for _ in range(8)]  # just over
    with pytest.raises(ConfigError) as info:
        runner.render(["true"], inputs, two)
    assert "max_script_bytes=65536" in str(info.value)
    assert "tasks_per_job" in str(info.value)
    # submit refuses before anything is created or submitted
    with pytest.raises(ConfigError, match="max_script_bytes"):
        runner.submit(["true"], inputs, two)
    assert not (tmp_path / "proj").exists()


def test_max_script_bytes_floor():
    with pytest.raises(ConfigError, match="max_script_bytes"):
        parse_config({"max_script_bytes": 1000})
