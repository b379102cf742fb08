"""What a job writes, as the server reads it: one strict schema per line. Pure.

A task runs as the same user as the worker and may append anything to its job's results
chunk, so every line is hostile input. Its length is checked before `json.loads`, its nesting
before the parser recurses, numbers must be finite, strings are capped, an index is an int (not
a bool) inside the job's own tasks, and the job named must be the one being read. A bad line
never raises: it comes back as `Bad` (a reason and the first 200 bytes, escaped) to be counted.

Nothing the server needs to trust is taken from a record: the job id, the log path and the job
index are the server's own (a record's `log` is accepted and ignored).

The worker's lines (worker.py writes them; keep both in step):

    {"event": "start", "job": K, "attempt": A, "t": T, "host": H, "slurm_job_id": ID,
     "n_tasks": N}
    {"i": I, "job": K, "attempt": A, "status": "ok", "exit_code": 0, "signal": null,
     "duration_s": D, "max_rss_mb": M, "t_end": T, "log": PATH, "result": ANY}  (or "status":
     "failed" / "interrupted" with "error": {"cause": C, "message": S, "log_tail": S})
    {"event": "next", "job": K, "chunk": C + 1, "records": N_IN_CHUNK_C}
    {"event": "end", "job": K, "chunk": C, "records": N_IN_CHUNK_C, "tasks": N_IN_ALL_CHUNKS,
     "t": T, "interrupted": "SIGTERM"}                              ("interrupted" if it was)

`t_end` (unix time the task ended, on the node's clock) is optional: workers before it wrote
none, and old records stay valid. The task started at `t_end - duration_s`.

`attempt` is SLURM_RESTART_COUNT (0 unless the job was requeued): a requeued job appends its
next attempt's lines to the same chunks, after the interrupted records of the earlier one.
"""

from __future__ import annotations

import json
import json.scanner
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

#: Nesting allowed in a line (the worker refuses results nested deeper than
#: worker.RESULT_MAX_DEPTH, which leaves room for the record around them).
MAX_DEPTH = 64
#: A message, a log tail, a path: at most this many characters.
MAX_TEXT = 4096
#: A line's bytes besides its result: the record's own keys, message and log tail, escaped.
LINE_OVERHEAD = 64 * 1024
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
SAMPLE_BYTES = 200

#: The causes a worker may write; the server adds its own (lost, bad_record, ...) later.
WORKER_CAUSES = (
    "exit_code",
    "signal",
    "out_of_memory",
    "launch_error",
    "bad_output",
    "interrupted",
    "result_too_large",
)


