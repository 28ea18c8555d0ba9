"""Device memory migration of anonymous THPs to a device without compound-page support
(mm/migrate_device.c migrate_vma_collect_pmd / migrate_vma_split_unmapped_folio).

Each PMD-mapped THP in the range is split first (``split_huge_pmd_address`` with freeze, then a folio split).
Under the lazy design the PMD split can fail: the page is skipped and not migrated (series 12/21; v3 drops the
extra folio reference). Migration itself is content-preserving and does not change the accounting the model
reports, so a migrated range looks like a split one. Returns the number of pages migrated.
Left out: device-private entries and migrating back (migrate_vma_insert_huge_pmd_page).
"""

from __future__ import annotations

from thpsim.model import huge_memory
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_PAGE, HugePmd

__all__ = ["migrate_vma"]


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
        if isinstance(s, HugePmd) and s.folio is not None:
            f = s.folio
            if huge_memory.__split_huge_pmd(k, mm, vma, a, caller="migrate_vma_split_unmapped_folio") != 0:
                a = (a | (p - 1)) + 1        # skipped: this THP is not migrated
                continue
            huge_memory.split_folio(k, f, caller="migrate_vma_split_unmapped_folio")
        pte = mm.pt.get_pte(a)
        if pte is not None and pte.kind == PTE_PAGE:
            migrated += 1
        a += k.page
    return migrated
