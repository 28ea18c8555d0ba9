"""mm/huge_memory.c: split_huge_pmd, zap_huge_pmd, copy_huge_pmd, move_huge_pmd, the deposit/withdraw hooks and
pgtables_bytes, under the upstream design (a table deposited per huge PMD) and the lazy series (a table
allocated at split, which can fail). Style of tools/testing/vma: one small case each, its address diagram in
the docstring, asserting the counters that would move if the behaviour changed.
"""

from __future__ import annotations

import pytest
from vmtest import (
    DESIGNS,
    NR,
    THP,
    A,
    G,
    K,
    M,
    consistent,
    ev,
    fault,
    kernel,
    mapped,
    pte_table,
    set_fail,
    tables,
    thp,
)

from thpsim.model import huge_memory
from thpsim.model.engine import make_kernel
from thpsim.model.errnos import ENOMEM
from thpsim.model.pgtable import PTE_PAGE, PTE_ZERO, HugePmd, PteTable


# ---- the deposit at huge-PMD creation --------------------------------------------------------------------------
@pytest.mark.parametrize("design, nr_ptes, deposits", [("upstream", 1, 1), ("lazy", 0, 0)])
def test_thp_fault_deposits_one_table_upstream_none_lazy(design: str, nr_ptes: int, deposits: int) -> None:
    """
        0                      2M
        |<------- one THP ---->|     write fault: do_huge_pmd_anonymous_page
        PUD table + PMD table (+ the deposited PTE table, upstream only)
    """
    k = kernel(design)
    mm = mapped(k, 0, THP)
    thp(k, mm)
    assert tables(mm) == (nr_ptes, 1, 1, deposits)
    assert mm.pt.pgtables_bytes == (2 + nr_ptes) * K
    assert k.vmstat.nr_pagetable_bytes == (2 + nr_ptes) * K
    assert k.alloc.per_site.get("pte_alloc_one@fault", 0) == nr_ptes
    assert ev(k, "thp_fault_alloc") == 1 and k.vmstat.nr_anon_thps == 1 and mm.anon_pages == NR
    consistent(k)


@pytest.mark.parametrize("design", DESIGNS)
def test_pgtables_bytes_of_four_thps_in_one_pmd_table(design: str) -> None:
    """
        0      2M     4M     6M     8M
        |<THP>|<THP>|<THP>|<THP>|       one PMD table, four huge PMDs: 4 deposits upstream, 0 lazy
    """
    k = kernel(design)
    mm = mapped(k, 0, 4 * THP)
    for i in range(4):
        thp(k, mm, i * THP)
    deposits = 4 if design == "upstream" else 0
    assert tables(mm) == (deposits, 1, 1, deposits)
    assert mm.pt.pgtables_bytes == (2 + deposits) * K
    consistent(k)


def test_deposit_pte_alloc_failure_is_vm_fault_oom_and_frees_the_folio() -> None:
    """
        0                      2M
        |<------- THP? ------->|     upstream: pte_alloc_one@fault fails -> VM_FAULT_OOM, folio freed
    """
    k = kernel("upstream", fail="pte_alloc_one@fault")
    mm = mapped(k, 0, THP)
    pages_before = k.alloc.pages_in_use
    assert huge_memory.do_huge_pmd_anonymous_page(k, mm, mm.vmas.find(A), A, True) == 0x1   # VM_FAULT_OOM
    assert mm.pt.slot(A) is None and k.alloc.pages_in_use == pages_before
    assert ev(k, "thp_fault_alloc") == 0 and k.vmstat.nr_anon_thps == 0


