"""mm/rmap.c: the mapcount arithmetic of __folio_add_rmap / __folio_remove_rmap, the deferred-split decision,
and try_to_unmap / try_to_migrate with TTU_SPLIT_HUGE_PMD over forked mappings — under upstream (the split
withdraws each mapping's deposit) and the lazy series (one pte_alloc_one per rmap_one call; a PMD mapping met
without a table ends the walk, and the VMAs visited before keep their split). One case each, with its diagram.
"""

from __future__ import annotations

import pytest
from vmtest import DESIGNS, NR, THP, A, K, M, consistent, ev, kernel, mapped, pte_table, set_fail, tables, thp

from thpsim.model import fork, huge_memory, madvise, memory, rmap, userfaultfd
from thpsim.model.exit import exit_mmap
from thpsim.model.folio import Folio
from thpsim.model.kernel import MM, Kernel
from thpsim.model.page_alloc import FailPolicy
from thpsim.model.pgtable import PTE_PAGE, HugePmd, PteTable


def forked_thp(design: str, **kw: object) -> tuple[Kernel, MM, MM, Folio]:
    """
        main  0 |<------- THP ------->| 2M     one folio, PMD-mapped by both mms after fork
        child 0 |<------- THP ------->| 2M
    """
    k = kernel(design, **kw)   # type: ignore[arg-type]
    mm = mapped(k, 0, THP)
    f = thp(k, mm).folio
    assert f is not None
    assert fork.do_fork(k, mm, "child") == 0
    return k, mm, k.procs["child"], f


# ---- mapcounts ---------------------------------------------------------------------------------------------------
def test_fork_of_a_thp_doubles_the_entire_mapcount() -> None:
    k, mm, child, f = forked_thp("upstream")
    assert (f.entire_mapcount, f.nr_pages_mapped, f.total_mapcount()) == (2, 0, 2)
    assert k.vmstat.nr_anon_thps == 1 and k.vmstat.nr_anon_pages == NR
    assert rmap.folio_maybe_mapped_shared(k, f) and rmap.mms_mapping(k, f) == [mm, child]
    assert [(m.name, a - A, kind) for m, a, kind in rmap.rmap_walk(k, f)] == [("main", 0, "pmd"), ("child", 0, "pmd")]
    consistent(k)


def test_unmapping_half_a_pte_mapped_thp_queues_a_deferred_split() -> None:
    """
        0          1M          2M
        |<-- kept -->|<- zapped ->|   folio_remove_rmap_ptes of 256 pages: partially mapped -> deferred split
    """
    k = kernel("upstream")
    mm = mapped(k, 0, THP)
    f = thp(k, mm).folio
    assert f is not None
    assert huge_memory.__split_huge_pmd(k, mm, mm.vmas.find(A), A, caller="t") == 0
    t = pte_table(mm, 0)
    for i in range(256, NR):
        del t.ptes[i]
    rmap.folio_remove_rmap_ptes(k, mm, f, range(256, NR))
    assert f.nr_pages_mapped == 256 and f.partially_mapped and f.on_deferred
    assert ev(k, "thp_deferred_split_page") == 1 and k.vmstat.mthp["nr_anon_partially_mapped"] == 1
    assert k.vmstat.nr_anon_pages == 256 and mm.anon_pages == 256
    consistent(k)


def test_removing_the_last_pmd_mapping_while_ptes_remain_is_partial() -> None:
    """
        main  0 |p0 ..... p255|         | 2M    PTE-mapped, half zapped
        child 0 |<-------- THP -------->| 2M    zap_huge_pmd: entire 1 -> 0, 256 pages still mapped: partial
    """
    k, mm, child, f = forked_thp("upstream")
    assert huge_memory.__split_huge_pmd(k, mm, mm.vmas.find(A), A, caller="t") == 0
    assert (f.entire_mapcount, f.nr_pages_mapped) == (1, NR)
    assert memory.zap_pmd_range(k, mm, mm.vmas.find(A), A + M, A + THP) == 0
    assert not f.partially_mapped                  # the child's PMD mapping still covers every page
    huge_memory.zap_huge_pmd(k, child, A)
    assert f.entire_mapcount == 0 and k.vmstat.nr_anon_thps == 0 and f.nr_pages_mapped == 256
    assert f.partially_mapped and ev(k, "thp_deferred_split_page") == 1


