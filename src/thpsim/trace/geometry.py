"""Traces on other page geometries: a version-1 trace is written for 4 KiB pages and 2 MiB PMDs (x86-64).

On a kernel (or arch profile) whose base page or PMD differs — arm64 with 16K pages: 16 KiB pages, 32 MiB
PMD THPs — a trace is mapped *page-for-page and PMD-for-PMD*, each offset anchored to the nearest of the start,
middle or end of its PMD (and each sub-page byte to the start or end of its page)::

    x86-64 offset q·2M + k·4K + b          mapped offset
    k <  128   (first quarter)             q·PMD + k·PAGE
    128 <= k < 384                         q·PMD + PMD/2 + (k - 256)·PAGE
    k >= 384   (last quarter)              q·PMD + PMD - (512 - k)·PAGE
    b < 2K  /  b >= 2K                     + b  /  + PAGE - (4K - b)

So a "4K" op stays one base page wherever it sits, "2M" stays one THP, [1M, 2M) stays the second half of a THP,
the last page before a PMD boundary stays the last page (a straddle stays a two-page straddle), an unaligned
address stays unaligned, and the mapping is monotonic and the identity on x86-64. Ranges are mapped by their two
ends, strides by value (a "4K" stride touches every page once).

The mapping needs at least 512 pages per PMD table (``ptrs_per_pte >= 512``), so that 511 pages still fit below
one PMD: x86-64, arm64 4K/16K/64K and riscv64 have it; s390x (256 entries) and ppc64 (256 and 32) do not, and
get one clear error. What the mapping cannot keep: byte counts (a "4K" range is 1/512 of an x86 THP but 1/2048
of a 16K-page one; a range across a quarter boundary grows), so the ``expect`` blocks of a mapped trace (x86-64 numbers) are dropped,
and the ``max_ptes_*`` knobs of a trace header are left as they are (counts, not sizes). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from thpsim.errors import ThpsimError
from thpsim.trace.format import ARENA_SIZE, PAGE, Op, Trace
from thpsim.trace.ops import Access, Mremap, RangeOp, UffdMove

TRACE_PAGE = PAGE               # the geometry version-1 traces are written in
TRACE_PMD = 512 * PAGE


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A base page size and a PMD size (both bytes)."""

    page_size: int
    pmd_size: int

    @property
    def is_trace_native(self) -> bool:
        return self.page_size == TRACE_PAGE and self.pmd_size == TRACE_PMD

    def describe(self) -> str:
        return f"{_size(self.page_size)} pages, {_size(self.pmd_size)} PMD"


TRACE_GEOMETRY = Geometry(TRACE_PAGE, TRACE_PMD)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10} KiB"


def check_geometry(g: Geometry) -> None:
    """Raise ThpsimError unless version-1 traces can be mapped onto ``g``."""
    if g.page_size < TRACE_PAGE or g.page_size % TRACE_PAGE or g.pmd_size % g.page_size:
        raise ThpsimError(f"cannot map 4 KiB-page traces onto {g.describe()}: the page must be a multiple of 4 KiB")
    if g.pmd_size // g.page_size < TRACE_PMD // TRACE_PAGE:
        raise ThpsimError(f"cannot map 2 MiB-PMD traces onto {g.describe()}: a PMD table of "
                          f"{g.pmd_size // g.page_size} entries holds fewer than the 512 pages a trace's PMD has "
                          "(write the trace for this geometry instead)")


_PAGES = TRACE_PMD // TRACE_PAGE


def map_offset(v: int, g: Geometry) -> int:
    """One offset (the table in the module header)."""
    q, r = divmod(v, TRACE_PMD)
    k, b = divmod(r, TRACE_PAGE)
    if k < _PAGES // 4:
        page = k * g.page_size
    elif k < 3 * _PAGES // 4:
        page = g.pmd_size // 2 + (k - _PAGES // 2) * g.page_size
    else:
        page = g.pmd_size - (_PAGES - k) * g.page_size
    byte = b if b < TRACE_PAGE // 2 else g.page_size - (TRACE_PAGE - b)
    return q * g.pmd_size + page + byte


def _range(start: int, length: int, g: Geometry) -> tuple[int, int]:
    s = map_offset(start, g)
    return s, map_offset(start + length, g) - s


def arena_size(g: Geometry) -> int:
    """The arena as the mapped traces see it: ARENA_SIZE's offsets mapped (8 TiB on 16K pages, so a trace's
    "511G" region is still inside)."""
    return map_offset(ARENA_SIZE, g)


def map_op(op: Op, g: Geometry) -> Op:
    """``op`` on geometry ``g``: its range by its ends, a mremap's new length from the same start, destinations
    and strides as offsets; expectations are dropped (they were written for 4K pages)."""
    if not isinstance(op, RangeOp):
        return dataclasses.replace(op, expect=())
    start, length = _range(op.start, op.length, g)
    kw: dict[str, Any] = {"start": start, "length": length, "expect": ()}
    if isinstance(op, Mremap):
        kw["new_length"] = map_offset(op.start + op.new_length, g) - start if op.new_length else 0
        kw["dest"] = None if op.dest is None else map_offset(op.dest, g)
    elif isinstance(op, UffdMove):
        kw["dest"] = map_offset(op.dest, g)
    elif isinstance(op, Access):
        kw["stride"] = map_offset(op.stride, g)
    return dataclasses.replace(op, **kw)


def map_trace(trace: Trace, g: Geometry) -> Trace:
    """``trace`` mapped onto ``g`` (itself when ``g`` is the trace geometry). Raises ThpsimError for a geometry
    with fewer than 512 pages per PMD."""
    if g.is_trace_native:
        return trace
    check_geometry(g)
    regions = tuple((name, *_range(s, n, g)) for name, s, n in trace.regions)
    return dataclasses.replace(trace, ops=tuple(map_op(op, g) for op in trace.ops), regions=regions)


__all__ = ["Geometry", "TRACE_GEOMETRY", "arena_size", "check_geometry", "map_offset", "map_op", "map_trace"]