# Strict str also refuses a lone surrogate (JSON may spell one \udc80): it could not be printed.
Text = Annotated[str, Field(max_length=MAX_TEXT)]
ShortText = Annotated[str, Field(max_length=256)]
Count = Annotated[int, Field(ge=0, le=2**40)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Attempt = Annotated[int, Field(ge=0, le=2**20)]


class _Line(BaseModel):
    # strict: an int is not a bool nor "3"; forbid: a record is exactly what the worker writes
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    job: Count


class RecordError(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    cause: Literal[WORKER_CAUSES]  # type: ignore[valid-type]
    message: Text = ""
    log_tail: Text = ""


class TaskRecord(_Line):
    """One task's end, as its worker saw it."""

    i: Count
    attempt: Attempt = 0
    status: Literal["ok", "failed", "interrupted"]
    exit_code: Annotated[int, Field(ge=-(2**31), le=2**31)] | None = None
    signal: Annotated[int, Field(ge=1, le=255)] | None = None
    duration_s: Seconds | None = None
    max_rss_mb: Seconds | None = None
    t_end: Seconds | None = None  # when it ended (unix time); absent from older workers' lines
    log: Text | None = None  # the worker's view; the server derives the path itself
    result: Any = None
    error: RecordError | None = None

    @model_validator(mode="after")
    def _status_matches_error(self) -> TaskRecord:
        if self.status == "ok":
            if self.error is not None:
                raise ValueError("an ok record carries no error")
        elif self.error is None:
            raise ValueError(f"a {self.status} record needs an error")
        elif (self.status == "interrupted") != (self.error.cause == "interrupted"):
            raise ValueError("status interrupted goes with cause interrupted, and only it")
        return self


class StartLine(_Line):
    event: Literal["start"]
    attempt: Attempt = 0
    t: Seconds
    host: ShortText | None = None
    slurm_job_id: ShortText | None = None
    n_tasks: Count


class NextLine(_Line):
    """Closes chunk `chunk - 1`, which holds `records` task records."""

    event: Literal["next"]
    chunk: Annotated[int, Field(ge=1, le=2**40)]
    records: Count


class EndLine(_Line):
    """The job's last line: chunk `chunk` holds `records` task records, all chunks `tasks`."""

    event: Literal["end"]
    chunk: Count
    records: Count
    tasks: Count
    t: Seconds
    interrupted: ShortText | None = None


@dataclass(frozen=True)
class Bad:
    """A line that is not a record of this job: why, and its first bytes, escaped."""

    reason: str
    sample: str


Line = TaskRecord | StartLine | NextLine | EndLine | Bad
_EVENTS: dict[str, type[_Line]] = {"start": StartLine, "next": NextLine, "end": EndLine}


def line_limit(max_result_bytes: int) -> int:
    """The longest line a worker writes for a result of at most max_result_bytes."""
    return max_result_bytes + LINE_OVERHEAD


def sample(line: str) -> str:
    """The first 200 bytes of a line, escaped: safe to print, log or show in a terminal."""
    return repr(line.encode("utf-8", "replace")[:SAMPLE_BYTES])


_SPECIAL = re.compile(r'[\[\]{}"\\]')


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text nests deeper than `limit`, without parsing it (and so without the
    parser's recursion). Brackets inside strings do not count."""
    if text.count("[") + text.count("{") <= limit:
        return False  # cannot be deeper than it has openings: the usual line stops here
    depth = 0
    in_string = False
    escaped_at = -1  # the position a backslash inside a string escapes
    for m in _SPECIAL.finditer(text):
        ch, pos = m.group(), m.start()
        if in_string:
            if pos == escaped_at:
                continue
            if ch == "\\":
                escaped_at = pos + 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is not finite")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


# One decoder for every line (json.loads with hooks would build one per call).
_load = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant).decode
# The usual line's: the C scanner itself, without decode()'s wrappers and without the float
# hook (a Python call per number); inf is looked for after (_finite_tree).
_scan = json.scanner.make_scanner(json.JSONDecoder(parse_constant=_no_constant))


def _scan_object(line: str) -> dict[str, Any] | None:
    """The line's JSON object as _load gives it, but for an infinite number (1e999), which
    _load refuses; None when the line is not one object alone (then _load says why)."""
    if not line.startswith("{"):
        return None
    try:
        data, end = _scan(line, 0)
    except (StopIteration, ValueError):
        return None
    return data if end == len(line) else None  # else trailing space, or extra data


def _finite_tree(value: Any) -> bool:
    """No inf or NaN in a decoded value (nested at most MAX_DEPTH deep: too_deep said so
    before it was decoded)."""
    kind = type(value)
    if kind is float:
        return value - value == 0.0  # nan for inf and NaN
    if kind is dict:
        value = value.values()
    elif kind is not list:
        return True
    for v in value:
        kind = type(v)
        if kind is float:
            if v - v != 0.0:
                return False
        elif (kind is dict or kind is list) and not _finite_tree(v):
            return False
    return True


def parse_line(
    line: str,
    job: int,
    tasks: range,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> Line:
    """One complete line (no newline) read from job `job`'s results, whose tasks are `tasks`.

    Never raises: anything that is not a valid line of this job is returned as `Bad`.
    """
    try:
        return _parse(line, job, tasks, max_result_bytes)
    except RecursionError:  # too_deep guards json.loads; belt and braces for the rest
        return Bad("nested too deep", sample(line))


def _parse(line: str, job: int, tasks: range, max_result_bytes: int) -> Line:
    limit = line_limit(max_result_bytes)
    if len(line) > limit:
        return Bad(f"a line of {len(line)} characters, over {limit}", sample(line))
    if too_deep(line):
        return Bad(f"nested deeper than {MAX_DEPTH} levels", sample(line))
    # The usual line is decoded by _scan_object, as _load would as long as no number in it is
    # infinite. One that turns out to hold such a number is decoded again by _load, whose
    # refusal names it, as it always did.
    data = _scan_object(line)
    if data is None:
        return _parse_slowly(line, job, tasks)
    parsed = _validate(data, line, job, tasks)
    if isinstance(parsed, TaskRecord):
        # Valid: every field but the result is typed (extra forbid) and pydantic refuses an
        # infinite float; the result is Any.
        return parsed if _finite_tree(parsed.result) else _parse_slowly(line, job, tasks)
    if isinstance(parsed, Bad) and not _finite_tree(data):
        return _parse_slowly(line, job, tasks)
    return parsed  # an event line: typed fields only, as above


def _parse_slowly(line: str, job: int, tasks: range) -> Line:
    try:
        data = _load(line)
    except ValueError as exc:  # JSONDecodeError, an int of 5,000 digits, 1e999, NaN
        return Bad(f"not JSON: {str(exc)[:100]}", sample(line))
    return _validate(data, line, job, tasks)


def _validate(data: Any, line: str, job: int, tasks: range) -> Line:
    if not isinstance(data, dict):
        return Bad("not a JSON object", sample(line))
    event = data.get("event")
    model: type[_Line]
    if event is not None:
        if not isinstance(event, str) or event not in _EVENTS:
            return Bad("unknown event", sample(line))
        model = _EVENTS[event]
    elif "i" in data:
        model = TaskRecord
    else:
        return Bad("neither a task record nor an event", sample(line))
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        return Bad(f"{where}: {first['msg']}"[:200], sample(line))
    if parsed.job != job:
        return Bad(f"names job {parsed.job} in job {job}'s results", sample(line))
    if isinstance(parsed, TaskRecord) and parsed.i not in tasks:
        return Bad(f"task {parsed.i} is not one of job {job}'s tasks", sample(line))
    return parsed


@dataclass(frozen=True)
class Parsed:
    lines: list[Line]
    partial: str  # what followed the last newline: a line still being written


def parse(
    data: bytes | str,
    job: int,
    tasks: range,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> Parsed:
    """Every complete line of `data` (bytes are decoded with replacement). Never raises."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    *complete, partial = text.split("\n")
    return Parsed(
        [parse_line(line, job, tasks, max_result_bytes) for line in complete if line.strip()],
        partial,
    )
