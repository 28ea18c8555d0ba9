"""arm64 contpte (arch/arm64/mm/contpte.c, arch/arm64/include/asm/pgtable.h; Linux 7.3.4), as far as it
decides where a PTE batch stops.

set_ptes() of a whole aligned block of one folio sets PTE_CONT on it (contpte_set_ptes: __split_huge_pmd_locked
maps the subpages that way); changing one entry of a folded block unfolds the block (contpte_try_unfold), and
writing the *last* entry of a block refolds it if the block is consistent again (contpte_try_fold). The CONT bit
leaks through ptep_get() and __pte_batch_clear_ignored() does not mask it, so folio_pte_batch() — and with it a
zap's or a collapse's folio_remove_rmap_ptes() — stops where the fold state changes (docs/findings.md L12).
Left out: folding by faults and COW (only split-created blocks are folded), the access/dirty gathering.
"""

from __future__ import annotations

from thpsim.model.pgtable import PTE_PAGE, PteTable


def contpte_fold_all(table: PteTable, nr: int, cont_ptes: int) -> None:
    """set_ptes() of all ``nr`` entries of one folio (a PMD split): every block folded."""
    if cont_ptes:
        table.cont = set(range(nr // cont_ptes))


def contpte_fold_after_change(table: PteTable, first: int, end: int, cont_ptes: int) -> None:
    """Entries [first, end) were rewritten one by one (ptep_modify_prot_start/commit): each touched block is
    unfolded, and refolded when its last entry was among them and the block is consistent again."""
    if not cont_ptes:
        return
    for b in range(first // cont_ptes, (end - 1) // cont_ptes + 1):
        table.cont.discard(b)
        if first <= (b + 1) * cont_ptes - 1 < end and _block_consistent(table, b, cont_ptes):
            table.cont.add(b)


def contpte_unfold_partial(table: PteTable, first: int, end: int, cont_ptes: int) -> None:
    """Entries [first, end) were cleared: a block cleared whole loses its entries, one cleared in part is
    unfolded first (contpte_get_and_clear_full_ptes → contpte_try_unfold)."""
    if cont_ptes and table.cont:
        for b in range(first // cont_ptes, (end - 1) // cont_ptes + 1):
            table.cont.discard(b)


def _block_consistent(table: PteTable, b: int, cont_ptes: int) -> bool:
    first = table.ptes.get(b * cont_ptes)
    if first is None or first.kind != PTE_PAGE or first.folio is None:
        return False
    for j in range(1, cont_ptes):
        p = table.ptes.get(b * cont_ptes + j)
        if p is None or p.kind != PTE_PAGE or p.folio is not first.folio or p.idx != first.idx + j \
                or p.write != first.write:
            return False
    return True


def contpte_batches(table: PteTable, idxs: list[int], cont_ptes: int) -> list[list[int]]:
    """Table indices (ascending) cut where folio_pte_batch() stops on arm64: a gap, or a change of fold state."""
    out: list[list[int]] = []
    for i in idxs:
        folded = bool(cont_ptes) and (i // cont_ptes) in table.cont
        if out and out[-1][-1] == i - 1 and (bool(cont_ptes) and ((i - 1) // cont_ptes) in table.cont) == folded:
            out[-1].append(i)
        else:
            out.append([i])
    return out


__all__ = ["contpte_fold_all", "contpte_fold_after_change", "contpte_unfold_partial", "contpte_batches"]
