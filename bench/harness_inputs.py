"""Bench inputs, the same for every harness (copied next to them; standard library only)."""

from __future__ import annotations

import hashlib
import json


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
