"""Folios, their mapcounts and contents (include/linux/mm.h, mm/rmap.c __folio_add/remove_rmap arithmetic).

Models the CONFIG_PAGE_MAPCOUNT bookkeeping exactly: per-subpage PTE mapcounts, the entire (PMD) mapcount,
``_nr_pages_mapped`` with ENTIRELY_MAPPED, pins, the anon-exclusive bit, dirty/swapbacked (lazyfree) flags, and
the ``partially_mapped`` deferred-split flag. Contents are kept per folio as a default page content plus
per-subpage overrides, so a 2 MiB folio written with one byte per page costs one small object, not 2 MiB.

Follows Linux 6.18 / 7.3.4 with CONFIG_PAGE_MAPCOUNT (the knob ``no_page_mapcount`` is recorded, not modelled).
Left out: page cache/file folios, mTHP orders between 0 and PMD order, KSM, the swap cache beyond the
``swapcache`` flag reclaim sets, folio refcounts other than mappings and pins.
"""

from __future__ import annotations

import zlib

__all__ = ["Content", "Folio", "ZERO", "content_byte", "content_is_zero", "content_write", "read_digest"]

# A page's content: (fill byte, ((offset, byte), ...)) — sorted overrides. ZERO is the all-zero page.
Content = tuple[int, tuple[tuple[int, int], ...]]
ZERO: Content = (0, ())


def content_write(c: Content, writes: dict[int, int] | None, fill: int | None) -> Content:
    if fill is not None:
        return (fill, ())
    if not writes:
        return c
    base, over = c
    d = dict(over)
    for off, b in writes.items():
        if b == base:
            d.pop(off, None)
        else:
            d[off] = b
    return (base, tuple(sorted(d.items())))


def content_byte(c: Content, off: int) -> int:
    base, over = c
    for o, b in over:
        if o == off:
            return b
    return base


def content_is_zero(c: Content) -> bool:
    return c[0] == 0 and not c[1]


def read_digest(bytes_read: bytes) -> str:
    return f"{zlib.crc32(bytes_read):08x}"


class Folio:
    """An anonymous folio of order 0 or PMD order."""

    __slots__ = ("id", "order", "nr", "pte_mapcount", "entire_mapcount", "nr_pages_mapped", "pins", "anon_exclusive",
                 "dirty", "swapbacked", "partially_mapped", "on_deferred", "default", "pages", "freed", "mlocked",
                 "swapcache", "mapping", "index")

    def __init__(self, fid: int, order: int, nr: int) -> None:
        self.id = fid
        self.order = order
        self.nr = nr
        # per-subpage PTE mapcounts of a large folio; None until it is first mapped by PTEs (a PMD-mapped THP
        # never needs the 512-entry list, which keeps 1 TiB of simulated THPs small)
        self.pte_mapcount: list[int] | None = None
        self.entire_mapcount = 0       # PMD mappings (large) or mapcount (order 0)
        self.nr_pages_mapped = 0       # subpages with pte_mapcount > 0 (large folios)
        self.pins = 0
        self.anon_exclusive = True
        self.dirty = False
        self.swapbacked = True
        self.partially_mapped = False
        self.swapcache = False       # added to the swap cache by reclaim (add_to_swap) before it unmaps
        self.on_deferred = False
        self.default: Content = ZERO
        self.pages: dict[int, Content] | None = None
        self.freed = False
        self.mlocked = False
        # folio->mapping (the anon_vma it was first mapped under) and folio->index (linear_page_index there):
        # which VMAs rmap_walk_anon visits (every VMA of that anon_vma's interval tree covering the index)
        self.mapping: int | None = None
        self.index = 0

    @property
    def large(self) -> bool:
        return self.nr > 1

    # ---- mapcounts -------------------------------------------------------------------------------------------
    def total_mapcount(self) -> int:
        pm = self.pte_mapcount
        if pm is None:
            return self.entire_mapcount
        return self.entire_mapcount + sum(pm)

    def page_mapcount(self, i: int) -> int:
        """folio_precise_page_mapcount: PTE mappings of subpage i plus the entire mapcount."""
        pm = self.pte_mapcount
        if pm is None:
            return self.entire_mapcount
        return pm[i] + self.entire_mapcount

    def refcount(self) -> int:
        return self.total_mapcount() + self.pins

    # ---- contents --------------------------------------------------------------------------------------------
    def content(self, i: int) -> Content:
        if self.pages is not None:
            c = self.pages.get(i)
            if c is not None:
                return c
        return self.default

    def copy_contents(self, src: Folio) -> None:
        """The same bytes as ``src`` (same size): a swap-out's stand-in, a swap-in's new folio."""
        self.default = src.default
        self.pages = dict(src.pages) if src.pages else None

    def set_content(self, i: int, c: Content) -> None:
        if self.pages is None:
            if c == self.default:
                return
            self.pages = {}
        if c == self.default:
            self.pages.pop(i, None)
        else:
            self.pages[i] = c

    def write_all(self, writes: dict[int, int] | None, fill: int | None) -> None:
        """A write of the same pattern to every subpage."""
        if self.pages:
            for i in range(self.nr):
                self.set_content(i, content_write(self.content(i), writes, fill))
        else:
            self.default = content_write(self.default, writes, fill)
            self.pages = None

    def subpage_is_zero(self, i: int) -> bool:
        return content_is_zero(self.content(i))