# ---- split_huge_pmd --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("design", DESIGNS)
def test_split_huge_pmd_maps_512_ptes(design: str) -> None:
    """
        0                      2M
        |<------- one THP ---->|     __split_huge_pmd: one PTE table, 512 PTEs of the folio
        |p0|p1| ........ |p511|      upstream withdraws the deposit, lazy allocates (pte_alloc_one@split)
    """
    k = kernel(design)
    mm = mapped(k, 0, THP)
    f = thp(k, mm).folio
    assert f is not None
    bytes_before = k.vmstat.nr_pagetable_bytes
    assert huge_memory.__split_huge_pmd(k, mm, mm.vmas.find(A), A, caller="t") == 0
    t = pte_table(mm, 0)
    assert len(t.ptes) == NR and all(p.kind == PTE_PAGE and p.folio is f and p.idx == i for i, p in t.ptes.items())
    assert ev(k, "thp_split_pmd") == 1 and k.log.split_sites == ["t"]
    assert tables(mm) == (1, 1, 1, 0)                   # the table is live, no deposit left
    assert k.vmstat.nr_pagetable_bytes - bytes_before == (0 if design == "upstream" else K)
    assert k.alloc.per_site.get("pte_alloc_one@split", 0) == (0 if design == "upstream" else 1)
    # the PMD mapping became 512 PTE mappings: no entire mapcount, every page mapped once, not partially
    assert (f.entire_mapcount, f.nr_pages_mapped, f.pte_mapcount) == (0, NR, [1] * NR)
    assert k.vmstat.nr_anon_thps == 0 and not f.partially_mapped and mm.anon_pages == NR
    consistent(k)


def test_lazy_failed_split_leaves_the_pmd_huge_and_counts_thp_split_pmd_failed() -> None:
    """
        0                      2M
        |<------- one THP ---->|     lazy: pte_alloc_one@split fails -> -ENOMEM, PMD still huge
    """
    k = kernel("lazy")
    mm = mapped(k, 0, THP)
    f = thp(k, mm).folio
    set_fail(k, "pte_alloc_one@split")
    assert huge_memory.__split_huge_pmd(k, mm, mm.vmas.find(A), A + M, caller="t") == ENOMEM
    assert isinstance(mm.pt.slot(A), HugePmd) and mm.pt.slot(A).folio is f   # type: ignore[union-attr]
    assert ev(k, "thp_split_pmd") == 0 and ev(k, "thp_split_pmd_failed") == 1 and k.log.failed_sites == ["t"]
    assert tables(mm) == (0, 1, 1, 0) and f is not None and f.entire_mapcount == 1
    consistent(k)


def test_upstream_split_never_allocates_even_when_allocations_fail() -> None:
    """
        0                      2M
        |<------- one THP ---->|     upstream: every pte_alloc_one fails, the split still succeeds (deposit)
    """
    k = kernel("upstream")
    mm = mapped(k, 0, THP)
    thp(k, mm)
    set_fail(k, "pte_alloc_one")
    assert huge_memory.__split_huge_pmd(k, mm, mm.vmas.find(A), A, caller="t") == 0
    assert ev(k, "thp_split_pmd") == 1 and ev(k, "thp_split_pmd_failed") == 0
    consistent(k)


@pytest.mark.parametrize("design, allocs", [("upstream", 0), ("lazy", 1)])
def test_split_huge_pmd_address_on_a_pte_table_allocates_and_frees_under_lazy(design: str, allocs: int) -> None:
    """
        0       4K                 2M
        |p0|    (PTE table, not huge)|    split_huge_pmd_address: mm_find_pmd() finds the PMD; lazy allocates
                                          before the lock, sees no huge PMD, frees the table (never counted)
    """
    k = kernel(design, thp_enabled="never")
    mm = mapped(k, 0, THP)
    assert huge_memory.split_huge_pmd_address(k, mm, mm.vmas.find(A), A, caller="t") == 0   # no PMD table yet
    assert k.alloc.per_site.get("pte_alloc_one@split", 0) == 0
    fault(k, mm, 0)                                           # a 4K page: PMD table + PTE table
    from_ = 0
    before = k.vmstat.nr_pagetable_bytes
    assert before > from_ and isinstance(mm.pt.slot(A), PteTable)
    assert huge_memory.split_huge_pmd_address(k, mm, mm.vmas.find(A), A, caller="t") == 0
    assert k.alloc.per_site.get("pte_alloc_one@split", 0) == allocs
    assert k.vmstat.nr_pagetable_bytes == before and ev(k, "thp_split_pmd") == 0
    consistent(k)


