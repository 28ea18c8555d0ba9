"""mm/memory.c zap_pmd_range / zap_pte_range (what MADV_DONTNEED, munmap and exit reach through unmap_vmas):
a PMD only partly in range is split first (and under the lazy series the split may fail: the design's
zap_split_failure policy decides), PTEs of one folio are removed as one rmap batch, guard markers survive
MADV_DONTNEED but not munmap, and CONFIG_PT_RECLAIM frees a PTE table a whole-PMD zap emptied.
"""

from __future__ import annotations

import pytest
from vmtest import DESIGNS, NR, THP, A, K, M, consistent, ev, kernel, mapped, pte_table, set_fail, tables, thp

from thpsim.model import exit as kexit
from thpsim.model import fork, huge_memory, invariants, madvise, memory, mmap, rmap
from thpsim.model.errnos import ENOMEM
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_GUARD, PTE_SWAP, HugePmd, Pte, PteTable


def _pte_mapped_thp(design: str = "upstream", **kw: object) -> tuple[Kernel, MM]:
    """
        0                      2M
        |p0|p1| ....... |p511|      a THP, split to 512 PTEs of one folio
    """
    k = kernel(design, **kw)   # type: ignore[arg-type]
    mm = mapped(k, 0, THP)
    thp(k, mm)
    assert huge_memory.__split_huge_pmd(k, mm, mm.vmas.find(A), A, caller="t") == 0
    return k, mm


# ---- partial PMD -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("design", DESIGNS)
def test_dontneed_second_half_of_a_thp_splits_and_zaps_256_ptes(design: str) -> None:
    """
        0          1M          2M
        |<-------- one THP ------->|    MADV_DONTNEED [1M, 2M): split_huge_pmd, zap 256 PTEs
        |p0 ... p255|              |    the folio is partially mapped: deferred split queued
    """
    k = kernel(design)
    mm = mapped(k, 0, THP)
    f = thp(k, mm).folio
    assert f is not None
    assert madvise.do_madvise(k, mm, A + M, M, "dontneed") == 0
    t = pte_table(mm, 0)
    assert sorted(t.ptes) == list(range(256))
    assert ev(k, "thp_split_pmd") == 1 and k.log.split_sites == ["zap_pmd_range"]
    assert f.nr_pages_mapped == 256 and f.partially_mapped and ev(k, "thp_deferred_split_page") == 1
    assert mm.anon_pages == 256 and tables(mm) == (1, 1, 1, 0)
    consistent(k)


def test_zap_across_two_thps_splits_both_edges() -> None:
    """
        0          1M          2M          3M          4M
        |<------- THP 1 ------>|<------- THP 2 ------>|
                   |<------ zapped ------->|                zap [1M, 3M): two splits, 256 + 256 PTEs left
    """
    k = kernel("upstream")
    mm = mapped(k, 0, 2 * THP)
    thp(k, mm, 0)
    thp(k, mm, THP)
    assert memory.zap_pmd_range(k, mm, mm.vmas.find(A), A + M, A + 3 * M) == 0
    assert ev(k, "thp_split_pmd") == 2
    assert sorted(pte_table(mm, 0).ptes) == list(range(256))
    assert sorted(pte_table(mm, THP).ptes) == list(range(256, NR))
    assert mm.anon_pages == NR and ev(k, "thp_deferred_split_page") == 2
    consistent(k)


def test_zap_of_a_whole_pmd_is_zap_huge_pmd_no_split() -> None:
    """
        0                      2M
        |<------- one THP ---->|    zap [0, 2M): zap_huge_pmd, the deposit freed with it
    """
    k = kernel("upstream")
    mm = mapped(k, 0, THP)
    thp(k, mm)
    assert memory.zap_pmd_range(k, mm, mm.vmas.find(A), A, A + THP) == 0
    assert ev(k, "thp_split_pmd") == 0 and mm.pt.slot(A) is None and tables(mm) == (0, 1, 1, 0)


