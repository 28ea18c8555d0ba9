"""The trace language's operations: one frozen value class per op kind, and one definition table.

Each op kind is a frozen dataclass with only the fields that kind has (:class:`Mremap` has ``new_length``,
``flags`` and ``dest``; :class:`Fork` has ``child``); :data:`Op` is their union, tagged by the class-level
string ``kind`` ("mmap", "uffd_move", ... — what reports and JSON print). Every op has the :class:`OpBase`
fields (line, proc, expect, note, inject); ops on an address range derive from :class:`RangeOp` (``start``,
``length``, ``end``: arena offsets in bytes, already resolved).

:data:`OP_DEFS` holds one :class:`OpDef` per kind: the class, the trace fields it needs and allows, its parse
function (a JSON object whose field names were checked → the resolved op), its dump function (the op → its
kind's trace fields, "at" form), its describe function (the detail of the short form used in reports and
errors) and whether only the model can run it. :data:`OP_FIELDS`, :data:`REGION_OPS` and
:data:`MODEL_ONLY_OPS` are derived from it; the model engine (``thpsim.model.engine.OPS``) and the live child
(``thpsim.live._child.CHILD_OPS``) key their handlers by the same kinds, and tests/test_model_optable.py keeps
the three tables in step.

Leaves out: the header, line splitting, the fields every op shares and the resolution loop
(:mod:`thpsim.trace.format`); sizes and the arena (:mod:`thpsim.trace.units`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeAlias, TypeVar

from thpsim.errors import TraceError
from thpsim.trace.units import ARENA_SIZE, PAGE, GiB, MiB, format_size, parse_size

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
COMMON_FIELDS = ("op", "proc", "expect", "note", "inject")
INJECT_TIMES_ALL = 1 << 20        # "times": "all" — every matching allocation during the op


@dataclass(frozen=True)
class Inject:
    """``"inject": {"at": POINT, "times": N}`` on an op: the first N allocations at POINT (an
    :data:`~thpsim.model.page_alloc.INJECT_POINTS` name) made while the op runs fail."""

    at: str
    times: int = 1


# ---- the op classes -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class OpBase:
    """What every resolved op has: its trace line, its process, expectations, a note and an injection."""

    kind: ClassVar[str] = ""
    line: int
    proc: str = "main"
    expect: tuple[tuple[str, Any], ...] = ()
    note: str = ""
    inject: Inject | None = None    # allocations to fail during this op (both engines; live: lab guests)

    def describe(self) -> str:
        """Short human-readable form used in reports and error messages."""
        return describe(self)


@dataclass(frozen=True, kw_only=True)
class RangeOp(OpBase):
    """An op on [start, start + length) of its process (arena offsets, bytes)."""

    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True, kw_only=True)
class Mmap(RangeOp):
    kind: ClassVar[str] = "mmap"
    prot: str = "rw"
    flags: tuple[str, ...] = ()
    handle: str = ""                # the region's name ("id"), if it has one


@dataclass(frozen=True, kw_only=True)
class Munmap(RangeOp):
    kind: ClassVar[str] = "munmap"


@dataclass(frozen=True, kw_only=True)
class Mprotect(RangeOp):
    kind: ClassVar[str] = "mprotect"
    prot: str


@dataclass(frozen=True, kw_only=True)
class Mremap(RangeOp):
    kind: ClassVar[str] = "mremap"
    new_length: int
    flags: tuple[str, ...] = ()
    dest: int | None = None         # the fixed destination, or the auto slot used if a MAYMOVE must move


@dataclass(frozen=True, kw_only=True)
class Mlock(RangeOp):
    kind: ClassVar[str] = "mlock"
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Munlock(RangeOp):
    kind: ClassVar[str] = "munlock"


@dataclass(frozen=True, kw_only=True)
class Madvise(RangeOp):
    kind: ClassVar[str] = "madvise"
    advice: str


@dataclass(frozen=True, kw_only=True)
class Access(RangeOp):
    """A user access: one byte every ``stride`` bytes of the range (a write may fill it instead)."""

    stride: int = PAGE


@dataclass(frozen=True, kw_only=True)
class Write(Access):
    kind: ClassVar[str] = "write"
    fill: bool = False
    byte: int = 0xAA


@dataclass(frozen=True, kw_only=True)
class Read(Access):
    kind: ClassVar[str] = "read"


@dataclass(frozen=True, kw_only=True)
class Fork(OpBase):
    kind: ClassVar[str] = "fork"
    child: str


@dataclass(frozen=True, kw_only=True)
class Exit(OpBase):
    kind: ClassVar[str] = "exit"


@dataclass(frozen=True, kw_only=True)
class Khugepaged(OpBase):
    kind: ClassVar[str] = "khugepaged"


@dataclass(frozen=True, kw_only=True)
class ShrinkDeferred(OpBase):
    kind: ClassVar[str] = "shrink_deferred"


@dataclass(frozen=True, kw_only=True)
class Swapoff(OpBase):
    """swapoff(2) of the (one) swap device: every swap entry of every process is swapped back in."""

    kind: ClassVar[str] = "swapoff"


@dataclass(frozen=True, kw_only=True)
class Reclaim(RangeOp):
    kind: ClassVar[str] = "reclaim"


@dataclass(frozen=True, kw_only=True)
class Gup(RangeOp):
    kind: ClassVar[str] = "gup"
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class UffdMove(RangeOp):
    kind: ClassVar[str] = "uffd_move"
    dest: int


@dataclass(frozen=True, kw_only=True)
class PagemapScanWp(RangeOp):
    kind: ClassVar[str] = "pagemap_scan_wp"


@dataclass(frozen=True, kw_only=True)
class UffdWp(RangeOp):
    """UFFDIO_WRITEPROTECT (mode WP) on a range registered with ``uffd_register``."""

    kind: ClassVar[str] = "uffd_wp"


@dataclass(frozen=True, kw_only=True)
class UffdRegister(RangeOp):
    """UFFDIO_REGISTER in UFFDIO_REGISTER_MODE_WP on the process's userfaultfd (created on first use with
    UFFD_FEATURE_WP_ASYNC, so a write to a protected page resolves itself and no handler thread is needed)."""

    kind: ClassVar[str] = "uffd_register"


@dataclass(frozen=True, kw_only=True)
class UffdUnregister(RangeOp):
    """UFFDIO_UNREGISTER: resolve the range's write protection, then drop the registration (splitting VMAs)."""

    kind: ClassVar[str] = "uffd_unregister"