def test_split_of_the_huge_zero_pmd_maps_512_zero_ptes() -> None:
    """
        0                      2M
        |<--- huge zero PMD -->|     read fault (use_zero_page), then split: 512 PTEs of the 4K zero page
    """
    k = kernel("upstream")
    mm = mapped(k, 0, THP)
    fault(k, mm, 0, write=False)
    hp = mm.pt.slot(A)
    assert isinstance(hp, HugePmd) and hp.is_zero and mm.huge_zero_ref and tables(mm) == (1, 1, 1, 1)
    assert huge_memory.__split_huge_pmd(k, mm, mm.vmas.find(A), A, caller="t") == 0
    t = pte_table(mm, 0)
    assert len(t.ptes) == NR and {p.kind for p in t.ptes.values()} == {PTE_ZERO}
    assert ev(k, "thp_split_pmd") == 1 and mm.anon_pages == 0 and tables(mm) == (1, 1, 1, 0)
    consistent(k)


# ---- zap_huge_pmd ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("design", DESIGNS)
def test_zap_huge_pmd_frees_folio_and_deposit(design: str) -> None:
    """
        0                      2M
        |<------- one THP ---->|     zap_huge_pmd: the folio is freed, the deposit (upstream) withdrawn+freed
        |                      |     the PMD table stays (free_pgtables frees it later)
    """
    k = kernel(design)
    mm = mapped(k, 0, THP)
    f = thp(k, mm).folio
    assert f is not None
    huge_memory.zap_huge_pmd(k, mm, A)
    assert mm.pt.slot(A) is None and f.freed and mm.anon_pages == 0 and k.vmstat.nr_anon_thps == 0
    assert tables(mm) == (0, 1, 1, 0) and k.vmstat.nr_pagetable_bytes == 2 * K
    assert ev(k, "thp_split_pmd") == 0
    consistent(k)


# ---- copy_huge_pmd ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("design, child_ptes", [("upstream", 1), ("lazy", 0)])
def test_copy_huge_pmd_shares_the_thp_and_deposits_in_the_child(design: str, child_ptes: int) -> None:
    """
        parent 0 |<------- THP ------->| 2M      copy_huge_pmd: both PMDs map the folio, write-protected
        child  0 |<------- THP ------->| 2M      entire mapcount 2; the child deposits its own table (upstream)
    """
    k = kernel(design)
    mm = mapped(k, 0, THP)
    hp = thp(k, mm)
    f = hp.folio
    assert f is not None
    child = k.new_mm("child")
    assert k.pmd_alloc(child, A)
    assert huge_memory.copy_huge_pmd(k, child, mm, mm.vmas.find(A), A, hp) == 0
    chp = child.pt.slot(A)
    assert isinstance(chp, HugePmd) and chp.folio is f and not chp.write and not hp.write
    assert f.entire_mapcount == 2 and not f.anon_exclusive and k.vmstat.nr_anon_thps == 1
    assert tables(child) == (child_ptes, 1, 1, child_ptes) and child.anon_pages == NR
    assert k.alloc.per_site.get("pte_alloc_one@fork", 0) == child_ptes


def test_copy_huge_pmd_deposit_failure_is_enomem() -> None:
    """
        parent 0 |<------- THP ------->| 2M      upstream: pte_alloc_one@fork fails -> -ENOMEM, nothing shared
        child  0 |                     | 2M
    """
    k = kernel("upstream")
    mm = mapped(k, 0, THP)
    hp = thp(k, mm)
    child = k.new_mm("child")
    assert k.pmd_alloc(child, A)
    set_fail(k, "pte_alloc_one@fork")
    assert huge_memory.copy_huge_pmd(k, child, mm, mm.vmas.find(A), A, hp) == ENOMEM
    assert child.pt.slot(A) is None and hp.write and hp.folio is not None and hp.folio.entire_mapcount == 1


