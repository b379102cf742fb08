"""Retries' pure parts: the admin's policy, a run's asks, growth, which tasks go again."""

import pytest

from slurmrunner.config import parse_config, parse_resources
from slurmrunner.errors import ConfigError
from slurmrunner.policy import check_task_resources
from slurmrunner.results import TaskError, TaskResult
from slurmrunner.retries import (
    MAX_ATTEMPTS,
    Shape,
    by_policy,
    effective_rules,
    on_demand,
    parse_growth,
)

POLICY = {
    "out_of_memory": {"max_attempts": 3, "mem": "2x"},
    "time_limit": {"max_attempts": 2, "time": "2x"},
    "node_failure": {"max_attempts": 2},
}


def failed(i: int, cause: str, attempts: int = 1) -> TaskResult:
    earlier = [{"status": "failed"}] * (attempts - 1) or None
    return TaskResult(i, "failed", error=TaskError(cause, "m"), attempts=earlier)


@pytest.mark.parametrize(
    ("text", "what", "before", "after"),
    [
        ("2x", "mem", 100, 200),
        ("1.5x", "mem", 101, 152),  # rounded up: less would OOM again
        ("+2G", "mem", 100, 2148),
        ("8G", "mem", 100, 8192),
        ("512", "mem", 1000, 512),  # an absolute value is the user's word, even lower
        ("3x", "time", 1, 3),
        ("+30:00", "time", 10, 40),
        ("2:00:00", "time", 10, 120),
        ("1-00:00:00", "time", None, 1440),
    ],
)
def test_growth(text, what, before, after):
    assert parse_growth(text, what).apply(before, what) == after


@pytest.mark.parametrize("text", ["", "x", "0x", "0.5x", "200x", "+0", "-1G", "3q", "2y"])
def test_bad_growth_is_refused_with_its_text(text):
    with pytest.raises(ConfigError, match="mem"):
        parse_growth(text, "mem")


def test_growing_from_nothing_asks_for_an_absolute_value():
    with pytest.raises(ConfigError, match="absolute value"):
        parse_growth("2x", "mem").apply(None, "mem")


def test_the_documented_policy_loads():
    config = parse_config({"retry": POLICY})
    assert config.retry["out_of_memory"].max_attempts == 3
    assert config.retry["time_limit"].time == "2x"
    assert parse_config({}).retry == {}


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ({"oom": {"max_attempts": 2}}, "oom"),
        ({"out_of_memory": {"max_attempts": MAX_ATTEMPTS + 1}}, "max_attempts"),
        ({"out_of_memory": {"max_attempts": 2, "mem": "lots"}}, "retry.out_of_memory.mem"),
        ({"out_of_memory": {"max_attempts": 2, "cpus": 2}}, "cpus"),
        ({"cancelled": {"max_attempts": 2}}, "cancelled"),
    ],
)
def test_a_bad_policy_is_refused_naming_it(policy, named):
    with pytest.raises(ConfigError, match=named):
        parse_config({"retry": policy})


def test_a_run_may_ask_for_fewer_attempts_never_more():
    config = parse_config({"retry": POLICY})
    check_task_resources(config, parse_resources({"retry": {"out_of_memory": {"max_attempts": 1}}}))
    with pytest.raises(ConfigError, match=r"max_attempts: 4 is over the admin's 3"):
        check_task_resources(
            config, parse_resources({"retry": {"out_of_memory": {"max_attempts": 4}}})
        )
    with pytest.raises(ConfigError, match="retries no exit_code"):
        check_task_resources(config, parse_resources({"retry": {"exit_code": {"max_attempts": 2}}}))
    asks = parse_resources({"retry": {"out_of_memory": {"max_attempts": 1}}}).retry
    rules = effective_rules(config.retry, asks)
    assert rules["out_of_memory"].max_attempts == 1
    assert rules["out_of_memory"].mem == "2x"  # the growth stays the admin's
    assert rules["time_limit"].max_attempts == 2


def test_policy_picks_what_it_names_while_attempts_remain():
    rules = parse_config({"retry": POLICY}).retry
    results = [
        failed(0, "out_of_memory"),
        failed(1, "out_of_memory", attempts=3),  # had its 3
        failed(2, "exit_code"),  # not in the policy
        failed(3, "time_limit"),
        failed(4, "node_failure"),
        TaskResult(5, "cancelled", error=TaskError("cancelled", "m")),
    ]
    shapes = {r.index: Shape(100, 10) for r in results}
    picks, notes = by_policy(results, rules, shapes)
    assert picks == {0: Shape(200, 10), 3: Shape(100, 20), 4: Shape(100, 10)}
    assert notes == []


def test_policy_growth_with_nothing_to_grow_from_leaves_the_task_and_says_why():
    rules = parse_config({"retry": POLICY}).retry
    picks, notes = by_policy([failed(0, "out_of_memory")], rules, {0: Shape(None, None)})
    assert picks == {}
    assert len(notes) == 1 and "out_of_memory failures not retried" in notes[0]


def test_on_demand_by_cause_by_index_and_every_failure():
    results = [failed(0, "exit_code"), failed(1, "time_limit"), TaskResult(2, "ok")]
    shapes = {r.index: Shape(100, 1) for r in results}
    assert on_demand(results, shapes, causes=["time_limit"], time="3x") == {1: Shape(100, 3)}
    assert on_demand(results, shapes, indices=[0], mem="+1G") == {0: Shape(1124, 1)}
    assert set(on_demand(results, shapes)) == {0, 1}
    with pytest.raises(ConfigError, match="no failed task of cause out_of_memory"):
        on_demand(results, shapes, causes=["out_of_memory"])
    with pytest.raises(ConfigError, match=r"task\(s\) 2, 7 did not fail"):
        on_demand(results, shapes, indices=[0, 2, 7])
    with pytest.raises(ConfigError, match="not a cause"):
        on_demand(results, shapes, causes=["oom"])
