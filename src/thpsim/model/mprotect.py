"""mprotect (mm/mprotect.c do_mprotect_pkey, mprotect_fixup, change_protection, change_pmd_range,
change_pte_range) and userfaultfd write-protect over a range (the change_pmd_range path without a VMA split).

mprotect changes the flags of whole VMAs after splitting them at the range ends (so its PMD splits happen in
``__split_vma``), then changes the protection of every entry: a huge PMD wholly in range is changed in place
(``change_huge_pmd``); a huge PMD only partly in range is split first — under the lazy design that split can
fail, and the series (v3 07/24) then ``cond_resched()``s and retries the same PMD without bound. The model bounds
the retry and reports a livelock; the ``lazy-mprotect-upfront`` variant splits the partial PMDs before changing
anything and fails with ENOMEM instead. Writable entries after a change need an exclusive anonymous page
(``can_change_pte_writable``).

Left out: pkeys, PROT_GROWSDOWN/UP, NUMA hinting (change_prot_numa), soft-dirty write-notify.
"""

from __future__ import annotations

from thpsim.errors import LivelockDetected
from thpsim.model import huge_memory, rmap
from thpsim.model.contpte import contpte_fold_after_change
from thpsim.model.design import ChangeProtSplitFailure
from thpsim.model.errnos import EINVAL, ENOMEM
from thpsim.model.folio import Folio
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_PAGE, HugePmd, PteTable, SwapPmd, pmd_ranges
from thpsim.model.vma import PROT_MASK, Vma, prot_to_flags
from thpsim.model.vma_modify import vma_modify_flags

__all__ = ["change_protection", "do_mprotect", "mprotect_fixup", "uffd_wp_range"]


def do_mprotect(k: Kernel, mm: MM, start: int, length: int, prot: int) -> int:
    page = k.page
    if start % page:
        return EINVAL
    if length == 0:
        return 0
    end = start + (length + page - 1) // page * page
    first = mm.vmas.find(start)
    if first is None:
        return ENOMEM
    pos = start
    newprot = prot_to_flags(prot)
    for v in mm.vmas.overlapping(start, end):
        if v.start > pos:
            return ENOMEM
        lo, hi = max(v.start, start), min(v.end, end)
        new = (v.flags & ~PROT_MASK) | newprot
        if new != v.flags:
            rc = mprotect_fixup(k, mm, v, lo, hi, new)
            if rc:
                return rc
        pos = hi
    if pos < end:
        return ENOMEM
    return 0


def mprotect_fixup(k: Kernel, mm: MM, vma: Vma, start: int, end: int, new_flags: int) -> int:
    rc = vma_modify_flags(k, mm, vma, start, end, new_flags)
    if rc:
        return rc
    target = mm.vmas.find(start)
    assert target is not None
    return change_protection(k, mm, target, start, end)


def change_protection(k: Kernel, mm: MM, vma: Vma, start: int, end: int, *, caller: str = "change_pmd_range",
                      uffd_wp: bool = False, uffd_wp_resolve: bool = False) -> int:
    """change_pmd_range over [start, end) with the VMA's (new) protection, or (``uffd_wp``) write-protecting
    every entry (MM_CP_UFFD_WP: a whole huge PMD keeps its mapping and gets the uffd-wp bit), or
    (``uffd_wp_resolve``, MM_CP_UFFD_WP_RESOLVE | MM_CP_TRY_CHANGE_WRITABLE) dropping the uffd-wp bits and
    making exclusive pages writable again. 0 or -ENOMEM (up-front variant)."""
    p = k.pmd_size
    pt = mm.pt
    if k.design.change_prot_split_failure is ChangeProtSplitFailure.UPFRONT:
        # split every partial huge PMD before changing anything (Kiryl's suggestion)
        for a in (start, end):
            if a % p:
                s = pt.slot(a if a == start else a - 1)
                if isinstance(s, HugePmd | SwapPmd) and \
                        huge_memory.__split_huge_pmd(k, mm, vma, a, caller=caller) != 0:
                    return ENOMEM
    writable = vma.writable
    for addr, nxt in pmd_ranges(start, end, p):
        s = pt.slot(addr)
        if isinstance(s, HugePmd | SwapPmd):
            if nxt - addr == p:
                _change_whole_pmd(k, mm, addr, s, writable, uffd_wp=uffd_wp, uffd_wp_resolve=uffd_wp_resolve)
                continue
            _split_retrying(k, mm, vma, addr, caller)
            s = pt.slot(addr)
        if isinstance(s, PteTable):
            _change_pte_range(k, mm, s, addr, nxt, writable and not uffd_wp)
    return 0


def _change_whole_pmd(k: Kernel, mm: MM, addr: int, s: HugePmd | SwapPmd, writable: bool, *, uffd_wp: bool,
                      uffd_wp_resolve: bool) -> None:
    """A PMD wholly in range keeps its mapping: change_huge_pmd, or change_non_present_huge_pmd for a PMD swap
    entry (only its uffd-wp bit can change)."""
    if isinstance(s, SwapPmd):
        if uffd_wp or uffd_wp_resolve:
            s.uffd_wp = uffd_wp
    elif uffd_wp:
        s.write, s.uffd_wp = False, True
    else:
        if uffd_wp_resolve:
            s.uffd_wp = False
        huge_memory.change_huge_pmd(k, mm, addr, s, writable)


def _split_retrying(k: Kernel, mm: MM, vma: Vma, addr: int, caller: str) -> None:
    """v3 07/24: a failed split of a partly covered PMD is cond_resched() and goto again — the same PMD, no
    bound and no fatal-signal check (the model stops at ``max_retries``: LIVELOCK)."""
    tries = 0
    while huge_memory.__split_huge_pmd(k, mm, vma, addr, caller=caller) != 0:
        tries += 1
        if tries >= k.max_retries:
            raise LivelockDetected(
                f"change_pmd_range retried the split of the PMD at {addr:#x} {tries} times without "
                "progress (series v3 07/24 has no bound and no fatal-signal check)")


def _change_pte_range(k: Kernel, mm: MM, table: PteTable, addr: int, nxt: int, writable: bool) -> None:
    """change_pte_range: a present page is writable only if the VMA writes and the page is exclusive."""
    pt = mm.pt
    first = pt.pte_index(addr)
    for i in range(first, first + ((nxt - addr) >> pt.page_shift)):
        pte = table.ptes.get(i)
        if pte is None or pte.kind != PTE_PAGE:
            continue
        f = pte.folio
        pte.write = writable and f is not None and (f.anon_exclusive if not f.large else _exclusive(k, mm, f))
    contpte_fold_after_change(table, first, first + ((nxt - addr) >> pt.page_shift), k.arch.cont_ptes)


def _exclusive(k: Kernel, mm: MM, f: Folio) -> bool:
    return f.anon_exclusive and all(m is mm for m in rmap.mms_mapping(k, f))


def uffd_wp_range(k: Kernel, mm: MM, vma: Vma, start: int, end: int, *, enable_wp: bool) -> int:
    """uffd_wp_range() (mm/userfaultfd.c): change_protection with MM_CP_UFFD_WP, or MM_CP_UFFD_WP_RESOLVE; no
    VMA split, so a huge PMD only partly in range is split by change_pmd_range (the v3 07/24 retry)."""
    return change_protection(k, mm, vma, start, end, caller="change_pmd_range", uffd_wp=enable_wp,
                             uffd_wp_resolve=not enable_wp)
