"""CLI conventions: --version, --help, --json, full ids, `last` and prefixes, logs, output
paths checked first, default config and Profile locations, `config show`, did-you-mean."""

from __future__ import annotations

import io
import json
import re
import sys
from importlib.metadata import version

import pytest
from rich.console import Console

from slurmrunner import Runner, Store
from slurmrunner.cli import defaults
from slurmrunner.cli.inspect_cmds import LOG_LIMIT_BYTES, runs_table
from tests.conftest import EXAMPLES
from tests.helpers_cli import cli, flat, isolate_cli_env, slurmrunner, write_inputs, write_json

TASK = str(EXAMPLES / "task.py")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    isolate_cli_env(monkeypatch, tmp_path)


def prepared_runs(n):
    """Runs in the (isolated) default store, planned but never started: ids to resolve."""
    runner = Runner(store=Store())
    return [runner.prepare(["true"], [{}]).id for _ in range(n)]


# version, help, completion


def test_version():
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"slurmrunner {version('slurmrunner')}"


@pytest.mark.parametrize("command", ["run", "wait"])
def test_help_states_exit_codes(command):
    text = flat(cli(command, "--help").stdout)
    assert "Exit status: 0 every task ok; 1 a task failed" in text
    for code in ("2 bad input", "130", "143", "129"):
        assert code in text


def test_completion_offered():
    text = cli("--help").stdout
    assert "--install-completion" in text and "--show-completion" in text


# run ids: full, `last`, prefixes


def test_last_and_unique_prefix_resolve(tmp_path):
    first, second = prepared_runs(2)
    assert cli("results", "last").exit_code == 0
    status = json.loads(cli("status", "last", "--json").stdout)
    assert status["run_id"] == second
    unique = next(k for k in range(len(second)) if not first.startswith(second[:k]))
    assert json.loads(cli("status", second[:unique], "--json").stdout)["run_id"] == second


def test_ambiguous_or_unknown_prefix_refused(tmp_path):
    first, second = prepared_runs(2)
    common = first[:8]
    assert second.startswith(common)
    result = cli("results", common)
    assert result.exit_code == 2
    assert "several runs" in flat(result.stderr) and first in result.stderr
    result = cli("results", "nope")
    assert result.exit_code == 2 and "no run 'nope'" in result.stderr


def test_no_runs_yet_for_last():
    result = cli("status", "last")
    assert result.exit_code == 2 and "no runs yet" in result.stderr


def test_runs_json_and_plain_lines_hold_full_ids():
    ids = prepared_runs(3)
    listed = json.loads(cli("runs", "--json").stdout)
    assert [r["id"] for r in listed] == ids[::-1]
    assert {"created", "state", "n_tasks", "backend", "user"} <= set(listed[0])
    plain = cli("runs").stdout.splitlines()  # not a terminal: one line per run
    assert [line.split()[0] for line in plain] == ids[::-1]


def test_runs_table_never_cuts_an_id():
    rows = [
        {
            "id": "20250101-000000-abcdef",
            "created": "2025-01-01 00:00:00",
            "state": "cancelled",
            "n_tasks": 100000,
            "backend": "slurm_sudo",
            "user": "someone-with-a-long-name",
        }
    ]
    for width in (30, 50, 80):
        out = io.StringIO()
        Console(file=out, width=width).print(runs_table(rows))
        assert "20250101-000000-abcdef" in out.getvalue()


# submit --json, status --json, wait: each in its own process


def test_submit_json_then_wait_and_status(tmp_path, local_profile_file):
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": i} for i in range(6)])
    sub = slurmrunner("submit", "--json", "-p", local_profile_file, "-i", inputs, "--", "true")
    assert sub.returncode == 0, sub.stderr
    info = json.loads(sub.stdout)
    assert info["n_tasks"] == 6 and info["n_jobs"] >= 1 and info["run_dir"]
    run_id = info["run_id"]
    assert "local jobs belong to this process" not in sub.stderr
    waited = slurmrunner("wait", run_id[:-2], "-o", tmp_path / "out.jsonl")
    assert waited.returncode == 0, waited.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 6
    st = slurmrunner("status", "last", "--json")
    data = json.loads(st.stdout)
    assert data["run_id"] == run_id and data["state"] == "done"
    assert data["counts"] == {"ok": 6} and data["done"] is True


