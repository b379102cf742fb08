"""What every harness shares (copied next to them; standard library only): the bench's
inputs, and the start of the timing at the run's phase of the clock's second."""

from __future__ import annotations

import hashlib
import json
import time


def start_at_phase(phase: float | None) -> None:
    """Sleep until the wall clock's fraction of a second is `phase` (bench.py's phase_of; None
    or negative: at once). Called just before a harness starts its clock, after its imports
    and setup, whose time differs between contenders: slurmctld starts a new job at its next
    once-a-second pass, so the phase at the first sbatch decides a second of a short run."""
    if phase is not None and phase >= 0:
        time.sleep((phase - time.time()) % 1.0)


def bench_input(i: int, size: int = 0) -> dict:
    """Input i: {"i": i}, or with size > 0 {"i": i, "s": hex digits} whose compact JSON is
    exactly `size` bytes (pseudo-random hex digits: compressed, about half the size)."""
    if size <= 0:
        return {"i": i}
    pad = size - len(json.dumps({"i": i, "s": ""}, separators=(",", ":")))
    digits = hashlib.shake_256(str(i).encode()).hexdigest(max(pad, 0) // 2 + 1)
    return {"i": i, "s": digits[: max(pad, 0)]}


def compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
