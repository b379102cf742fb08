"""A job's submission script as its page shows it.

The core does not keep the script: it is rendered from the run's stored spec and the job's
task inputs when submitted (submission.py: `render_script(spec.job(...), worker_source())`),
deterministically. The page renders it the same way, so it is what was sent to sbatch unless
this server's version (its worker, its script layout) changed since.

Bounded: the inputs of at most MAX_TASKS_READ tasks are read (a job may run thousands), the
directives and exports are shown up to HEAD_CHARS, the payload (the job's task list, JSON) up
to PAYLOAD_CHARS, and the worker program is named, not shown (it is the same for every job).
Everything here is text a user or an admin wrote: the template escapes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ... import payload
from ...runspec import worker_source
from ...script import render_script
from ...store import JobRow, RunRow, Store
from ..run_reads import stored_spec

MAX_TASKS_READ = 200
HEAD_CHARS = 16 << 10
PAYLOAD_CHARS = 4 << 10
_PAYLOAD_LINE = payload.PAYLOAD_PREFIX


@dataclass(frozen=True)
class ScriptView:
    job: int
    head: str  # shebang, #SBATCH lines, extra lines, exports, the exec line
    head_cut: bool
    payload: str  # the start of the payload line
    payload_cut: bool
    n_tasks: int
    worker_lines: int
    tail: str  # the here-document's end marker
    compressed: bool = False  # sent zlib-compressed and base64-encoded (payload.py)


def job_script(store: Store, row: RunRow, job: JobRow) -> ScriptView:
    """Raises ValueError (with the reason) when the run's spec cannot be rebuilt."""
    try:
        spec = stored_spec(row)  # parsed once per process
        plan = spec.plan
    except Exception as exc:  # a spec of an older version, or a config a newer core refuses
        raise ValueError(f"the run's stored spec cannot be read by this version: {exc}") from None
    n_read = min(job.n_tasks, MAX_TASKS_READ)
    indices = range(job.first_task, job.first_task + n_read)
    args = store.task_args(row.id, indices)
    text = render_script(spec.job(job.idx, list(zip(indices, args, strict=True)), plan), "")
    at = text.index("\n" + _PAYLOAD_LINE) + 1
    head, rest = text[:at], text[at:]
    payload_line, _, tail = rest.partition("\n")
    compressed = payload.is_compressed(payload_line)
    if compressed:  # shown as the JSON it decodes to: base64 tells a reader nothing
        payload_line = _PAYLOAD_LINE + repr(payload.read_payload_line(payload_line))
    payload_end = len(payload_line)
    if n_read < job.n_tasks:
        # Rendered with the first tasks only: true up to the end of the last task read.
        payload_end = payload_line.rfind('],"version"')
        if payload_end < 0:  # not the payload's usual end: shown as it is, cut at its bound
            payload_end = len(payload_line)
    shown = min(payload_end, PAYLOAD_CHARS)
    return ScriptView(
        job=job.idx,
        head=head[:HEAD_CHARS],
        head_cut=len(head) > HEAD_CHARS,
        payload=payload_line[:shown],
        payload_cut=shown < len(payload_line),
        n_tasks=job.n_tasks,
        worker_lines=len(worker_source().splitlines()),
        tail=tail.strip(),
        compressed=compressed,
    )