@pytest.mark.parametrize("design", DESIGNS)
def test_copy_huge_pmd_of_a_pinned_thp_splits_the_parent_and_returns_eagain(design: str) -> None:
    """
        parent 0 |p0|p1| ...... |p511| 2M    folio_try_dup_anon_rmap_pmd fails (pinned, exclusive):
        child  0 |                   | 2M    the fork table is freed, the parent split, -EAGAIN (copy PTEs)
    """
    k = kernel(design)
    mm = mapped(k, 0, THP)
    hp = thp(k, mm)
    assert hp.folio is not None
    hp.folio.pins = 1
    child = k.new_mm("child")
    assert k.pmd_alloc(child, A)
    before = k.vmstat.nr_pagetable_bytes
    assert huge_memory.copy_huge_pmd(k, child, mm, mm.vmas.find(A), A, hp) == -11
    assert isinstance(mm.pt.slot(A), PteTable) and child.pt.slot(A) is None
    assert ev(k, "thp_split_pmd") == 1 and k.log.split_sites == ["copy_huge_pmd"]
    # upstream: the fork's table is freed again and the parent's deposit becomes its PTE table;
    # lazy: no fork table, one fresh split table
    assert k.vmstat.nr_pagetable_bytes - before == (0 if design == "upstream" else K)


# ---- move_huge_pmd (mremap) ------------------------------------------------------------------------------------
@pytest.mark.parametrize("design, old_dep, new_dep", [("upstream", 0, 1), ("lazy", 0, 0)])
def test_move_huge_pmd_to_another_pmd_table_moves_the_deposit(design: str, old_dep: int, new_dep: int) -> None:
    """
        0          2M                 1G         1G+2M
        |<- THP ->|     ...   ->      |<- THP ->|     different PMD tables (ptlocks): the deposit follows
    """
    k = kernel(design)
    mm = mapped(k, 0, THP)
    thp(k, mm)
    assert k.pmd_alloc(mm, A + G)
    assert huge_memory.move_huge_pmd(k, mm, A, A + G)
    assert isinstance(mm.pt.slot(A + G), HugePmd) and mm.pt.slot(A) is None
    assert mm.pt.pmd_tables[A >> mm.pt.pud_shift].deposits == old_dep
    assert mm.pt.pmd_tables[(A + G) >> mm.pt.pud_shift].deposits == new_dep
    assert mm.pt.nr_ptes == new_dep


def test_move_huge_pmd_within_one_pmd_table_keeps_the_deposit() -> None:
    """
        0          2M         4M        6M
        |<- THP ->|    ->     |<- THP ->|     same PMD table: pmd_move_must_withdraw() is false
    """
    k = kernel("upstream")
    mm = mapped(k, 0, THP)
    thp(k, mm)
    assert huge_memory.move_huge_pmd(k, mm, A, A + 2 * THP)
    assert tables(mm) == (1, 1, 1, 1)
    assert not huge_memory.move_huge_pmd(k, mm, A + 2 * THP, A + 2 * THP)   # destination occupied


# ---- the deposit hooks themselves ------------------------------------------------------------------------------
@pytest.mark.parametrize("design, expect", [("upstream", (0, 3)), ("lazy", (0, 0))])
def test_pmd_deposits_hook(design: str, expect: tuple[int, int]) -> None:
    k = kernel(design)
    assert (huge_memory.pmd_deposits(k, 0), huge_memory.pmd_deposits(k, 3)) == expect


def test_ppc64_hash_deposit_overrides_the_lazy_design() -> None:
    """arch_needs_pgtable_deposit(): the lazy design deposits and its splits cannot fail."""
    k = make_kernel(design="lazy", arch="ppc64-hash")
    assert k.design.deposit and not k.design.split_can_fail and huge_memory.pmd_deposits(k, 1) == 1
