"""mm/vmscan.c + mm/rmap.c: reclaim of a lazyfree (MADV_FREE'd) PMD-mapped THP, as MADV_PAGEOUT hands it to
shrink_folio_list (docs/findings.md L14: 7.2.13 discards it at PMD level; since "mm/rmap: don't discard lazyfree
THPs at PMD level", stable 7.3.2, and on the host's 6.18.44 reclaim splits first).

    0                    2M
    |<------ THP ------->|      MADV_FREE [0, 2M), (a 4K write at 0: re-dirtied), MADV_PAGEOUT [0, 2M)
"""

from __future__ import annotations

import pytest
from vmtest import DESIGNS, THP, A, K, ev, kernel, mapped, thp

from thpsim.live.env import lazyfree_pmd_discard
from thpsim.model import madvise, uaccess, vmscan
from thpsim.model.pgtable import HugePmd, PteTable


def _free_then_pageout(design: str, *, redirty: bool, pmd_discard: bool):
    k = kernel(design, lazyfree_pmd_discard=pmd_discard)
    mm = mapped(k, 0, THP)
    thp(k, mm)
    assert madvise.do_madvise(k, mm, A, THP, "free") == 0
    if redirty:
        assert uaccess.access(k, mm, A, A + K, write=True, stride=K, fill=False, byte=7)[0] == 0
    before = (mm.pt.pgtables_bytes, ev(k, "thp_split_pmd"))
    assert madvise.do_madvise(k, mm, A, THP, "pageout") == 0
    return k, mm, before


@pytest.mark.parametrize("design", DESIGNS)
def test_clean_lazyfree_thp_is_split_then_its_ptes_discarded(design: str):
    k, mm, (pt0, split0) = _free_then_pageout(design, redirty=False, pmd_discard=False)
    assert ev(k, "thp_split_pmd") == split0 + 1
    table = mm.pt.slot(A)
    assert isinstance(table, PteTable) and not table.ptes           # the split's table stays, empty
    assert mm.anon_pages == 0
    # upstream: the deposit became the table; lazy: the split allocated one (rmap pre-allocation)
    assert mm.pt.pgtables_bytes == pt0 + (4096 if design == "lazy" else 0)


@pytest.mark.parametrize("design", DESIGNS)
def test_redirtied_lazyfree_thp_is_split_and_stays_pte_mapped(design: str):
    k, mm, (_pt0, split0) = _free_then_pageout(design, redirty=True, pmd_discard=False)
    assert ev(k, "thp_split_pmd") == split0 + 1
    table = mm.pt.slot(A)
    assert isinstance(table, PteTable) and len(table.ptes) == 512
    f = table.ptes[0].folio
    assert f is not None and f.swapbacked and mm.anon_pages == 512      # normal anon again, nothing discarded


@pytest.mark.parametrize("design", DESIGNS)
def test_7_2_discards_a_clean_lazyfree_thp_at_pmd_level(design: str):
    k, mm, (pt0, split0) = _free_then_pageout(design, redirty=False, pmd_discard=True)
    assert ev(k, "thp_split_pmd") == split0                    # no split
    assert mm.pt.slot(A) is None and mm.anon_pages == 0
    assert mm.pt.pgtables_bytes == pt0 - (4096 if design == "upstream" else 0)   # the deposit is freed


def test_7_2_keeps_the_pmd_of_a_redirtied_lazyfree_thp():
    k, mm, (_pt0, split0) = _free_then_pageout("upstream", redirty=True, pmd_discard=True)
    hp = mm.pt.slot(A)
    assert ev(k, "thp_split_pmd") == split0
    assert isinstance(hp, HugePmd) and hp.folio is not None and hp.folio.swapbacked


@pytest.mark.parametrize(("release", "whole"), [("6.12.48", False), ("6.15.2", True), ("6.18.44-fc", False),
                                                 ("7.2.13+deb14-amd64", True), ("7.3.4+deb13-amd64", False)])
def test_which_releases_discard_at_pmd_level(release: str, whole: bool):
    assert lazyfree_pmd_discard(release) is whole


def test_a_failed_swap_out_activates_the_folio():
    """Issue 9 item 8: with swap, try_to_unmap's PMD split has no table (lazy, rmap pre-allocation fails): the
    walk aborts, the folio is still mapped and shrink_folio_list goes to activate_locked — not keep."""
    k = kernel("lazy", swap=True, fail="pte_alloc_one@rmap_prealloc")
    mm = mapped(k, 0, THP)
    f = thp(k, mm).folio
    assert f is not None
    assert vmscan.shrink_folio(k, f) is vmscan.Reclaimed.ACTIVATED
    assert ev(k, "thp_split_pmd_failed") == 1 and isinstance(mm.pt.slot(A), HugePmd)


def test_a_redirtied_lazyfree_thp_is_activated():
    """ttu_anon_lazyfree_folio on a re-dirtied folio: swap-backed again, walk_abort, activate_locked."""
    k = kernel("upstream")
    mm = mapped(k, 0, THP)
    f = thp(k, mm).folio
    assert f is not None
    assert madvise.do_madvise(k, mm, A, THP, "free") == 0
    assert uaccess.access(k, mm, A, A + K, write=True, stride=K, fill=False, byte=7)[0] == 0
    assert vmscan.shrink_folio(k, f) is vmscan.Reclaimed.ACTIVATED
    assert f.swapbacked