@dataclass(frozen=True, kw_only=True)
class Migrate(RangeOp):
    kind: ClassVar[str] = "migrate"


@dataclass(frozen=True, kw_only=True)
class Expect(OpBase):
    kind: ClassVar[str] = "expect"


Op: TypeAlias = (Mmap | Munmap | Mprotect | Mremap | Mlock | Munlock | Madvise | Write | Read | Fork | Exit
                 | Khugepaged | ShrinkDeferred | Swapoff | Reclaim | Gup | UffdMove | PagemapScanWp | UffdRegister | UffdWp
                 | UffdUnregister | Migrate | Expect)


# ---- field parsers --------------------------------------------------------------------------------------------------
def _align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


class Placer:
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


@dataclass
class ParseContext:
    """What resolving a trace keeps from line to line: region handles, placement, processes made and ended."""

    handles: dict[str, tuple[int, int]]
    placer: Placer
    procs: set[str]
    dead: set[str]


def check_name(obj: Mapping[str, Any], key: str, line: int) -> str:
    v = obj[key]
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", v):
        raise TraceError(f"must be a name (letters, digits, _ . -; starting with a letter), got {v!r}", line=line,
                         field=key)
    return v


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
    return str(p)


def _inside_arena(start: int, length: int, line: int, fld: str) -> int:
    """A destination the live child would touch: refused unless [start, start + length) is inside the arena
    (a trace never reaches the child's other memory, issue 10's confinement rule)."""
    if start + length > ARENA_SIZE:
        raise TraceError(f"destination ends past the {ARENA_SIZE // GiB} GiB arena (the live runner never "
                         "touches memory outside it)", line=line, field=fld)
    return start


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


