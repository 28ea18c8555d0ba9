"""The thpsim trace language (version 1): JSON Lines, one operation per line.

A trace is machine independent. Every address is an offset inside a reserved, PUD-aligned *arena* (the live
runner puts it at ARENA_BASE, far from anything else, so that all page tables under it belong to the trace), or
a named region handle created by ``mmap``. Parsing validates every line and raises :class:`TraceError` naming the
line and the field; resolving turns handles into arena offsets so that both engines (model and live) run
exactly the same resolved operations.

This module reads and writes the text: the header, the fields every op shares, and the resolution loop. The
op kinds themselves (one value class and one definition each: fields, parse, dump, describe, model-only) are in
:mod:`thpsim.trace.ops`, sizes and the arena in :mod:`thpsim.trace.units`; their names (``Op``, ``Inject``,
``OP_FIELDS``, ``MODEL_ONLY_OPS``, ``parse_size``, ...) are re-exported here for existing callers.

See README.md ("Trace format") for the user documentation and examples.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from thpsim.errors import TraceError
from thpsim.trace.ops import (
    COMMON_FIELDS,
    GUP_FLAGS,
    INJECT_TIMES_ALL,
    MADVICES,
    MLOCK_FLAGS,
    MMAP_FLAGS,
    MODEL_ONLY_OPS,
    MREMAP_FLAGS,
    OP_DEFS,
    OP_FIELDS,
    PROTS,
    REGION_OPS,
    Fork,
    Inject,
    Op,
    ParseContext,
    Placer,
    check_name,
)
from thpsim.trace.units import ARENA_BASE, ARENA_SIZE, PAGE, GiB, KiB, MiB, TiB, format_size, parse_size

TRACE_VERSION = 1


@dataclass(frozen=True)
class Header:
    version: int = TRACE_VERSION
    name: str = ""
    description: str = ""
    kernel: tuple[tuple[str, Any], ...] = ()   # knob overrides for the model (e.g. ("use_zero_page", True))
    requires: tuple[tuple[str, Any], ...] = ()  # live requirements, e.g. ("enabled", ("always", "madvise"))


@dataclass(frozen=True)
class Trace:
    header: Header
    ops: tuple[Op, ...]
    source: str = "trace"
    regions: tuple[tuple[str, int, int], ...] = field(default=())  # final (name, start, length) after resolve

    def procs(self) -> tuple[str, ...]:
        seen = ["main"]
        for op in self.ops:
            if isinstance(op, Fork) and op.child not in seen:
                seen.append(op.child)
        return tuple(seen)


def _check_fields(obj: Mapping[str, Any], line: int) -> str:
    kind = obj.get("op")
    if kind is None:
        raise TraceError("missing field 'op'", line=line, field="op")
    if kind not in OP_FIELDS:
        raise TraceError(f"unknown op {kind!r}; known ops: {', '.join(sorted(OP_FIELDS))}", line=line, field="op")
    req, opt = OP_FIELDS[kind]
    for r in req:
        if r not in obj:
            raise TraceError(f"op {kind!r} needs field '{r}'", line=line, field=r)
    allowed = set(req) | set(opt) | set(COMMON_FIELDS)
    for k in obj:
        if k not in allowed:
            raise TraceError(f"op {kind!r} has no field {k!r}; allowed: {', '.join(sorted(allowed))}", line=line,
                             field=k)
    return kind


def _inject(v: Any, line: int) -> Inject:
    from thpsim.model.page_alloc import INJECT_POINTS

    if isinstance(v, str):
        v = {"at": v}
    if not isinstance(v, dict) or set(v) - {"at", "times"} or "at" not in v:
        raise TraceError('must be {"at": POINT, "times": N} or a POINT name', line=line, field="inject")
    if v["at"] not in INJECT_POINTS:
        raise TraceError(f"unknown injection point {v['at']!r}; points: {', '.join(INJECT_POINTS)}", line=line,
                         field="inject")
    times = v.get("times", 1)
    if times == "all":
        times = INJECT_TIMES_ALL
    if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= INJECT_TIMES_ALL:
        raise TraceError(f'"times" must be 1..{INJECT_TIMES_ALL} or "all" (got {times!r})', line=line,
                         field="inject")
    return Inject(v["at"], times)


def _header(obj: Mapping[str, Any], line: int) -> Header:
    ver = obj.get("thpsim")
    if ver != TRACE_VERSION:
        raise TraceError(f"unsupported trace version {ver!r}; this thpsim reads version {TRACE_VERSION}", line=line,
                         field="thpsim")
    allowed = {"thpsim", "name", "description", "kernel", "requires"}
    for k in obj:
        if k not in allowed:
            raise TraceError(f"header has no field {k!r}; allowed: {', '.join(sorted(allowed))}", line=line, field=k)
    kernel = obj.get("kernel", {})
    requires = obj.get("requires", {})
    if not isinstance(kernel, dict):
        raise TraceError("must be an object of knob settings", line=line, field="kernel")
    if not isinstance(requires, dict):
        raise TraceError("must be an object", line=line, field="requires")
    return Header(
        name=str(obj.get("name", "")), description=str(obj.get("description", "")),
        kernel=tuple(sorted((str(k), _freeze(v)) for k, v in kernel.items())),
        requires=tuple(sorted((str(k), _freeze(v)) for k, v in requires.items())),
    )


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _freeze(x)) for k, x in v.items()))
    return v


def parse_lines(lines: Iterable[str], source: str = "trace") -> list[tuple[int, dict[str, Any]]]:
    """Split the JSON Lines text into (line number, object); blank lines and '#' comments are skipped."""
    out = []
    for i, raw in enumerate(lines, 1):
        s = raw.strip()
        if not s or s.startswith("#") or s.startswith("//"):
            continue
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            raise TraceError(f"not valid JSON ({e.msg} at column {e.colno})", line=i, source=source) from None
        if not isinstance(obj, dict):
            raise TraceError("each line must be a JSON object like {\"op\": \"mmap\", ...}", line=i, source=source)
        out.append((i, obj))
    return out


def parse(text: str | Iterable[str], source: str = "trace") -> Trace:
    """Parse and resolve a trace. Raises TraceError (one line, with file:line and field) on any problem."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    try:
        return _parse(parse_lines(lines, source), source)
    except TraceError as e:
        raise e.with_source(source) from None


