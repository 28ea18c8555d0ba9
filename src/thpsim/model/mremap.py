"""mremap (mm/mremap.c): shrink, grow in place, move (MAYMOVE / FIXED / DONTUNMAP), and
``move_page_tables`` with its PUD-, PMD- and PTE-level paths.

A move creates the new VMA (``copy_vma``, same vm_pgoff as the source), then moves page tables extent by extent:
a whole PMD table when both sides are 1 GiB aligned and the extent is 1 GiB (``move_normal_pud``); a huge PMD
when the extent is the whole 2 MiB (``move_huge_pmd``; the deposit follows only between PMD tables); a whole PTE
table when the extent is 2 MiB (``move_normal_pmd``); otherwise a split of a huge PMD (``split_huge_pmd``; under
the lazy design it may fail: the loop stops, the moved entries are moved back, the new VMA is unmapped and mremap
returns ENOMEM) and a PTE-by-PTE move into a new destination table (``pte_alloc``). The source range is then
unmapped with the normal munmap path unless MREMAP_DONTUNMAP.

The trace resolves a MAYMOVE without FIXED to a destination slot; it is used only when growing in place is
impossible (the live runner does the same), so both engines agree on where a moved mapping lands.
Follows Linux 6.18 / 7.3.4 and series v3 (the failed split in move_page_tables).
A moved VMA loses its userfaultfd registration and a moved huge PMD its uffd-wp bit (no
UFFD_FEATURE_EVENT_REMAP: ``mremap_userfaultfd_prep``, ``move_huge_pmd``).
Left out: MREMAP_DONTUNMAP's VM_ACCOUNT details, hugetlb, special mappings, UFFD_FEATURE_EVENT_REMAP, the uffd-wp
bit of moved PTEs (the model keeps PTE write protection as a cleared write bit).
"""

from __future__ import annotations

from thpsim.model import gup, huge_memory
from thpsim.model.errnos import EFAULT, EINVAL, ENOMEM
from thpsim.model.kernel import MM, Kernel
from thpsim.model.mmap import do_munmap, unmap_region
from thpsim.model.pgtable import HugePmd, PteTable, SwapPmd
from thpsim.model.vma import VM_LOCKED, VM_UFFD_WP, Vma
from thpsim.model.vma_modify import split_range

__all__ = ["do_mremap", "move_page_tables", "move_vma", "mremap_expand", "mremap_to"]


def do_mremap(k: Kernel, mm: MM, addr: int, old_len: int, new_len: int, flags: tuple[str, ...],
              dest: int | None) -> int:
    page = k.page
    if addr % page:
        return EINVAL
    old_len = (old_len + page - 1) // page * page
    new_len = (new_len + page - 1) // page * page
    if new_len == 0:
        return EINVAL
    maymove, fixed, dontunmap = "maymove" in flags, "fixed" in flags, "dontunmap" in flags
    if (fixed or dontunmap) and not maymove:
        return EINVAL
    if dontunmap and old_len != new_len:
        return EINVAL
    if fixed or dontunmap:
        assert dest is not None
        return mremap_to(k, mm, addr, old_len, dest, new_len, dontunmap=dontunmap)
    if old_len == new_len:
        return addr
    if new_len < old_len:
        rc = do_munmap(k, mm, addr + new_len, old_len - new_len)
        return rc if rc else addr
    return mremap_expand(k, mm, addr, old_len, new_len, dest if maymove else None)


def mremap_to(k: Kernel, mm: MM, addr: int, old_len: int, new: int, new_len: int, *, dontunmap: bool) -> int:
    """mremap_to(): MREMAP_FIXED (or DONTUNMAP, which the trace places like FIXED, as the live runner does):
    unmap the destination, shrink the source if asked, then move."""
    if new % k.page:
        return EINVAL
    if new < addr + old_len and addr < new + new_len:
        return EINVAL
    if mm.vmas.find(addr) is None:
        return EFAULT
    rc = do_munmap(k, mm, new, new_len)
    if rc:
        return rc
    if old_len > new_len:
        rc = do_munmap(k, mm, addr + new_len, old_len - new_len)
        if rc:
            return rc
        old_len = new_len
    vma = mm.vmas.find(addr)
    if vma is None or addr + old_len > vma.end:
        return EFAULT
    return move_vma(k, mm, vma, addr, old_len, new, new_len, dontunmap=dontunmap)


