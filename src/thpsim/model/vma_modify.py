"""Splitting VMAs (mm/vma.c __split_vma) and changing the flags of part of a VMA (vma_modify_flags /
vma_modify_flags_name): split at the range
ends (each ``__split_vma`` runs ``vma_adjust_trans_huge`` first, so under the lazy design the change fails with
ENOMEM before any VMA is modified), set the flags, and merge with compatible neighbours (``commit_merge``).

Used by mprotect, mlock/munlock and the VMA-flag madvise advices. The kernel may merge instead of splitting
(``vma_merge_existing_range`` with ``__adjust_middle_start``); the PMD splits it does are the same ones.
Follows Linux 6.18 / 7.3.4 and series v3 02/21 (vma_adjust_trans_huge moved before the VMA change, with an
error return). Left out: mseal, VMA names (vma_modify_name), uffd contexts, and the exact merge path
(vma_merge_existing_range's cases are collapsed into split + commit_merge; the VMAs that result are the same).
"""

from __future__ import annotations

from thpsim.model import huge_memory
from thpsim.model.kernel import MM, Kernel
from thpsim.model.vma import Vma

__all__ = ["split_range", "split_vma", "vma_modify_flags"]


def split_vma(k: Kernel, mm: MM, vma: Vma, addr: int) -> tuple[int, Vma | None]:
    """__split_vma(): the PMD split first (may fail under lazy), then the VMA split. Returns (err, upper)."""
    rc = huge_memory.vma_adjust_trans_huge(k, mm, vma, vma.start, addr, None, caller="__split_vma")
    if rc:
        return rc, None
    _lower, upper = mm.vmas.split_at(vma, addr)
    return 0, upper


def split_range(k: Kernel, mm: MM, start: int, end: int) -> int:
    """Make VMA boundaries at start and end (the two __split_vma calls of a range operation)."""
    v = mm.vmas.find(start)
    if v is not None and v.start < start:
        rc, _ = split_vma(k, mm, v, start)
        if rc:
            return rc
    v = mm.vmas.find(end - 1) if end > start else None
    if v is not None and v.end > end:
        rc, _ = split_vma(k, mm, v, end)
        if rc:
            return rc
    return 0


def vma_modify_flags(k: Kernel, mm: MM, vma: Vma, start: int, end: int, new_flags: int) -> int:
    target = vma
    if target.start < start:
        rc, upper = split_vma(k, mm, target, start)
        if rc:
            return rc
        assert upper is not None
        target = upper
    if target.end > end:
        rc, _ = split_vma(k, mm, target, end)
        if rc:
            return rc
    target.flags = new_flags
    mm.vmas.try_merge_around(target.start, target.end)
    return 0
