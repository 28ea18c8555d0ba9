"""PF_MEMALLOC on the folio-split paths (issue 9 item 2): reclaim runs with PF_MEMALLOC
(kswapd, direct reclaim's __perform_reclaim, reclaim_pages for MADV_PAGEOUT), and so does every split it makes —
shrink_folio_list's split_folio_to_list and the deferred-split shrinker — so try_to_migrate_one's table
pre-allocation (series v3 17) may take a page from the reserves. A split from process context (MADV_COLD/FREE's
split of a partly covered THP, before reclaim_pages) may not.

    0                    2M
    |<------ THP ------->|      fault; then no page beyond what is in use (budget), 4 pages of reserves
"""

from __future__ import annotations

from vmtest import THP, A, K, ev, kernel, mapped, thp

from thpsim.model import huge_memory, madvise, uaccess
from thpsim.model.kernel import Kernel
from thpsim.model.page_alloc import FailPolicy
from thpsim.model.pgtable import HugePmd, PteTable


def _no_memory_but_reserves(k: Kernel) -> None:
    k.alloc.set_policy(FailPolicy(budget_pages=k.alloc.pages_in_use, reserve_pages=4), counted=0)


def _prealloc_records(k: Kernel) -> list[tuple[bool, bool]]:
    """(ok, memalloc) of every rmap pre-allocation so far."""
    return [(r.ok, r.memalloc) for r in k.alloc.log if r.site == "pte_alloc_one@rmap_prealloc"]


def test_madv_pageout_splits_from_the_reserves():
    """reclaim_pages() sets PF_MEMALLOC: without swap the whole THP is split (thp_swpout_fallback)."""
    k = kernel("lazy")
    mm = mapped(k, 0, THP)
    thp(k, mm)
    _no_memory_but_reserves(k)
    assert madvise.do_madvise(k, mm, A, THP, "pageout") == 0
    assert _prealloc_records(k) == [(True, True)]
    assert ev(k, "thp_split_page") == 1 and ev(k, "thp_split_page_failed") == 0
    assert ev(k, "thp_swpout_fallback") == 1
    assert isinstance(mm.pt.slot(A), PteTable)


def test_deferred_split_shrinker_splits_an_underused_thp_from_the_reserves():
    """The shrinker runs inside reclaim: an underused THP (max_ptes_none=0, one page written) is split."""
    k = kernel("lazy", max_ptes_none=0)
    mm = mapped(k, 0, THP)
    assert uaccess.access(k, mm, A, A + K, write=True, stride=K, fill=False, byte=1)[0] == 0
    assert isinstance(mm.pt.slot(A), HugePmd)
    _no_memory_but_reserves(k)
    assert huge_memory.deferred_split_scan(k) == 1
    assert _prealloc_records(k) == [(True, True)]
    assert ev(k, "thp_underused_split_page") == 1 and ev(k, "thp_split_pmd_failed") == 0


def test_madv_cold_split_of_a_partly_covered_thp_gets_no_reserves():
    """madvise_cold_or_pageout_pte_range splits a partly covered THP in process context: no PF_MEMALLOC, so
    with no memory left the split fails and the THP stays PMD-mapped."""
    k = kernel("lazy")
    mm = mapped(k, 0, THP)
    thp(k, mm)
    _no_memory_but_reserves(k)
    assert madvise.do_madvise(k, mm, A, THP // 2, "cold") == 0
    assert _prealloc_records(k) == [(False, False)]
    assert ev(k, "thp_split_page_failed") == 1 and ev(k, "thp_split_pmd_failed") == 1
    assert isinstance(mm.pt.slot(A), HugePmd)