# ---- the lazy series' failed split in a partial zap -------------------------------------------------------------
@pytest.mark.parametrize("design, rc, huge, zeroed", [
    ("lazy", 0, True, False),               # v3: skip the PMD, report success (data still there)
    ("lazy-zap-zero", 0, True, True),       # the skipped range is zeroed in place
    ("lazy-zap-enomem", ENOMEM, True, False),
])
def test_lazy_partial_zap_with_failed_split_follows_the_design(design: str, rc: int, huge: bool,
                                                               zeroed: bool) -> None:
    """
        0          1M          2M
        |<-------- one THP ------->|    zap [1M, 2M), pte_alloc_one@split fails: the PMD stays huge
    """
    k = kernel(design)
    mm = mapped(k, 0, THP)
    f = thp(k, mm).folio
    assert f is not None
    f.default = (9, ())
    set_fail(k, "pte_alloc_one@split")
    assert memory.zap_pmd_range(k, mm, mm.vmas.find(A), A + M, A + THP) == rc
    assert isinstance(mm.pt.slot(A), HugePmd) is huge
    assert ev(k, "thp_split_pmd_failed") == 1 and ev(k, "thp_split_pmd") == 0
    assert [f.content(i)[0] for i in (0, 255, 256, NR - 1)] == ([9, 9, 0, 0] if zeroed else [9] * 4)
    assert mm.anon_pages == NR and f.entire_mapcount == 1
    consistent(k)


def test_lazy_zap_zero_refuses_to_zero_a_shared_folio() -> None:
    """
        main  0 |<-------- THP -------->| 2M    zap [1M, 2M) in main, split fails, the folio is also mapped
        child 0 |<-------- THP -------->| 2M    by the child: zeroing would change its data -> -ENOMEM
    """
    k = kernel("lazy-zap-zero")
    mm = mapped(k, 0, THP)
    thp(k, mm)
    assert fork.do_fork(k, mm, "child") == 0
    set_fail(k, "pte_alloc_one@split")
    assert memory.zap_pmd_range(k, mm, mm.vmas.find(A), A + M, A + THP) == ENOMEM


# ---- PTE batches -------------------------------------------------------------------------------------------------
def test_zap_of_all_512_ptes_is_one_batch_no_deferred_split() -> None:
    """
        0                      2M
        |p0|p1| ....... |p511|      zap [0, 2M) of a PTE-mapped THP: one folio_remove_rmap_ptes(512):
                                    the folio is freed, never queued as partially mapped
    """
    k, mm = _pte_mapped_thp()
    f = pte_table(mm, 0).ptes[0].folio
    assert f is not None
    memory.zap_pte_range(k, mm, pte_table(mm, 0), A, A + THP)
    assert f.freed and ev(k, "thp_deferred_split_page") == 0 and mm.anon_pages == 0
    consistent(k)


def test_zap_of_a_middle_run_is_one_partial_batch() -> None:
    """
        0    40K         80K                  2M
        |p0..p9|  zapped  |p20 ......... p511|     zap [40K, 80K): ten PTEs, one batch, deferred split
    """
    k, mm = _pte_mapped_thp()
    f = pte_table(mm, 0).ptes[0].folio
    assert f is not None
    memory.zap_pte_range(k, mm, pte_table(mm, 0), A + 10 * K, A + 20 * K)
    assert f.nr_pages_mapped == NR - 10 and f.partially_mapped and ev(k, "thp_deferred_split_page") == 1
    assert sorted(set(range(NR)) - set(pte_table(mm, 0).ptes)) == list(range(10, 20))
    consistent(k)


def test_zap_drops_swap_entries_and_counts_them() -> None:
    """
        0    4K   8K   12K
        |swp |pg  |swp |       zap [0, 12K): MM_SWAPENTS 2 -> 0, the page's rmap removed
    """
    k = kernel("upstream", thp_enabled="never")
    mm = mapped(k, 0, THP)
    for off in (0, K, 2 * K):
        memory.handle_mm_fault(k, mm, A + off, True)
    t = pte_table(mm, 0)
    for i in (0, 2):
        f = t.ptes[i].folio
        assert f is not None
        t.ptes[i] = Pte(PTE_SWAP)
        rmap.folio_remove_rmap_ptes(k, mm, f, [0])
        mm.swap_ents += 1
    memory.zap_pte_range(k, mm, t, A, A + 3 * K)
    assert mm.swap_ents == 0 and mm.anon_pages == 0 and not t.ptes
    consistent(k)


