"""The directive guard: #SBATCH lines read as sbatch reads them, and the managed options
passed on sbatch's command line too."""

from __future__ import annotations

from collections import Counter

import pytest

from slurmrunner.config import parse_config, parse_resources
from slurmrunner.directives import check_directive, pinned_options, split_words
from slurmrunner.errors import ConfigError
from slurmrunner.hosts.base import CommandResult
from slurmrunner.slurm import SharedSqueue, SlurmScheduler

# (line, the option the refusal names); every one of these passed the old first-word check
# or is a classic form of the same thing.
REFUSED_MANAGED = [
    ("#SBATCH --exclusive --mem=900G --cpus-per-task=64", "--mem"),
    ("#SBATCH --exclusive --cpus-per-task=64", "--cpus-per-task"),
    ("#SBATCH -vc64", "--cpus-per-task"),
    ("#SBATCH -v -c 64", "--cpus-per-task"),
    ("#SBATCH -Qvn4", "--ntasks"),
    ("#SBATCH --comment=x --array=0-999 --partition=gpu", "--array"),
    ("#SBATCH --mail-type=END -a 1-3", "--array"),
    ("#SBATCH --output /tmp/x", "--output"),
    ("#SBATCH --hold -o/tmp/x", "--output"),
    ("#SBATCH -e /tmp/x", "--error"),
    ("#SBATCH --nodes=1 --chdir /tmp", "--chdir"),
    ("#SBATCH -HJ other", "--job-name"),
    ("#SBATCH --job=x", "--job-name"),  # abbreviation
    ("#SBATCH --cpus-per=4", "--cpus-per-task"),  # abbreviation
    ("#SBATCH --outp=/tmp/x", "--output"),
    ("#SBATCH --mem-per-c 1G", "--mem-per-cpu"),
    ("#SBATCH --nt 4", "--ntasks"),  # --nt is also --ntasks-per-*: refused all the same
    ("#SBATCH --mem 1G", "--mem"),
    ("#SBATCH\t--mem=1G", "--mem"),
    ("#SBATCH--mem=1G", "--mem"),  # sbatch matches the magic word as a prefix
    ('#SBATCH --comment="a b" --mem=1G', "--mem"),
    ("#SBATCH --comment='#' --mem=1G", "--mem"),  # a quoted # is not a comment
    ("#SBATCH -\\c4", "--cpus-per-task"),  # backslashes vanish
    ('#SBATCH "--mem=1G"', "--mem"),  # so do quotes
    ("#SLURM --mem=1G", "--mem"),  # the old magic word still works in sbatch
    ("  #SBATCH --ntasks=2  ", "--ntasks"),
    ("#SBATCH --comment --mem=1G", "--mem"),  # a value that looks like an option: refused
]


@pytest.mark.parametrize(("line", "option"), REFUSED_MANAGED)
def test_managed_options_refused_anywhere_on_the_line(line, option):
    with pytest.raises(ValueError, match=f"sets {option}\\b.*manages itself"):
        check_directive(line)


@pytest.mark.parametrize(("line", "option"), REFUSED_MANAGED)
def test_config_refusal_names_the_section_entry_and_option(line, option):
    data = {"default_slurm_config": {"extra_lines": ["export A=1", line]}}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    msg = str(info.value)
    assert "default_slurm_config" in msg and "extra_lines[1]" in msg and option in msg


@pytest.mark.parametrize(
    ("key", "value", "line", "option"),
    [
        ("partition", "main", "#SBATCH --comment=x --partition=gpu", "--partition"),
        ("partition", "main", "#SBATCH -vpgpu", "--partition"),
        ("partition", "main", "#SBATCH --part gpu", "--partition"),
        ("time", "10", "#SBATCH -Qt 20", "--time"),
        ("account", "a", "#SBATCH --exclusive -A b", "--account"),
        ("qos", "normal", "#SBATCH -vq high", "--qos"),
        ("gres", "gpu:1", "#SBATCH --gre=gpu:2", "--gres"),
        ("gpus", "1", "#SBATCH -G 2", "--gpus"),
        ("constraint", "a", "#SBATCH --const=b", "--constraint"),
        ("exclude", "n1", "#SBATCH -x n2", "--exclude"),
        ("nodelist", "n1", "#SBATCH -F /tmp/nodes", "--nodefile"),
    ],
)
def test_options_of_a_set_key_refused_naming_the_key(key, value, line, option):
    with pytest.raises(ConfigError) as info:
        parse_config({"default_slurm_config": {key: value, "extra_lines": [line]}})
    msg = str(info.value)
    assert "extra_lines[0]" in msg and option in msg and f"`{key}`" in msg


