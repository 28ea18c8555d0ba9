"""UFFDIO_MOVE (mm/userfaultfd.c move_pages, move_pages_huge_pmd) and UFFDIO_WRITEPROTECT over a range.

move_pages moves [src, src+len) to dst page by page, a whole huge PMD at a time when both sides are PMD aligned
and the destination PMD is none (upstream withdraws and re-deposits the table; the lazy design has none).
A huge PMD that cannot move whole is split (``split_huge_pmd``); under the lazy design a failed split stops the
loop: the ioctl returns -EAGAIN with the bytes moved so far, or -ENOMEM if nothing moved (series 11/21).
PTE-mapped pages of large folios are split first (``split_folio``). The destination must be mapped and empty.
Left out: registration (every VMA counts as registered), the huge zero page source, EBUSY for pinned folios.
"""

from __future__ import annotations

from thpsim.model import huge_memory, mprotect, rmap
from thpsim.model.errnos import EAGAIN, EBUSY, EEXIST, EINVAL, ENOENT, ENOMEM
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_PAGE, HugePmd, Pte, PteTable

__all__ = ["move_pages", "writeprotect"]


def move_pages(k: Kernel, mm: MM, src: int, dst: int, length: int) -> tuple[int, int]:
    """Returns (result, moved): result is 0, or a negative errno; moved is the byte count done. An error after
    some bytes moved is -EAGAIN."""
    if src % k.page or dst % k.page or length % k.page:
        return EINVAL, 0
    if not mm.vmas.covered(src, src + length) or not mm.vmas.covered(dst, dst + length):
        return ENOENT, 0
    moved = 0
    while moved < length:
        s, d = src + moved, dst + moved
        if isinstance(mm.pt.slot(s), HugePmd):
            rc = _move_huge_pmd(k, mm, s, d, whole=length - moved >= k.pmd_size)
            if rc < 0:
                return (EAGAIN if moved else rc), moved
            if rc:
                moved += rc
                continue
        rc = _move_pte(k, mm, s, d)
        if rc:
            return (EAGAIN if moved else rc), moved
        moved += k.page
    return 0, moved


def _move_huge_pmd(k: Kernel, mm: MM, s: int, d: int, *, whole: bool) -> int:
    """move_pages_huge_pmd when both sides are PMD aligned, a whole PMD remains and the destination PMD is none
    (returns the bytes moved); otherwise split_huge_pmd (returns 0: go on with PTEs). -ENOMEM on failure."""
    pt = mm.pt
    p = k.pmd_size
    if s % p == 0 and d % p == 0 and whole and pt.slot(d) is None:
        if not k.pmd_alloc(mm, d):
            return ENOMEM
        hp = pt.slots[d >> pt.pmd_shift] = pt.slots.pop(s >> pt.pmd_shift)
        assert isinstance(hp, HugePmd)
        _move_anon_rmap(k, mm, hp, d)
        huge_memory.move_deposited_table(k, mm, s, d)   # move_pages_huge_pmd: always
        return p
    vma = mm.vmas.find(s)
    assert vma is not None
    if huge_memory.__split_huge_pmd(k, mm, vma, s, caller="move_pages") != 0:
        return ENOMEM
    return 0


def _move_pte(k: Kernel, mm: MM, s: int, d: int) -> int:
    """move_pages_pte for one page: a PTE-mapped large folio is split first (-EBUSY if it cannot be); the
    destination must be empty (-EEXIST). 0 or a negative errno."""
    pt = mm.pt
    pte = pt.get_pte(s)
    if pte is not None and pte.kind == PTE_PAGE and pte.folio is not None and pte.folio.large:
        if not huge_memory.split_folio(k, pte.folio, caller="move_pages"):
            return EBUSY
        pte = pt.get_pte(s)
    if pte is None:
        return 0
    if pt.get_pte(d) is not None:
        return EEXIST
    if not k.pmd_alloc(mm, d) or not k.pte_alloc(mm, d):
        return ENOMEM
    table = pt.slot(s)
    dt = pt.slot(d)
    assert isinstance(table, PteTable) and isinstance(dt, PteTable)
    moved = dt.ptes[pt.pte_index(d)] = table.ptes.pop(pt.pte_index(s))
    _move_anon_rmap(k, mm, moved, d)
    return 0


def _move_anon_rmap(k: Kernel, mm: MM, entry: HugePmd | Pte, d: int) -> None:
    """move_pages_pte/move_pages_huge_pmd: folio_move_anon_rmap(folio, dst_vma) and folio->index =
    linear_page_index(dst_vma, dst_addr) for a present page (the destination VMA gets an anon_vma first)."""
    f = entry.folio
    if f is None or (isinstance(entry, Pte) and entry.kind != PTE_PAGE):
        return
    dv = mm.vmas.find(d)
    assert dv is not None
    if dv.anon_vma is None:
        dv.anon_vma = k.new_anon_vma()
        dv.avc = (dv.anon_vma,)
    rmap.folio_move_anon_rmap(f, dv, index=dv.linear_page_index(d, mm.pt.page_shift))


def writeprotect(k: Kernel, mm: MM, start: int, end: int) -> int:
    return mprotect.uffd_writeprotect(k, mm, start, end)