def mremap_expand(k: Kernel, mm: MM, addr: int, old_len: int, new_len: int, dest: int | None) -> int:
    """Growing: in place when the VMA ends there and nothing follows (vma_expandable), else a MAYMOVE move to
    ``dest`` (the trace's reserved slot, None without MAYMOVE)."""
    vma = mm.vmas.find(addr)
    if vma is None or addr + old_len > vma.end:
        return EFAULT
    if addr + old_len == vma.end and _expandable(mm, vma, addr + new_len):
        old_end = vma.end
        vma.end = addr + new_len
        mm.vmas.try_merge_around(vma.start, vma.end)
        if vma.flags & VM_LOCKED:
            mm.locked_vm += (new_len - old_len) // k.page
            gup.mm_populate(k, mm, old_end, addr + new_len)
        return addr
    if dest is None:
        return ENOMEM
    # the trace's reserved slot is used like MREMAP_MAYMOVE|MREMAP_FIXED (what the live runner does): anything
    # mapped there is unmapped first
    if dest < addr + old_len and addr < dest + new_len:
        return EINVAL
    rc = do_munmap(k, mm, dest, new_len)
    if rc:
        return rc
    vma = mm.vmas.find(addr)
    if vma is None:
        return EFAULT
    return move_vma(k, mm, vma, addr, old_len, dest, new_len, dontunmap=False)


def _expandable(mm: MM, vma: Vma, new_end: int) -> bool:
    nxt = mm.vmas.next_of(vma.end)
    return nxt is None or nxt.start >= new_end


def move_vma(k: Kernel, mm: MM, vma: Vma, old: int, old_len: int, new: int, new_len: int, *,
             dontunmap: bool) -> int:
    # the moved part becomes its own VMA first (the source split happens in the final munmap in the kernel;
    # the PMD split at an unaligned source edge happens in move_page_tables for the partial extent)
    # mremap_userfaultfd_prep() without UFFD_FEATURE_EVENT_REMAP: the moved VMA loses its registration
    nv = Vma(new, new + new_len, vma.flags & ~VM_UFFD_WP, vma.pgoff + ((old - vma.start) >> 12), vma.anon_vma,
             vma.anon_vma_singular, vma.avc)
    mm.vmas.insert(nv)
    if nv.flags & VM_LOCKED:
        mm.locked_vm += new_len // k.page   # the new VMA is accounted from its creation (and unaccounted by unmap)
    moved = move_page_tables(k, mm, nv, old, new, old_len)
    if moved < old_len:
        # move the entries back and unmap the new VMA (copy_vma_and_data's error path)
        move_page_tables(k, mm, vma, new, old, moved)
        unmap_region(k, mm, new, new + new_len)
        return ENOMEM
    mm.vmas.try_merge_around(nv.start, nv.end)
    if dontunmap:
        # the old VMA stays mapped, empty; VM_LOCKED is cleared on it
        rc = split_range(k, mm, old, old + old_len)
        if rc == 0:
            for v in mm.vmas.overlapping(old, old + old_len):
                if v.flags & VM_LOCKED:
                    mm.locked_vm -= (v.end - v.start) // k.page
                    v.flags &= ~VM_LOCKED
        return new
    if do_munmap(k, mm, old, old_len):
        # unmap_source_vma(): "OOM: unable to split vma, just get accounts right" — mremap still returns the
        # new address and the (now empty) source range stays mapped. Only the lazy design gets here: the source
        # VMA split calls split_huge_pmd_address on the PTE table left behind, which allocates (series row 5).
        k.log.notes.append(f"mremap: munmap of the source [{old:#x}, +{old_len:#x}) failed; the source stays "
                           "mapped (empty)")
    if new_len > old_len and nv.flags & VM_LOCKED:
        gup.mm_populate(k, mm, new + old_len, new + new_len)
    return new


