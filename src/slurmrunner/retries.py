"""Retries of failed tasks: the admin's policy, a user's asks, how resources grow, and which
tasks go again with what. Pure: no I/O (retrying.py plans and stores the new jobs).

A task's attempts count from 1 (its first run). The admin's `retry` config says, per cause,
how many attempts a task may have in all and how its memory and time grow from one attempt
to the next; a run's resources may ask for fewer attempts, never more, nor for a cause the
admin did not list. `exit_code` (the task's own doing) is retried by policy only when the
admin lists it. On demand (`slurmrunner retry`), the user picks the failed tasks and the
growth; the admin's bounds (max_mem_per_job, max_cpus_per_job, the partition's time limit)
hold either way: batching refuses a plan over them, naming the bound.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .errors import ConfigError
from .results import TaskResult
from .units import format_time_minutes, parse_memory_mb, parse_time_minutes

#: The causes a retry may name: every failure's (results.STATE_CAUSES, records.WORKER_CAUSES,
#: and the server's own). `cancelled` is not a failure: a cancelled task is never retried.
RETRYABLE_CAUSES = (
    "out_of_memory",
    "time_limit",
    "node_failure",
    "preempted",
    "job_failed",
    "exit_code",
    "signal",
    "launch_error",
    "bad_output",
    "interrupted",
    "result_too_large",
    "lost",
    "bad_record",
    "unschedulable",
    "submit_failed",
)
#: At most this many attempts of one task, whatever a config says: a policy that loops on a
#: task that always fails costs the cluster a job each time.
MAX_ATTEMPTS = 10
_FACTOR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[xX]\s*$")


@dataclass(frozen=True)
class Growth:
    """How a resource changes for the next attempt: `2x` (times), `+2G` (plus), `8G` (set)."""

    kind: str  # "times" | "plus" | "set"
    value: float  # the factor, or MB / minutes

    def apply(self, before: int | None, what: str) -> int:
        if self.kind == "set":
            return int(self.value)
        if before is None:
            raise ConfigError(
                f"{what}: the earlier attempt set no {what}, so it cannot grow from it: give "
                f"an absolute value (e.g. {'8G' if what == 'mem' else '2:00:00'})"
            )
        grown = before * self.value if self.kind == "times" else before + self.value
        return max(math.ceil(grown), before)


def parse_growth(text: str, what: str) -> Growth:
    """`--mem 2x|+2G|8G`, `--time 2x|+30:00|2:00:00` (what: "mem" or "time")."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{what}: give a factor like 2x, an increase like +2G, or a value")
    text = text.strip()
    if m := _FACTOR_RE.match(text):
        factor = float(m.group(1))
        if not 1 <= factor <= 100:
            raise ConfigError(f"{what}: the factor {text!r} must be between 1x and 100x")
        return Growth("times", factor)
    plus = text.startswith("+")
    body = text[1:] if plus else text
    try:
        value = parse_memory_mb(body) if what == "mem" else parse_time_minutes(body)
    except (ValueError, ConfigError) as exc:
        example = "2x, +2G or 8G" if what == "mem" else "2x, +30:00 or 2:00:00"
        raise ConfigError(f"{what}: {text!r} is not {example} ({exc})") from None
    if value <= 0:
        raise ConfigError(f"{what}: {text!r} must be more than zero")
    return Growth("plus" if plus else "set", float(value))


def growth_validator(what: str) -> AfterValidator:
    """A pydantic check of a growth text (the config's rules, the API's retry body): the
    error without the field's name, which the error's location gives."""

    def check(value: str | None) -> str | None:
        if value is not None:
            try:
                parse_growth(value, what)
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix(f"{what}: ")) from None
        return value

    return AfterValidator(check)


def _causes(value: Mapping[str, Any]) -> Mapping[str, Any]:
    unknown = sorted(set(value) - set(RETRYABLE_CAUSES))
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: not a cause a task can fail of; one of "
            + ", ".join(RETRYABLE_CAUSES)
        )
    return value


class RetryRule(BaseModel):
    """The admin's rule for one cause."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(ge=1, le=MAX_ATTEMPTS, description="attempts in all, the first too")
    mem: Annotated[str | None, growth_validator("mem")] = Field(
        default=None, description="per attempt: 2x, +2G or 8G"
    )
    time: Annotated[str | None, growth_validator("time")] = Field(
        default=None, description="per attempt: 2x, +30:00 or 2:00:00"
    )


class RetryAsk(BaseModel):
    """A run's own ask for one cause: fewer attempts than the admin allows (1: no retry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(ge=1, le=MAX_ATTEMPTS)


RetryPolicy = Annotated[dict[str, RetryRule], AfterValidator(_causes)]
RetryAsks = Annotated[dict[str, RetryAsk], AfterValidator(_causes)]


