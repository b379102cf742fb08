"""Admin config: loading, memory, refusals (each naming the key), merge order."""

from __future__ import annotations

import json

import pytest

from slurmrunner.config import (
    load_config_file,
    merge_resources,
    parse_config,
    parse_memory_mb,
    parse_resources,
    parse_time_minutes,
)
from slurmrunner.errors import ConfigError
from tests.conftest import DOC_SNIPPET_1, DOC_SNIPPET_2, EXAMPLES


def refused(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


# loading


def test_doc_snippet_1_loads(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(DOC_SNIPPET_1))
    cfg = load_config_file(path)
    assert cfg.default_slurm_config.partition == "main"
    assert cfg.default_slurm_config.extra_lines == [
        "export SOMEVARIABLE=123",
        "export ANOTHERVARIABLE=ABC",
    ]


def test_doc_snippet_2_loads(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(DOC_SNIPPET_2))
    cfg = load_config_file(path)
    assert cfg.user_local_exports == {
        "LIBRARY_1_CACHE_DIR": "somewhere/library_1",
        "LIBRARY_2_FILE": "somewhere/else/library_2.json",
    }


def test_both_snippets_together_load():
    cfg = parse_config({**DOC_SNIPPET_1, **DOC_SNIPPET_2})
    assert cfg.default_slurm_config.partition == "main"
    assert len(cfg.user_local_exports) == 2


def test_empty_config_has_defaults():
    cfg = parse_config({})
    assert cfg.default_slurm_config.cpus_per_task == 1
    assert cfg.batching_config.max_num_jobs >= cfg.batching_config.target_num_jobs
    assert cfg.user_local_exports == {}


def test_examples_config_loads():
    cfg = load_config_file(EXAMPLES / "config.json")
    assert cfg.default_slurm_config.partition == "main"
    assert cfg.gpu_slurm_config is not None
    assert cfg.batching_config.max_mem_per_job == 2048


def test_toml_config_loads(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[default_slurm_config]\npartition = "main"\nmem = "4G"\n')
    assert load_config_file(path).default_slurm_config.mem == 4096


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "default_slurm_config": {,}\n}')
    with pytest.raises(ConfigError, match=r"bad\.json.*line 2"):
        load_config_file(path)


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "nope.json")


# memory


@pytest.mark.parametrize(
    ("value", "mb"),
    [
        (4000, 4000),
        ("4000", 4000),
        ("4000M", 4000),
        ("4000m", 4000),
        ("4G", 4096),
        ("4GB", 4096),
        ("1T", 1024 * 1024),
        ("2048K", 2),
        ("1.5G", 1536),
    ],
)
def test_memory_forms(value, mb):
    assert parse_memory_mb(value) == mb
    cfg = parse_config({"default_slurm_config": {"mem": value}})
    assert cfg.default_slurm_config.mem == mb


@pytest.mark.parametrize("value", ["4X", "G", "four", "", "-4G", "4 G B", 0, True, [4], "1e3"])
def test_malformed_memory_refused_naming_key(value):
    msg = refused({"default_slurm_config": {"mem": value}})
    assert "default_slurm_config.mem" in msg


@pytest.mark.parametrize("key", ["target_mem_per_job", "max_mem_per_job"], ids=["target", "max"])
def test_malformed_batching_memory_refused_naming_key(key):
    msg = refused({"batching_config": {key: "lots"}})
    assert f"batching_config.{key}" in msg


def test_malformed_gpu_memory_refused_naming_key():
    assert "gpu_slurm_config.mem" in refused({"gpu_slurm_config": {"mem": "4Q"}})


def test_malformed_time_refused_naming_key():
    assert "default_slurm_config.time" in refused({"default_slurm_config": {"time": "1h"}})


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("10", 10), ("01:30", 2), ("1:00:00", 60), ("1-0", 1440), ("1-02:03", 1563)],
)
def test_time_forms(text, minutes):
    assert parse_time_minutes(text) == minutes


# unknown keys


def test_unknown_top_level_key_refused():
    msg = refused({"default_slurm_config": {}, "batching_cfg": {}})
    assert "batching_cfg" in msg and "unknown key" in msg


@pytest.mark.parametrize("section", ["default_slurm_config", "gpu_slurm_config", "batching_config"])
def test_unknown_nested_key_refused(section):
    msg = refused({section: {"partiton": "main"}})
    assert f"{section}.partiton" in msg and "unknown key" in msg


