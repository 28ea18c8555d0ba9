"""Faults, zapping and page-table freeing (mm/memory.c).

Models ``handle_mm_fault`` / ``__handle_mm_fault`` (table allocation on the way down, the THP path, the PTE
path), ``do_anonymous_page`` (zero page on read, a 4K page on write), ``do_wp_page`` / ``wp_page_copy``
(reuse or 4K COW), ``zap_pmd_range`` / ``zap_pte_range`` (including CONFIG_PT_RECLAIM for MADV_DONTNEED and the
series' failure policy when a partial-PMD split fails), ``free_pgtables`` / ``free_pgd_range`` with the exact
floor/ceiling rounding, and user accesses (what a load or store does, fault included) over ranges.

Left out: mTHP orders (only PMD order and order 0), file faults, fault-around, NUMA hinting, swap readahead.
"""

from __future__ import annotations

from thpsim.errors import LivelockDetected
from thpsim.model import huge_memory, rmap
from thpsim.model.contpte import contpte_unfold_partial
from thpsim.model.design import ZapSplitFailure
from thpsim.model.folio import ZERO, Content, Folio, content_byte, content_write
from thpsim.model.kernel import MM, VM_FAULT_FALLBACK, VM_FAULT_OK, VM_FAULT_OOM, VM_FAULT_SIGSEGV, Kernel
from thpsim.model.pgtable import (
    PTE_GUARD,
    PTE_PAGE,
    PTE_SWAP,
    PTE_ZERO,
    HugePmd,
    Pte,
    PteTable,
)
from thpsim.model.vma import VM_LOCKED, Vma

__all__ = ["access", "do_anonymous_page", "do_swap_page", "do_wp_page", "fault_in_range", "free_pgd_range",
           "free_pgtables", "handle_mm_fault", "handle_pte_fault", "unmap_vmas", "zap_pmd_range",
           "zap_pte_range"]


# ---- faults ---------------------------------------------------------------------------------------------------
def handle_mm_fault(k: Kernel, mm: MM, addr: int, write: bool) -> int:
    vma = mm.vmas.find(addr)
    if vma is None:
        return VM_FAULT_SIGSEGV
    if (write and not vma.writable) or not vma.readable:
        return VM_FAULT_SIGSEGV
    pte = mm.pt.get_pte(addr)
    if pte is not None and pte.kind == PTE_GUARD:
        return VM_FAULT_SIGSEGV
    if not k.pmd_alloc(mm, addr):
        return VM_FAULT_OOM
    slot = mm.pt.slot(addr)
    if slot is None and huge_memory.thp_vma_allowable(k, vma):
        rc = huge_memory.do_huge_pmd_anonymous_page(k, mm, vma, addr, write)
        if rc != VM_FAULT_FALLBACK:
            return rc
    elif isinstance(slot, HugePmd):
        if write and not slot.write:
            rc = huge_memory.wp_huge_pmd(k, mm, vma, addr, slot)
            if rc != VM_FAULT_FALLBACK:
                return rc
        else:
            if write:
                slot.dirty = True
            return VM_FAULT_OK
    return handle_pte_fault(k, mm, vma, addr, write)


def handle_pte_fault(k: Kernel, mm: MM, vma: Vma, addr: int, write: bool) -> int:
    pte = mm.pt.get_pte(addr)
    if pte is None:
        return do_anonymous_page(k, mm, vma, addr, write)
    if pte.kind == PTE_SWAP:
        return do_swap_page(k, mm, vma, addr, pte)
    if write and (pte.kind == PTE_ZERO or not pte.write):
        return do_wp_page(k, mm, vma, addr, pte)
    if write:
        pte.dirty = True
    return VM_FAULT_OK


def do_anonymous_page(k: Kernel, mm: MM, vma: Vma, addr: int, write: bool) -> int:
    if not k.pte_alloc(mm, addr):
        return VM_FAULT_OOM
    if vma.anon_vma is None:
        vma.anon_vma = k.new_anon_vma()
    table = mm.pt.slot(addr)
    assert isinstance(table, PteTable)
    i = mm.pt.pte_index(addr)
    if not write:
        table.ptes[i] = Pte(PTE_ZERO)
        return VM_FAULT_OK
    f = k.folio_alloc("folio@fault", 0)
    if f is None:
        return VM_FAULT_OOM
    if vma.flags & VM_LOCKED:
        f.mlocked = True
    table.ptes[i] = Pte(PTE_PAGE, f, 0, write=vma.writable, dirty=True)
    rmap.folio_add_new_anon_rmap(k, mm, f, pmd=False)
    return VM_FAULT_OK