def _extent(old: int, new: int, old_end: int, size: int) -> int:
    ext = ((old + size) & ~(size - 1)) - old
    ext = min(ext, old_end - old)
    return min(ext, ((new + size) & ~(size - 1)) - new)


def move_page_tables(k: Kernel, mm: MM, new_vma: Vma, old: int, new: int, length: int) -> int:
    """Returns the number of bytes moved (less than length on failure)."""
    pt = mm.pt
    pmd, pud = k.arch.pmd_size, k.arch.pud_size
    old_end = old + length
    o, n = old, new
    while o < old_end:
        ext = _extent(o, n, old_end, pud)
        if pt.pmd_table_of(o) is None:
            o, n = o + ext, n + ext
            continue
        if not k.pud_alloc(mm, n):
            break
        if ext == pud and pt.pmd_table_of(n) is None:
            _move_normal_pud(k, mm, o, n)
            o, n = o + ext, n + ext
            continue
        ext = _extent(o, n, old_end, pmd)
        if not _move_pmd_extent(k, mm, new_vma, o, n, ext):
            break
        o, n = o + ext, n + ext
    return o - old


def _move_normal_pud(k: Kernel, mm: MM, o: int, n: int) -> None:
    """move_normal_pud: the whole PMD table (with its deposits) changes place."""
    pt = mm.pt
    t = pt.pmd_tables.pop(o >> pt.pud_shift)
    pt.pmd_tables[n >> pt.pud_shift] = t
    base_o, base_n = o >> pt.pmd_shift, n >> pt.pmd_shift
    for i in range(k.arch.pud_size // k.arch.pmd_size):
        s = pt.slots.pop(base_o + i, None)
        if s is not None:
            pt.slots[base_n + i] = s


def _move_pmd_extent(k: Kernel, mm: MM, new_vma: Vma, o: int, n: int, ext: int) -> bool:
    """One PMD's extent of move_page_tables: a whole huge PMD (move_huge_pmd), a whole PTE table or PMD swap
    entry (move_normal_pmd), else a split (under lazy it may fail) and a PTE-by-PTE move. False when a table
    allocation or a split fails: the loop stops there."""
    pt = mm.pt
    pmd = k.arch.pmd_size
    s = pt.slot(o)
    if s is None:
        return True
    if not k.pmd_alloc(mm, n):
        return False
    if isinstance(s, SwapPmd) and ext != pmd:
        # a PMD swap entry only partly moved: split it (a table under lazy), then move PTEs
        old_vma = mm.vmas.find(o) or new_vma
        if huge_memory.__split_huge_pmd(k, mm, old_vma, o, caller="move_page_tables") != 0:
            return False
        s = pt.slot(o)
    if isinstance(s, HugePmd):
        if ext == pmd and huge_memory.move_huge_pmd(k, mm, o, n):
            src_vma = mm.vmas.find(o)
            if src_vma is not None and src_vma.flags & VM_UFFD_WP:
                moved = pt.slot(n)      # move_huge_pmd: vma_has_uffd_without_event_remap → clear_uffd_wp_pmd
                assert isinstance(moved, HugePmd)
                moved.uffd_wp = False
            return True
        old_vma = mm.vmas.find(o) or new_vma
        if huge_memory.__split_huge_pmd(k, mm, old_vma, o, caller="move_page_tables") != 0:
            return False
        s = pt.slot(o)
    elif ext == pmd and pt.slot(n) is None:
        # move_normal_pmd: the PTE table (or the PMD swap entry) itself moves
        pt.slots[n >> pt.pmd_shift] = pt.slots.pop(o >> pt.pmd_shift)
        return True
    if isinstance(s, PteTable):
        if not k.pte_alloc(mm, n):
            return False
        dst = pt.slot(n)
        assert isinstance(dst, PteTable)
        fi, ni = pt.pte_index(o), pt.pte_index(n)
        for j in range(ext >> pt.page_shift):
            e = s.ptes.pop(fi + j, None)
            if e is not None:
                dst.ptes[ni + j] = e
    return True
