"""mm/vma.c: __split_vma (with vma_adjust_trans_huge first: the PMD a new boundary would cut is split, and under
the lazy series that split can fail with ENOMEM before any VMA changes), vma_modify_flags (split at both ends,
set the flags, merge back with compatible neighbours) and the anonymous merge rules (flags, contiguous pgoff,
compatible anon_vma). One case each, its VMA layout in the docstring.
"""

from __future__ import annotations

import pytest
from vmtest import DESIGNS, THP, A, K, M, consistent, ev, kernel, mapped, set_fail, thp

from thpsim.model import fork, huge_memory, vma_modify
from thpsim.model.errnos import ENOMEM
from thpsim.model.kernel import MM
from thpsim.model.pgtable import HugePmd, PteTable
from thpsim.model.vma import VM_HUGEPAGE, VM_READ, VM_WRITE, Vma, can_merge, is_mergeable_anon_vma


def bounds(mm: MM) -> list[tuple[int, int]]:
    """The VMA boundaries as arena offsets."""
    return [(v.start - A, v.end - A) for v in mm.vmas]


# ---- __split_vma ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("design", DESIGNS)
def test_split_vma_inside_a_thp_splits_the_pmd_first(design: str) -> None:
    """
        0          1M          2M
        |<-------- one THP ------->|    __split_vma at 1M: vma_adjust_trans_huge splits the PMD,
        |<-- vma -->|<--- vma ---->|    then two VMAs with contiguous vm_pgoff
    """
    k = kernel(design)
    mm = mapped(k, 0, THP)
    thp(k, mm)
    v = mm.vmas.find(A)
    assert v is not None
    rc, upper = vma_modify.split_vma(k, mm, v, A + M)
    assert rc == 0 and upper is not None
    assert bounds(mm) == [(0, M), (M, THP)] and upper.pgoff == v.pgoff + M // K
    assert upper.anon_vma == v.anon_vma
    assert isinstance(mm.pt.slot(A), PteTable) and ev(k, "thp_split_pmd") == 1
    assert k.log.split_sites == ["__split_vma"]
    consistent(k)


def test_split_vma_on_a_pmd_boundary_splits_nothing() -> None:
    """
        0                      2M                     4M
        |<------- THP -------->|<------- THP -------->|    __split_vma at 2M: no PMD is cut
        |<------- vma -------->|<------- vma -------->|
    """
    k = kernel("upstream")
    mm = mapped(k, 0, 2 * THP)
    thp(k, mm, 0)
    thp(k, mm, THP)
    v = mm.vmas.find(A)
    assert v is not None
    assert vma_modify.split_vma(k, mm, v, A + THP)[0] == 0
    assert bounds(mm) == [(0, THP), (THP, 2 * THP)] and ev(k, "thp_split_pmd") == 0
    assert isinstance(mm.pt.slot(A), HugePmd) and isinstance(mm.pt.slot(A + THP), HugePmd)


def test_lazy_split_vma_fails_with_enomem_before_changing_the_vma() -> None:
    """
        0          1M          2M
        |<-------- one THP ------->|    lazy: __split_vma at 1M, pte_alloc_one@split fails:
        |<--------- vma ---------->|    -ENOMEM, the VMA and the huge PMD are unchanged
    """
    k = kernel("lazy")
    mm = mapped(k, 0, THP)
    thp(k, mm)
    set_fail(k, "pte_alloc_one@split")
    v = mm.vmas.find(A)
    assert v is not None
    assert vma_modify.split_vma(k, mm, v, A + M) == (ENOMEM, None)
    assert bounds(mm) == [(0, THP)] and isinstance(mm.pt.slot(A), HugePmd)
    assert ev(k, "thp_split_pmd_failed") == 1
    consistent(k)


def test_split_range_in_one_pmd_splits_it_once() -> None:
    """
        0    4K    8K                2M
        |<--------- one THP --------->|    split_range [4K, 8K): two __split_vma, the first splits the PMD,
        |vma |vma  |<------ vma ----->|    the second finds PTEs already
    """
    k = kernel("upstream")
    mm = mapped(k, 0, THP)
    thp(k, mm)
    assert vma_modify.split_range(k, mm, A + K, A + 2 * K) == 0
    assert bounds(mm) == [(0, K), (K, 2 * K), (2 * K, THP)] and ev(k, "thp_split_pmd") == 1