def do_swap_page(k: Kernel, mm: MM, vma: Vma, addr: int, pte: Pte) -> int:
    f = k.folio_alloc("folio@fault", 0)
    if f is None:
        return VM_FAULT_OOM
    old = pte.folio
    f.default = old.default if old is not None else ZERO
    pte.kind, pte.folio, pte.idx, pte.write, pte.dirty = PTE_PAGE, f, 0, vma.writable, False
    mm.swap_ents -= 1
    rmap.folio_add_new_anon_rmap(k, mm, f, pmd=False)
    return VM_FAULT_OK


def _can_reuse(k: Kernel, mm: MM, f: Folio) -> bool:
    if not f.large:
        return f.anon_exclusive or f.refcount() == 1
    # __wp_can_reuse_large_anon_folio: mapped only by this mm, no extra references
    return f.pins == 0 and all(m is mm for m in rmap.mms_mapping(k, f))


def do_wp_page(k: Kernel, mm: MM, vma: Vma, addr: int, pte: Pte) -> int:
    if pte.kind == PTE_PAGE:
        f = pte.folio
        assert f is not None
        if _can_reuse(k, mm, f):
            if not f.large:
                f.anon_exclusive = True
            pte.write = True
            pte.dirty = True
            return VM_FAULT_OK
        old: Content = f.content(pte.idx)
    else:
        f = None
        old = ZERO
    nf = k.folio_alloc("folio@cow", 0)
    if nf is None:
        return VM_FAULT_OOM
    nf.default = old
    if vma.flags & VM_LOCKED:
        nf.mlocked = True
    if f is not None:
        idx = pte.idx
        pte.kind, pte.folio, pte.idx = PTE_PAGE, nf, 0
        rmap.folio_add_new_anon_rmap(k, mm, nf, pmd=False)
        rmap.folio_remove_rmap_ptes(k, mm, f, [idx])
    else:
        pte.kind, pte.folio, pte.idx = PTE_PAGE, nf, 0
        rmap.folio_add_new_anon_rmap(k, mm, nf, pmd=False)
    pte.write = True
    pte.dirty = True
    return VM_FAULT_OK


# ---- user accesses --------------------------------------------------------------------------------------------
def _page_writes(start: int, end: int, stride: int, fill: bool, page: int) -> list[tuple[int, dict[int, int] | None,
                                                                                            bool]]:
    """For each page touched by the access: (page address, {offset: 1} positions or None, full-page fill?)."""
    out: list[tuple[int, dict[int, int] | None, bool]] = []
    if fill:
        p = start - start % page
        while p < end:
            lo, hi = max(p, start), min(p + page, end)
            if lo == p and hi == p + page:
                out.append((p, None, True))
            else:
                out.append((p, dict.fromkeys(range(lo - p, hi - p), 1), False))
            p += page
        return out
    if stride > 0 and (page % stride == 0 or stride % page == 0):
        # regular strides: every page that is touched in full has the same offsets, so one (read-only) dict
        # object is shared by all of them (cheap to build, and access() compares patterns by identity)
        shared = dict.fromkeys(range(start % stride, page, stride) if page % stride == 0 else (start % page,), 1)
        if page % stride == 0:
            r0 = start % stride
            first = start - start % page
            last = (end - 1) - (end - 1) % page          # the page holding the last byte of the range

            def edge(pg: int) -> tuple[int, dict[int, int] | None, bool] | None:
                lo, hi = max(start, pg + r0) - pg, min(pg + page, end) - pg
                offs = range(lo, hi, stride)
                if not offs:
                    return None
                return (pg, shared if lo == r0 and hi == page else dict.fromkeys(offs, 1), False)

            out.append(edge(first))  # type: ignore[arg-type]   # start itself is touched
            if last > first:
                out.extend([(pg, shared, False) for pg in range(first + page, last, page)])
                it = edge(last)
                if it is not None:
                    out.append(it)
        else:
            out.extend([(a - a % page, shared, False) for a in range(start, end, stride)])
        return out
    cur: dict[int, int] | None = None
    cur_page = -1
    a = start
    while a < end:
        pg = a - a % page
        if pg != cur_page:
            cur = {}
            cur_page = pg
            out.append((pg, cur, False))
        assert cur is not None
        cur[a - pg] = 1
        a += stride
    return out