def test_unknown_resources_key_refused():
    with pytest.raises(ConfigError, match=r"resources\.cpus"):
        parse_resources({"cpus": 2})


# extra_lines


MANAGED = [
    ("#SBATCH --ntasks=2", "--ntasks"),
    ("#SBATCH -n 2", "--ntasks"),
    ("#SBATCH --cpus-per-task=4", "--cpus-per-task"),
    ("#SBATCH --cpus-per-task 4", "--cpus-per-task"),
    ("#SBATCH -c 4", "--cpus-per-task"),
    ("#SBATCH -c4", "--cpus-per-task"),
    ("#SBATCH --mem=4G", "--mem"),
    ("#SBATCH --mem-per-cpu=1G", "--mem-per-cpu"),
    ("#SBATCH --output=/tmp/x", "--output"),
    ("#SBATCH -o /tmp/x", "--output"),
    ("#SBATCH --error=/tmp/x", "--error"),
    ("#SBATCH -e /tmp/x", "--error"),
    ("#SBATCH --chdir=/tmp", "--chdir"),
    ("#SBATCH -D /tmp", "--chdir"),
    ("#SBATCH --job-name=x", "--job-name"),
    ("#SBATCH -J x", "--job-name"),
    ("#SBATCH --array=1-3", "--array"),
    ("#SBATCH -a 1-3", "--array"),
    ("  #SBATCH --ntasks=2  ", "--ntasks"),
    # sbatch reads unambiguous prefixes of long options as the option itself
    ("#SBATCH --cpus-per=4", "--cpus-per-task"),
    ("#SBATCH --outp=/tmp/x", "--output"),
]


@pytest.mark.parametrize(("line", "directive"), MANAGED, ids=[m[0].strip() for m in MANAGED])
@pytest.mark.parametrize("section", ["default_slurm_config", "gpu_slurm_config"])
def test_extra_lines_setting_managed_directive_refused(section, line, directive):
    msg = refused({section: {"extra_lines": ["export A=1", line]}})
    assert section in msg
    assert "extra_lines[1]" in msg
    assert directive in msg


def test_task_extra_lines_setting_managed_directive_refused():
    with pytest.raises(ConfigError) as info:
        parse_resources({"extra_lines": ["#SBATCH --mem=1G"]})
    assert "extra_lines[0]" in str(info.value) and "--mem" in str(info.value)


def test_extra_lines_harmless_directives_accepted():
    lines = [
        "export SOMEVARIABLE=123",
        "#SBATCH --mail-type=END",
        "#SBATCH --mem-bind=local",
        "#SBATCH --nodes=1",
        "#SBATCH --exclusive",
        "# a comment mentioning --mem=4G",
        "module load python",
    ]
    cfg = parse_config({"default_slurm_config": {"extra_lines": lines}})
    assert cfg.default_slurm_config.extra_lines == lines


@pytest.mark.parametrize(
    "line", ["#SBATCH --partition=gpu", "#SBATCH -p gpu", "#SBATCH --part=gpu"]
)
def test_extra_lines_partition_while_partition_set_refused(line):
    msg = refused({"default_slurm_config": {"partition": "main", "extra_lines": [line]}})
    assert "extra_lines[0]" in msg and "--partition" in msg and "`partition`" in msg


def test_extra_lines_partition_without_partition_key_accepted():
    cfg = parse_config({"default_slurm_config": {"extra_lines": ["#SBATCH --partition=gpu"]}})
    assert cfg.default_slurm_config.extra_lines == ["#SBATCH --partition=gpu"]


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [
        ("time", "10", "#SBATCH -t 20"),
        ("account", "a", "#SBATCH --account=b"),
        ("qos", "normal", "#SBATCH --qos=high"),
        ("gres", "gpu:1", "#SBATCH --gres=gpu:2"),
    ],
)
def test_extra_lines_conflicting_with_set_key_refused(key, value, line):
    msg = refused({"default_slurm_config": {key: value, "extra_lines": [line]}})
    assert f"`{key}`" in msg


def test_extra_lines_entry_with_line_break_refused():
    msg = refused({"default_slurm_config": {"extra_lines": ["export A=1\n#SBATCH --mem=1"]}})
    assert "default_slurm_config" in msg and "extra_lines[0]" in msg


def test_merged_extra_lines_conflict_across_layers_refused():
    cfg = parse_config({"default_slurm_config": {"partition": "main"}})
    res = parse_resources({"extra_lines": ["#SBATCH --partition=other"]})
    with pytest.raises(ConfigError) as info:
        merge_resources(cfg, res)
    assert "extra_lines[0]" in str(info.value) and "`partition`" in str(info.value)


