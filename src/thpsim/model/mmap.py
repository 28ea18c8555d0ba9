"""mmap and munmap of anonymous private memory (mm/mmap.c do_mmap, mm/vma.c __mmap_region, do_vmi_munmap,
vms_gather_munmap_vmas / vms_complete_munmap_vmas; __split_vma is vma_modify.split_vma).

munmap splits the VMAs at unaligned ends first (``__split_vma`` → ``vma_adjust_trans_huge``; under the lazy
design this can fail with ENOMEM and nothing is unmapped — a first split that succeeded stays), then zaps
(``unmap_vmas``) and frees page tables with the floor/ceiling of the surviving neighbours (``free_pgtables``).
mmap with MAP_FIXED unmaps what it overlays the same way, then inserts the new VMA and merges it with
compatible neighbours (anonymous vm_pgoff = address >> PAGE_SHIFT). MAP_POPULATE / MAP_LOCKED populate.

Follows Linux 6.18 / 7.3.4 and series v3 02/21.
Left out: file mappings, get_unmapped_area (the trace places every mapping), VM_ACCOUNT/overcommit, mseal.
"""

from __future__ import annotations

from thpsim.model import gup, memory
from thpsim.model.errnos import EEXIST, EINVAL
from thpsim.model.kernel import MM, Kernel
from thpsim.model.vma import VM_LOCKED, VM_NORESERVE, Vma, prot_to_flags
from thpsim.model.vma_modify import split_range

__all__ = ["do_mmap", "do_munmap", "unmap_region"]


def do_munmap(k: Kernel, mm: MM, start: int, length: int) -> int:
    page = k.page
    if start % page or length == 0:
        return EINVAL
    length = (length + page - 1) // page * page
    end = start + length
    if not mm.vmas.overlapping(start, end):
        return 0
    rc = split_range(k, mm, start, end)
    if rc:
        return rc
    unmap_region(k, mm, start, end)
    return 0


def unmap_region(k: Kernel, mm: MM, start: int, end: int) -> None:
    """Detach the VMAs inside [start, end) (already split), zap them, free their page tables."""
    removed = mm.vmas.overlapping(start, end)
    if not removed:
        return
    prev = mm.vmas.prev_of(removed[0].start)
    nxt = mm.vmas.next_of(removed[-1].end)
    for v in removed:
        mm.vmas.remove(v)
        if v.flags & VM_LOCKED:
            mm.locked_vm -= (v.end - v.start) // k.page
    memory.unmap_vmas(k, mm, removed)
    memory.free_pgtables(k, mm, [(v.start, v.end) for v in removed], prev.end if prev else 0,
                         nxt.start if nxt else 0)


def do_mmap(k: Kernel, mm: MM, start: int, length: int, prot: int, flags: tuple[str, ...]) -> int:
    page = k.page
    if start % page or length == 0:
        return EINVAL
    length = (length + page - 1) // page * page
    end = start + length
    if "fixed_noreplace" in flags and mm.vmas.overlapping(start, end):
        return EEXIST
    rc = split_range(k, mm, start, end)
    if rc:
        return rc
    unmap_region(k, mm, start, end)
    vflags = prot_to_flags(prot)
    if "noreserve" in flags:
        vflags |= VM_NORESERVE
    if "locked" in flags:
        vflags |= VM_LOCKED
    v = Vma(start, end, vflags, start >> 12)
    mm.vmas.insert(v)
    if vflags & VM_LOCKED:
        mm.locked_vm += length // page
    mm.vmas.try_merge_around(start, end)
    if "populate" in flags or "locked" in flags:
        gup.mm_populate(k, mm, start, end)
    return start