def test_last_unmap_frees_the_folio_but_a_pin_keeps_it() -> None:
    k = kernel("upstream")
    mm = mapped(k, 0, 2 * THP)
    f1, f2 = thp(k, mm, 0).folio, thp(k, mm, THP).folio
    assert f1 is not None and f2 is not None
    f2.pins = 1
    huge_memory.zap_huge_pmd(k, mm, A)
    huge_memory.zap_huge_pmd(k, mm, A + THP)
    assert f1.freed and not f2.freed and f2.total_mapcount() == 0


# ---- try_to_unmap / try_to_migrate over forked mappings ----------------------------------------------------------
@pytest.mark.parametrize("design", DESIGNS)
def test_try_to_migrate_splits_every_pmd_mapping(design: str) -> None:
    """
        main  0 |p0|p1| ....... |p511| 2M     try_to_migrate: split_huge_pmd_locked in each rmap_one call
        child 0 |p0|p1| ....... |p511| 2M     every page mapped twice by PTEs, no PMD mapping left
    """
    k, mm, child, f = forked_thp(design)
    bytes_before = k.vmstat.nr_pagetable_bytes
    assert rmap.try_to_migrate(k, f, caller="t", memalloc=False)
    assert ev(k, "thp_split_pmd") == 2 and k.log.split_sites == ["t/try_to_migrate_one"] * 2
    assert (f.entire_mapcount, f.nr_pages_mapped) == (0, NR) and f.pte_mapcount == [2] * NR
    assert f.page_mapcount(0) == 2 and k.vmstat.nr_anon_thps == 0 and not f.partially_mapped
    for m in (mm, child):
        assert tables(m) == (1, 1, 1, 0) and len(pte_table(m, 0).ptes) == NR
    # upstream withdrew two deposits; lazy pre-allocated one table per rmap_one call and used both
    assert k.vmstat.nr_pagetable_bytes - bytes_before == (0 if design == "upstream" else 2 * K)
    assert k.alloc.per_site.get("pte_alloc_one@rmap_prealloc", 0) == (0 if design == "upstream" else 2)
    consistent(k)


def test_lazy_try_to_unmap_without_any_table_fails_before_splitting() -> None:
    """
        main  0 |<------- THP ------->| 2M     pte_alloc_one@rmap_prealloc fails in the first rmap_one call:
        child 0 |<------- THP ------->| 2M     ret = false, thp_split_pmd_failed, nothing split
    """
    k, mm, child, f = forked_thp("lazy")
    set_fail(k, "pte_alloc_one@rmap_prealloc")
    seen: list[str] = []
    assert not rmap.try_to_unmap(k, f, caller="t", memalloc=True, per_vma=lambda m, v: seen.append(m.name))
    assert ev(k, "thp_split_pmd") == 0 and ev(k, "thp_split_pmd_failed") == 1 and k.log.failed_sites == ["t"]
    assert seen == [] and f.entire_mapcount == 2
    assert isinstance(mm.pt.slot(A), HugePmd) and isinstance(child.pt.slot(A), HugePmd)
    consistent(k)


def test_lazy_try_to_unmap_second_table_fails_first_vma_stays_split() -> None:
    """
        main  0 |p0|p1| ....... |p511| 2M     rmap_one #1: table allocated, PMD split, per_vma ran
        child 0 |<------- THP ------->| 2M    rmap_one #2: fail_nth=2 -> walk ends (Hugh Dickins' objection)
    """
    k, mm, child, f = forked_thp("lazy", policy=FailPolicy(fail_site="pte_alloc_one@rmap_prealloc", fail_nth=2))
    seen: list[str] = []
    assert not rmap.try_to_unmap(k, f, caller="t", memalloc=True, per_vma=lambda m, v: seen.append(m.name))
    assert seen == ["main"] and ev(k, "thp_split_pmd") == 1 and ev(k, "thp_split_pmd_failed") == 1
    assert isinstance(mm.pt.slot(A), PteTable) and isinstance(child.pt.slot(A), HugePmd)
    assert (f.entire_mapcount, f.nr_pages_mapped) == (1, NR)
    consistent(k)