# user_local_exports


@pytest.mark.parametrize("value", ["/abs/path", "../x", "a/../../x", "a/..", "~/x", ""])
def test_export_path_escaping_base_refused(value):
    msg = refused({"user_local_exports": {"LIB_DIR": value}})
    assert "user_local_exports.LIB_DIR" in msg


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "A;B", "", "A=B", "Ä", "ABC\n"])
def test_export_invalid_name_refused(name):
    msg = refused({"user_local_exports": {name: "x"}})
    assert "user_local_exports" in msg and repr(name) in msg


def test_export_null_is_empty():
    assert parse_config({"user_local_exports": None}).user_local_exports == {}


# batching limits


@pytest.mark.parametrize(
    ("target", "cap", "value"),
    [
        ("target_num_jobs", "max_num_jobs", 60),
        ("target_cpus_per_job", "max_cpus_per_job", 3),
        ("target_mem_per_job", "max_mem_per_job", "17G"),
    ],
)
def test_target_over_max_refused(target, cap, value):
    msg = refused({"batching_config": {target: value}})
    assert "batching_config" in msg and target in msg and cap in msg


@pytest.mark.parametrize(
    "key", ["target_num_jobs", "max_num_jobs", "target_cpus_per_job", "max_cpus_per_job"]
)
def test_batching_zero_refused(key):
    assert f"batching_config.{key}" in refused({"batching_config": {key: 0}})


def test_shebang_must_be_a_shebang():
    msg = refused({"default_slurm_config": {"shebang_line": "/bin/bash"}})
    assert "default_slurm_config.shebang_line" in msg


# merging


MERGE_CONFIG = {
    "default_slurm_config": {
        "partition": "main",
        "cpus_per_task": 1,
        "mem": "1G",
        "time": "10",
        "account": "lab",
        "extra_lines": ["export FROM_DEFAULT=1"],
    },
    "gpu_slurm_config": {
        "partition": "gpu",
        "gres": "gpu:1",
        "mem": "8G",
        "extra_lines": ["export FROM_GPU=1"],
    },
}


def test_merge_default_only():
    res = merge_resources(parse_config(MERGE_CONFIG))
    assert (res.partition, res.mem_mb, res.time_minutes, res.account) == ("main", 1024, 10, "lab")
    assert res.gres is None
    assert res.extra_lines == ("export FROM_DEFAULT=1",)


def test_merge_order_default_gpu_task():
    cfg = parse_config(MERGE_CONFIG)
    task = parse_resources(
        {"needs_gpu": True, "cpus_per_task": 2, "extra_lines": ["export FROM_TASK=1"]}
    )
    res = merge_resources(cfg, task)
    assert res.partition == "gpu"  # gpu over default
    assert res.gres == "gpu:1"
    assert res.mem_mb == 8192  # gpu over default
    assert res.cpus_per_task == 2  # task over both
    assert res.account == "lab"  # default kept where nothing overrides
    assert res.time_minutes == 10
    assert res.extra_lines == ("export FROM_DEFAULT=1", "export FROM_GPU=1", "export FROM_TASK=1")


def test_merge_task_wins_over_gpu():
    cfg = parse_config(MERGE_CONFIG)
    res = merge_resources(cfg, parse_resources({"needs_gpu": True, "mem": "2G", "partition": "p"}))
    assert (res.mem_mb, res.partition) == (2048, "p")


def test_gpu_config_ignored_without_needs_gpu():
    cfg = parse_config(MERGE_CONFIG)
    res = merge_resources(cfg, parse_resources({"extra_lines": ["export FROM_TASK=1"]}))
    assert res.partition == "main" and res.gres is None
    assert res.extra_lines == ("export FROM_DEFAULT=1", "export FROM_TASK=1")


def test_needs_gpu_without_gpu_config_is_clear_error():
    cfg = parse_config({"default_slurm_config": {"partition": "main"}})
    with pytest.raises(ConfigError) as info:
        merge_resources(cfg, parse_resources({"needs_gpu": True}))
    assert "needs_gpu" in str(info.value) and "gpu_slurm_config" in str(info.value)


def test_task_batching_values_pass_through():
    res = merge_resources(
        parse_config({}), parse_resources({"tasks_per_job": 3, "parallel_tasks_per_job": 2})
    )
    assert (res.tasks_per_job, res.parallel_tasks_per_job) == (3, 2)