def _range(obj: Mapping[str, Any], line: int, ctx: ParseContext) -> tuple[int, int]:
    """The op's range, given by region addressing (id[/off][/len] or at/len): (start, length)."""
    start, length = _region(obj, line, ctx.handles)
    if start + length > ARENA_SIZE:
        raise TraceError(f"range ends past the {ARENA_SIZE // GiB} GiB arena", line=line, field="len")
    return start, length


def _stride(obj: Mapping[str, Any], line: int) -> int:
    stride = parse_size(obj.get("stride", PAGE), line=line, fld="stride")
    if stride == 0:
        raise TraceError("must be at least 1", line=line, field="stride")
    return stride


# ---- per-kind parse functions: (the op's JSON object, its line, the common fields, the context) -> the op ----------
B = dict[str, Any]      # the OpBase fields, parsed by trace.format


def _mmap_start(obj: Mapping[str, Any], line: int, length: int, placer: Placer) -> int:
    if "at" in obj:
        return parse_size(obj["at"], line=line, fld="at")
    align = parse_size(obj.get("align", "2M"), line=line, fld="align")
    if align == 0 or align & (align - 1) or align % PAGE:
        raise TraceError("must be a power of two, at least 4K", line=line, field="align")
    misalign = parse_size(obj.get("misalign", 0), line=line, fld="misalign")
    try:
        return placer.place(length, align, misalign)
    except TraceError as e:
        raise TraceError(e.reason, line=line, field="len") from None


def _parse_mmap(obj: Mapping[str, Any], line: int, base: B, ctx: ParseContext) -> Mmap:
    length = parse_size(obj["len"], line=line, fld="len")
    if length == 0:
        raise TraceError("mmap needs a non-zero length", line=line, field="len")
    start = _mmap_start(obj, line, length, ctx.placer)
    if start + length > ARENA_SIZE:
        raise TraceError(f"region ends past the {ARENA_SIZE // GiB} GiB arena", line=line, field="len")
    name = check_name(obj, "id", line) if "id" in obj else ""
    if name:
        ctx.handles[name] = (start, length)
    return Mmap(**base, start=start, length=length, prot=_prot(obj, line), flags=_flags(obj, MMAP_FLAGS, line),
                handle=name)


R = TypeVar("R", bound=RangeOp)
T = TypeVar("T", bound=OpBase)


def _plain_range(cls: type[R]) -> Callable[[Mapping[str, Any], int, B, ParseContext], R]:
    """The parse function of a kind whose only own fields are its range."""
    def parse(obj: Mapping[str, Any], line: int, base: B, ctx: ParseContext) -> R:
        start, length = _range(obj, line, ctx)
        return cls(**base, start=start, length=length)
    return parse


def _bare(cls: type[T]) -> Callable[[Mapping[str, Any], int, B, ParseContext], T]:
    """The parse function of a kind without fields of its own."""
    def parse(obj: Mapping[str, Any], line: int, base: B, ctx: ParseContext) -> T:
        return cls(**base)
    return parse


def _parse_mprotect(obj: Mapping[str, Any], line: int, base: B, ctx: ParseContext) -> Mprotect:
    start, length = _range(obj, line, ctx)
    return Mprotect(**base, start=start, length=length, prot=_prot(obj, line))


def _parse_mlock(obj: Mapping[str, Any], line: int, base: B, ctx: ParseContext) -> Mlock:
    start, length = _range(obj, line, ctx)
    return Mlock(**base, start=start, length=length, flags=_flags(obj, MLOCK_FLAGS, line))


def _parse_gup(obj: Mapping[str, Any], line: int, base: B, ctx: ParseContext) -> Gup:
    start, length = _range(obj, line, ctx)
    return Gup(**base, start=start, length=length, flags=_flags(obj, GUP_FLAGS, line))


def _parse_madvise(obj: Mapping[str, Any], line: int, base: B, ctx: ParseContext) -> Madvise:
    start, length = _range(obj, line, ctx)
    adv = obj["advice"]
    if adv not in MADVICES:
        raise TraceError(f"unknown advice {adv!r}; use one of {', '.join(MADVICES)}", line=line, field="advice")
    return Madvise(**base, start=start, length=length, advice=adv)