@pytest.mark.parametrize(
    "line",
    [
        "#SBATCH --mail-type=END",
        "#SBATCH --mem-bind=local",
        "#SBATCH --mem-per-gpu=1G",
        "#SBATCH --nodes=1 --exclusive",
        "#SBATCH -vHQ",
        "#SBATCH -pgpu",  # -p takes the rest of the word: no -c, -o or -e here
        "#SBATCH -Aproject-code",
        "#SBATCH --comment=--mem=1G",  # one word: a comment
        "#SBATCH --comment='--mem 1G'",
        "#SBATCH --exclusive # --mem=1G is in a comment",
        "#SBATCH --gpus-per-task=1",
        "## SBATCH --mem=1G (commented out)",
        "# SBATCH --mem=1G",
        "export MEM=1G",
        "echo --mem=1G",
    ],
)
def test_harmless_lines_accepted(line):
    check_directive(line)
    assert parse_config({"default_slurm_config": {"extra_lines": [line]}})


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("#PBS -l mem=900gb", "#PBS and #BSUB"),
        ("#BSUB -M 900000", "#PBS and #BSUB"),
        ("#SBATCH hetjob", "heterogeneous"),
        ("#SBATCH --comment=x PackJob", "heterogeneous"),
        ("#SBATCH --comment='unterminated", "unmatched"),
    ],
)
def test_other_ways_around_the_guard_refused(line, why):
    with pytest.raises(ValueError, match=why):
        check_directive(line)


def test_words_are_cut_as_sbatch_cuts_them():
    assert split_words(" -a  'b c'\"d\" e\\ f #g h") == ["-a", "b cd", "e f"]
    assert split_words('--x="a\\"b"') == ['--x=a"b']


def test_task_extra_lines_go_through_the_same_guard():
    with pytest.raises(ConfigError) as info:
        parse_resources({"extra_lines": ["#SBATCH --exclusive --cpus-per-task=64"]})
    assert "extra_lines[0]" in str(info.value) and "--cpus-per-task" in str(info.value)


SCRIPT = """#!/bin/bash
#SBATCH --job-name=sr-R-0
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=400M
#SBATCH --time=00:30:00
#SBATCH --partition=main
#SBATCH --output=/p/jobs/0.out
#SBATCH --chdir=/p
#SBATCH --ignore-pbs
#SBATCH --mail-type=END
# a comment
export A=1
#SBATCH --mem=1G
exec python3 - <<'END'
"""


def test_pinned_options_are_the_managed_and_keyed_ones_sbatch_reads():
    assert pinned_options(SCRIPT) == [
        "--job-name=sr-R-0",
        "--ntasks=1",
        "--cpus-per-task=2",
        "--mem=400M",
        "--time=00:30:00",
        "--partition=main",
        "--output=/p/jobs/0.out",
        "--chdir=/p",
    ]  # not --mail-type (not ours), not the line after the first command (sbatch skips it)


class FakeHost:
    def __init__(self, stdout: str = "") -> None:
        self.calls: Counter[str] = Counter()
        self.argv: list[list[str]] = []
        self.stdin: list[str | None] = []
        self.stdout = stdout

    def run(self, argv, stdin=None, timeout=60.0, **_):
        self.argv.append(list(argv))
        self.stdin.append(stdin)
        return CommandResult(tuple(argv), 0, self.stdout, "")

    def close(self) -> None:
        pass


def test_sbatch_gets_the_managed_options_on_its_command_line():
    host = FakeHost("123\n")
    scheduler = SlurmScheduler(host, SharedSqueue(host), "alice")
    assert scheduler.submit(SCRIPT) == "123"
    assert host.argv[0][:2] == ["sbatch", "--parsable"]
    assert host.argv[0][2:] == pinned_options(SCRIPT)
    assert host.stdin[0] == SCRIPT  # the #SBATCH lines stay (the local scheduler reads them)


def test_jobs_are_found_by_name_and_owner():
    # squeue as the server user sees everyone's jobs: bob's job of the same name is not ours.
    host = FakeHost("7|bob|sr-R-0\n8|alice|sr-R-1\n9|alice|other\n")
    scheduler = SlurmScheduler(host, SharedSqueue(host), "alice")
    assert scheduler.find(["sr-R-0", "sr-R-1"]) == {"sr-R-1": "8"}
    argv = host.argv[0]
    assert "--user=alice" in argv and "--name=sr-R-0,sr-R-1" in argv
    assert any(word.startswith("--format=%i|%u|") for word in argv)
