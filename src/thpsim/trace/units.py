"""Sizes and the arena of the trace language: byte units, the trace page, the arena's place and size, and the
size syntax ("4K", "2M+4K", "0x1000") that every size field of a trace accepts.

Leaf module of the trace package (no thpsim imports but errors): :mod:`thpsim.trace.ops` and
:mod:`thpsim.trace.format` both build on it, and :mod:`thpsim.trace.format` re-exports every name.
"""

from __future__ import annotations

import re
from typing import Any

from thpsim.errors import TraceError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
PAGE = 4 * KiB

# The arena: 512 GiB (one PUD table on x86-64) at 32 TiB, far below mmap_base and far above brk/heap.
ARENA_BASE = 0x2000_0000_0000
ARENA_SIZE = 512 * GiB

_SIZE_RE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+)\s*([KMGT]?)i?B?\s*$")
_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}


def parse_size(value: Any, *, line: int | None = None, fld: str | None = None) -> int:
    """Parse 4096, "4K", "2M", "1G", "0x1000", "2M+4K", "2M-4K" into bytes."""
    if isinstance(value, bool):
        raise TraceError("must be a size like 4096, \"4K\", \"2M\" or \"2M+4K\", not a boolean", line=line, field=fld)
    if isinstance(value, int):
        if value < 0:
            raise TraceError(f"must not be negative (got {value})", line=line, field=fld)
        return value
    if not isinstance(value, str):
        raise TraceError(f"must be a size like 4096, \"4K\", \"2M\" or \"2M+4K\" (got {value!r})", line=line, field=fld)
    total = 0
    for sign, term in re.findall(r"([+-]?)([^+-]+)", value.replace(" ", "")):
        m = _SIZE_RE.match(term)
        if not m:
            raise TraceError(f"cannot read size {value!r}: use forms like 4096, \"4K\", \"2M\", \"1G\", \"2M+4K\"",
                             line=line, field=fld)
        num = int(m.group(1), 16) if m.group(1).startswith("0x") else int(m.group(1))
        n = num * _UNITS[m.group(2)]
        total += -n if sign == "-" else n
    if total < 0:
        raise TraceError(f"size {value!r} is negative", line=line, field=fld)
    return total


def format_size(n: int) -> str:
    for unit, mult in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


__all__ = ["ARENA_BASE", "ARENA_SIZE", "GiB", "KiB", "MiB", "PAGE", "TiB", "format_size", "parse_size"]
