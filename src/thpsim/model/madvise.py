"""madvise (mm/madvise.c): VMA-flag advices, MADV_DONTNEED(_LOCKED) with PT_RECLAIM, MADV_FREE,
MADV_COLD/PAGEOUT, MADV_POPULATE_READ/WRITE, MADV_COLLAPSE (via khugepaged.py), guard regions.

Follows ``madvise_walk_vmas``: each VMA piece is visited in turn, a hole makes the call return ENOMEM at the end
(or at once if nothing follows). VMA-flag advices split VMAs at unaligned ends (PMD split in ``__split_vma``).
DONTNEED zaps with ``zap_details.reclaim_pt``; a partial PMD is split in ``zap_pmd_range`` — under the lazy
design that split may fail and the design's policy decides (v3: skip the PMD and return success). Partial
FREE/COLD/PAGEOUT split the *folio* (``split_folio``) unless it is shared.

Left out: file/shmem advices, MADV_WILLNEED swap readahead, MADV_HWPOISON, MADV_SOFT_OFFLINE, process_madvise.
"""

from __future__ import annotations

from collections.abc import Callable

from thpsim.errors import LivelockDetected
from thpsim.model import gup, huge_memory, khugepaged, memory, pagewalk, rmap, swapfile, vmscan
from thpsim.model.design import ZapSplitFailure
from thpsim.model.errnos import EFAULT, EINVAL, ENOMEM
from thpsim.model.folio import Folio
from thpsim.model.kernel import MM, VM_FAULT_OK, VM_FAULT_SIGSEGV, Kernel
from thpsim.model.pgtable import PTE_GUARD, PTE_PAGE, PTE_SWAP, HugePmd, Pte, PteTable, SwapPmd, pmd_ranges
from thpsim.model.vma import (
    VM_DONTCOPY,
    VM_HUGEPAGE,
    VM_LOCKED,
    VM_NOHUGEPAGE,
    VM_RAND_READ,
    VM_SEQ_READ,
    VM_WIPEONFORK,
    Vma,
)
from thpsim.model.vma_modify import vma_modify_flags

__all__ = ["GUARD_ADVICE", "MAX_MADVISE_GUARD_RETRIES", "do_madvise"]

_FLAG_ADVICE: dict[str, tuple[int, int]] = {   # advice -> (set, clear)
    "hugepage": (VM_HUGEPAGE, VM_NOHUGEPAGE),
    "nohugepage": (VM_NOHUGEPAGE, VM_HUGEPAGE),
    "dontfork": (VM_DONTCOPY, 0),
    "dofork": (0, VM_DONTCOPY),
    "wipeonfork": (VM_WIPEONFORK, 0),
    "keeponfork": (0, VM_WIPEONFORK),
    "random": (VM_RAND_READ, VM_SEQ_READ),
    "sequential": (VM_SEQ_READ, VM_RAND_READ),
    "normal": (0, VM_RAND_READ | VM_SEQ_READ),
}


def do_madvise(k: Kernel, mm: MM, start: int, length: int, advice: str) -> int:
    if advice in GUARD_ADVICE and not k.knobs.madv_guard:
        return EINVAL      # before 6.13 ("mm: madvise: implement lightweight guard page mechanism") unknown advice
    page = k.page
    if start % page:
        return EINVAL
    end = start + (length + page - 1) // page * page
    if end == start:
        return 0
    if advice == "collapse":
        return khugepaged.madvise_collapse(k, mm, start, end)
    visit = _VISITORS.get(advice)
    if visit is None:
        if advice in _FLAG_ADVICE:
            s, c = _FLAG_ADVICE[advice]
            return _walk(k, mm, start, end, lambda v, a, b: _flags(k, mm, v, a, b, s, c))
        return _walk(k, mm, start, end, lambda v, a, b: 0)  # willneed etc.: nothing for anonymous memory
    return _walk(k, mm, start, end, lambda v, a, b: visit(k, mm, v, a, b))


def _walk(k: Kernel, mm: MM, start: int, end: int, visit: Callable[[Vma, int, int], int]) -> int:
    """madvise_walk_vmas(): visit each VMA piece; ENOMEM for holes (after the mapped parts were visited)."""
    unmapped = 0
    pos = start
    while pos < end:
        nxt = mm.vmas.next_of(pos) if mm.vmas.find(pos) is None else mm.vmas.find(pos)
        if nxt is None:
            return ENOMEM
        if pos < nxt.start:
            unmapped = ENOMEM
            pos = nxt.start
            if pos >= end:
                break
        hi = min(nxt.end, end)
        rc = visit(nxt, pos, hi)
        if rc:
            return rc
        pos = hi
    return unmapped


def _flags(k: Kernel, mm: MM, v: Vma, start: int, end: int, set_f: int, clear_f: int) -> int:
    new = (v.flags | set_f) & ~clear_f
    if new == v.flags:
        return 0
    return vma_modify_flags(k, mm, v, start, end, new)


