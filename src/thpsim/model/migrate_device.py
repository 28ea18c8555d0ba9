"""Device memory migration of an anonymous range (mm/migrate_device.c migrate_vma_setup → migrate_vma_pages →
migrate_vma_finalize) for a driver like lib/test_hmm.c's ``dmirror_migrate_to_device``: system memory
(MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_COMPOUND), a device page for every collected entry, holes and
zero pages included, and no compound device pages.

Per page, in address order (``__migrate_device_pages``):

* a PMD-mapped THP: ``migrate_vma_split_unmapped_folio`` splits it (``split_huge_pmd_address`` with freeze, then
  the folio). Under the lazy design the PMD split can fail: v3 12/24 drops the extra folio reference and returns
  the error, and the whole THP is not migrated.
* a hole — none PMD, none PTE, the 4 KiB zero page, or the huge zero page (``migrate_vma_collect_huge_pmd``
  collects it as a hole) — gets a new page from ``migrate_vma_insert_page``: the PMD and PTE tables are allocated
  (failure: ``goto abort``, the page is not migrated) and a huge zero PMD is split first. Under lazy that split
  can fail: v3 12/24's ``goto abort``, so the page stays unmigrated and the next page of the same PMD tries the
  split again.
* other entries (swap, guard markers) are skipped.

Migration is content-preserving and the model keeps a migrated page as a present anonymous page (a migrated
range looks like a split one); an inserted device page is a new zero-filled anonymous page, allocated from the
model's page allocator. Returns the number of pages migrated.

Left out: device-private entries (and migrating back to system memory), compound device pages
(``migrate_vma_insert_huge_pmd_page``), device-coherent memory, mem_cgroup charges, pinned or locked folios.
"""

from __future__ import annotations

from thpsim.model import huge_memory, rmap
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_PAGE, PTE_ZERO, HugePmd, Pte, PteTable, SwapPmd
from thpsim.model.vma import Vma

__all__ = ["migrate_vma", "migrate_vma_insert_page"]


def migrate_vma(k: Kernel, mm: MM, start: int, end: int) -> int:
    migrated = 0
    p = k.pmd_size
    a = start
    while a < end:
        vma = mm.vmas.find(a)
        if vma is None:
            a += k.page
            continue
        s = mm.pt.slot(a)
        if isinstance(s, SwapPmd):
            a = (a | (p - 1)) + 1            # migrate_vma_collect_huge_pmd: a non-present PMD is skipped
            continue
        if isinstance(s, HugePmd) and s.folio is not None:
            f = s.folio
            if huge_memory.__split_huge_pmd(k, mm, vma, a, caller="migrate_vma_split_unmapped_folio") != 0:
                a = (a | (p - 1)) + 1        # skipped: this THP is not migrated
                continue
            huge_memory.split_folio(k, f, caller="migrate_vma_split_unmapped_folio")
        pte = mm.pt.get_pte(a)
        present = pte is not None and pte.kind == PTE_PAGE
        hole = pte is None or pte.kind == PTE_ZERO
        if present or (hole and migrate_vma_insert_page(k, mm, vma, a)):
            migrated += 1
        a += k.page
    return migrated


def migrate_vma_insert_page(k: Kernel, mm: MM, vma: Vma, addr: int) -> bool:
    """A device page for a hole or zero page at ``addr``; False for ``goto abort`` (the page is not migrated)."""
    if not k.pmd_alloc(mm, addr):
        return False
    s = mm.pt.slot(addr)
    if isinstance(s, HugePmd):
        if not s.is_zero:
            return False
        if huge_memory.__split_huge_pmd(k, mm, vma, addr, caller="migrate_vma_insert_page") != 0:
            return False                     # v3 12/24: the huge zero PMD remains; goto abort
    if not k.pte_alloc(mm, addr):
        return False
    if vma.anon_vma is None:                 # anon_vma_prepare()
        vma.anon_vma = k.new_anon_vma()
        vma.avc = (vma.anon_vma,)
    table = mm.pt.slot(addr)
    assert isinstance(table, PteTable)
    i = mm.pt.pte_index(addr)
    old = table.ptes.get(i)
    if old is not None and old.kind != PTE_ZERO:
        return False                         # unlock_abort: something was mapped meanwhile
    f = k.folio_alloc("folio@migrate_device", 0)
    if f is None:
        return False
    table.ptes[i] = Pte(PTE_PAGE, f, 0, write=vma.writable, dirty=True)
    rmap.folio_add_new_anon_rmap(k, mm, f, pmd=False, vma=vma, addr=addr)
    return True
