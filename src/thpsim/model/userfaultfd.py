"""UFFDIO_MOVE (mm/userfaultfd.c move_pages, move_pages_huge_pmd) and UFFDIO_WRITEPROTECT over a range.

move_pages moves [src, src+len) to dst page by page, a whole huge PMD at a time when both sides are PMD aligned
and the destination PMD is none (upstream withdraws and re-deposits the table; the lazy design has none).
A huge PMD that cannot move whole is split (``split_huge_pmd``); under the lazy design a failed split stops the
loop: the ioctl returns -EAGAIN with the bytes moved so far, or -ENOMEM if nothing moved (series 11/21).
PTE-mapped pages of large folios are split first (``split_folio``). The destination must be mapped and empty.
Left out: registration (every VMA counts as registered), the huge zero page source, EBUSY for pinned folios.
"""

from __future__ import annotations

from thpsim.model import huge_memory, mprotect
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_PAGE, HugePmd, PteTable

ENOMEM, EAGAIN, EINVAL, EEXIST, ENOENT = -12, -11, -22, -17, -2


def move_pages(k: Kernel, mm: MM, src: int, dst: int, length: int) -> tuple[int, int]:
    """Returns (result, moved): result is 0, or a negative errno; moved is the byte count done."""
    pt = mm.pt
    p = k.pmd_size
    if src % k.page or dst % k.page or length % k.page:
        return EINVAL, 0
    if not mm.vmas.covered(src, src + length) or not mm.vmas.covered(dst, dst + length):
        return ENOENT, 0
    moved = 0
    while moved < length:
        s, d = src + moved, dst + moved
        slot = pt.slot(s)
        if isinstance(slot, HugePmd):
            if s % p == 0 and d % p == 0 and length - moved >= p and pt.slot(d) is None:
                if not k.pmd_alloc(mm, d):
                    return (EAGAIN if moved else ENOMEM), moved
                pt.slots[d >> pt.pmd_shift] = pt.slots.pop(s >> pt.pmd_shift)
                huge_memory.move_deposited_table(k, mm, s, d)   # move_pages_huge_pmd: always
                moved += p
                continue
            vma = mm.vmas.find(s)
            assert vma is not None
            if huge_memory.__split_huge_pmd(k, mm, vma, s, caller="move_pages") != 0:
                return (EAGAIN if moved else ENOMEM), moved
            slot = pt.slot(s)
        pte = pt.get_pte(s)
        if pte is not None and pte.kind == PTE_PAGE and pte.folio is not None and pte.folio.large:
            if not huge_memory.split_folio(k, pte.folio, caller="move_pages"):
                return (EAGAIN if moved else -16), moved
            pte = pt.get_pte(s)
        if pte is not None:
            if pt.get_pte(d) is not None:
                return (EAGAIN if moved else EEXIST), moved
            if not k.pmd_alloc(mm, d) or not k.pte_alloc(mm, d):
                return (EAGAIN if moved else ENOMEM), moved
            table = pt.slot(s)
            dt = pt.slot(d)
            assert isinstance(table, PteTable) and isinstance(dt, PteTable)
            dt.ptes[pt.pte_index(d)] = table.ptes.pop(pt.pte_index(s))
        moved += k.page
    return 0, moved


def writeprotect(k: Kernel, mm: MM, start: int, end: int) -> int:
    return mprotect.uffd_writeprotect(k, mm, start, end)
