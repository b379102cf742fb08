"""The CLI on the local backend: config check, render, run."""

from __future__ import annotations

import ast
import json
import os
import re
import sys

import pytest

from tests.conftest import DOC_SNIPPET_1, DOC_SNIPPET_2, EXAMPLES
from tests.helpers_cli import cli, flat, isolate_cli_env, slurmrunner, write_inputs, write_json

TASK = str(EXAMPLES / "task.py")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    isolate_cli_env(monkeypatch, tmp_path)


# config check


@pytest.mark.parametrize(
    "data",
    [DOC_SNIPPET_1, DOC_SNIPPET_2, {**DOC_SNIPPET_1, **DOC_SNIPPET_2}, {}],
    ids=["doc-snippet-1", "doc-snippet-2", "both-snippets", "empty"],
)
def test_config_check_accepts_doc_snippets(tmp_path, data):
    result = cli("config", "check", write_json(tmp_path / "c.json", data))
    assert result.exit_code == 0, result.output
    assert "ok" in result.stderr


def test_config_check_accepts_examples():
    result = cli("config", "check", EXAMPLES / "config.json")
    assert result.exit_code == 0, result.output
    assert "partition main" in flat(result.stderr)


BAD_CONFIGS = [
    ({"default_slurm_config": {}, "bogus": 1}, ["bogus", "unknown key"]),
    ({"default_slurm_config": {"partiton": "main"}}, ["default_slurm_config.partiton"]),
    ({"batching_config": {"max_jobs": 3}}, ["batching_config.max_jobs"]),
    ({"default_slurm_config": {"mem": "4X"}}, ["default_slurm_config.mem"]),
    ({"batching_config": {"max_mem_per_job": "lots"}}, ["batching_config.max_mem_per_job"]),
    (
        {"default_slurm_config": {"extra_lines": ["#SBATCH --ntasks=4"]}},
        ["default_slurm_config", "extra_lines[0]", "--ntasks"],
    ),
    (
        {"gpu_slurm_config": {"extra_lines": ["export A=1", "#SBATCH -c 8"]}},
        ["gpu_slurm_config", "extra_lines[1]", "--cpus-per-task"],
    ),
    (
        {"default_slurm_config": {"partition": "main", "extra_lines": ["#SBATCH -p gpu"]}},
        ["extra_lines[0]", "--partition", "partition"],
    ),
    ({"user_local_exports": {"LIB": "/abs/lib"}}, ["user_local_exports.LIB"]),
    ({"user_local_exports": {"LIB": "../lib"}}, ["user_local_exports.LIB"]),
    ({"user_local_exports": {"LIB": "a/../../lib"}}, ["user_local_exports.LIB"]),
    ({"user_local_exports": {"1ABC": "lib"}}, ["user_local_exports", "1ABC"]),
    ({"user_local_exports": {"A-B": "lib"}}, ["user_local_exports", "A-B"]),
    ({"batching_config": {"target_num_jobs": 9, "max_num_jobs": 3}}, ["target_num_jobs"]),
]


@pytest.mark.parametrize(("data", "names"), BAD_CONFIGS, ids=[str(n[0]) for _, n in BAD_CONFIGS])
def test_config_check_refuses_naming_key(tmp_path, data, names):
    path = write_json(tmp_path / "bad.json", data)
    result = cli("config", "check", path)
    assert result.exit_code == 2, result.output
    message = flat(result.stderr)
    assert "error" in message and "bad.json" in message
    for name in names:
        assert name in message


def test_config_check_invalid_json_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n"default_slurm_config": {\n"partition": "main",\n}\n}\n')
    result = cli("config", "check", path)
    assert result.exit_code == 2
    assert "line 4" in flat(result.stderr)


def test_config_check_missing_file(tmp_path):
    result = cli("config", "check", tmp_path / "nope.json")
    assert result.exit_code == 2
    assert "nope.json" in flat(result.stderr)


def test_config_check_message_with_brackets(tmp_path):
    result = cli("config", "check", write_json(tmp_path / "bad.json", {"[/x]": 1}))
    assert result.exit_code == 2
    assert "[/x]" in result.stderr


# render

RENDER_CONFIG = {
    "default_slurm_config": {
        "partition": "main",
        "mem": "100M",
        "extra_lines": [
            "#SBATCH --mail-type=NONE",
            "export SOMEVARIABLE=123",
            "export ANOTHERVARIABLE=ABC",
        ],
    },
    "batching_config": {"max_num_jobs": 4},
    **DOC_SNIPPET_2,
}


def split_scripts(stdout):
    parts = re.split(r"^# ===== job (\d+) of (\d+) =====\n", stdout, flags=re.MULTILINE)
    assert parts[0] == ""
    return [parts[k + 2] for k in range(1, len(parts), 3)], {
        parts[k + 1] for k in range(1, len(parts), 3)
    }