# -o/--results checked before anything runs


@pytest.mark.parametrize("where", ["missing-folder", "is-a-folder", "under-a-file"])
def test_bad_results_path_refused_before_submitting(tmp_path, project_dir, where):
    (tmp_path / "afile").write_text("")
    out = {
        "missing-folder": tmp_path / "nope" / "out.jsonl",
        "is-a-folder": tmp_path,
        "under-a-file": tmp_path / "afile" / "out.jsonl",
    }[where]
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": 1}])
    profile = write_json(tmp_path / "p.json", {"backend": "local", "project_dir": str(project_dir)})
    result = cli("run", "-p", profile, "-i", inputs, "-o", out, "--", sys.executable, TASK)
    assert result.exit_code == 2
    assert "--results" in result.stderr
    assert list(project_dir.iterdir()) == []
    assert Store().runs() == []


@pytest.mark.skipif(sys.platform != "linux", reason="permissions as on Linux")
def test_unwritable_results_folder_refused(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": 1}])
    result = cli("run", "-i", inputs, "-o", folder / "out.jsonl", "--", "true")
    assert result.exit_code == 2 and "cannot write" in result.stderr


# logs


@pytest.fixture
def finished_run(tmp_path, local_profile_file):
    inputs = [{"x": 0}, {"x": 1, "fail": 3}]
    path = write_inputs(tmp_path / "in.jsonl", inputs)
    proc = slurmrunner("run", "-p", local_profile_file, "-i", path, "--", sys.executable, TASK)
    assert proc.returncode == 1, proc.stderr
    return re.search(r"^run (\S+):", proc.stderr, re.MULTILINE)[1]


def test_logs_prints_a_tasks_log(finished_run):
    result = cli("logs", "last", 1)
    assert result.exit_code == 0, result.stderr
    assert "task got" in result.stdout and "failing on purpose with status 3" in result.stdout
    tail = cli("logs", finished_run, 1, "--tail", 1)
    assert tail.stdout == "failing on purpose with status 3\n"
    assert cli("logs", "last", 0).stdout.startswith("task got")


def test_logs_of_a_silent_task_is_empty(tmp_path, local_profile_file):
    """A task that printed nothing keeps no log file (the worker's files): its log is empty,
    not missing."""
    path = write_inputs(tmp_path / "in.jsonl", [{"x": 0}])
    proc = slurmrunner("run", "-p", local_profile_file, "-i", path, "--", "true")
    assert proc.returncode == 0, proc.stderr
    result = cli("logs", "last", 0)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""


def test_logs_index_out_of_range(finished_run):
    result = cli("logs", "last", 2)
    assert result.exit_code == 2 and "tasks 0 to 1" in flat(result.stderr)


def test_logs_bounded_unless_all(finished_run):
    log = Store().results(finished_run)[0].log
    with open(log, "a") as fh:
        fh.write("y" * (2 * LOG_LIMIT_BYTES) + "\nthe end\n")
    bounded = cli("logs", "last", 0)
    assert len(bounded.stdout) == LOG_LIMIT_BYTES and bounded.stdout.endswith("the end\n")
    assert "--all" in bounded.stderr
    whole = cli("logs", "last", 0, "--all")
    assert whole.stdout.startswith("task got") and len(whole.stdout) > 2 * LOG_LIMIT_BYTES


# default config and Profile locations


CONFIG = {"default_slurm_config": {"partition": "main"}}


def test_locations_in_order(tmp_path, monkeypatch):
    given = write_json(tmp_path / "given.json", CONFIG)
    env = write_json(tmp_path / "env.json", CONFIG)
    user = write_json(tmp_path / "xdg-config" / "slurmrunner" / "config.json", CONFIG)
    system = write_json(tmp_path / "etc-slurmrunner" / "config.json", CONFIG)
    monkeypatch.setenv("SLURMRUNNER_CONFIG", str(env))
    assert defaults.locate("config", given).path == given
    assert defaults.locate("config", None).path == env
    monkeypatch.delenv("SLURMRUNNER_CONFIG")
    assert defaults.locate("config", None).path == user
    user.unlink()
    assert defaults.locate("config", None).path == system
    system.unlink()
    assert defaults.locate("config", None).path is None
    toml = tmp_path / "xdg-config" / "slurmrunner" / "profile.toml"
    toml.write_text('backend = "local"\n')
    assert defaults.locate("profile", None) == defaults.Source(toml, "user default")


def test_home_config_when_xdg_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write_json(tmp_path / "home" / ".config" / "slurmrunner" / "config.json", CONFIG)
    assert defaults.locate("config", None).path == path


def test_render_uses_config_from_environment(tmp_path, monkeypatch, local_profile_file):
    env = write_json(tmp_path / "env.json", {"default_slurm_config": {"partition": "fromenv"}})
    monkeypatch.setenv("SLURMRUNNER_CONFIG", str(env))
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": 1}])
    result = cli("render", "-p", local_profile_file, "-i", inputs, "--", "true")
    assert result.exit_code == 0, result.stderr
    assert "#SBATCH --partition=fromenv" in result.stdout


def test_bad_default_config_says_where_it_came_from(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURMRUNNER_CONFIG", str(tmp_path / "missing.json"))
    inputs = write_inputs(tmp_path / "in.jsonl", [{"x": 1}])
    result = cli("run", "-i", inputs, "--", "true")
    assert result.exit_code == 2
    assert "missing.json" in result.stderr and "$SLURMRUNNER_CONFIG" in result.stderr


def test_config_show_names_each_parts_source(tmp_path, monkeypatch):
    env = write_json(tmp_path / "env.json", CONFIG)
    monkeypatch.setenv("SLURMRUNNER_CONFIG", str(env))
    user = tmp_path / "xdg-config" / "slurmrunner" / "profile.toml"
    user.parent.mkdir(parents=True)
    user.write_text(f'backend = "local"\nproject_dir = "{tmp_path}/proj"\n')
    result = cli("config", "show")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["config"]["default_slurm_config"]["partition"] == "main"
    assert shown["config"]["batching_config"]["max_num_jobs"] == 50  # a built-in default
    assert shown["profile"]["project_dir"] == f"{tmp_path}/proj"
    assert shown["files"] == {
        "config": f"{env} ($SLURMRUNNER_CONFIG)",
        "profile": f"{user} (user default)",
    }
    sources = shown["sources"]
    assert sources["config.default_slurm_config.partition"] == f"{env} ($SLURMRUNNER_CONFIG)"
    assert sources["config.default_slurm_config.mem"] == "built-in defaults"
    assert sources["config.batching_config"] == "built-in defaults"
    assert sources["profile.project_dir"] == f"{user} (user default)"
    assert sources["profile.username"] == "built-in defaults"


def test_config_show_option_beats_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURMRUNNER_CONFIG", str(write_json(tmp_path / "env.json", {})))
    given = write_json(tmp_path / "given.json", CONFIG)
    shown = json.loads(cli("config", "show", "--config", given).stdout)
    assert shown["files"]["config"] == f"{given} (--config)"
    assert shown["files"]["profile"] == "built-in defaults"


# did you mean


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"default_slurm_config": {"partiton": "main"}}, "did you mean 'partition'?"),
        ({"batching_config": {"max_jobs": 3}}, "did you mean 'max_num_jobs'?"),
        ({"gpu_slurm_config": {"mme": "1G"}}, "did you mean 'mem'?"),
        ({"user_local_export": {}}, "did you mean 'user_local_exports'?"),
    ],
)
def test_unknown_key_suggests_the_close_one(tmp_path, data, expected):
    result = cli("config", "check", write_json(tmp_path / "c.json", data))
    assert result.exit_code == 2
    assert "unknown key" in result.stderr and expected in flat(result.stderr)


def test_unknown_key_without_a_close_one(tmp_path):
    result = cli("config", "check", write_json(tmp_path / "c.json", {"zzzzzz": 1}))
    assert result.exit_code == 2 and "did you mean" not in result.stderr


def test_profile_unknown_key_suggests(tmp_path):
    profile = write_json(tmp_path / "p.json", {"backend": "local", "projectdir": "/x"})
    result = cli("config", "show", "--profile", profile)
    assert result.exit_code == 2 and "did you mean 'project_dir'?" in flat(result.stderr)