def _parse_write(obj: Mapping[str, Any], line: int, base: B, ctx: ParseContext) -> Write:
    start, length = _range(obj, line, ctx)
    stride = _stride(obj, line)
    fill = obj.get("fill", False)
    if not isinstance(fill, bool):
        raise TraceError("must be true or false", line=line, field="fill")
    byte = obj.get("byte", 0xAA)
    if isinstance(byte, bool) or not isinstance(byte, int) or not 0 <= byte <= 255:
        raise TraceError("must be an integer 0..255", line=line, field="byte")
    return Write(**base, start=start, length=length, stride=stride, fill=fill, byte=byte)


def _parse_read(obj: Mapping[str, Any], line: int, base: B, ctx: ParseContext) -> Read:
    start, length = _range(obj, line, ctx)
    return Read(**base, start=start, length=length, stride=_stride(obj, line))


def _mremap_dest(obj: Mapping[str, Any], line: int, flags: tuple[str, ...], start: int, new_length: int,
                 placer: Placer) -> int | None:
    """The fixed destination ("to"), or for a MAYMOVE the slot reserved in case growing in place fails."""
    if "to" in obj:
        dest = parse_size(obj["to"], line=line, fld="to")
        if "fixed" not in flags:
            raise TraceError("'to' needs the 'fixed' flag", line=line, field="to")
        return dest
    if "fixed" in flags:
        raise TraceError("'fixed' needs 'to' (the destination arena offset)", line=line, field="to")
    if "maymove" in flags:
        return placer.place(max(new_length, PAGE), 2 * MiB, start % (2 * MiB))
    return None


def _rename(obj: Mapping[str, Any], line: int, ctx: ParseContext, start: int, length: int) -> None:
    """After a mremap the region's handle ("new_id", else "id") names where the mapping now is."""
    name = str(obj.get("new_id") or obj.get("id") or "")
    if name:
        if "new_id" in obj:
            check_name(obj, "new_id", line)
        ctx.handles[name] = (start, length)


def _parse_mremap(obj: Mapping[str, Any], line: int, base: B, ctx: ParseContext) -> Mremap:
    start, length = _range(obj, line, ctx)
    flags = _flags(obj, MREMAP_FLAGS, line)
    new_length = parse_size(obj["new_len"], line=line, fld="new_len")
    if ("fixed" in flags or "dontunmap" in flags) and "maymove" not in flags:
        raise TraceError("'fixed' and 'dontunmap' need 'maymove' as well (Linux returns EINVAL)", line=line,
                         field="flags")
    dest = _mremap_dest(obj, line, flags, start, new_length, ctx.placer)
    _inside_arena(start, new_length, line, "new_len")     # growing in place must stay inside too
    if dest is not None:
        _inside_arena(dest, new_length, line, "to")
    moved = dest is not None and ("fixed" in flags or "dontunmap" in flags)    # else: in place, if at all
    _rename(obj, line, ctx, dest if moved and dest is not None else start, new_length)
    if "dontunmap" in flags and new_length != length:
        raise TraceError("MREMAP_DONTUNMAP needs new_len == len (Linux returns EINVAL)", line=line, field="new_len")
    return Mremap(**base, start=start, length=length, new_length=new_length, flags=flags, dest=dest)


def _parse_uffd_move(obj: Mapping[str, Any], line: int, base: B, ctx: ParseContext) -> UffdMove:
    start, length = _range(obj, line, ctx)
    dest = _inside_arena(parse_size(obj["to"], line=line, fld="to"), length, line, "to")
    return UffdMove(**base, start=start, length=length, dest=dest)


def _parse_fork(obj: Mapping[str, Any], line: int, base: B, ctx: ParseContext) -> Fork:
    child = check_name(obj, "child", line)
    if child in ctx.procs:
        raise TraceError(f"process name {child!r} is already used", line=line, field="child")
    ctx.procs.add(child)
    return Fork(**base, child=child)


def _parse_exit(obj: Mapping[str, Any], line: int, base: B, ctx: ParseContext) -> Exit:
    # main's exit ends the trace: every process exits with it, and no op can follow
    proc = base["proc"]
    ctx.dead.update(ctx.procs if proc == "main" else {proc})
    return Exit(**base)


# ---- per-kind dump functions: the op -> its kind's trace fields (after "op" and "proc") -----------------------------
def _at_len(op: RangeOp) -> dict[str, Any]:
    return {"at": format_size(op.start), "len": format_size(op.length)}


