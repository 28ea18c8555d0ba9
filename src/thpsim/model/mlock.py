"""mlock/munlock (mm/mlock.c apply_vma_lock_flags, mlock_fixup; population is gup.mm_populate).

mlock splits the VMAs at the range ends (``vma_modify_flags`` → ``__split_vma`` → ``vma_adjust_trans_huge``; a
PMD split at an unaligned end), sets VM_LOCKED, accounts ``locked_vm`` by VMA size (VmLck), and populates the
range with write faults on writable private VMAs (so THPs are allocated where eligible). MLOCK_ONFAULT skips the
population. Holes give ENOMEM after the VMAs before the hole were changed, like the kernel's loop.

Follows Linux 6.18 / 7.3.4 and series v3 02/21 (the PMD split in __split_vma can fail).
Left out: RLIMIT_MEMLOCK (root), the mlock LRU (folios are only marked mlocked), mlockall.
"""

from __future__ import annotations

from thpsim.model.errnos import EAGAIN, EFAULT, ENOMEM
from thpsim.model.gup import mm_populate
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_PAGE, HugePmd, PteTable
from thpsim.model.vma import VM_LOCKED, VM_LOCKONFAULT
from thpsim.model.vma_modify import vma_modify_flags

__all__ = ["apply_vma_lock_flags", "do_mlock", "do_munlock"]


def _page_range(k: Kernel, start: int, length: int) -> tuple[int, int]:
    end = start + length
    start -= start % k.page
    end = (end + k.page - 1) // k.page * k.page
    return start, end


def apply_vma_lock_flags(k: Kernel, mm: MM, start: int, end: int, set_flags: int, clear: bool) -> int:
    first = mm.vmas.find(start)
    if first is None:
        return ENOMEM
    pos = start
    for v in mm.vmas.overlapping(start, end):
        if v.start > pos:
            return ENOMEM
        lo, hi = max(v.start, start), min(v.end, end)
        old = v.flags
        new = (old & ~(VM_LOCKED | VM_LOCKONFAULT)) if clear else (old | set_flags)
        if new != old:
            rc = vma_modify_flags(k, mm, v, lo, hi, new)
            if rc:
                return rc
            pages = (hi - lo) // k.page
            if (old & VM_LOCKED) and not (new & VM_LOCKED):
                mm.locked_vm -= pages
            elif not (old & VM_LOCKED) and (new & VM_LOCKED):
                mm.locked_vm += pages
        pos = hi
    if pos < end:
        return ENOMEM
    return 0


def do_mlock(k: Kernel, mm: MM, start: int, length: int, flags: tuple[str, ...]) -> int:
    if length == 0:
        return 0
    s, e = _page_range(k, start, length)
    lf = VM_LOCKED | (VM_LOCKONFAULT if "onfault" in flags else 0)
    rc = apply_vma_lock_flags(k, mm, s, e, lf, clear=False)
    if rc:
        return rc
    _mark_mlocked(k, mm, s, e)
    if "onfault" not in flags:
        rc = _mlock_posix_error_return(mm_populate(k, mm, s, e))
    return rc


def _mlock_posix_error_return(rc: int) -> int:
    """__mlock_posix_error_return (mm/mlock.c): a populate that failed with -EFAULT is -ENOMEM, with -ENOMEM
    -EAGAIN (POSIX: "some or all of the memory could not be locked")."""
    return ENOMEM if rc == EFAULT else EAGAIN if rc == ENOMEM else rc


def do_munlock(k: Kernel, mm: MM, start: int, length: int) -> int:
    if length == 0:
        return 0
    s, e = _page_range(k, start, length)
    rc = apply_vma_lock_flags(k, mm, s, e, 0, clear=True)
    if rc == 0:
        _mark_mlocked(k, mm, s, e, value=False)
    return rc


def _mark_mlocked(k: Kernel, mm: MM, start: int, end: int, value: bool = True) -> None:
    pt = mm.pt
    for idx in range(start >> pt.pmd_shift, ((end - 1) >> pt.pmd_shift) + 1):
        s = pt.slots.get(idx)
        if isinstance(s, HugePmd) and s.folio is not None:
            s.folio.mlocked = value
        elif isinstance(s, PteTable):
            for pte in s.ptes.values():
                if pte.kind == PTE_PAGE and pte.folio is not None and not pte.folio.large:
                    pte.folio.mlocked = value