def _translate(k: Kernel, mm: MM, addr: int, write: bool) -> tuple[Folio | None, int, object] | None:
    """Return (folio or None for a zero page, subpage index, entry) if the access can proceed without a fault."""
    slot = mm.pt.slot(addr)
    if isinstance(slot, HugePmd):
        if write and not slot.write:
            return None
        return (slot.folio, (addr >> mm.pt.page_shift) & (k.nr - 1), slot)
    if isinstance(slot, PteTable):
        pte = slot.ptes.get(mm.pt.pte_index(addr))
        if pte is None or pte.kind in (PTE_SWAP, PTE_GUARD):
            return None
        if write and (pte.kind == PTE_ZERO or not pte.write):
            return None
        return (pte.folio if pte.kind == PTE_PAGE else None, pte.idx, pte)
    return None


def access(k: Kernel, mm: MM, start: int, end: int, *, write: bool, stride: int, fill: bool,
           byte: int) -> tuple[str | int, bytes, list[tuple[int, dict[int, int] | None, bool]]]:
    """A user load/store loop over [start, end): 0 on success, or "SIGSEGV" (a fault that stays VM_FAULT_OOM
    raises LivelockDetected: the step's result is LIVELOCK).

    Returns (result, bytes read, the pages completed as (page address, offsets or None, full page)).
    """
    data = bytearray()
    page = k.page
    done: list[tuple[int, dict[int, int] | None, bool]] = []
    pages = _page_writes(start, end, stride, fill, page)
    # An access that would fault with SIGSEGV anywhere is not performed at all (the live runner checks
    # /proc/PID/maps and guard markers first and touches nothing; the trace language defines it so).
    if _range_access_error(k, mm, pages, write):
        return "SIGSEGV", b"", done
    nr = k.nr
    pmd_mask = k.pmd_size - 1
    last_pmd_page = k.pmd_size - page
    npages = len(pages)
    j = 0
    while j < npages:
        pg, offsets, full = pages[j]
        j += 1
        if not pg & pmd_mask and j - 1 + nr <= npages and pages[j - 2 + nr][0] == pg + last_pmd_page:
            if write and _whole_pmd_write(k, mm, pages, j - 1, byte):
                # the same write pattern on all pages of a writable huge PMD: one folio-level update
                done.extend(pages[j - 1:j - 1 + nr])
                j += nr - 1
                continue
            if not write and _whole_pmd_read(k, mm, pages, j - 1, data):
                done.extend(pages[j - 1:j - 1 + nr])
                j += nr - 1
                continue
        tr = _translate(k, mm, pg, write)
        retries = 0
        while tr is None:
            rc = handle_mm_fault(k, mm, pg, write)
            if rc == VM_FAULT_SIGSEGV:
                return "SIGSEGV", bytes(data), done
            if rc == VM_FAULT_OOM:
                # since 5.16 a user fault's VM_FAULT_OOM only calls pagefault_out_of_memory() and the fault is
                # retried (the OOM killer, not modelled, is what would end it): bounded here, a LIVELOCK
                retries += 1
                k.log.notes.append(f"VM_FAULT_OOM at {pg:#x}: fault retried")
                if retries > k.max_retries:
                    raise LivelockDetected(f"the user fault at {pg:#x} returned VM_FAULT_OOM {retries} times; the "
                                           "fault handler retries it forever (pagefault_out_of_memory)")
            tr = _translate(k, mm, pg, write)
        folio, idx, entry = tr
        if write:
            writes = None if full else {o: byte for o in offsets}  # type: ignore[union-attr]
            assert folio is not None
            folio.set_content(idx, content_write(folio.content(idx), writes, byte if full else None))
            entry.dirty = True  # type: ignore[attr-defined]
        else:
            c = folio.content(idx) if folio is not None else ZERO
            if full:
                data.extend(bytes([c[0]]) * page)
                for o, b in c[1]:
                    data[len(data) - page + o] = b
            else:
                for o in offsets:  # type: ignore[union-attr]
                    data.append(content_byte(c, o))
        done.append((pg, offsets, full))
    return 0, bytes(data), done