def _dontneed(k: Kernel, mm: MM, v: Vma, start: int, end: int, *, locked_ok: bool = False) -> int:
    if v.flags & VM_LOCKED and not locked_ok:
        return EINVAL
    if k.design.zap_split_failure is ZapSplitFailure.UPFRONT:
        # lazy-dontneed-upfront: split the huge PMDs the range ends cut before zapping anything
        for cut, inside in ((start, start), (end, end - 1)):
            if cut % k.pmd_size and isinstance(mm.pt.slot(inside), HugePmd) and \
                    huge_memory.__split_huge_pmd(k, mm, v, inside, caller="madvise_dontneed_single_vma") != 0:
                return ENOMEM
    return memory.zap_pmd_range(k, mm, v, start, end, reclaim_pt=True, keep_guard=True, caller="zap_pmd_range")


def _free(k: Kernel, mm: MM, v: Vma, start: int, end: int) -> int:
    if v.flags & VM_LOCKED:
        return EINVAL
    p = k.pmd_size
    pt = mm.pt
    for addr, nxt in pmd_ranges(start, end, p):
        s = pt.slot(addr)
        if isinstance(s, HugePmd) and huge_memory.madvise_free_huge_pmd(k, mm, v, addr & ~(p - 1), addr, nxt):
            continue
        if isinstance(s, SwapPmd):
            # a PMD swap entry: a whole PMD frees its slots in place, a partial one is split first (PMD swap v7)
            if nxt - addr == p:
                huge_memory.zap_swap_pmd(k, mm, addr)
                continue
            if huge_memory.__split_huge_pmd(k, mm, v, addr, caller="madvise_free_pte_range") != 0:
                continue
        s = pt.slot(addr)
        if isinstance(s, PteTable):
            _free_ptes(k, mm, s, addr, nxt)
    return 0


def _free_ptes(k: Kernel, mm: MM, table: PteTable, start: int, end: int) -> None:
    pt = mm.pt
    first = pt.pte_index(start)
    i = first
    last = first + ((end - start) >> pt.page_shift)
    while i < last:
        pte = table.ptes.get(i)
        if pte is None:
            i += 1
            continue
        if pte.kind == PTE_SWAP:
            del table.ptes[i]
            mm.swap_ents -= 1
            swapfile.free_swap_and_cache(k.swap, pte.folio)
            i += 1
            continue
        if pte.kind != PTE_PAGE or pte.folio is None:
            i += 1
            continue
        f = pte.folio
        if f.large:
            n, what = _large_folio_batch(k, table, i, last, f, caller="madvise_free_pte_range")
            if what == "split":
                continue  # re-examine the same index: now order-0 folios (or the zero page)
            if what == "skip":
                i += n
                continue
            for j in range(i, i + n):
                table.ptes[j].dirty = False
            f.dirty = False
            huge_memory.folio_mark_lazyfree(f)
            i += n
            continue
        if f.refcount() != 1:
            i += 1
            continue
        f.dirty = False
        pte.dirty = False
        huge_memory.folio_mark_lazyfree(f)
        i += 1


def _large_folio_batch(k: Kernel, table: PteTable, i: int, last: int, f: Folio, *, caller: str) -> tuple[int, str]:
    """A run of PTEs mapping the large folio f from index i (madvise_folio_pte_batch), and what to do with it:
    "whole" (the run covers the folio), "split" (it did not, and split_folio succeeded: re-examine), or "skip"
    (partial, and the folio is shared or could not be split)."""
    n = 0
    while i + n < last and (q := table.ptes.get(i + n)) is not None and q.folio is f:
        n += 1
    if n >= f.nr:
        return n, "whole"
    if rmap.folio_maybe_mapped_shared(k, f) or not huge_memory.split_folio(k, f, caller=caller):
        return n, "skip"
    return 0, "split"


def _cold_pageout(k: Kernel, mm: MM, v: Vma, start: int, end: int, *, pageout: bool) -> int:
    if v.flags & VM_LOCKED:
        return EINVAL
    p = k.pmd_size
    pt = mm.pt
    for addr, nxt in pmd_ranges(start, end, p):
        s = pt.slot(addr)
        if isinstance(s, HugePmd):
            f = s.folio
            if f is None or rmap.folio_maybe_mapped_shared(k, f):
                continue
            if nxt - addr == p:
                # a whole PMD: COLD deactivates, PAGEOUT reclaims; no split here
                if pageout:
                    vmscan.shrink_folio(k, f, memalloc=True, caller="madvise_pageout")
                continue
            if not huge_memory.split_folio(k, f, caller="madvise_cold_or_pageout_pte_range"):
                continue
        s = pt.slot(addr)
        if isinstance(s, PteTable):
            first = pt.pte_index(addr)
            i, last = first, first + ((nxt - addr) >> pt.page_shift)
            while i < last:
                pte = s.ptes.get(i)
                if pte is None or pte.kind != PTE_PAGE or pte.folio is None:
                    i += 1
                    continue
                f = pte.folio
                if f.large:
                    n, what = _large_folio_batch(k, s, i, last, f, caller="madvise_cold_or_pageout_pte_range")
                    if what == "split":
                        continue
                    if what == "skip":
                        i += n
                        continue
                    if pageout and not rmap.folio_maybe_mapped_shared(k, f):
                        vmscan.shrink_folio(k, f, memalloc=True, caller="madvise_pageout")
                    i += n
                    continue
                if pageout and f.refcount() == 1:
                    vmscan.shrink_folio(k, f, memalloc=True, caller="madvise_pageout")
                i += 1
    return 0


