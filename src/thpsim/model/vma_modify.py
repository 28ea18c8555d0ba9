"""Changing the flags of part of a VMA (mm/vma.c vma_modify_flags / vma_modify_flags_name): split at the range
ends (each ``__split_vma`` runs ``vma_adjust_trans_huge`` first, so under the lazy design the change fails with
ENOMEM before any VMA is modified), set the flags, and merge with compatible neighbours (``commit_merge``).

Used by mprotect, mlock/munlock and the VMA-flag madvise advices. The kernel may merge instead of splitting
(``vma_merge_existing_range`` with ``__adjust_middle_start``); the PMD splits it does are the same ones.
"""

from __future__ import annotations

from thpsim.model.kernel import MM, Kernel
from thpsim.model.vma import Vma


def vma_modify_flags(k: Kernel, mm: MM, vma: Vma, start: int, end: int, new_flags: int) -> int:
    from thpsim.model.mmap import split_vma

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
