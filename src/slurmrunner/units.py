"""SLURM's memory and time formats: parsing and printing. Pure."""

from __future__ import annotations

import re
from typing import Any

_MEM_UNITS_MB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$", re.IGNORECASE)
_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_memory_mb(value: Any) -> int:
    """Memory as SLURM reads it: an int is MB; strings take K, M, G, T suffixes (x1024)."""
    if isinstance(value, bool):
        raise ValueError(f"memory must be a number of MB or a string like '4G', not {value!r}")
    if isinstance(value, int):
        mb = value
    elif isinstance(value, float) and value.is_integer():
        mb = int(value)
    elif isinstance(value, str) and (m := _MEM_RE.match(value)):
        mb = round(float(m.group(1)) * _MEM_UNITS_MB[(m.group(2) or "M").upper()])
    else:
        raise ValueError(
            f"malformed memory {value!r}: use an int (MB) or a string like 4000, 4000M, 4G, 1T"
        )
    if mb <= 0:
        raise ValueError(f"memory must be positive, got {value!r}")
    return mb


def parse_time_minutes(value: str, *, round_up: bool = True) -> int:
    """SLURM's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) to whole minutes: rounded up
    (a time asked for: less would cut the task short), or down with `round_up=False` (a limit
    to stay within: a MaxTime of 2-00:00:30 allows 2880 whole minutes, not 2881)."""
    m = _TIME_RE.match(value.strip())
    if not m:
        raise ValueError(
            f"malformed time {value!r}: use minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
        )
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:
        hours, minutes, seconds = ([*parts, 0, 0])[:3]
        total_s = ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    elif len(parts) == 1:
        total_s = parts[0] * 60
    elif len(parts) == 2:
        total_s = parts[0] * 60 + parts[1]
    else:
        total_s = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    if total_s <= 0:
        raise ValueError(f"time must be positive, got {value!r}")
    return -(-total_s // 60) if round_up else total_s // 60


def format_time_minutes(minutes: int) -> str:
    """Minutes to SLURM's D-HH:MM:SS."""
    days, rem = divmod(minutes, 24 * 60)
    hours, mins = divmod(rem, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"