def _populate(k: Kernel, mm: MM, v: Vma, start: int, end: int, *, write: bool) -> int:
    if not v.readable or (write and not v.writable):
        return EINVAL   # measured on 6.18 for PROT_NONE; the write-to-read-only case is assumed the same
    rc = gup.fault_in_range(k, mm, start, end, write=write)
    if rc == VM_FAULT_SIGSEGV:
        return EFAULT
    if rc != VM_FAULT_OK:
        return ENOMEM
    return 0


MAX_MADVISE_GUARD_RETRIES = 3   # mm/madvise.c


def _guard_install_pmd_entry(walk: pagewalk.MmWalk, slot: HugePmd | PteTable, addr: int, end: int) -> int:
    return 1 if isinstance(slot, HugePmd) else 0     # huge: return > 0, the caller zaps


def _guard_install_pte_entry(walk: pagewalk.MmWalk, table: PteTable, i: int, addr: int) -> int:
    pte = table.ptes.get(i)
    return 0 if pte is None or pte.kind == PTE_GUARD else 1      # populated: return > 0, the caller zaps


def _guard_install_set_pte(walk: pagewalk.MmWalk, addr: int) -> Pte:
    return Pte(PTE_GUARD)                            # a guard marker in every none PTE


GUARD_INSTALL_WALK_OPS = pagewalk.MmWalkOps(pmd_entry=_guard_install_pmd_entry,
                                            pte_entry=_guard_install_pte_entry,
                                            install_pte=_guard_install_set_pte)


def _guard_install(k: Kernel, mm: MM, v: Vma, start: int, end: int) -> int:
    """madvise_guard_install() (7.3.4): walk, installing markers into none PTEs (allocating tables); where
    something is mapped the walk stops with 1 and the range is zapped (guard markers stay), then walked again, at
    most MAX_MADVISE_GUARD_RETRIES times, then restart_syscall() — which repeats the whole call. Under the lazy
    series a zap whose split cannot get its table leaves the PMD huge, so a persistent allocation failure
    restarts the syscall forever (reported as LIVELOCK after the model's bound); one failure is retried
    away (measured on lazy-v3-7.3 with fail_page_alloc: the call returns 0)."""
    if v.flags & VM_LOCKED:
        return EINVAL
    for _restart in range(k.max_retries):
        for _ in range(MAX_MADVISE_GUARD_RETRIES):
            err = pagewalk.walk_page_range_vma(k, mm, v, start, end, GUARD_INSTALL_WALK_OPS,
                                               caller="madvise_guard_install")
            if err <= 0:
                return err
            memory.zap_pmd_range(k, mm, v, start, end, caller="madvise_guard_install")
    raise LivelockDetected(f"madvise_guard_install at {start:#x} restarted the syscall {k.max_retries} times: "
                           f"the range still maps pages after {MAX_MADVISE_GUARD_RETRIES} zaps each "
                           "(restart_syscall() has no bound)")


def _guard_remove_pmd_entry(walk: pagewalk.MmWalk, slot: HugePmd | PteTable, addr: int, end: int) -> int:
    if isinstance(slot, HugePmd):
        walk.action = pagewalk.Action.CONTINUE      # huge: cannot hold guard markers
    return 0


def _guard_remove_pte_entry(walk: pagewalk.MmWalk, table: PteTable, i: int, addr: int) -> int:
    pte = table.ptes.get(i)
    if pte is not None and pte.kind == PTE_GUARD:
        del table.ptes[i]
    return 0


GUARD_REMOVE_WALK_OPS = pagewalk.MmWalkOps(pmd_entry=_guard_remove_pmd_entry, pte_entry=_guard_remove_pte_entry)


def _guard_remove(k: Kernel, mm: MM, v: Vma, start: int, end: int) -> int:
    """madvise_guard_remove(): clear the guard markers of the range (allowed on mlocked VMAs)."""
    return pagewalk.walk_page_range_vma(k, mm, v, start, end, GUARD_REMOVE_WALK_OPS, caller="madvise_guard_remove")


GUARD_ADVICE = frozenset({"guard_install", "guard_remove"})

_VISITORS: dict[str, Callable[[Kernel, MM, Vma, int, int], int]] = {
    "dontneed": _dontneed,
    "dontneed_locked": lambda k, mm, v, a, b: _dontneed(k, mm, v, a, b, locked_ok=True),
    "free": _free,
    "cold": lambda k, mm, v, a, b: _cold_pageout(k, mm, v, a, b, pageout=False),
    "pageout": lambda k, mm, v, a, b: _cold_pageout(k, mm, v, a, b, pageout=True),
    "populate_read": lambda k, mm, v, a, b: _populate(k, mm, v, a, b, write=False),
    "populate_write": lambda k, mm, v, a, b: _populate(k, mm, v, a, b, write=True),
    "guard_install": _guard_install,
    "guard_remove": _guard_remove,
}