def load(path: str) -> Trace:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise TraceError(f"cannot read the trace: {e.strerror}", source=path) from None
    except UnicodeDecodeError:
        raise TraceError("the trace is not UTF-8 text", source=path) from None
    return parse(text, source=path)


def _parse(items: list[tuple[int, dict[str, Any]]], source: str) -> Trace:
    header = Header()
    if items and "thpsim" in items[0][1]:
        header = _header(items[0][1], items[0][0])
        items = items[1:]
    elif items and "op" not in items[0][1]:
        raise TraceError("the first line must be the header {\"thpsim\": 1, ...} or an op", line=items[0][0])
    # pre-scan explicit placements so automatic placement avoids them
    fixed: list[tuple[int, int]] = []
    for line, obj in items:
        if obj.get("op") == "mmap" and "at" in obj:
            fixed.append((parse_size(obj["at"], line=line, fld="at"), parse_size(obj.get("len", 0), line=line,
                                                                                  fld="len")))
        if obj.get("op") in ("mremap", "uffd_move") and "to" in obj:
            ln = obj.get("new_len", obj.get("len", 0))
            fixed.append((parse_size(obj["to"], line=line, fld="to"), parse_size(ln, line=line, fld="new_len")))
    ctx = ParseContext(handles={}, placer=Placer(fixed), procs={"main"}, dead=set())
    ops = tuple(_op(obj, line, ctx) for line, obj in items)
    return Trace(header=header, ops=ops, source=source,
                 regions=tuple((k, s, n) for k, (s, n) in sorted(ctx.handles.items())))


