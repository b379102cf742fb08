"""What a job writes, read as untrusted input: records.py (one line) and chunks.py (a look)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurmrunner.chunks import UNREADABLE, JobWatch, Piece, cat_paths, split_output
from slurmrunner.records import (
    MAX_DEPTH,
    Bad,
    EndLine,
    NextLine,
    StartLine,
    TaskRecord,
    parse,
    parse_line,
    too_deep,
)

TASKS = range(10, 20)  # job 1's tasks


def line(**kw):
    return json.dumps(kw, separators=(",", ":"))


def record(**kw):
    base = {"i": 12, "job": 1, "status": "ok", "exit_code": 0, "signal": None}
    base.update(duration_s=0.5, max_rss_mb=12.5, log="/r/logs/12.log", result={"x": 1})
    return {**base, **kw}


def failed(**kw):
    err = {"cause": "exit_code", "message": "exited with status 3", "log_tail": "boom"}
    return record(**{"status": "failed", "exit_code": 3, "result": None, "error": err, **kw})


def test_the_workers_lines_are_read_as_written():
    rec = parse_line(line(**record()), 1, TASKS)
    assert isinstance(rec, TaskRecord) and (rec.i, rec.result) == (12, {"x": 1})
    start = parse_line(
        line(event="start", t=1.5, job=1, host="n1", slurm_job_id="77", n_tasks=10), 1, TASKS
    )
    assert isinstance(start, StartLine)
    nxt = parse_line(line(event="next", job=1, chunk=1, records=1000), 1, TASKS)
    assert isinstance(nxt, NextLine) and (nxt.chunk, nxt.records) == (1, 1000)
    end = parse_line(
        line(event="end", job=1, chunk=0, records=10, tasks=10, t=2.0, interrupted="SIGTERM"),
        1,
        TASKS,
    )
    assert isinstance(end, EndLine) and end.interrupted == "SIGTERM"
    assert isinstance(parse_line(line(**failed()), 1, TASKS), TaskRecord)
    interrupted = {"cause": "interrupted", "message": "job received SIGTERM"}
    text = line(i=13, job=1, status="interrupted", signal=15, error=interrupted)
    rec = parse_line(text, 1, TASKS)
    assert isinstance(rec, TaskRecord) and rec.error and rec.error.cause == "interrupted"


def test_a_records_end_time_is_optional_and_checked():
    # Lines of older workers have no t_end; a newer one's is a finite time >= 0.
    old = parse_line(line(**record()), 1, TASKS)
    assert isinstance(old, TaskRecord) and old.t_end is None
    new = parse_line(line(**record(t_end=1700000000.25)), 1, TASKS)
    assert isinstance(new, TaskRecord) and new.t_end == 1700000000.25
    for bad in (-1, "1700000000", True, None):
        parsed = parse_line(line(**record(t_end=bad)), 1, TASKS)
        assert isinstance(parsed, Bad if bad is not None else TaskRecord), bad
    huge = line(**record()).replace('"duration_s"', '"t_end":1e999,"duration_s"')
    assert isinstance(parse_line(huge, 1, TASKS), Bad)


BAD_LINES = {
    "no status": line(**{k: v for k, v in record().items() if k != "status"}),
    "error as a string": line(**{**failed(), "error": "boom"}),
    "i is true": line(**record(i=True)),
    "i as a string": line(**record(i="12")),
    "i of 5,000 digits": '{"i":' + "9" * 5000 + ',"job":1,"status":"ok"}',
    "i of 4,000 digits": '{"i":' + "9" * 4000 + ',"job":1,"status":"ok"}',
    "i of another job": line(**record(i=3)),
    "negative i": line(**record(i=-1)),
    "job as a list": line(**record(job=[0])),
    "another job": line(**record(job=2)),
    "job is true": line(**record(job=True)),
    "unknown status": line(**record(status="done")),
    "unknown cause": line(**failed(error={"cause": "lost", "message": ""})),
    "ok with an error": line(**record(error={"cause": "exit_code", "message": ""})),
    "failed without error": line(**record(status="failed")),
    "interrupted as a failure": line(**failed(error={"cause": "interrupted", "message": ""})),
    "unknown key": line(**record(attempt=2, extra="x")),
    "message of 5 KB": line(**failed(error={"cause": "exit_code", "message": "m" * 5000})),
    "NaN": line(**record()).replace('"duration_s":0.5', '"duration_s":NaN'),
    "NaN in a result": line(**record()).replace('"x":1', '"x":NaN'),
    "1e999": line(**record()).replace('"duration_s":0.5', '"duration_s":1e999'),
    "negative duration": line(**record(duration_s=-1.0)),
    "deeply nested": '{"i":12,"job":1,"status":"ok","result":' + "[" * 100_000 + "]" * 100_000,
    "nested just too deep": line(**record(result=json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH))),
    "10 MB line": line(**record(result="x" * 10_000_000)),
    "not an object": "[1, 2, 3]",
    "a string": '"hello"',
    "truncated": line(**record())[:40],
    "NUL byte": line(**record()).replace('"ok"', '"o\x00k"'),
    "NUL outside strings": "\x00" + line(**record()),
    "unknown event": line(event="begin", job=1),
    "event not a string": line(event=["end"], job=1),
    "chunk x in next": line(event="next", job=1, chunk="x", records=3),
    "next to chunk 0": line(event="next", job=1, chunk=0, records=3),
    "end without counts": line(event="end", job=1, t=1.0),
    "neither": line(job=1, status="ok"),
    "rich markup, too long": line(**failed(error={"cause": "exit_code", "message": "[/x]" * 2000})),
}


@pytest.mark.parametrize("text", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_bad_line_is_returned_as_bad_never_raised(text):
    parsed = parse_line(text, 1, TASKS)
    assert isinstance(parsed, Bad), parsed
    assert parsed.reason
    assert parsed.sample.startswith("b") and len(parsed.sample) < 900  # escaped, at most 200 B
    assert parsed.sample.isprintable()


def test_what_a_record_says_is_only_data():
    # markup and control characters are kept as text (escaped where printed)
    err = {"cause": "exit_code", "message": "[/oops] \x1b[31mred", "log_tail": "[bold]"}
    rec = parse_line(json.dumps(failed(error=err)), 1, TASKS)
    assert isinstance(rec, TaskRecord) and rec.error
    assert rec.error.message == "[/oops] \x1b[31mred"
    assert rec.log == "/r/logs/12.log"  # read, and never used by the server
    # a lone surrogate could not be printed or encoded: the line is refused
    err["message"] = "bad \udc80"
    assert isinstance(parse_line(json.dumps(failed(error=err)), 1, TASKS), Bad)


def test_the_line_limit_follows_max_result_bytes():
    big = line(**record(result="x" * 300_000))
    assert isinstance(parse_line(big, 1, TASKS, max_result_bytes=1024 * 1024), TaskRecord)
    assert isinstance(parse_line(big, 1, TASKS, max_result_bytes=100_000), Bad)


def test_depth_is_measured_without_parsing():
    assert not too_deep('{"a": "[[[[[[[[[[[[[["}', limit=3)  # brackets in a string
    assert not too_deep('{"a": "\\"[[[[[[[[[[[[[\\\\"}', limit=3)  # escaped quotes inside
    assert too_deep("[[[[]]]]", limit=3)
    assert not too_deep("[[[]]]", limit=3)
    assert not too_deep("[]" * 10_000, limit=3)  # many, but shallow


def test_bytes_are_decoded_with_replacement_and_a_partial_line_kept_aside():
    data = line(**record()).encode() + b"\n\xff\xfe{bad\n" + b'{"i": 1'
    parsed = parse(data, 1, TASKS)
    assert isinstance(parsed.lines[0], TaskRecord)
    assert isinstance(parsed.lines[1], Bad)
    assert parsed.partial == '{"i": 1'


# -- property tests: arbitrary bytes never raise, valid records round-trip ---------------------

finite = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
records = st.builds(
    lambda i, result, d, rss, code, t_end: record(
        i=i, result=result, duration_s=d, max_rss_mb=rss, exit_code=code, t_end=t_end
    ),
    st.sampled_from(list(TASKS)),
    json_values,
    finite,
    finite,
    st.integers(0, 255),
    st.none() | finite,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data):
    parsed = parse(data, 1, TASKS)
    kinds = TaskRecord | StartLine | NextLine | EndLine | Bad
    assert all(isinstance(x, kinds) for x in parsed.lines)


@settings(max_examples=200, deadline=None)
@given(records)
def test_valid_records_round_trip(rec):
    text = json.dumps(rec, separators=(",", ":"))
    parsed = parse_line(text, 1, TASKS)
    assert isinstance(parsed, TaskRecord)
    assert parsed.model_dump(exclude_unset=True) == rec


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6), st.booleans())
def test_the_read_step_never_raises_on_arbitrary_files(files, over):
    sep = "SLURMRUNNER-SEPARATOR-" + "ab" * 16 + "\n"
    out = sep + sep.join(f.decode("utf-8", "replace") for f in files) + (sep if files else "")
    pieces = split_output(out, len(files))
    w = JobWatch(1, TASKS, 1024 * 1024)
    for chunk, piece in enumerate(pieces or []):
        for rec in w.take(chunk, piece, over):
            assert rec.i in TASKS
    w.after_look(list(range(max(1, len(files)))), pieces or [], over)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=500), st.integers(0, 5))
def test_cutting_arbitrary_output_never_raises(out, n):
    pieces = split_output(out, n)
    assert pieces is None or len(pieces) == n


# -- chunks: cutting a look into files, checking the chain ----------------------------------

SEP = "SLURMRUNNER-SEPARATOR-" + "0f" * 16 + "\n"


def test_output_is_cut_at_the_separators_only():
    assert cat_paths("/r", [(1, 0), (1, 1)]) == [
        "/r/results/sep",
        "/r/results/1.jsonl",
        "/r/results/sep",
        "/r/results/1.1.jsonl",
        "/r/results/sep",
    ]
    whole = split_output(f"{SEP}a\nb{SEP}{SEP}c\n{SEP}", 3)
    assert whole == [Piece("a\nb", True), Piece("", True), Piece("c\n", True)]
    cut = split_output(f"{SEP}a\n{SEP}c", 3)  # a host's cap cut it short
    assert cut == [Piece("a\n", True), Piece("c", False), Piece("", False)]
    assert split_output("", 2) == [Piece("", True)] * 2  # nothing written yet
    assert split_output("a\n", 1) is None  # no separator first: the file was changed
    assert split_output(f"{SEP}{SEP}x{SEP}", 1) is None  # a file holds the separator


def chunk_text(*lines):
    return "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines)


def take_all(w, chunk, text, over=False, whole=True):
    return [r.i for r in w.take(chunk, Piece(text, whole), over)]


def test_a_chunk_is_sealed_by_a_next_line_that_matches_and_read_once():
    w = JobWatch(1, TASKS, 1024 * 1024)
    text = chunk_text(record(i=10), record(i=11), {"event": "next", "job": 1, "chunk": 1})
    assert take_all(w, 0, text) == [10, 11]
    assert w.bad == 1 and 0 not in w.closed  # a next line without counts is not the worker's
    w = JobWatch(1, TASKS, 1024 * 1024)
    text = chunk_text(record(i=10), record(i=11), {"event": "next", "job": 1, "chunk": 1})
    text = text.replace('"chunk":1}', '"chunk":1,"records":2}')
    assert take_all(w, 0, text) == [10, 11]
    w.after_look([0, 1], [Piece(text, True)], False)
    assert (w.chunk, w.sealed_records, w.ahead, w.bad) == (1, 2, 1, 0)  # chunk 1 was read too
    assert w.window() == [1, 2]  # chunk 0 is never read again


def test_a_forged_end_does_not_close_the_job():
    w = JobWatch(1, TASKS, 1024 * 1024)
    forged = [
        {"event": "end", "job": 2, "chunk": 0, "records": 0, "tasks": 0, "t": 1.0},
        {"event": "end", "job": 1, "chunk": 0, "records": 5, "tasks": 5, "t": 1.0},
        {"event": "end", "job": 1, "chunk": 3, "records": 1, "tasks": 1, "t": 1.0},
        {"event": "next", "job": 1, "chunk": 10**9, "records": 1},
    ]
    take_all(w, 0, chunk_text(record(i=10), *forged))
    w.after_look([0, 1], [Piece("", True)], False)
    assert not w.ended and w.bad == 4 and w.chunk == 0
    end = {"event": "end", "job": 1, "chunk": 0, "records": 1, "tasks": 1, "t": 1.0}
    take_all(w, 0, chunk_text(record(i=10), *forged, end))
    assert w.ended


def test_extra_records_spoil_a_count_until_the_scheduler_says_the_job_ended():
    dup = record(i=10, result="forged")
    nxt = {"event": "next", "job": 1, "chunk": 1, "records": 1}
    text = chunk_text(record(i=10), dup, nxt)
    w = JobWatch(1, TASKS, 1024 * 1024)
    assert take_all(w, 0, text) == [10, 10]  # the caller keeps the first
    w.after_look([0, 1], [Piece(text, True)], False)
    assert w.chunk == 0  # not sealed while the job may still write
    w2 = JobWatch(1, TASKS, 1024 * 1024)
    take_all(w2, 0, text, over=True)
    w2.after_look([0, 1], [Piece(text, True)], True)
    assert w2.chunk == 1 and w2.final_look  # sealed; chunk 1, read in the same look, was empty


def test_a_look_cut_short_is_never_final():
    w = JobWatch(1, TASKS, 1024 * 1024)
    text = chunk_text(record(i=10))
    take_all(w, 0, text, over=True, whole=False)
    w.after_look([0, 1], [Piece(text, False), Piece("", False)], True)
    assert not w.final_look and w.cut_looks == 1
    w.after_look([0, 1], [Piece("", False), Piece("", False)], True)  # not reached: no look
    assert not w.final_look and w.cut_looks == 1
    w.after_look([0, 1], [Piece(text, True), Piece("", True)], True)
    assert w.final_look


def test_a_chunk_bigger_than_a_host_keeps_is_concluded_after_a_few_cut_looks():
    w = JobWatch(1, TASKS, 1024 * 1024)
    cut = [Piece("", True), Piece("x" * 100, False)]
    for _ in range(2):
        w.after_look([0, 1], cut, True)
        assert not w.final_look
    w.after_look([0, 1], cut, True)
    assert w.final_look and w.bad == 1


def test_a_line_being_written_is_read_when_complete():
    w = JobWatch(1, TASKS, 1024 * 1024)
    full = chunk_text(record(i=10), record(i=11))
    assert take_all(w, 0, full[:-20]) == [10]
    assert take_all(w, 0, full) == [11]
    assert w.bad == 0


def test_a_run_whose_separator_was_changed_concludes_its_ended_jobs():
    w = JobWatch(1, TASKS, 1024 * 1024)
    for _ in range(3):
        w.after_look([0, 1], [UNREADABLE, UNREADABLE], False)  # running: wait
    assert not w.final_look
    w.after_look([0, 1], [UNREADABLE, UNREADABLE], True)  # ended: no later look reads more
    assert w.final_look and w.bad == 1  # its unread tasks end bad_record


@pytest.mark.parametrize(
    ("attempt", "valid"),
    [(0, True), (3, True), (-1, False), (True, False), ("1", False), (2**21, False)],
)
def test_the_attempt_is_a_small_count_on_records_and_start_lines(attempt, valid):
    rec = parse_line(line(**record(attempt=attempt)), 1, TASKS)
    start = parse_line(line(event="start", t=1.0, job=1, attempt=attempt, n_tasks=1), 1, TASKS)
    assert isinstance(rec, TaskRecord) is valid and isinstance(start, StartLine) is valid
    if valid:
        assert rec.attempt == start.attempt == attempt
    assert parse_line(line(**record()), 1, TASKS).attempt == 0  # a worker of before says none