def check_asks(policy: Mapping[str, RetryRule], asks: Mapping[str, RetryAsk] | None) -> None:
    """A run may ask for less than the admin's policy, never more (ConfigError naming it)."""
    for cause, ask in (asks or {}).items():
        rule = policy.get(cause)
        if rule is None:
            raise ConfigError(
                f"resources.retry.{cause}: the admin's config retries no {cause} failures"
            )
        if ask.max_attempts > rule.max_attempts:
            raise ConfigError(
                f"resources.retry.{cause}.max_attempts: {ask.max_attempts} is over the "
                f"admin's {rule.max_attempts}"
            )


def effective_rules(
    policy: Mapping[str, RetryRule], asks: Mapping[str, RetryAsk] | None
) -> dict[str, RetryRule]:
    """The policy a run lives by: the admin's rules, with the run's lower max_attempts."""
    rules = dict(policy)
    for cause, ask in (asks or {}).items():
        if cause in rules:
            rules[cause] = rules[cause].model_copy(
                update={"max_attempts": min(ask.max_attempts, rules[cause].max_attempts)}
            )
    return rules


@dataclass(frozen=True)
class Shape:
    """What a task's attempt asked for, the part a retry may change."""

    mem_mb: int | None
    time_minutes: int | None

    def grown(self, mem: Growth | None, time: Growth | None) -> Shape:
        return Shape(
            mem.apply(self.mem_mb, "mem") if mem else self.mem_mb,
            time.apply(self.time_minutes, "time") if time else self.time_minutes,
        )

    def overrides(self) -> dict[str, Any]:
        """As a run's resources say it (TaskResources' mem and time)."""
        out: dict[str, Any] = {}
        if self.mem_mb is not None:
            out["mem"] = self.mem_mb
        if self.time_minutes is not None:
            out["time"] = format_time_minutes(self.time_minutes)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"mem_mb": self.mem_mb, "time_minutes": self.time_minutes}


def attempt_of(result: TaskResult) -> int:
    """Which attempt of its task a result is (1: the first)."""
    return len(result.attempts or ()) + 1


def by_policy(
    failed: Iterable[TaskResult],
    rules: Mapping[str, RetryRule],
    shapes: Mapping[int, Shape],
) -> tuple[dict[int, Shape], list[str]]:
    """The failed tasks the rules retry, each with its next attempt's shape; and why some
    that a rule names are not (e.g. nothing to grow from), one note per cause."""
    picks: dict[int, Shape] = {}
    notes: dict[str, str] = {}
    for r in failed:
        cause = r.error.cause if r.error else None
        rule = rules.get(cause or "")
        if rule is None or r.status != "failed" or attempt_of(r) >= rule.max_attempts:
            continue
        mem = parse_growth(rule.mem, "mem") if rule.mem else None
        time = parse_growth(rule.time, "time") if rule.time else None
        try:
            picks[r.index] = shapes[r.index].grown(mem, time)
        except ConfigError as exc:
            notes.setdefault(str(cause), f"{cause} failures not retried: {exc}")
    return picks, list(notes.values())


def on_demand(
    failed: Iterable[TaskResult],
    shapes: Mapping[int, Shape],
    causes: Iterable[str] | None = None,
    indices: Iterable[int] | None = None,
    mem: str | None = None,
    time: str | None = None,
) -> dict[int, Shape]:
    """The failed tasks a user chose (by cause, by index, or every one), each with its next
    attempt's shape; ConfigError when the choice names nothing retryable."""
    wanted_causes = set(causes) if causes else None
    if wanted_causes:
        try:
            _causes(dict.fromkeys(wanted_causes))
        except ValueError as exc:
            raise ConfigError(f"--cause: {exc}") from None
    wanted = set(indices) if indices is not None else None
    mem_g = parse_growth(mem, "mem") if mem else None
    time_g = parse_growth(time, "time") if time else None
    picks: dict[int, Shape] = {}
    seen: set[int] = set()
    for r in failed:
        if r.status != "failed":
            continue
        seen.add(r.index)
        if wanted is not None and r.index not in wanted:
            continue
        if wanted_causes and (r.error.cause if r.error else None) not in wanted_causes:
            continue
        if attempt_of(r) >= MAX_ATTEMPTS:
            raise ConfigError(f"task {r.index} has had {MAX_ATTEMPTS} attempts, the most allowed")
        picks[r.index] = shapes[r.index].grown(mem_g, time_g)
    if wanted is not None and (missing := sorted(wanted - seen)):
        shown = ", ".join(map(str, missing[:10]))
        raise ConfigError(f"--indices: task(s) {shown} did not fail (or have not ended)")
    if not picks:
        what = f" of cause {', '.join(sorted(wanted_causes))}" if wanted_causes else ""
        raise ConfigError(f"no failed task{what} to retry")
    return picks
