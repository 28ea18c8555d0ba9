"""mm/pagewalk.c: walk_pmd_range's split of a huge PMD for a walker with a pte_entry (checklist row 14, series
v3 09/24), and its failure under the lazy design.

    0            2M            4M
    |<-- THP 0 ->|<-- THP 1 -->|     one VMA; a walker with only a pte_entry (the shape of mprotect's
                                     prot_none_walk_ops) walks [0, 4M): each huge PMD is split before its PTEs

No 7.3.4 walker reaches this split on anonymous memory (see the header of thpsim.model.pagewalk); the walker
here exists only in the test.
"""

from __future__ import annotations

import pytest
from vmtest import DESIGNS, THP, A, K, consistent, ev, kernel, mapped, set_fail, tables, thp

from thpsim.model import pagewalk
from thpsim.model.errnos import ENOMEM
from thpsim.model.pgtable import PTE_GUARD, HugePmd, Pte, PteTable


def _counting_walker(seen: list[int]) -> pagewalk.MmWalkOps:
    def pte_entry(walk: pagewalk.MmWalk, table: PteTable, i: int, addr: int) -> int:
        if table.ptes.get(i) is not None:
            seen.append(addr)
        return 0
    return pagewalk.MmWalkOps(pte_entry=pte_entry)


def _two_thps(design: str):
    k = kernel(design)
    mm = mapped(k, 0, 2 * THP)
    thp(k, mm, 0)
    thp(k, mm, THP)
    return k, mm


@pytest.mark.parametrize("design", DESIGNS)
def test_walk_splits_each_huge_pmd_before_its_ptes(design: str) -> None:
    k, mm = _two_thps(design)
    seen: list[int] = []
    assert pagewalk.walk_page_range_vma(k, mm, mm.vmas.find(A), A, A + 2 * THP, _counting_walker(seen)) == 0
    assert len(seen) == 1024 and ev(k, "thp_split_pmd") == 2
    assert all(isinstance(mm.pt.slot(A + o), PteTable) for o in (0, THP))
    consistent(k)


def test_row14_walk_stops_with_enomem_and_earlier_pmds_stay_processed() -> None:
    """Lazy: the second split gets no table. walk_page_range() returns -ENOMEM; THP 0 was split and walked,
    THP 1 is still huge and was not walked."""
    k, mm = _two_thps("lazy")
    seen: list[int] = []
    ops = _counting_walker(seen)

    def fail_after_first(walk: pagewalk.MmWalk, slot: HugePmd | PteTable, addr: int, end: int) -> int:
        if addr == A + THP:
            set_fail(k, "pte_alloc_one@split")
        return 0

    ops = pagewalk.MmWalkOps(pmd_entry=fail_after_first, pte_entry=ops.pte_entry)
    assert pagewalk.walk_page_range_vma(k, mm, mm.vmas.find(A), A, A + 2 * THP, ops) == ENOMEM
    assert len(seen) == 512 and all(a < A + THP for a in seen)
    assert isinstance(mm.pt.slot(A), PteTable) and isinstance(mm.pt.slot(A + THP), HugePmd)
    assert ev(k, "thp_split_pmd") == 1 and ev(k, "thp_split_pmd_failed") == 1
    assert k.log.failed_sites == ["walk_pmd_range"]
    set_fail(k, None)
    consistent(k)


def test_upstream_walk_split_never_fails() -> None:
    k, mm = _two_thps("upstream")
    set_fail(k, "pte_alloc_one@split")
    seen: list[int] = []
    assert pagewalk.walk_page_range_vma(k, mm, mm.vmas.find(A), A, A + 2 * THP, _counting_walker(seen)) == 0
    assert len(seen) == 1024 and ev(k, "thp_split_pmd") == 2      # the deposits became the tables


@pytest.mark.parametrize("design", DESIGNS)
def test_install_only_walker_never_splits_a_huge_pmd(design: str) -> None:
    """An install_pte walker without pte_entry fills none PTEs (allocating the table) and skips a present huge
    PMD: [0, 2M) is a THP; in another mm, [6M, 6M+32K) is unpopulated."""
    k, mm = _two_thps(design)
    mm2 = mapped(k, 3 * THP, 8 * K, name="other")

    def install(walk: pagewalk.MmWalk, addr: int) -> Pte:
        return Pte(PTE_GUARD)

    ops = pagewalk.MmWalkOps(install_pte=install)
    assert pagewalk.walk_page_range_vma(k, mm, mm.vmas.find(A), A, A + THP, ops) == 0
    assert isinstance(mm.pt.slot(A), HugePmd) and ev(k, "thp_split_pmd") == 0
    before = tables(mm2)[0]
    assert pagewalk.walk_page_range_vma(k, mm2, mm2.vmas.find(A + 3 * THP), A + 3 * THP, A + 3 * THP + 8 * K,
                                        ops) == 0
    table = mm2.pt.slot(A + 3 * THP)
    assert isinstance(table, PteTable) and len(table.ptes) == 8 and tables(mm2)[0] == before + 1


def test_install_walker_table_allocation_failure_is_enomem() -> None:
    k = kernel("lazy")
    mm = mapped(k, 0, 8 * K)
    ops = pagewalk.MmWalkOps(install_pte=lambda walk, addr: Pte(PTE_GUARD))
    set_fail(k, "__pte_alloc")
    assert pagewalk.walk_page_range_vma(k, mm, mm.vmas.find(A), A, A + 8 * K, ops) == ENOMEM
    assert mm.pt.slot(A) is None
