"""The thpsim trace language (version 1): JSON Lines, one operation per line.

A trace is machine independent. Every address is an offset inside a reserved, PUD-aligned *arena* (the live
runner puts it at ARENA_BASE, far from anything else, so that all page tables under it belong to the trace), or
a named region handle created by ``mmap``. Parsing validates every line and raises :class:`TraceError` naming the
line and the field; :func:`resolve` turns handles into arena offsets so that both engines (model and live) run
exactly the same resolved operations.

See README.md ("Trace format") for the user documentation and examples.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from thpsim.errors import TraceError

TRACE_VERSION = 1
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
PAGE = 4 * KiB

# The arena: 512 GiB (one PUD table on x86-64) at 32 TiB, far below mmap_base and far above brk/heap.
ARENA_BASE = 0x2000_0000_0000
ARENA_SIZE = 512 * GiB

PROTS = {"none": 0, "r": 1, "rw": 3, "rx": 5, "rwx": 7, "w": 2, "wx": 6, "x": 4}
MADVICES = (
    "hugepage", "nohugepage", "dontneed", "dontneed_locked", "free", "cold", "pageout",
    "populate_read", "populate_write", "collapse", "guard_install", "guard_remove",
    "dontfork", "dofork", "wipeonfork", "keeponfork", "willneed", "normal", "random", "sequential",
)
MMAP_FLAGS = ("noreserve", "populate", "fixed_noreplace", "locked")
MREMAP_FLAGS = ("maymove", "fixed", "dontunmap")
MLOCK_FLAGS = ("onfault",)
GUP_FLAGS = ("write", "pin", "longterm", "split_pmd")

# op -> (required fields, optional fields). "region" means: id[/off][/len] or at/len.
_REGION = ("id", "off", "at", "len")
OP_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mmap": (("len",), ("id", "at", "prot", "flags", "align", "misalign")),
    "munmap": ((), _REGION),
    "mprotect": (("prot",), _REGION),
    "mremap": (("new_len",), (*_REGION, "flags", "to", "new_id")),
    "mlock": ((), (*_REGION, "flags")),
    "munlock": ((), _REGION),
    "madvise": (("advice",), _REGION),
    "write": ((), (*_REGION, "stride", "fill", "byte")),
    "read": ((), (*_REGION, "stride")),
    "fork": (("child",), ()),
    "exit": ((), ()),
    "khugepaged": ((), ()),
    "shrink_deferred": ((), ()),
    "reclaim": ((), _REGION),
    "gup": ((), (*_REGION, "flags")),
    "uffd_move": (("to",), _REGION),
    "pagemap_scan_wp": ((), _REGION),
    "uffd_wp": ((), _REGION),
    "migrate": ((), _REGION),
    "expect": ((), ()),
}
COMMON_FIELDS = ("op", "proc", "expect", "note", "inject")
INJECT_TIMES_ALL = 1 << 20        # "times": "all" — every matching allocation during the op
# ops that need the region addressing
REGION_OPS = {k for k, (_req, opt) in OP_FIELDS.items() if "len" in opt and k != "mmap"}
# ops that only the model can run (the live kernel offers no unprivileged, side-effect-free trigger)
MODEL_ONLY_OPS = frozenset({"khugepaged", "shrink_deferred", "reclaim", "gup", "uffd_move", "pagemap_scan_wp",
                            "migrate", "uffd_wp"})

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


@dataclass(frozen=True)
class Header:
    version: int = TRACE_VERSION
    name: str = ""
    description: str = ""
    kernel: tuple[tuple[str, Any], ...] = ()   # knob overrides for the model (e.g. ("use_zero_page", True))
    requires: tuple[tuple[str, Any], ...] = ()  # live requirements, e.g. ("enabled", ("always", "madvise"))


@dataclass(frozen=True)
class Inject:
    """``"inject": {"at": POINT, "times": N}`` on an op: the first N allocations at POINT (an
    :data:`~thpsim.model.page_alloc.INJECT_POINTS` name) made while the op runs fail."""

    at: str
    times: int = 1


@dataclass(frozen=True)
class Op:
    """One resolved trace operation. Addresses are arena offsets; sizes are bytes."""

    line: int
    kind: str
    proc: str = "main"
    start: int = 0
    length: int = 0
    prot: str = "rw"
    flags: tuple[str, ...] = ()
    advice: str = ""
    new_length: int = 0
    dest: int | None = None        # mremap destination (fixed, or the auto slot used if a MAYMOVE must move)
    stride: int = PAGE
    fill: bool = False
    byte: int = 0xAA
    child: str = ""
    handle: str = ""
    expect: tuple[tuple[str, Any], ...] = ()
    note: str = ""
    inject: Inject | None = None    # allocations to fail during this op (both engines; live: lab guests)

    @property
    def end(self) -> int:
        return self.start + self.length

    def describe(self) -> str:
        """Short human-readable form used in reports and error messages."""
        k = self.kind
        if k in ("fork",):
            return f"{self.proc}: fork -> {self.child}"
        if k in ("exit", "khugepaged", "shrink_deferred", "expect"):
            return f"{self.proc}: {k}"
        rng = f"[{format_size(self.start)}, +{format_size(self.length)})"
        extra = ""
        if k == "madvise":
            extra = f" {self.advice.upper()}"
        elif k in ("mprotect",) or (k == "mmap" and self.prot != "rw"):
            extra = f" {self.prot}"
        elif k == "mremap":
            extra = f" -> {format_size(self.new_length)}"
            if self.dest is not None and ("fixed" in self.flags or "maymove" in self.flags):
                extra += f" @{format_size(self.dest)}"
        elif k == "write":
            extra = " fill" if self.fill else (f" stride {format_size(self.stride)}" if self.stride != PAGE else "")
        if self.flags and k != "mremap":
            extra += " " + ",".join(self.flags)
        return f"{self.proc}: {k}{extra} {rng}"


@dataclass(frozen=True)
class Trace:
    header: Header
    ops: tuple[Op, ...]
    source: str = "trace"
    regions: tuple[tuple[str, int, int], ...] = field(default=())  # final (name, start, length) after resolve

    def procs(self) -> tuple[str, ...]:
        seen = ["main"]
        for op in self.ops:
            if op.kind == "fork" and op.child not in seen:
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


def _flags(obj: Mapping[str, Any], allowed: tuple[str, ...], line: int) -> tuple[str, ...]:
    raw = obj.get("flags", [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise TraceError("must be a list of strings", line=line, field="flags")
    for f in raw:
        if f not in allowed:
            raise TraceError(f"unknown flag {f!r}; allowed: {', '.join(allowed) or 'none'}", line=line, field="flags")
    return tuple(sorted(set(raw)))


def _prot(obj: Mapping[str, Any], line: int, default: str = "rw") -> str:
    p = obj.get("prot", default)
    if p not in PROTS:
        raise TraceError(f"unknown protection {p!r}; use one of {', '.join(PROTS)}", line=line, field="prot")
    return p


def _name(obj: Mapping[str, Any], key: str, line: int) -> str:
    v = obj[key]
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", v):
        raise TraceError(f"must be a name (letters, digits, _ . -; starting with a letter), got {v!r}", line=line,
                         field=key)
    return v


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


class _Placer:
    """Deterministic placement of regions that name no arena offset ("at")."""

    def __init__(self, fixed: list[tuple[int, int]]) -> None:
        self.fixed = sorted(fixed)
        self.cursor = 0

    def place(self, length: int, align: int, misalign: int) -> int:
        pos = _align_up(self.cursor, align) + misalign
        while True:
            clash = next(((s, e) for s, e in self.fixed if s < pos + length and pos < e), None)
            if clash is None:
                break
            pos = _align_up(clash[1] + 2 * MiB, align) + misalign
        # leave one 2 MiB gap so that automatically placed regions never share a PTE table or merge
        self.cursor = _align_up(pos + length, 2 * MiB) + 2 * MiB
        if pos + length > ARENA_SIZE:
            raise TraceError(f"the regions do not fit the {ARENA_SIZE // GiB} GiB arena")
        return pos


def _inside_arena(start: int, length: int, line: int, fld: str) -> int:
    """A destination the live child would touch: refused unless [start, start + length) is inside the arena
    (a trace never reaches the child's other memory, issue 10's confinement rule)."""
    if start + length > ARENA_SIZE:
        raise TraceError(f"destination ends past the {ARENA_SIZE // GiB} GiB arena (the live runner never "
                         "touches memory outside it)", line=line, field=fld)
    return start


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


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
    placer = _Placer(fixed)
    handles: dict[str, tuple[int, int]] = {}
    procs: set[str] = {"main"}
    dead: set[str] = set()
    ops: list[Op] = []
    for line, obj in items:
        ops.append(_op(obj, line, handles, placer, procs, dead))
    return Trace(header=header, ops=tuple(ops), source=source,
                 regions=tuple((k, s, n) for k, (s, n) in sorted(handles.items())))


def _region(obj: Mapping[str, Any], line: int, handles: dict[str, tuple[int, int]]) -> tuple[int, int]:
    if "id" in obj and "at" in obj:
        raise TraceError("give either 'id' (with optional 'off') or 'at', not both", line=line, field="at")
    if "id" in obj:
        name = obj["id"]
        if name not in handles:
            known = ", ".join(sorted(handles)) or "none yet"
            raise TraceError(f"unknown region {name!r} (known: {known})", line=line, field="id")
        base, hlen = handles[name]
        off = parse_size(obj.get("off", 0), line=line, fld="off")
        length = parse_size(obj["len"], line=line, fld="len") if "len" in obj else max(hlen - off, 0)
        return base + off, length
    if "at" in obj:
        if "off" in obj:
            raise TraceError("'off' goes with 'id'; with 'at' give the arena offset directly", line=line, field="off")
        if "len" not in obj:
            raise TraceError("a region given by 'at' needs 'len'", line=line, field="len")
        return parse_size(obj["at"], line=line, fld="at"), parse_size(obj["len"], line=line, fld="len")
    raise TraceError("name the range with 'id' (a region from mmap) or 'at' (an arena offset) and 'len'", line=line,
                     field="id")


def _op(obj: dict[str, Any], line: int, handles: dict[str, tuple[int, int]], placer: _Placer, procs: set[str],
        dead: set[str]) -> Op:
    kind = _check_fields(obj, line)
    proc = _name(obj, "proc", line) if "proc" in obj else "main"
    if proc not in procs:
        raise TraceError(f"process {proc!r} does not exist yet (create it with a fork op)", line=line, field="proc")
    if proc in dead:
        raise TraceError(f"process {proc!r} has already exited", line=line, field="proc")
    expect = obj.get("expect", {})
    if not isinstance(expect, dict):
        raise TraceError("must be an object like {\"result\": 0, \"vm_pte_kb\": 4}", line=line, field="expect")
    note = obj.get("note", "")
    if not isinstance(note, str):
        raise TraceError("must be a string", line=line, field="note")
    kw: dict[str, Any] = {"line": line, "kind": kind, "proc": proc, "expect": _freeze(expect), "note": note}
    if "inject" in obj:
        kw["inject"] = _inject(obj["inject"], line)
    if kind == "mmap":
        length = parse_size(obj["len"], line=line, fld="len")
        if length == 0:
            raise TraceError("mmap needs a non-zero length", line=line, field="len")
        if "at" in obj:
            start = parse_size(obj["at"], line=line, fld="at")
        else:
            align = parse_size(obj.get("align", "2M"), line=line, fld="align")
            if align == 0 or align & (align - 1) or align % PAGE:
                raise TraceError("must be a power of two, at least 4K", line=line, field="align")
            misalign = parse_size(obj.get("misalign", 0), line=line, fld="misalign")
            try:
                start = placer.place(length, align, misalign)
            except TraceError as e:
                raise TraceError(e.reason, line=line, field="len") from None
        if start + length > ARENA_SIZE:
            raise TraceError(f"region ends past the {ARENA_SIZE // GiB} GiB arena", line=line, field="len")
        name = _name(obj, "id", line) if "id" in obj else ""
        if name:
            handles[name] = (start, length)
        kw.update(start=start, length=length, prot=_prot(obj, line), flags=_flags(obj, MMAP_FLAGS, line),
                  handle=name)
    elif kind in REGION_OPS:
        start, length = _region(obj, line, handles)
        if start + length > ARENA_SIZE:
            raise TraceError(f"range ends past the {ARENA_SIZE // GiB} GiB arena", line=line, field="len")
        kw.update(start=start, length=length, handle=obj.get("id", ""))
        if kind == "mprotect":
            kw["prot"] = _prot(obj, line)
        elif kind == "mlock":
            kw["flags"] = _flags(obj, MLOCK_FLAGS, line)
        elif kind == "gup":
            kw["flags"] = _flags(obj, GUP_FLAGS, line)
        elif kind == "madvise":
            adv = obj["advice"]
            if adv not in MADVICES:
                raise TraceError(f"unknown advice {adv!r}; use one of {', '.join(MADVICES)}", line=line,
                                 field="advice")
            kw["advice"] = adv
        elif kind in ("write", "read"):
            stride = parse_size(obj.get("stride", PAGE), line=line, fld="stride")
            if stride == 0:
                raise TraceError("must be at least 1", line=line, field="stride")
            kw["stride"] = stride
            if kind == "write":
                fill = obj.get("fill", False)
                if not isinstance(fill, bool):
                    raise TraceError("must be true or false", line=line, field="fill")
                byte = obj.get("byte", 0xAA)
                if isinstance(byte, bool) or not isinstance(byte, int) or not 0 <= byte <= 255:
                    raise TraceError("must be an integer 0..255", line=line, field="byte")
                kw.update(fill=fill, byte=byte)
        elif kind == "mremap":
            flags = _flags(obj, MREMAP_FLAGS, line)
            new_length = parse_size(obj["new_len"], line=line, fld="new_len")
            if ("fixed" in flags or "dontunmap" in flags) and "maymove" not in flags:
                raise TraceError("'fixed' and 'dontunmap' need 'maymove' as well (Linux returns EINVAL)", line=line,
                                 field="flags")
            dest = None
            if "to" in obj:
                dest = parse_size(obj["to"], line=line, fld="to")
                if "fixed" not in flags:
                    raise TraceError("'to' needs the 'fixed' flag", line=line, field="to")
            elif "fixed" in flags:
                raise TraceError("'fixed' needs 'to' (the destination arena offset)", line=line, field="to")
            elif "maymove" in flags:
                dest = placer.place(max(new_length, PAGE), 2 * MiB, start % (2 * MiB))
            _inside_arena(start, new_length, line, "new_len")     # growing in place must stay inside too
            if dest is not None:
                _inside_arena(dest, new_length, line, "to")
            kw.update(flags=flags, new_length=new_length, dest=dest)
            name = str(obj.get("new_id") or obj.get("id") or "")
            if name:
                if "new_id" in obj:
                    _name(obj, "new_id", line)
                moves = dest is not None and ("fixed" in flags or "dontunmap" in flags)
                handles[name] = (dest if dest is not None and moves else start, new_length)
        elif kind == "uffd_move":
            kw["dest"] = _inside_arena(parse_size(obj["to"], line=line, fld="to"), length, line, "to")
    elif kind == "fork":
        child = _name(obj, "child", line)
        if child in procs:
            raise TraceError(f"process name {child!r} is already used", line=line, field="child")
        procs.add(child)
        kw["child"] = child
    elif kind == "exit":
        # main's exit ends the trace: every process exits with it, and no op can follow
        dead.update(procs if proc == "main" else {proc})
    if "dontunmap" in kw.get("flags", ()) and kind == "mremap" and kw["new_length"] != kw["length"]:
        raise TraceError("MREMAP_DONTUNMAP needs new_len == len (Linux returns EINVAL)", line=line, field="new_len")
    return Op(**kw)


def dumps_op(op: Op) -> str:
    """Serialise a resolved op back to a trace line (arena offsets, 'at' form)."""
    d: dict[str, Any] = {"op": op.kind}
    if op.proc != "main":
        d["proc"] = op.proc
    if op.kind == "mmap":
        if op.handle:
            d["id"] = op.handle
        d.update(at=format_size(op.start), len=format_size(op.length))
        if op.prot != "rw":
            d["prot"] = op.prot
        if op.flags:
            d["flags"] = list(op.flags)
    elif op.kind in REGION_OPS:
        d.update(at=format_size(op.start), len=format_size(op.length))
        if op.kind == "mprotect":
            d["prot"] = op.prot
        if op.kind == "madvise":
            d["advice"] = op.advice
        if op.kind in ("write", "read") and op.stride != PAGE:
            d["stride"] = format_size(op.stride)
        if op.kind == "write":
            if op.fill:
                d["fill"] = True
            d["byte"] = op.byte
        if op.kind == "mremap":
            d["new_len"] = format_size(op.new_length)
            if "fixed" in op.flags and op.dest is not None:
                d["to"] = format_size(op.dest)
        if op.kind == "uffd_move" and op.dest is not None:
            d["to"] = format_size(op.dest)
        if op.flags and op.kind in ("mremap", "mlock", "gup"):
            d["flags"] = list(op.flags)
    elif op.kind == "fork":
        d["child"] = op.child
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
