"""mm/swapfile.c: 512-slot clusters, and what reclaim does when no whole cluster is free.

    cluster 0: [ . . . x . . . ]   fragmented (one slot in use): order-0 only
    cluster 1: [ . . . . . . . ]   free: an order-9 folio takes it whole
"""

from __future__ import annotations

import pytest
from vmtest import DESIGNS, THP, A, consistent, ev, kernel, mapped, thp

from thpsim.errors import ThpsimError
from thpsim.model import fork, invariants, memory, uaccess, vmscan
from thpsim.model.knobs import Knobs
from thpsim.model.pgtable import PTE_SWAP, PteTable
from thpsim.model.swapfile import SwapSpace


def test_clusters_by_order() -> None:
    s = SwapSpace(512, clusters=2, fragmented=1)
    assert s.free_clusters == 1
    big = s.alloc(9)
    assert big == 512 and s.alloc(9) is None                 # cluster 0 is fragmented, cluster 1 taken
    small = s.alloc(0)
    assert small is not None and small < 512                 # the fragmented cluster serves order 0
    for slot in range(512, 1024):
        s.free(slot)
    assert s.free_clusters == 1 and s.alloc(9) == 512        # an emptied cluster is free again
    s.dup(512)
    s.free(512)
    assert s.references() == 512 + 1
    with pytest.raises(AssertionError):
        s.free(5)                                            # never allocated


def test_unlimited_device_always_has_a_cluster() -> None:
    s = SwapSpace(512)
    assert [s.alloc(9) for _ in range(3)] == [0, 512, 1024] and s.free_clusters == -1


def test_bad_knobs_are_one_line_errors() -> None:
    with pytest.raises(ThpsimError, match="swap_fragmented .3. cannot exceed swap_clusters .2."):
        Knobs(swap=True, swap_clusters=2, swap_fragmented=3)
    with pytest.raises(ThpsimError, match="swap_clusters must be a number of swap clusters"):
        Knobs(swap=True, swap_clusters=-1)


def _filled_thp(k, mm):  # noqa: ANN001, ANN202
    """A THP whose every page holds data (zero-filled pages of a split go to the zero page, not to swap)."""
    hp = thp(k, mm)
    assert uaccess.access(k, mm, A, A + THP, write=True, stride=4096, fill=True, byte=7)[0] == 0
    return hp


def _swapped(k, mm) -> int:  # noqa: ANN001
    t = mm.pt.slot(A)
    return sum(1 for p in t.ptes.values() if p.kind == PTE_SWAP) if isinstance(t, PteTable) else 0


@pytest.mark.parametrize("design", DESIGNS)
def test_a_whole_free_cluster_swaps_the_thp_whole(design: str) -> None:
    k = kernel(design, swap=True, swap_clusters=2, swap_fragmented=1)
    mm = mapped(k, 0, THP)
    hp = thp(k, mm)
    assert vmscan.shrink_folio(k, hp.folio) is vmscan.Reclaimed.SWAPPED
    assert ev(k, "thp_swpout") == 1 and ev(k, "thp_swpout_fallback") == 0 and _swapped(k, mm) == 512
    assert k.swap is not None and k.swap.references() == 512 and k.swap.free_clusters == 0
    consistent(k)


@pytest.mark.parametrize("design", DESIGNS)
def test_no_whole_cluster_splits_the_folio_first(design: str) -> None:
    """Both clusters fragmented: folio_alloc_swap fails for order 9 → split_folio_to_list, thp_swpout_fallback,
    and the 512 pages go to the fragmented clusters one by one."""
    k = kernel(design, swap=True, swap_clusters=2, swap_fragmented=2)
    mm = mapped(k, 0, THP)
    hp = _filled_thp(k, mm)
    assert vmscan.shrink_folio(k, hp.folio) is vmscan.Reclaimed.SPLIT_SWAPPED
    assert ev(k, "thp_swpout") == 0 and ev(k, "thp_swpout_fallback") == 1 and ev(k, "thp_split_page") == 1
    assert _swapped(k, mm) == 512
    consistent(k)


def test_a_full_device_swaps_what_fits() -> None:
    """One fragmented cluster: 511 free slots for 512 pages; the last page stays (activate_locked)."""
    k = kernel("lazy", swap=True, swap_clusters=1, swap_fragmented=1)
    mm = mapped(k, 0, THP)
    hp = _filled_thp(k, mm)
    vmscan.shrink_folio(k, hp.folio)
    assert _swapped(k, mm) == 511 and mm.anon_pages == 1
    consistent(k)


def test_fork_zap_and_swap_in_keep_the_slot_counts() -> None:
    k = kernel("lazy", swap=True, swap_clusters=4)
    mm = mapped(k, 0, THP)
    hp = thp(k, mm)
    vmscan.shrink_folio(k, hp.folio)
    assert fork.do_fork(k, mm, "child") == 0
    assert k.swap is not None and k.swap.references() == 1024
    memory.handle_mm_fault(k, mm, A, True)                   # swap-in of one page in the parent
    assert k.swap.references() == 1023
    v = k.procs["child"].vmas.find(A)
    assert v is not None
    memory.zap_pmd_range(k, k.procs["child"], v, A, A + THP)
    assert k.swap.references() == 511 and invariants.check(k) == []