def test_lazy_prealloc_table_of_a_pte_mapped_vma_is_freed_uncounted() -> None:
    """
        main  0 |p0|p1| ....... |p511| 2M     already PTE-mapped: rmap_one pre-allocates, needs no split,
                                              frees the table at exit (NR_PAGETABLE back, nr_ptes unchanged)
    """
    k = kernel("lazy")
    mm = mapped(k, 0, THP)
    f = thp(k, mm).folio
    assert f is not None
    assert huge_memory.__split_huge_pmd(k, mm, mm.vmas.find(A), A, caller="t") == 0
    before = (k.vmstat.nr_pagetable_bytes, tables(mm))
    assert rmap.try_to_migrate(k, f, caller="t", memalloc=False)
    assert k.alloc.per_site["pte_alloc_one@rmap_prealloc"] == 1
    assert (k.vmstat.nr_pagetable_bytes, tables(mm)) == before and ev(k, "thp_split_pmd") == 1


def test_upstream_try_to_unmap_never_allocates() -> None:
    k, mm, child, f = forked_thp("upstream")
    set_fail(k, "pte_alloc_one")
    assert rmap.try_to_unmap(k, f, caller="t", memalloc=True)
    assert ev(k, "thp_split_pmd") == 2 and ev(k, "thp_split_pmd_failed") == 0
    assert "pte_alloc_one@rmap_prealloc" not in k.alloc.per_site


def test_reclaim_pool_variant_uses_the_allocator_first() -> None:
    """
        main  0 |p0| ..... |p511| 2M     lazy-reclaim-pool with memory to spare: mempool_alloc() gets both
        child 0 |p0| ..... |p511| 2M     rmap_one tables from the allocator; the pool is untouched
    """
    k, mm, child, f = forked_thp("lazy-reclaim-pool")
    assert k.reserve_pool == 64 and rmap.try_to_unmap(k, f, caller="t", memalloc=True)
    assert k.reserve_pool == 64 and k.alloc.per_site["pte_alloc_one@rmap_prealloc"] == 2
    consistent(k)


def test_reclaim_pool_variant_takes_from_the_pool_and_is_refilled_by_freed_tables() -> None:
    """
        main  0 |p0| ..... |p511| 2M     no memory left and no PF_MEMALLOC reserves: both tables come from
        child 0 |p0| ..... |p511| 2M     the pool (NR_PAGETABLE unchanged: pool pages are page tables);
                                         the child's exit frees its table, which goes back to the pool
    """
    k, mm, child, f = forked_thp("lazy-reclaim-pool")
    k.alloc.set_policy(FailPolicy(budget_pages=k.alloc.pages_in_use), counted=0)
    bytes_before = k.vmstat.nr_pagetable_bytes
    assert rmap.try_to_unmap(k, f, caller="t", memalloc=True)
    assert k.reserve_pool == 62 and ev(k, "thp_split_pmd") == 2
    assert k.vmstat.nr_pagetable_bytes == bytes_before
    consistent(k)
    exit_mmap(k, child)
    assert k.reserve_pool == 63        # mempool_free(): the first table freed refills the short pool
    consistent(k)


def test_split_folio_after_fork_gives_order0_folios_mapped_twice() -> None:
    """
        main  0 |f1|f2| ....... |f512| 2M     split_folio: try_to_migrate, then 512 order-0 folios,
        child 0 |f1|f2| ....... |f512| 2M     each mapped by both mms (entire mapcount 2, not exclusive)
    """
    k, mm, child, f = forked_thp("upstream")
    f.default = (7, ())                  # non-zero pages (zero-filled ones would map the zero page instead)
    assert huge_memory.split_folio(k, f, caller="t")
    assert f.freed and ev(k, "thp_split_page") == 1 and ev(k, "thp_split_pmd") == 2
    small = {id(p.folio): p.folio for m in (mm, child) for p in pte_table(m, 0).ptes.values()}
    assert len(small) == NR
    assert all(s is not None and not s.large and s.entire_mapcount == 2 and not s.anon_exclusive
               for s in small.values())
    assert all(p.kind == PTE_PAGE for p in pte_table(child, 0).ptes.values())
    assert k.vmstat.nr_anon_pages == NR and mm.anon_pages == child.anon_pages == NR
    consistent(k)


def test_split_folio_of_a_pinned_thp_fails() -> None:
    k, mm, child, f = forked_thp("upstream")
    f.pins = 1
    assert not huge_memory.split_folio(k, f, caller="t")
    assert ev(k, "thp_split_page_failed") == 1 and ev(k, "thp_split_pmd") == 0 and f.entire_mapcount == 2