def _whole_pmd_write(k: Kernel, mm: MM, pages: list[tuple[int, dict[int, int] | None, bool]], i: int,
                     byte: int) -> bool:
    """Fast path of access(): pages[i:i+nr] cover one PMD with an identical pattern and the PMD is (or faults in
    as) a writable huge anonymous PMD. Writes the folio in one step; False (nothing done) otherwise."""
    pg, offsets, full = pages[i]
    slot = mm.pt.slot(pg)
    if slot is None or (isinstance(slot, HugePmd) and not slot.write):
        if handle_mm_fault(k, mm, pg, True) != VM_FAULT_OK:
            return False   # the per-page loop redoes the fault and handles the error
        slot = mm.pt.slot(pg)
    if not isinstance(slot, HugePmd) or not slot.write or slot.folio is None:
        return False
    if not _same_pattern(pages, i, k.nr):
        return False
    slot.folio.write_all(None if full else dict.fromkeys(offsets or {}, byte), byte if full else None)
    slot.dirty = True
    return True


def _same_pattern(pages: list[tuple[int, dict[int, int] | None, bool]], i: int, nr: int) -> bool:
    _pg, offsets, full = pages[i]
    for q in range(i + 1, i + nr):
        p = pages[q]
        if p[2] is not full or (p[1] is not offsets and p[1] != offsets):
            return False
    return True


def _whole_pmd_read(k: Kernel, mm: MM, pages: list[tuple[int, dict[int, int] | None, bool]], i: int,
                    data: bytearray) -> bool:
    """Fast path of access() for reads: pages[i:i+nr] cover one present huge PMD (THP whose subpages all hold
    the folio's default content, or the huge zero page) with an identical pattern. False (nothing done) otherwise."""
    slot = mm.pt.slot(pages[i][0])
    if not isinstance(slot, HugePmd):
        return False
    f = slot.folio
    if f is not None and f.pages:
        return False
    if not _same_pattern(pages, i, k.nr):
        return False
    c = f.default if f is not None else ZERO
    _pg, offsets, full = pages[i]
    if full:
        one = bytearray(bytes([c[0]]) * k.page)
        for o, b in c[1]:
            one[o] = b
    else:
        one = bytearray(content_byte(c, o) for o in offsets)  # type: ignore[union-attr]
    data.extend(bytes(one) * k.nr)
    return True


def _range_access_error(k: Kernel, mm: MM, pages: list[tuple[int, dict[int, int] | None, bool]],
                        write: bool) -> bool:
    """access_error() for every touched page, with the VMA looked up once per VMA instead of once per page."""
    page = k.page
    if pages and pages[-1][0] - pages[0][0] == (len(pages) - 1) * page:
        return _contiguous_access_error(k, mm, pages[0][0], pages[-1][0] + page, write)
    return _sparse_access_error(k, mm, pages, write)


def _contiguous_access_error(k: Kernel, mm: MM, lo: int, hi: int, write: bool) -> bool:
    """Every page of [lo, hi) is touched: check VMA coverage per VMA and guard markers per PTE table."""
    pt = mm.pt
    shift = pt.pmd_shift
    pos = lo
    for v in mm.vmas.overlapping(lo, hi):
        if v.start > pos or not v.readable or (write and not v.writable):
            return True
        pos = v.end
    if pos < hi:
        return True
    for idx in range(lo >> shift, ((hi - 1) >> shift) + 1):
        s = pt.slots.get(idx)
        if isinstance(s, PteTable) and s.ptes:
            base = idx << shift
            a, b = (max(lo, base) - base) >> pt.page_shift, (min(hi, base + k.pmd_size) - base) >> pt.page_shift
            if any(p.kind == PTE_GUARD and a <= i < b for i, p in s.ptes.items()):
                return True
    return False


def _sparse_access_error(k: Kernel, mm: MM, pages: list[tuple[int, dict[int, int] | None, bool]],
                         write: bool) -> bool:
    """Some pages are skipped (a stride over 4K): look the VMA up when leaving the last one, guards per table."""
    pt = mm.pt
    shift = pt.pmd_shift
    vstart = vend = -1
    cur_idx = -1
    guards: PteTable | None = None     # the current slot, if it is a PTE table holding guard markers
    for pg, _o, _f in pages:
        if not vstart <= pg < vend:
            vma = mm.vmas.find(pg)
            if vma is None or not vma.readable or (write and not vma.writable):
                return True
            vstart, vend = vma.start, vma.end
        idx = pg >> shift
        if idx != cur_idx:
            cur_idx = idx
            s = pt.slots.get(idx)
            guards = s if isinstance(s, PteTable) and any(p.kind == PTE_GUARD for p in s.ptes.values()) else None
        if guards is not None:
            pte = guards.ptes.get(pt.pte_index(pg))
            if pte is not None and pte.kind == PTE_GUARD:
                return True
    return False