def test_render_20_inputs_max_4_jobs(tmp_path, project_dir, local_profile_file):
    config = write_json(tmp_path / "c.json", RENDER_CONFIG)
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": i} for i in range(20)])
    result = cli(
        "render",
        "--config",
        config,
        "--profile",
        local_profile_file,
        "--inputs",
        inputs,
        "--",
        sys.executable,
        TASK,
    )
    assert result.exit_code == 0, result.output
    scripts, totals = split_scripts(result.stdout)
    assert len(scripts) == 4 and totals == {"4"}
    extra = RENDER_CONFIG["default_slurm_config"]["extra_lines"]
    expected_exports = [
        f"export LIBRARY_1_CACHE_DIR={project_dir}/.fractal_cache/somewhere/library_1",
        f"export LIBRARY_2_FILE={project_dir}/.fractal_cache/somewhere/else/library_2.json",
    ]
    for k, script in enumerate(scripts):
        lines = script.splitlines()
        assert lines[0] == "#!/bin/bash"
        start = lines.index(extra[0])
        assert lines[start : start + len(extra)] == extra
        for line in expected_exports:
            assert line in lines
        assert f"#SBATCH --job-name=sr-RUNID-{k}" in lines
        assert "#SBATCH --partition=main" in lines
        payload_line = next(x for x in lines if x.startswith("_PAYLOAD = "))
        payload = json.loads(ast.literal_eval(payload_line.removeprefix("_PAYLOAD = ")))
        assert [t["i"] for t in payload["tasks"]] == list(range(5 * k, 5 * k + 5))
    # nothing submitted, nothing created
    assert list(project_dir.iterdir()) == []


def test_render_refuses_unsafe_value_naming_key(tmp_path, local_profile_file):
    config = write_json(
        tmp_path / "c.json", {"default_slurm_config": {"partition": "main; rm -rf /"}}
    )
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": 1}])
    result = cli(
        "render", "-c", config, "-p", local_profile_file, "-i", inputs, "--", sys.executable, TASK
    )
    assert result.exit_code == 2
    assert "partition" in flat(result.stderr)


# run (the real command in its own process, through the interpreter running the tests)


def read_results(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_run_200_inputs_in_order(tmp_path, project_dir, local_profile_file):
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": i} for i in range(200)])
    out = tmp_path / "results.jsonl"
    proc = slurmrunner(
        "run",
        "--config",
        EXAMPLES / "config.json",
        "--profile",
        local_profile_file,
        "--store",
        tmp_path / "store.sqlite",
        "--inputs",
        inputs,
        "--results",
        out,
        "--",
        sys.executable,
        TASK,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    results = read_results(out.read_text())
    assert [r["index"] for r in results] == list(range(200))
    assert all(r["status"] == "ok" for r in results)
    assert [r["result"] for r in results] == [{"x": i, "square": i * i} for i in range(200)]
    assert all(r["error"] is None for r in results)
    # examples/config.json: target 4 jobs of 2 CPUs, as many as this machine runs at once
    jobs = min(4, max(1, (os.cpu_count() or 1) // 2))
    assert len({r["job_id"] for r in results}) == jobs
    assert f"200 tasks in {jobs} job" in proc.stderr
    if jobs < 4:
        assert f"(4 planned, but only {jobs} fit side by side)" in proc.stderr
    assert all(r["log"].startswith(f"{project_dir}/.slurmrunner/runs/") for r in results)
    assert "200" in flat(proc.stderr)


def test_run_task_exit_3_fails_alone(tmp_path, project_dir, local_profile_file):
    inputs = [{"x": i} for i in range(10)]
    inputs[4] = {"x": 4, "fail": 3}
    path = write_inputs(tmp_path / "in.jsonl", inputs)
    proc = slurmrunner(
        "run",
        "--profile",
        local_profile_file,
        "--store",
        tmp_path / "store.sqlite",
        "--inputs",
        path,
        "--",
        sys.executable,
        TASK,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    results = read_results(proc.stdout)
    assert [r["index"] for r in results] == list(range(10))
    bad = results[4]
    assert bad["status"] == "failed"
    assert bad["error"]["cause"] == "exit_code"
    assert "failing on purpose with status 3" in bad["error"]["log_tail"]
    assert bad["result"] is None
    for i, r in enumerate(results):
        if i != 4:
            assert r["status"] == "ok" and r["result"] == {"x": i, "square": i * i}
    assert "exit_code" in flat(proc.stderr)


@pytest.mark.parametrize(
    ("lines", "where"),
    [
        (['{"x": 1}', '{"x": 2}', "{x: 3}"], ":3:"),
        (['{"x": 1}', "", "[1, 2]"], ":3:"),
        (["not json"], ":1:"),
    ],
)
def test_run_bad_inputs_file_names_line(tmp_path, local_profile_file, project_dir, lines, where):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = cli(
        "run",
        "-p",
        local_profile_file,
        "--store",
        tmp_path / "s.sqlite",
        "-i",
        path,
        "--",
        sys.executable,
        TASK,
    )
    assert result.exit_code == 2
    assert f"in.jsonl{where}" in flat(result.stderr)
    assert list(project_dir.iterdir()) == []  # nothing created


def test_run_empty_inputs_refused(tmp_path, local_profile_file):
    path = tmp_path / "in.jsonl"
    path.write_text("\n")
    result = cli("run", "-p", local_profile_file, "-i", path, "--", sys.executable, TASK)
    assert result.exit_code == 2
    assert "no inputs" in flat(result.stderr)


def test_run_bad_config_refused_before_anything(tmp_path, local_profile_file, project_dir):
    config = write_json(tmp_path / "c.json", {"default_slurm_config": {"mem": "lots"}})
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": 1}])
    result = cli(
        "run",
        "-c",
        config,
        "-p",
        local_profile_file,
        "--store",
        tmp_path / "s.sqlite",
        "-i",
        inputs,
        "--",
        sys.executable,
        TASK,
    )
    assert result.exit_code == 2
    assert "default_slurm_config.mem" in flat(result.stderr)
    assert list(project_dir.iterdir()) == []


def test_run_bad_profile_refused(tmp_path):
    profile = write_json(tmp_path / "p.json", {"backend": "slurm_sudo", "username": "a;b"})
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": 1}])
    result = cli("run", "-p", profile, "-i", inputs, "--", sys.executable, TASK)
    assert result.exit_code == 2
    assert "username" in flat(result.stderr)