# ---- guard markers and CONFIG_PT_RECLAIM -------------------------------------------------------------------------
def _guarded(k: Kernel, mm: MM) -> PteTable:
    """
        0    4K                 2M
        |grd |                  |     MADV_GUARD_INSTALL [0, 4K): a guard marker in a PTE table
    """
    assert madvise.do_madvise(k, mm, A, K, "guard_install") == 0
    t = pte_table(mm, 0)
    assert t.ptes[0].kind == PTE_GUARD
    return t


def test_dontneed_keeps_guard_markers_and_the_table() -> None:
    """
        0    4K                 2M
        |grd |                  |     MADV_DONTNEED [0, 2M): the marker stays, so PT_RECLAIM keeps the table
    """
    k = kernel("upstream")
    mm = mapped(k, 0, THP)
    t = _guarded(k, mm)
    assert madvise.do_madvise(k, mm, A, THP, "dontneed") == 0
    assert mm.pt.slot(A) is t and t.ptes[0].kind == PTE_GUARD and tables(mm)[0] == 1


def test_dontneed_of_a_whole_pmd_reclaims_the_empty_pte_table() -> None:
    """
        0    4K                 2M
        |pg  |                  |     MADV_DONTNEED [0, 2M) with CONFIG_PT_RECLAIM: the emptied table is freed
    """
    for pt_reclaim, left in ((True, 0), (False, 1)):
        k = kernel("upstream", thp_enabled="never", pt_reclaim=pt_reclaim)
        mm = mapped(k, 0, THP)
        memory.handle_mm_fault(k, mm, A, True)
        assert madvise.do_madvise(k, mm, A, THP, "dontneed") == 0
        assert tables(mm)[0] == left and mm.anon_pages == 0
        consistent(k)


def test_munmap_drops_guard_markers_with_the_table() -> None:
    """
        0    4K                 2M
        |grd |                  |     munmap [0, 2M): unmap_vmas zaps the marker, free_pgtables the tables
    """
    k = kernel("upstream")
    mm = mapped(k, 0, THP)
    _guarded(k, mm)
    assert mmap.do_munmap(k, mm, A, THP) == 0
    assert tables(mm) == (0, 0, 0, 0) and k.vmstat.nr_pagetable_bytes == 0


def test_zap_pte_range_keep_guard_only_skips_markers() -> None:
    k = kernel("upstream", thp_enabled="never")
    mm = mapped(k, 0, THP)
    _guarded(k, mm)
    memory.handle_mm_fault(k, mm, A + K, True)
    t = pte_table(mm, 0)
    memory.zap_pte_range(k, mm, t, A, A + 2 * K, keep_guard=True)
    assert list(t.ptes) == [0] and t.ptes[0].kind == PTE_GUARD and mm.anon_pages == 0
    memory.zap_pte_range(k, mm, t, A, A + 2 * K)
    assert not t.ptes


@pytest.mark.parametrize("design", DESIGNS)
def test_unmap_vmas_then_exit_leaves_nothing(design: str) -> None:
    """
        0          2M  2M+4K      4M
        |<- THP -->|pg |          |     exit_mmap: unmap_vmas + free_pgtables: pgtables_bytes 0, RSS 0
    """
    k = kernel(design)
    mm = mapped(k, 0, 2 * THP)
    thp(k, mm)
    memory.handle_mm_fault(k, mm, A + THP, True)
    kexit.exit_mmap(k, mm)
    assert invariants.check_exited(k, mm) == [] and k.vmstat.nr_pagetable_bytes == 0
    assert k.alloc.pages_in_use == 0 and mm.anon_pages == 0