def fault_in_range(k: Kernel, mm: MM, start: int, end: int, *, write: bool) -> int:
    """populate_vma_page_range / faultin_page_range: fault every page (0 or a VM_FAULT code).

    GUP does not retry a VM_FAULT_OOM: faultin_page() turns it into -ENOMEM at once (vm_fault_to_errno,
    mm/gup.c), unlike a user fault, which pagefault_out_of_memory() retries (issue 9 item 4: the model used to
    retry it max_retries times, inflating thp_split_pmd_failed ~1000x)."""
    page = k.page
    a = start
    while a < end:
        if _translate(k, mm, a, write) is None:
            rc = handle_mm_fault(k, mm, a, write)
            if rc != VM_FAULT_OK:
                return rc
        # skip to the end of a huge mapping quickly
        if isinstance(mm.pt.slot(a), HugePmd):
            a = (a | (k.pmd_size - 1)) + 1
        else:
            a += page
    return VM_FAULT_OK


# ---- zap ------------------------------------------------------------------------------------------------------
def zap_pmd_range(k: Kernel, mm: MM, vma: Vma, start: int, end: int, *, reclaim_pt: bool = False,
                  keep_guard: bool = False, caller: str = "zap_pmd_range") -> int:
    """Zap [start, end) inside one VMA. Returns 0, or -ENOMEM (only the lazy-zap-enomem variant)."""
    p = k.pmd_size
    addr = start
    while addr < end:
        nxt = min((addr | (p - 1)) + 1, end)
        slot = mm.pt.slot(addr)
        if isinstance(slot, HugePmd):
            if nxt - addr == p:
                huge_memory.zap_huge_pmd(k, mm, addr)
                addr = nxt
                continue
            if huge_memory.__split_huge_pmd(k, mm, vma, addr, caller=caller) != 0:
                policy = k.design.zap_split_failure
                if policy is ZapSplitFailure.ENOMEM:
                    return -12
                if policy is ZapSplitFailure.ZERO:
                    if not _zero_in_place(k, mm, slot, addr, nxt):
                        return -12
                else:
                    k.log.notes.append(f"zap_pmd_range: split failed, [{addr:#x}, {nxt:#x}) skipped, not zapped")
                addr = nxt
                continue
            slot = mm.pt.slot(addr)
        if isinstance(slot, PteTable):
            zap_pte_range(k, mm, slot, addr, nxt, reclaim_pt=reclaim_pt, keep_guard=keep_guard)
        addr = nxt
    return 0


def _zero_in_place(k: Kernel, mm: MM, hp: HugePmd, start: int, end: int) -> bool:
    """lazy-zap-zero variant: the PMD stays huge but the skipped range is zeroed (only if nobody else maps it)."""
    f = hp.folio
    if f is None:
        return True
    if f.refcount() != 1:
        return False
    first = (start >> mm.pt.page_shift) & (k.nr - 1)
    for i in range(first, first + ((end - start) >> mm.pt.page_shift)):
        f.set_content(i, ZERO)
    return True


