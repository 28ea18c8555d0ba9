"""fork (kernel/fork.c dup_mmap, mm/memory.c copy_page_range / copy_pmd_range / copy_pte_range, and
huge_memory.c copy_huge_pmd).

The child gets a copy of every VMA except VM_DONTCOPY ones; VM_WIPEONFORK VMAs are copied empty; VM_LOCKED is
cleared in the child, and so is a userfaultfd registration (``dup_userfaultfd`` without
UFFD_FEATURE_EVENT_FORK; the child's huge PMDs and PTEs carry no uffd-wp bit). Page tables are copied only for VMAs with an anon_vma (``vma_needs_copy``): the child
allocates its own PUD/PMD/PTE tables; a huge PMD is shared through ``copy_huge_pmd`` (upstream: the child
deposits a fresh table, ``pte_alloc_one@fork``; a failure makes fork fail with ENOMEM) and both PMDs are
write-protected; PTEs are shared write-protected (COW). A possibly-pinned exclusive page is copied instead.
On failure the partly built child is torn down; what was done to the parent (write protection) stays.

Follows Linux 6.18 / 7.3.4.
Left out: UFFD_FEATURE_EVENT_FORK, KSM, device-private entries, PMD migration entries.
"""

from __future__ import annotations

from thpsim.model import rmap, swapfile
from thpsim.model.errnos import ENOMEM
from thpsim.model.exit import exit_mmap
from thpsim.model.huge_memory import copy_huge_non_present_pmd, copy_huge_pmd
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_GUARD, PTE_PAGE, PTE_SWAP, PTE_ZERO, HugePmd, Pte, PteTable, SwapPmd
from thpsim.model.vma import VM_DONTCOPY, VM_LOCKED, VM_LOCKONFAULT, VM_UFFD_WP, VM_WIPEONFORK, Vma

__all__ = ["copy_page_range", "copy_pte_range", "do_fork", "dup_mmap"]


def do_fork(k: Kernel, parent: MM, child_name: str) -> int:
    child = k.new_mm(child_name)
    rc = dup_mmap(k, parent, child)
    if rc:
        exit_mmap(k, child)
        del k.procs[child_name]
    return rc


def dup_mmap(k: Kernel, src: MM, dst: MM) -> int:
    for v in src.vmas:
        if v.flags & VM_DONTCOPY:
            continue
        # dup_userfaultfd() without UFFD_FEATURE_EVENT_FORK: the child's VMA is not registered
        nv = Vma(v.start, v.end, v.flags & ~(VM_LOCKED | VM_LOCKONFAULT | VM_UFFD_WP), v.pgoff)
        if v.flags & VM_WIPEONFORK:
            dst.vmas.insert(nv)
            continue
        if v.anon_vma is not None:
            nv.anon_vma = k.new_anon_vma()
            nv.anon_vma_singular = False   # anon_vma_fork: the child's chain holds the parent's and its own
            nv.avc = (*v.avc, nv.anon_vma)
        dst.vmas.insert(nv)
        if v.anon_vma is not None:
            rc = copy_page_range(k, dst, src, v)
            if rc:
                return rc
    return 0


def copy_page_range(k: Kernel, dst: MM, src: MM, vma: Vma) -> int:
    spt = src.pt
    p = k.pmd_size
    addr = vma.start
    while addr < vma.end:
        nxt = min((addr | (p - 1)) + 1, vma.end)
        s = spt.slot(addr)
        if s is None:
            addr = nxt
            continue
        if not k.pmd_alloc(dst, addr):
            return ENOMEM
        if isinstance(s, SwapPmd):
            copy_huge_non_present_pmd(k, dst, src, addr & ~(p - 1), s)
            addr = nxt
            continue
        if isinstance(s, HugePmd):
            rc = copy_huge_pmd(k, dst, src, vma, addr & ~(p - 1), s)
            if rc == ENOMEM:
                return ENOMEM
            if rc == 0:
                addr = nxt
                continue
            s = spt.slot(addr)   # -EAGAIN: the parent was split, copy PTEs
        if isinstance(s, PteTable):
            rc = copy_pte_range(k, dst, src, vma, s, addr, nxt)
            if rc:
                return rc
        addr = nxt
    return 0


def copy_pte_range(k: Kernel, dst: MM, src: MM, vma: Vma, table: PteTable, start: int, end: int) -> int:
    pt = src.pt
    first = pt.pte_index(start)
    entries = [(i, table.ptes[i]) for i in range(first, first + ((end - start) >> pt.page_shift))
               if i in table.ptes]
    if not entries:
        return 0
    if not k.pte_alloc(dst, start):
        return ENOMEM
    dtable = dst.pt.slot(start)
    assert isinstance(dtable, PteTable)
    for i, pte in entries:
        if pte.kind == PTE_ZERO or pte.kind == PTE_GUARD:
            dtable.ptes[i] = Pte(pte.kind)
        elif pte.kind == PTE_SWAP:
            dtable.ptes[i] = Pte(PTE_SWAP, pte.folio)
            dst.swap_ents += 1
            swapfile.swap_duplicate(k.swap, pte.folio)
        elif pte.kind == PTE_PAGE:
            f = pte.folio
            assert f is not None
            if f.pins and f.anon_exclusive:
                # copy_present_page: a possibly pinned page is copied for the child
                nf = k.folio_alloc("folio@cow", 0)
                if nf is None:
                    return ENOMEM
                nf.default = f.content(pte.idx)
                dtable.ptes[i] = Pte(PTE_PAGE, nf, 0, write=pte.write, dirty=True)
                rmap.folio_add_new_anon_rmap(k, dst, nf, pmd=False, vma=vma,
                                             addr=(start & ~(k.pmd_size - 1)) + (i << pt.page_shift))
                continue
            rmap.folio_add_anon_rmap_ptes(k, dst, f, [pte.idx])
            f.anon_exclusive = False
            pte.write = False
            dtable.ptes[i] = Pte(PTE_PAGE, f, pte.idx, write=False, dirty=pte.dirty)
    return 0
