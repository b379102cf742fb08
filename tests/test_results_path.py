"""The watcher's read path, made cheaper, must take and store exactly what it did: a line read
by records.py's fast path equals what the slow one (json with its hooks, then pydantic) makes
of it, a result's stored JSON is json.dumps of its dict, and the batch statements of
store_save.py keep odd text intact on every database."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurmrunner import records
from slurmrunner.records import Bad, TaskRecord, parse_line
from slurmrunner.results import TaskError, TaskResult
from slurmrunner.store import Store

from .test_store import make_run, store, target  # noqa: F401  (fixtures)

TASKS = range(10, 20)


def same(a: object, b: object) -> bool:
    """Equal, and as the slow path built it: same type, fields (and which were given)."""
    if type(a) is not type(b) or a != b:
        return False
    if isinstance(a, TaskRecord):
        assert isinstance(b, TaskRecord)
        return a.model_dump(exclude_unset=True) == b.model_dump(exclude_unset=True) and repr(
            a
        ) == repr(b)
    return True


def slow(line: str) -> object:
    """What _parse made of a line before the fast path (after the size and depth checks)."""
    return records._parse_slowly(line, 1, TASKS)


numbers = st.floats() | st.integers(-(10**6), 10**20) | st.sampled_from([1e308, -0.0, 5e-324])
scalars = st.none() | st.booleans() | numbers | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
keys = st.sampled_from([*TaskRecord.model_fields, "event", "chunk", "records", "tasks", "t", "x"])
field_values = (
    values
    | st.sampled_from([12, 1, 0, "ok", "failed", "interrupted", "next", "end", "start"])
    | st.fixed_dictionaries(
        {"cause": st.sampled_from(["exit_code", "interrupted", "lost"])},
        optional={"message": st.text(max_size=5), "log_tail": values},
    )
)
lines = st.dictionaries(keys, field_values, max_size=12)


def valid_record(**kw: object) -> dict[str, object]:
    rec: dict[str, object] = {"i": 12, "job": 1, "attempt": 0, "status": "ok", "exit_code": 0}
    rec.update(signal=None, duration_s=0.5, max_rss_mb=3.1, t_end=1.7e9, log="/r/logs/12.log")
    return {**rec, "result": {"x": [1, 2.5, None]}, **kw}


@settings(max_examples=400, deadline=None)
@given(lines, st.booleans())
def test_the_fast_path_reads_any_line_as_the_slow_one(data, compact):
    # Mostly invalid lines; nan and inf become NaN / Infinity, which both refuse.
    text = json.dumps(data, separators=(",", ":") if compact else None)
    assert same(parse_line(text, 1, TASKS), slow(text))


@settings(max_examples=300, deadline=None)
@given(values, st.sampled_from(["ok", "failed"]), numbers)
def test_the_fast_path_reads_records_as_the_slow_one(result, status, duration):
    rec = valid_record(result=result, duration_s=duration, status=status)
    if status == "failed":
        rec.update(error={"cause": "exit_code", "message": "exited with status 3"}, result=None)
    text = json.dumps(rec, separators=(",", ":"))
    assert same(parse_line(text, 1, TASKS), slow(text))


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(valid_record()).replace("0.5", "1e999"),  # an infinite duration
        json.dumps(valid_record()).replace("2.5", "1e999"),  # ... in the result
        json.dumps(valid_record()).replace("2.5", "-1E400"),
        json.dumps(valid_record()).replace('"x"', '"1e999"'),  # a key is only text
        json.dumps(valid_record(result="1e999")),
        json.dumps(valid_record(job=2)).replace("2.5", "1e999"),  # invalid, and infinite
        json.dumps(valid_record()) + " ",
        " " + json.dumps(valid_record()),
        json.dumps(valid_record()) + "{}",
        json.dumps(valid_record()).replace("2.5", "NaN"),
        json.dumps({"event": "end", "job": 1, "chunk": 0, "records": 1, "tasks": 1, "t": 1e999}),
        json.dumps({"event": "end", "job": 1, "chunk": 0, "records": 1, "tasks": 1, "t": 2.0}),
        '{"i": 12, "job": 1, "status": "ok", "result": [' + "1" * 5000 + "]}",
    ],
)
def test_numbers_the_fast_path_cannot_take_go_the_slow_way(text):
    fast = parse_line(text, 1, TASKS)
    assert same(fast, slow(text))
    if "1e999" in text or "E400" in text or "NaN" in text:
        assert isinstance(fast, Bad) == ('"1e999"' not in text)


finite = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(max_size=10) | st.sampled_from(["\x00", '"\\', "é\u2028", "\ud800", "🙂"])
results = st.builds(
    TaskResult,
    st.integers(0, 10**6) | st.booleans(),
    st.sampled_from(["ok", "failed", "cancelled"]) | texts,
    values | st.builds(lambda: math.inf),
    st.none() | st.builds(TaskError, texts, texts, texts),
    st.none() | finite | st.floats() | st.integers(0, 5),
    st.none() | finite,
    st.none() | texts,
    st.none() | texts,
    st.none() | finite,
    st.none() | st.lists(st.dictionaries(st.text(max_size=3), values), max_size=2),
    st.none() | st.dictionaries(st.text(max_size=3), values),
)


@settings(max_examples=400, deadline=None)
@given(results)
def test_a_results_stored_json_is_json_dumps_of_its_dict(r):
    assert r.to_json() == json.dumps(r.to_dict())


ODD = ["\x00", 'q"uote\\', "é and 🙂", "\u2028", "", "ok", "null", "{}", "\\u0000"]


def test_odd_results_are_stored_and_read_back_intact(store: Store) -> None:  # noqa: F811
    make_run(store, n=40, sizes=(40,))
    saved = [
        TaskResult(i, "ok", {ODD[i % len(ODD)]: [ODD[i % len(ODD)], i, 0.1 * i]}, log=ODD[i % 9])
        for i in range(0, 20)
    ] + [
        TaskResult(i, "failed", None, TaskError("exit_code", ODD[i % 9], ODD[(i + 1) % 9]))
        for i in range(20, 40)
    ]
    store.save_results("r", saved[::2])  # gaps between the indices of a batch
    store.save_results("r", saved)  # those saved already are left as they were
    assert store.results("r") == {r.index: r for r in saved}
    assert store.status_counts("r") == {"ok": 20, "failed": 20}