def _family_with_a_bystander() -> tuple[Kernel, MM, Folio]:
    """Issue 9 item 5: the anon_vma interval tree holds a VMA that does not map the folio.

        main   0 |4K|         2M |<------ THP f ------>| 4M   fork "early" before f exists, "late" after
        early  0 |4K|         2M |                     | 4M   (in main's anon_vma tree, maps nothing of f)
        late   0 |4K|         2M |<------ THP f ------>| 4M
    """
    k = kernel("lazy")
    mm = mapped(k, 0, 2 * THP)
    memory.handle_mm_fault(k, mm, A, True)            # main's VMA gets its anon_vma
    assert fork.do_fork(k, mm, "early") == 0
    f = thp(k, mm, THP).folio
    assert f is not None
    assert fork.do_fork(k, mm, "late") == 0
    return k, mm, f


def _prealloc_callers(k: Kernel) -> int:
    return sum(1 for r in k.alloc.log if r.site == "pte_alloc_one@rmap_prealloc")


def test_rmap_walk_visits_every_vma_of_the_anon_vma_tree_until_the_folio_is_unmapped():
    """try_to_migrate_one runs for main, early (pre-allocates, finds nothing, frees) and late: 3 tables taken,
    2 used; none is left over."""
    k, mm, f = _family_with_a_bystander()
    assert huge_memory.split_folio(k, f, caller="t")
    assert _prealloc_callers(k) == 3
    assert ev(k, "thp_split_pmd") == 2
    assert isinstance(mm.pt.slot(A + THP), PteTable) and isinstance(k.procs["late"].pt.slot(A + THP), PteTable)
    consistent(k)       # the bystander's table was freed: nr_ptes and NR_PAGETABLE agree


def test_a_failed_pre_allocation_for_a_bystander_vma_is_harmless():
    """The second pre-allocation is early's; it fails, but early has no PMD mapping of f, so nothing bails
    out: late's call gets the third allocation and the split succeeds (the model used to give late the
    second one and fail the split)."""
    k, mm, f = _family_with_a_bystander()
    k.alloc.set_policy(FailPolicy(fail_site="pte_alloc_one@rmap_prealloc", fail_nth=2), counted=0)
    assert huge_memory.split_folio(k, f, caller="t")
    assert ev(k, "thp_split_pmd_failed") == 0 and ev(k, "thp_split_page") == 1
    consistent(k)


def test_the_walk_stops_once_no_mapping_is_left():
    """
        main   0 |<------ THP f ------>| 2M
        child  0 |      (DONTNEED)     | 2M   in the tree after main, maps nothing of f any more

    rmap_walk's done() (folio_not_mapped) ends the walk after main: the child's VMA is never visited, so one
    pre-allocation, not two."""
    k = kernel("lazy")
    mm = mapped(k, 0, THP)
    f = thp(k, mm).folio
    assert f is not None
    assert fork.do_fork(k, mm, "child") == 0
    child = k.procs["child"]
    assert madvise.do_madvise(k, child, A, THP, "dontneed") == 0
    before = _prealloc_callers(k)
    assert huge_memory.split_folio(k, f, caller="t")
    assert _prealloc_callers(k) - before == 1
    consistent(k)


def test_uffdio_move_rehomes_the_folio_in_the_destination_anon_vma():
    """
        0 |<-- THP f -->| 2M ...... 4M |<-- (empty VMA) -->| 6M     UFFDIO_MOVE [0, 2M) → [4M, 6M)

    move_pages_huge_pmd: folio_move_anon_rmap(folio, dst_vma) and folio->index = linear_page_index(dst_vma,
    dst_addr), so the rmap walk (and the lazy design's pre-allocation) finds the destination VMA afterwards."""
    k = kernel("lazy")
    mm = mapped(k, 0, THP)
    mapped(k, 2 * THP, THP)
    f = thp(k, mm).folio
    assert f is not None
    assert userfaultfd.move_pages(k, mm, A, A + 2 * THP, THP) == (0, THP)
    dst = mm.vmas.find(A + 2 * THP)
    assert dst is not None and f.mapping == dst.anon_vma is not None
    assert f.index == dst.linear_page_index(A + 2 * THP, mm.pt.page_shift)
    assert huge_memory.split_folio(k, f, caller="t") and _prealloc_callers(k) == 1
    consistent(k)
