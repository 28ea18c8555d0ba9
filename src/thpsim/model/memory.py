"""Faults, zapping and page-table freeing (mm/memory.c).

Models ``handle_mm_fault`` / ``__handle_mm_fault`` (table allocation on the way down, the THP path, the PTE
path), ``do_anonymous_page`` (zero page on read, a 4K page on write), ``do_wp_page`` / ``wp_page_copy``
(reuse or 4K COW), ``zap_pmd_range`` / ``zap_pte_range`` (including CONFIG_PT_RECLAIM for MADV_DONTNEED and the
series' failure policy when a partial-PMD split fails), ``free_pgtables`` / ``free_pgd_range`` with the exact
floor/ceiling rounding. User loads and stores are in :mod:`thpsim.model.uaccess`, GUP's faulting-in in
:mod:`thpsim.model.gup`.

Left out: mTHP orders (only PMD order and order 0), file faults, fault-around, NUMA hinting, swap readahead.
"""

from __future__ import annotations

from thpsim.model import huge_memory, rmap, swapfile
from thpsim.model.contpte import contpte_unfold_partial
from thpsim.model.design import ZapSplitFailure
from thpsim.model.folio import ZERO, Content, Folio
from thpsim.model.kernel import MM, VM_FAULT_FALLBACK, VM_FAULT_OK, VM_FAULT_OOM, VM_FAULT_SIGSEGV, Kernel
from thpsim.model.pgtable import (
    PTE_GUARD,
    PTE_PAGE,
    PTE_SWAP,
    PTE_ZERO,
    HugePmd,
    Pte,
    PteTable,
    SwapPmd,
)
from thpsim.model.vma import VM_LOCKED, Vma

__all__ = ["do_anonymous_page", "do_swap_page", "do_wp_page", "free_pgd_range", "free_pgtables",
           "handle_mm_fault", "handle_pte_fault", "unmap_vmas", "zap_pmd_range", "zap_pte_range"]


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
    elif isinstance(slot, SwapPmd):
        rc = huge_memory.do_huge_pmd_swap_page(k, mm, vma, addr, slot)
        if rc != VM_FAULT_FALLBACK:
            return rc      # (a write to a non-exclusive entry mapped read-only faults again: do_huge_pmd_wp_page)
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
        vma.avc = (vma.anon_vma,)
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
    rmap.folio_add_new_anon_rmap(k, mm, f, pmd=False, vma=vma, addr=addr)
    return VM_FAULT_OK


def do_swap_page(k: Kernel, mm: MM, vma: Vma, addr: int, pte: Pte) -> int:
    f = k.folio_alloc("folio@fault", 0)
    if f is None:
        return VM_FAULT_OOM
    old = pte.folio
    f.default = old.default if old is not None else ZERO
    pte.kind, pte.folio, pte.idx, pte.write, pte.dirty = PTE_PAGE, f, 0, vma.writable, False
    mm.swap_ents -= 1
    swapfile.free_swap_and_cache(k.swap, old)
    rmap.folio_add_new_anon_rmap(k, mm, f, pmd=False, vma=vma, addr=addr)
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
                rmap.folio_move_anon_rmap(f, vma)
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
        rmap.folio_add_new_anon_rmap(k, mm, nf, pmd=False, vma=vma, addr=addr)
        rmap.folio_remove_rmap_ptes(k, mm, f, [idx])
    else:
        pte.kind, pte.folio, pte.idx = PTE_PAGE, nf, 0
        rmap.folio_add_new_anon_rmap(k, mm, nf, pmd=False, vma=vma, addr=addr)
    pte.write = True
    pte.dirty = True
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
        if isinstance(slot, HugePmd | SwapPmd):
            if nxt - addr == p:
                if isinstance(slot, SwapPmd):
                    huge_memory.zap_swap_pmd(k, mm, addr)
                else:
                    huge_memory.zap_huge_pmd(k, mm, addr)
                addr = nxt
                continue
            if huge_memory.__split_huge_pmd(k, mm, vma, addr, caller=caller) != 0:
                policy = k.design.zap_split_failure
                if policy is ZapSplitFailure.ENOMEM:
                    return -12
                if policy is ZapSplitFailure.ZERO:
                    if isinstance(slot, SwapPmd) or not _zero_in_place(k, mm, slot, addr, nxt):
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
            swapfile.free_swap_and_cache(k.swap, pte.folio)
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