def _no_fields(op: OpBase) -> dict[str, Any]:
    return {}


def _dump_mmap(op: Mmap) -> dict[str, Any]:
    d: dict[str, Any] = {"id": op.handle} if op.handle else {}
    d.update(_at_len(op))
    if op.prot != "rw":
        d["prot"] = op.prot
    if op.flags:
        d["flags"] = list(op.flags)
    return d


def _dump_mprotect(op: Mprotect) -> dict[str, Any]:
    return {**_at_len(op), "prot": op.prot}


def _dump_madvise(op: Madvise) -> dict[str, Any]:
    return {**_at_len(op), "advice": op.advice}


def _dump_with_flags(op: Mlock | Gup) -> dict[str, Any]:
    return {**_at_len(op), **({"flags": list(op.flags)} if op.flags else {})}


def _dump_read(op: Read) -> dict[str, Any]:
    d = _at_len(op)
    if op.stride != PAGE:
        d["stride"] = format_size(op.stride)
    return d


def _dump_write(op: Write) -> dict[str, Any]:
    d = _at_len(op)
    if op.stride != PAGE:
        d["stride"] = format_size(op.stride)
    if op.fill:
        d["fill"] = True
    d["byte"] = op.byte
    return d


def _dump_mremap(op: Mremap) -> dict[str, Any]:
    d = {**_at_len(op), "new_len": format_size(op.new_length)}
    if "fixed" in op.flags and op.dest is not None:
        d["to"] = format_size(op.dest)
    if op.flags:
        d["flags"] = list(op.flags)
    return d


def _dump_uffd_move(op: UffdMove) -> dict[str, Any]:
    return {**_at_len(op), "to": format_size(op.dest)}


def _dump_fork(op: Fork) -> dict[str, Any]:
    return {"child": op.child}


# ---- per-kind describe functions: the detail between the kind and the range -----------------------------------------
def _flag_list(flags: tuple[str, ...]) -> str:
    return " " + ",".join(flags) if flags else ""


def _no_detail(op: OpBase) -> str:
    return ""


def _describe_mmap(op: Mmap) -> str:
    return (f" {op.prot}" if op.prot != "rw" else "") + _flag_list(op.flags)


def _describe_mprotect(op: Mprotect) -> str:
    return f" {op.prot}"


def _describe_mremap(op: Mremap) -> str:
    moves = op.dest is not None and ("fixed" in op.flags or "maymove" in op.flags)
    return f" -> {format_size(op.new_length)}" + (f" @{format_size(op.dest)}" if moves and op.dest is not None else "")


def _describe_with_flags(op: Mlock | Gup) -> str:
    return _flag_list(op.flags)


def _describe_madvise(op: Madvise) -> str:
    return f" {op.advice.upper()}"


def _describe_write(op: Write) -> str:
    return " fill" if op.fill else (f" stride {format_size(op.stride)}" if op.stride != PAGE else "")


def _describe_fork(op: Fork) -> str:
    return f" -> {op.child}"


def describe(op: OpBase) -> str:
    """``PROC: KIND[ DETAIL][ [START, +LENGTH)]``, e.g. ``main: madvise HUGEPAGE [0, +2M)``."""
    detail = OP_DEFS[op.kind].describe(op)
    if isinstance(op, RangeOp):
        return f"{op.proc}: {op.kind}{detail} [{format_size(op.start)}, +{format_size(op.length)})"
    return f"{op.proc}: {op.kind}{detail}"


# ---- the definition table -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpDef(Generic[T]):
    """One op kind of the trace language. ``required``/``optional`` are its own trace fields (besides
    COMMON_FIELDS); "region" fields (id, off, at, len) address an existing range."""

    cls: type[T]
    required: tuple[str, ...]
    optional: tuple[str, ...]
    parse: Callable[[Mapping[str, Any], int, B, ParseContext], T]
    dump: Callable[[T], dict[str, Any]]
    describe: Callable[[T], str]
    model_only: bool = False     # the live kernel offers no unprivileged, side-effect-free trigger

    @property
    def kind(self) -> str:
        return self.cls.kind


