"""get_user_pages / pin_user_pages (mm/gup.c): faulting in, FOLL_PIN, and FOLL_SPLIT_PMD in follow_pmd_mask;
population (``__mm_populate``) for mlock, MAP_POPULATE/MAP_LOCKED and mremap of locked VMAs.

A pin raises the folio's pin count until the pinning process exits (then it is dropped), which makes fork copy
the page (``folio_try_dup_anon_rmap`` fails) and collapse refuse it. With FOLL_SPLIT_PMD (uprobes) a huge PMD is
split first; under the lazy design that split can fail and GUP returns -ENOMEM, or the number of pages already
pinned (series 08/21).
Left out: GUP-fast, FOLL_LONGTERM migration out of movable zones, unsharing of R/O pins.
"""

from __future__ import annotations

from thpsim.model import huge_memory, memory, uaccess
from thpsim.model.errnos import EFAULT, ENOMEM
from thpsim.model.kernel import MM, VM_FAULT_OK, Kernel
from thpsim.model.pgtable import PTE_PAGE, HugePmd
from thpsim.model.rmap import folio_put
from thpsim.model.vma import VM_LOCKONFAULT, VM_READ, VM_WRITE

__all__ = ["fault_in_range", "get_user_pages", "mm_populate", "unpin_all"]


def mm_populate(k: Kernel, mm: MM, start: int, end: int) -> int:
    """__mm_populate(): fault in every VMA of [start, end) (populate_vma_page_range: write faults on writable
    private VMAs), skipping VM_LOCKONFAULT and inaccessible VMAs; 0 or -ENOMEM."""
    for v in mm.vmas.overlapping(start, end):
        if v.flags & VM_LOCKONFAULT or not v.flags & (VM_READ | VM_WRITE):
            continue
        rc = fault_in_range(k, mm, max(v.start, start), min(v.end, end), write=v.writable)
        if rc != VM_FAULT_OK:
            return ENOMEM
    return 0


def get_user_pages(k: Kernel, mm: MM, start: int, end: int, flags: tuple[str, ...]) -> int:
    write = "write" in flags
    pin = "pin" in flags or "longterm" in flags
    done = 0
    a = start
    while a < end:
        vma = mm.vmas.find(a)
        if vma is None:
            return done or EFAULT
        if fault_in_range(k, mm, a, a + k.page, write=write) != VM_FAULT_OK:
            return done or EFAULT
        if ("split_pmd" in flags and isinstance(mm.pt.slot(a), HugePmd)
                and huge_memory.__split_huge_pmd(k, mm, vma, a, caller="follow_pmd_mask") != 0):
            return done or ENOMEM
        if pin:
            s = mm.pt.slot(a)
            f = None
            if isinstance(s, HugePmd):
                f = s.folio
            else:
                pte = mm.pt.get_pte(a)
                if pte is not None and pte.kind == PTE_PAGE:
                    f = pte.folio
            if f is not None:
                f.pins += 1
                k.pins.setdefault(mm.name, []).append(f)
        done += 1
        a += k.page
    return done


def unpin_all(k: Kernel, mm: MM) -> None:
    for f in k.pins.pop(mm.name, []):
        f.pins -= 1
        folio_put(k, f)


def fault_in_range(k: Kernel, mm: MM, start: int, end: int, *, write: bool) -> int:
    """populate_vma_page_range / faultin_page_range: fault every page (0 or a VM_FAULT code).

    GUP does not retry a VM_FAULT_OOM: faultin_page() turns it into -ENOMEM at once (vm_fault_to_errno,
    mm/gup.c), unlike a user fault, which pagefault_out_of_memory() retries (issue 9 item 4: the model used to
    retry it max_retries times, inflating thp_split_pmd_failed ~1000x)."""
    page = k.page
    a = start
    while a < end:
        if uaccess.translate(k, mm, a, write) is None:
            rc = memory.handle_mm_fault(k, mm, a, write)
            if rc != VM_FAULT_OK:
                return rc
        # skip to the end of a huge mapping quickly
        if isinstance(mm.pt.slot(a), HugePmd):
            a = (a | (k.pmd_size - 1)) + 1
        else:
            a += page
    return VM_FAULT_OK