def _common(obj: Mapping[str, Any], line: int, ctx: ParseContext) -> dict[str, Any]:
    """The fields every op has (:class:`~thpsim.trace.ops.OpBase`), checked."""
    proc = check_name(obj, "proc", line) if "proc" in obj else "main"
    if proc not in ctx.procs:
        raise TraceError(f"process {proc!r} does not exist yet (create it with a fork op)", line=line, field="proc")
    if proc in ctx.dead:
        raise TraceError(f"process {proc!r} has already exited", line=line, field="proc")
    expect = obj.get("expect", {})
    if not isinstance(expect, dict):
        raise TraceError("must be an object like {\"result\": 0, \"vm_pte_kb\": 4}", line=line, field="expect")
    note = obj.get("note", "")
    if not isinstance(note, str):
        raise TraceError("must be a string", line=line, field="note")
    inject = _inject(obj["inject"], line) if "inject" in obj else None
    return {"line": line, "proc": proc, "expect": _freeze(expect), "note": note, "inject": inject}


def _op(obj: Mapping[str, Any], line: int, ctx: ParseContext) -> Op:
    """One op line, resolved: the common fields here, the kind's own fields by its definition (trace.ops)."""
    kind = _check_fields(obj, line)
    defn = OP_DEFS[kind]
    op: Op = defn.parse(obj, line, _common(obj, line, ctx), ctx)
    return op


def dumps_op(op: Op) -> str:
    """Serialise a resolved op back to a trace line (arena offsets, 'at' form)."""
    d: dict[str, Any] = {"op": op.kind}
    if op.proc != "main":
        d["proc"] = op.proc
    d.update(OP_DEFS[op.kind].dump(op))
    if op.expect:
        d["expect"] = _thaw(op.expect)
    if op.inject is not None:
        d["inject"] = {"at": op.inject.at, "times": "all" if op.inject.times == INJECT_TIMES_ALL else op.inject.times}
    return json.dumps(d, separators=(", ", ": "))


def _thaw(v: Any) -> Any:
    if isinstance(v, tuple) and v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
        return {k: _thaw(x) for k, x in v}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


def dumps(trace: Trace) -> str:
    hdr: dict[str, Any] = {"thpsim": TRACE_VERSION}
    if trace.header.name:
        hdr["name"] = trace.header.name
    if trace.header.description:
        hdr["description"] = trace.header.description
    if trace.header.kernel:
        hdr["kernel"] = _thaw(trace.header.kernel)
    if trace.header.requires:
        hdr["requires"] = _thaw(trace.header.requires)
    return "\n".join([json.dumps(hdr)] + [dumps_op(o) for o in trace.ops]) + "\n"


def expectation_for(op: Op, design: str) -> dict[str, Any]:
    """The op's expected results for one design: flat keys apply to all designs, {design: {...}} to one (and
    win over a flat key of the same name)."""
    out: dict[str, Any] = {}
    mine: dict[str, Any] = {}
    for k, v in op.expect:
        nested = isinstance(v, tuple) and bool(v) and all(isinstance(x, tuple) and len(x) == 2 for x in v)
        if not nested:
            out[k] = _thaw(v)
        elif k == design:
            mine = {kk: _thaw(vv) for kk, vv in v}
    out.update(mine)
    return out


__all__ = [
    "ARENA_BASE", "ARENA_SIZE", "COMMON_FIELDS", "GUP_FLAGS", "INJECT_TIMES_ALL", "MADVICES", "MLOCK_FLAGS",
    "MMAP_FLAGS", "MODEL_ONLY_OPS", "MREMAP_FLAGS", "OP_FIELDS", "PAGE", "PROTS", "REGION_OPS", "TRACE_VERSION",
    "GiB", "Header", "Inject", "KiB", "MiB", "Op", "TiB", "Trace",
    "dumps", "dumps_op", "expectation_for", "format_size", "load", "parse", "parse_lines", "parse_size",
]