_REGION = ("id", "off", "at", "len")
_DEFS: tuple[OpDef[Any], ...] = (
    OpDef(Mmap, ("len",), ("id", "at", "prot", "flags", "align", "misalign"), _parse_mmap, _dump_mmap,
          _describe_mmap),
    OpDef(Munmap, (), _REGION, _plain_range(Munmap), _at_len, _no_detail),
    OpDef(Mprotect, ("prot",), _REGION, _parse_mprotect, _dump_mprotect, _describe_mprotect),
    OpDef(Mremap, ("new_len",), (*_REGION, "flags", "to", "new_id"), _parse_mremap, _dump_mremap, _describe_mremap),
    OpDef(Mlock, (), (*_REGION, "flags"), _parse_mlock, _dump_with_flags, _describe_with_flags),
    OpDef(Munlock, (), _REGION, _plain_range(Munlock), _at_len, _no_detail),
    OpDef(Madvise, ("advice",), _REGION, _parse_madvise, _dump_madvise, _describe_madvise),
    OpDef(Write, (), (*_REGION, "stride", "fill", "byte"), _parse_write, _dump_write, _describe_write),
    OpDef(Read, (), (*_REGION, "stride"), _parse_read, _dump_read, _no_detail),
    OpDef(Fork, ("child",), (), _parse_fork, _dump_fork, _describe_fork),
    OpDef(Exit, (), (), _parse_exit, _no_fields, _no_detail),
    OpDef(Khugepaged, (), (), _bare(Khugepaged), _no_fields, _no_detail, model_only=True),
    OpDef(ShrinkDeferred, (), (), _bare(ShrinkDeferred), _no_fields, _no_detail, model_only=True),
    OpDef(Swapoff, (), (), _bare(Swapoff), _no_fields, _no_detail, model_only=True),
    OpDef(Reclaim, (), _REGION, _plain_range(Reclaim), _at_len, _no_detail, model_only=True),
    OpDef(Gup, (), (*_REGION, "flags"), _parse_gup, _dump_with_flags, _describe_with_flags, model_only=True),
    OpDef(UffdMove, ("to",), _REGION, _parse_uffd_move, _dump_uffd_move, _no_detail, model_only=True),
    OpDef(PagemapScanWp, (), _REGION, _plain_range(PagemapScanWp), _at_len, _no_detail, model_only=True),
    OpDef(UffdRegister, (), _REGION, _plain_range(UffdRegister), _at_len, _no_detail),
    OpDef(UffdWp, (), _REGION, _plain_range(UffdWp), _at_len, _no_detail),
    OpDef(UffdUnregister, (), _REGION, _plain_range(UffdUnregister), _at_len, _no_detail),
    OpDef(Migrate, (), _REGION, _plain_range(Migrate), _at_len, _no_detail, model_only=True),
    OpDef(Expect, (), (), _bare(Expect), _no_fields, _no_detail),
)
OP_DEFS: dict[str, OpDef[Any]] = {d.kind: d for d in _DEFS}

# op -> (required fields, optional fields)
OP_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {k: (d.required, d.optional) for k, d in OP_DEFS.items()}
# ops that need the region addressing
REGION_OPS = frozenset(k for k, d in OP_DEFS.items() if "len" in d.optional)
# ops that only the model can run
MODEL_ONLY_OPS = frozenset(k for k, d in OP_DEFS.items() if d.model_only)

__all__ = [
    "COMMON_FIELDS", "GUP_FLAGS", "INJECT_TIMES_ALL", "MADVICES", "MLOCK_FLAGS", "MMAP_FLAGS", "MODEL_ONLY_OPS",
    "MREMAP_FLAGS", "OP_DEFS", "OP_FIELDS", "PROTS", "REGION_OPS",
    "Access", "Exit", "Expect", "Fork", "Gup", "Inject", "Khugepaged", "Madvise", "Migrate", "Mlock", "Mmap",
    "Mprotect", "Mremap", "Munlock", "Munmap", "Op", "OpBase", "OpDef", "PagemapScanWp", "ParseContext", "Placer",
    "RangeOp", "Read", "Reclaim", "ShrinkDeferred", "Swapoff", "UffdMove", "UffdRegister", "UffdUnregister", "UffdWp",
    "Write",
    "check_name", "describe",
]
