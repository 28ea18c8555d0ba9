"""Pass 3 of the strace importer: the program's real addresses -> offsets in the thpsim arena, raw ops -> trace
ops (format v1 JSON Lines).

Offsets modulo 1 GiB are preserved, so 2 MiB alignment, misalignment and PMD/PUD-table sharing stay as they
were: every run of consecutive 1 GiB-aligned real windows that holds anonymous memory gets consecutive arena GiB
slots, runs in order of first appearance, with one empty GiB slot between runs (so regions that were far apart
never become adjacent and merge). The gaps are dropped if the 512 GiB arena would overflow; runs that still do
not fit are left out (the import notes it, and every op that names them is counted as "arena full").

Reads the replay's raw ops (:class:`.replay.RawOp`: real ``_at``/``_len``/``_to`` plus trace fields), nothing
of strace or perf itself. Writes the trace's text with the op fields in a fixed order and, optionally, a
``"note": "strace:LINE"`` on every op. Left out: any relocation that would change offsets within a GiB (a
program whose anonymous memory spans more windows than the arena has slots loses the later runs), and
placement by handle (the imported trace names absolute offsets).
"""

from __future__ import annotations

import json
from typing import Any

from thpsim.trace import format as fmt
from thpsim.trace.strace.replay import RawOp

__all__ = ["ARENA_SLOTS", "GiB", "arena_map", "convert", "to_arena", "trace_text"]

GiB = fmt.GiB
ARENA_SLOTS = fmt.ARENA_SIZE // GiB
_FIELD_ORDER = ("op", "proc", "id", "at", "len", "prot", "advice", "new_len", "to", "flags", "stride", "child",
                "note")


def arena_map(ops: list[RawOp]) -> tuple[dict[int, int], list[int]]:
    """Real GiB window -> arena GiB slot. Returns (slot by window, dropped windows)."""
    first: dict[int, int] = {}
    for i, op in enumerate(ops):
        for a, b in op.ranges:
            for w in range(a >> 30, ((b - 1) >> 30) + 1):
                first.setdefault(w, i)
    runs: list[list[int]] = []
    for w in sorted(first):
        if runs and runs[-1][-1] == w - 1:
            runs[-1].append(w)
        else:
            runs.append([w])
    runs.sort(key=lambda r: min(first[w] for w in r))
    total = sum(len(r) for r in runs)
    gap = 1 if total + len(runs) - 1 <= ARENA_SLOTS else 0
    slots: dict[int, int] = {}
    dropped: list[int] = []
    cursor = 0
    for r in runs:
        if cursor + len(r) > ARENA_SLOTS:
            dropped.extend(r)
            continue
        for k, w in enumerate(r):
            slots[w] = cursor + k
        cursor += len(r) + gap
    return slots, dropped


def convert(op: RawOp, slots: dict[int, int]) -> dict[str, Any] | None:
    """The trace op of *op* in arena offsets (sizes formatted), or None when a window it names has no slot."""

    def arena(addr: int) -> int:
        return slots[addr >> 30] * GiB + (addr & (GiB - 1))

    try:
        d = {k: v for k, v in op.d.items() if not k.startswith("_")}
        if "_at" in op.d:
            start = op.d["_at"]
            end = start + op.d["_len"]
            # a range may end exactly on a window boundary; map its last byte
            d["at"] = fmt.format_size(arena(start))
            d["len"] = fmt.format_size(arena(end - 1) + 1 - arena(start))
        if "_to" in op.d:
            d["to"] = fmt.format_size(arena(op.d["_to"]))
        if "new_len" in d:
            d["new_len"] = fmt.format_size(d["new_len"])
        if "stride" in d:
            d["stride"] = fmt.format_size(d["stride"])
    except KeyError:
        return None
    return {k: d[k] for k in _FIELD_ORDER if k in d}


def to_arena(ops: list[RawOp], slots: dict[int, int], *, notes: bool) -> tuple[list[dict[str, Any]],
                                                                              list[float | None], int]:
    """The trace ops of *ops* in arena offsets, each op's log time, and how many ops were left out (their
    window has no slot). With *notes*, each op from a log line gets ``"note": "strace:LINE"`` (in front of its
    own note); without, no op keeps a note."""
    objs: list[dict[str, Any]] = []
    times: list[float | None] = []
    left_out = 0
    for op in ops:
        d = convert(op, slots)
        if d is None:
            left_out += 1
            continue
        if notes and op.line:
            d["note"] = f"strace:{op.line}" + (f" {d['note']}" if "note" in d else "")
        elif "note" in d and not notes:
            del d["note"]
        objs.append(d)
        times.append(op.t)
    return objs, times, left_out


def trace_text(header: dict[str, Any], objs: list[dict[str, Any]]) -> str:
    """The JSON Lines of a trace: *header*, then one op a line."""
    return "\n".join([json.dumps(header)] + [json.dumps(d, separators=(", ", ": ")) for d in objs]) + "\n"