def test_vma_adjust_trans_huge_splits_the_next_vma_at_end() -> None:
    """
        0                      2M         3M                  4M
        |<------- vma -------->|<--------- next (THP) -------->|   end = 3M moves next->vm_start into its THP:
                                          ^ split next's PMD
    """
    k = kernel("upstream")
    mm = mapped(k, 0, THP)
    nxt_mm = mapped(k, THP, THP)
    assert nxt_mm is mm
    thp(k, mm, THP)
    vma, nxt = mm.vmas.find(A), mm.vmas.find(A + THP)
    assert vma is not None and nxt is not None
    if vma is nxt:   # merged into one VMA by mmap: make the boundary again
        assert vma_modify.split_vma(k, mm, vma, A + THP)[0] == 0
        vma, nxt = mm.vmas.find(A), mm.vmas.find(A + THP)
    assert vma is not None
    assert huge_memory.vma_adjust_trans_huge(k, mm, vma, A, A + 3 * M, nxt) == 0
    assert isinstance(mm.pt.slot(A + THP), PteTable) and ev(k, "thp_split_pmd") == 1


# ---- vma_modify_flags and merging ------------------------------------------------------------------------------
@pytest.mark.parametrize("design", DESIGNS)
def test_modify_flags_of_the_middle_then_back_merges_to_one_vma(design: str) -> None:
    """
        0          1M     1M+4K           2M
        |<-------------- one THP ------------->|
        |<- vma -->|<mid>|<------ vma ------->|    MADV_HUGEPAGE off on [1M, 1M+4K): three VMAs, PMD split
        |<--------------- one vma ------------>|    back on: commit_merge joins all three again
    """
    k = kernel(design)
    mm = mapped(k, 0, THP)
    thp(k, mm)
    v = mm.vmas.find(A)
    assert v is not None
    flags = v.flags
    assert vma_modify.vma_modify_flags(k, mm, v, A + M, A + M + K, flags | VM_HUGEPAGE) == 0
    assert bounds(mm) == [(0, M), (M, M + K), (M + K, THP)] and ev(k, "thp_split_pmd") == 1
    mid = mm.vmas.find(A + M)
    assert mid is not None and mid.flags == flags | VM_HUGEPAGE
    assert vma_modify.vma_modify_flags(k, mm, mid, A + M, A + M + K, flags) == 0
    assert bounds(mm) == [(0, THP)] and ev(k, "thp_split_pmd") == 1
    consistent(k)


def test_mmap_next_to_a_vma_merges() -> None:
    """
        0          2M          4M
        |<- vma -->|<- vma --->|    two adjacent anonymous mmaps with the same flags: one VMA
    """
    k = kernel("upstream")
    mm = mapped(k, 0, THP)
    mapped(k, THP, THP)
    assert bounds(mm) == [(0, 2 * THP)]


def test_merge_rules_flags_pgoff_anon_vma() -> None:
    """
        0     4K    8K
        |  a  |  b  |     can_merge(a, b): same flags, a.pgoff + 1 == b.pgoff, compatible anon_vma
    """
    rw = VM_READ | VM_WRITE
    a, b = Vma(0, K, rw, 0), Vma(K, 2 * K, rw, 1)
    assert can_merge(a, b)
    assert not can_merge(a, Vma(K, 2 * K, VM_READ, 1))                    # flags differ
    assert not can_merge(a, Vma(K, 2 * K, rw, 5))                         # pgoff not contiguous
    assert not can_merge(a, Vma(2 * K, 3 * K, rw, 2))                     # not adjacent
    assert can_merge(Vma(0, K, rw, 0, anon_vma=7), Vma(K, 2 * K, rw, 1, anon_vma=7))
    assert not can_merge(Vma(0, K, rw, 0, anon_vma=7), Vma(K, 2 * K, rw, 1, anon_vma=8))
    # one side without an anon_vma: only if the other's chain is singular (not inherited through fork)
    assert is_mergeable_anon_vma(Vma(0, K, rw, 0, anon_vma=7), b)
    assert not is_mergeable_anon_vma(Vma(0, K, rw, 0, anon_vma=7, anon_vma_singular=False), b)


def test_forked_child_vma_does_not_merge_with_a_fresh_neighbour() -> None:
    """
        child 0 |<- THP vma (forked anon_vma) ->|<- new mmap ->| 4M     the forked VMA's anon_vma chain is
                                                                        not singular: no merge
    """
    k = kernel("upstream")
    mm = mapped(k, 0, THP)
    thp(k, mm)
    assert fork.do_fork(k, mm, "child") == 0
    child = k.procs["child"]
    mapped(k, THP, THP, name="child")
    assert bounds(child) == [(0, THP), (THP, 2 * THP)]
    assert bounds(mm) == [(0, THP)]
