"""User loads and stores over a range (what the CPU and the fault handler do together; arch/*/mm/fault.c's
access checks and mm/memory.c's ``handle_mm_fault`` on a miss).

``access`` walks the touched pages: an access that would raise SIGSEGV anywhere (no VMA, no permission, a guard
marker: ``access_error``) is not performed at all; a page whose entry is not present or not writable faults
(``handle_mm_fault``); a user fault that stays VM_FAULT_OOM is retried by the kernel forever
(``pagefault_out_of_memory`` since 5.16), so it raises LivelockDetected after ``max_retries``. Contents are read
and written through the folios (page contents as a default plus per-page overrides), with a whole-PMD fast path.
``translate`` is the entry an access uses without faulting (GUP's faulting-in uses it too).

Left out: the TLB (an access sees the page tables at once), protection keys (the live runner checks them),
instruction fetches, access to file or shared memory.
"""

from __future__ import annotations

from thpsim.errors import LivelockDetected
from thpsim.model.folio import ZERO, Folio, content_byte, content_write
from thpsim.model.kernel import MM, VM_FAULT_OK, VM_FAULT_OOM, VM_FAULT_SIGSEGV, Kernel
from thpsim.model.memory import handle_mm_fault
from thpsim.model.pgtable import PTE_GUARD, PTE_PAGE, PTE_SWAP, PTE_ZERO, HugePmd, PteTable

__all__ = ["access", "translate"]


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


def translate(k: Kernel, mm: MM, addr: int, write: bool) -> tuple[Folio | None, int, object] | None:
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
        tr = translate(k, mm, pg, write)
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
            tr = translate(k, mm, pg, write)
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
