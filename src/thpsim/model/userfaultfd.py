"""userfaultfd (mm/userfaultfd.c, 7.3.4; fs/userfaultfd.c before 7.1): registration in write-protect mode,
UFFDIO_WRITEPROTECT and UFFDIO_MOVE.

* ``userfaultfd_register`` (UFFDIO_REGISTER, UFFDIO_REGISTER_MODE_WP, on a context created with
  UFFD_FEATURE_WP_ASYNC): every VMA in the range gets VM_UFFD_WP through ``vma_modify_flags_uffd``, which splits
  VMAs at the range ends (``__split_vma`` → ``vma_adjust_trans_huge``: -ENOMEM under the lazy design). A range
  with no VMA is -EINVAL; holes between VMAs are skipped.
* ``mwriteprotect_range`` (UFFDIO_WRITEPROTECT): -ENOENT unless every VMA in range is registered for WP; then
  ``uffd_wp_range`` per VMA (change_protection with MM_CP_UFFD_WP, no VMA split: a huge PMD only partly in
  range is split by change_pmd_range, whose failed split v3 07/24 retries without bound).
* ``userfaultfd_unregister`` (UFFDIO_UNREGISTER): per registered VMA, ``userfaultfd_clear_vma`` first resolves
  the write protection of [start, end) with ``change_protection(MM_CP_UFFD_WP_RESOLVE)`` — *before* the VMA is
  split, so a partial huge PMD is split by change_pmd_range and, under lazy, enters the same 07/24 retry — and
  then drops VM_UFFD_WP (``vma_modify_flags_uffd``; its VMA split finds the PMD already split).
* ``move_pages`` (UFFDIO_MOVE) moves [src, src+len) to dst page by page, a whole huge PMD at a time when both
  sides are PMD aligned and the destination PMD is none (upstream withdraws and re-deposits the table; the lazy
  design has none). A huge PMD that cannot move whole is split (``split_huge_pmd``); under the lazy design a
  failed split stops the loop: the ioctl returns -EAGAIN with the bytes moved so far, or -ENOMEM if nothing
  moved (series 11/21). PTE-mapped pages of large folios are split first (``split_folio``). The destination
  must be mapped and empty.

One context per process, registered for WP only. Left out: MISSING/MINOR/RWP modes, UFFD_FEATURE_EVENT_FORK/
REMAP (a fork child and a moved VMA are unregistered), WP_UNPOPULATED's PTE markers on none entries (async mode
implies it: write-protecting an unpopulated range allocates PTE tables in the kernel, not in the model), the
markers a zap leaves in a registered VMA, fault delivery to a handler (async mode resolves every write), the
huge zero page as a UFFDIO_MOVE source, EBUSY for pinned folios, mmap_changing (-EAGAIN).
"""

from __future__ import annotations

from collections.abc import Callable

from thpsim.model import huge_memory, mprotect, rmap
from thpsim.model.errnos import EAGAIN, EBUSY, EEXIST, EINVAL, ENOENT, ENOMEM
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_PAGE, HugePmd, Pte, PteTable, SwapPmd
from thpsim.model.vma import VM_UFFD_WP, Vma
from thpsim.model.vma_modify import vma_modify_flags

__all__ = ["move_pages", "mwriteprotect_range", "userfaultfd_register", "userfaultfd_unregister"]


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
        if isinstance(mm.pt.slot(s), HugePmd | SwapPmd):
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
        if isinstance(hp, SwapPmd):
            return p                                       # a PMD swap entry moves whole, no split (PMD swap v1)
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


def _validate_range(k: Kernel, start: int, length: int) -> int:
    """validate_range(): page-aligned start and length, length > 0."""
    if start % k.page or length % k.page or length <= 0:
        return EINVAL
    return 0


def _vmas_in(mm: MM, start: int, end: int) -> list[Vma]:
    return list(mm.vmas.overlapping(start, end))


def _for_each_vma_range(k: Kernel, mm: MM, start: int, length: int,
                        visit: Callable[[Vma, int, int], int]) -> int:
    """The ioctl's range loop (userfaultfd_register_range, userfaultfd_unregister): validate the range (-EINVAL;
    no VMA at all is -EINVAL too), then visit each VMA piece in [start, end) — holes are skipped, and the VMAs
    may change under the loop (splits, merges). The first error stops it."""
    rc = _validate_range(k, start, length)
    if rc:
        return rc
    end = start + length
    if not _vmas_in(mm, start, end):
        return EINVAL
    pos = start
    while True:
        v = next(iter(mm.vmas.overlapping(pos, end)), None)
        if v is None:
            return 0
        lo, hi = max(v.start, pos), min(v.end, end)
        rc = visit(v, lo, hi)
        if rc:
            return rc
        pos = hi


def userfaultfd_register(k: Kernel, mm: MM, start: int, length: int) -> int:
    """UFFDIO_REGISTER (mode WP): 0, -EINVAL (bad range, no VMA) or the -ENOMEM of a VMA split (lazy)."""
    def register(v: Vma, lo: int, hi: int) -> int:
        return 0 if v.flags & VM_UFFD_WP else vma_modify_flags(k, mm, v, lo, hi, v.flags | VM_UFFD_WP)
    return _for_each_vma_range(k, mm, start, length, register)


def mwriteprotect_range(k: Kernel, mm: MM, start: int, length: int) -> int:
    """UFFDIO_WRITEPROTECT (mode WP): -EINVAL for a bad range, -ENOENT if a VMA in range is not registered for WP
    (the VMAs before it are already protected) or there is none; 0 or -ENOMEM (up-front variant)."""
    rc = _validate_range(k, start, length)
    if rc:
        return rc
    end = start + length
    vmas = _vmas_in(mm, start, end)
    if not vmas:
        return ENOENT
    for v in vmas:
        if not v.flags & VM_UFFD_WP:
            return ENOENT
        rc = mprotect.uffd_wp_range(k, mm, v, max(v.start, start), min(v.end, end), enable_wp=True)
        if rc:
            return rc
    return 0


def userfaultfd_unregister(k: Kernel, mm: MM, start: int, length: int) -> int:
    """UFFDIO_UNREGISTER: per registered VMA, resolve the protection of the range (a partial huge PMD is split
    here, before any VMA split: the v3 07/24 retry, LIVELOCK under persistent failure), then clear VM_UFFD_WP
    (a VMA split: -ENOMEM under lazy). Unregistered VMAs are skipped; no VMA at all is -EINVAL."""
    def unregister(v: Vma, lo: int, hi: int) -> int:
        if not v.flags & VM_UFFD_WP:
            return 0
        # userfaultfd_clear_vma: change_protection's result is not looked at
        mprotect.uffd_wp_range(k, mm, v, lo, hi, enable_wp=False)
        return vma_modify_flags(k, mm, v, lo, hi, v.flags & ~VM_UFFD_WP)
    return _for_each_vma_range(k, mm, start, length, unregister)