def zap_pte_range(k: Kernel, mm: MM, table: PteTable, start: int, end: int, *, reclaim_pt: bool = False,
                  keep_guard: bool = False) -> None:
    pt = mm.pt
    first = pt.pte_index(start)
    n = (end - start) >> pt.page_shift
    ptes = table.ptes
    any_skipped = False
    batch_folio: Folio | None = None
    batch: list[int] = []

    def flush() -> None:
        if batch_folio is not None and batch:
            rmap.folio_remove_rmap_ptes(k, mm, batch_folio, list(batch))
        batch.clear()

    last_idx = -2
    cont = k.arch.cont_ptes if table.cont else 0    # arm64: a batch never crosses a fold-state change
    last_folded = False
    for i in range(first, first + n):
        pte = ptes.get(i)
        if pte is None:
            continue
        if pte.kind == PTE_GUARD and keep_guard:
            any_skipped = True
            continue
        del ptes[i]
        if pte.kind == PTE_PAGE:
            f = pte.folio
            folded = bool(cont) and (i // cont) in table.cont
            if f is not batch_folio or pte.idx != last_idx + 1 or folded != last_folded:
                flush()
                batch_folio = f
            batch.append(pte.idx)
            last_idx, last_folded = pte.idx, folded
        elif pte.kind == PTE_SWAP:
            mm.swap_ents -= 1
    flush()
    contpte_unfold_partial(table, first, first + n, cont)
    if (reclaim_pt and k.knobs.pt_reclaim and end - start >= k.pmd_size and not any_skipped and not ptes):
        k.free_pte_table(mm, start)


def unmap_vmas(k: Kernel, mm: MM, vmas: list[Vma]) -> None:
    for v in vmas:
        zap_pmd_range(k, mm, v, v.start, v.end, caller="unmap_vmas")


# ---- free_pgtables --------------------------------------------------------------------------------------------
def free_pgtables(k: Kernel, mm: MM, ranges: list[tuple[int, int]], floor: int, ceiling: int) -> None:
    """free_pgtables(): gather nearby removed VMAs (next within PMD_SIZE) into one free_pgd_range call.

    ``ceiling`` 0 means USER_PGTABLES_CEILING (the top), as in the kernel.
    """
    ranges = sorted(ranges)
    i = 0
    while i < len(ranges):
        addr, end = ranges[i]
        j = i
        while j + 1 < len(ranges) and ranges[j + 1][0] <= ranges[j][1] + k.pmd_size:
            j += 1
            end = ranges[j][1]
        nxt_start = ranges[j + 1][0] if j + 1 < len(ranges) else ceiling
        free_pgd_range(k, mm, addr, end, floor, nxt_start)
        i = j + 1


def free_pgd_range(k: Kernel, mm: MM, addr: int, end: int, floor: int, ceiling: int) -> None:
    pmd_size, _pud_size, p4d_size = k.arch.pmd_size, k.arch.pud_size, k.arch.p4d_size
    mask = (1 << 64) - 1
    addr &= ~(pmd_size - 1)
    if addr < floor:
        addr += pmd_size
        if not addr:
            return
    if ceiling:
        ceiling &= ~(pmd_size - 1)
        if not ceiling:
            return
    if ((end - 1) & mask) > ((ceiling - 1) & mask):
        end -= pmd_size
    if addr > ((end - 1) & mask):
        return
    a = addr
    while a != end:
        nxt = min((a | (p4d_size - 1)) + 1, end)
        if mm.pt.has_pud_table(a):
            _free_pud_range(k, mm, a, nxt, floor, ceiling)
        a = nxt


def _upper_free_ok(start: int, end: int, floor: int, ceiling: int, size: int) -> bool:
    mask = (1 << 64) - 1
    start &= ~(size - 1)
    if start < floor:
        return False
    if ceiling:
        ceiling &= ~(size - 1)
        if not ceiling:
            return False
    return not ((end - 1) & mask) > ((ceiling - 1) & mask)


def _free_pud_range(k: Kernel, mm: MM, addr: int, end: int, floor: int, ceiling: int) -> None:
    pud_size = k.arch.pud_size
    start = addr
    a = addr
    while a != end:
        nxt = min((a | (pud_size - 1)) + 1, end)
        if mm.pt.pmd_table_of(a) is not None:
            _free_pmd_range(k, mm, a, nxt, floor, ceiling)
        a = nxt
    if _upper_free_ok(start, end, floor, ceiling, k.arch.p4d_size):
        k.free_pud_table(mm, start)


def _free_pmd_range(k: Kernel, mm: MM, addr: int, end: int, floor: int, ceiling: int) -> None:
    pmd_size = k.arch.pmd_size
    start = addr
    a = addr
    while a != end:
        nxt = min((a | (pmd_size - 1)) + 1, end)
        s = mm.pt.slot(a)
        if isinstance(s, PteTable):
            if s.ptes:
                raise AssertionError(f"{mm.name}: free_pte_range on a table with {len(s.ptes)} live entries at {a:#x}")
            k.free_pte_table(mm, a)
        elif isinstance(s, HugePmd):
            raise AssertionError(f"{mm.name}: free_pgtables met a huge PMD at {a:#x}")
        a = nxt
    if _upper_free_ok(start, end, floor, ceiling, k.arch.pud_size):
        k.free_pmd_table(mm, start)
