"""The worker as the one program a job script carries: its parts joined, in order. Pure.

The worker's parts are modules of this package too (worker_files, worker_spawn,
worker_records, worker), so tests and tools can import them; a job gets them as one module,
each part's `# <package>` ... `# </package>` lines (its imports of the other parts) left out.
The parts use names of their own (none is defined twice), standard library only, Python 3.8+.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

#: The parts, each after those it uses.
PARTS = ("worker_files.py", "worker_spawn.py", "worker_records.py", "worker.py")
_OPEN, _CLOSE = "# <package>", "# </package>"


def join_parts(texts: list[str]) -> str:
    """The program made of the parts' texts (see PARTS)."""
    lines: list[str] = []
    for text in texts:
        inside = False
        for line in text.rstrip().splitlines():
            if line.startswith(_OPEN):
                inside = True
            elif line.startswith(_CLOSE):
                inside = False
            elif not inside:
                lines.append(line)
        lines.append("")
    return "\n".join(lines)


@cache
def worker_program() -> str:
    """The text a job script carries after its `_PAYLOAD` line."""
    here = files("slurmrunner")
    return join_parts([here.joinpath(name).read_text() for name in PARTS])
