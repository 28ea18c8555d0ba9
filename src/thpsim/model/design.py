"""Designs as strategy objects: which kernel (upstream deposit, the lazy series, or a variant) is simulated.

Follows Linux 6.18 / 7.3.4 (upstream) and Usama Arif's "mm: thp: lazy PTE page table allocation at PMD split"
v3 (the lazy design and the review's variants). The model code never asks "which design is this?"; it asks the
strategy's questions, each a typed field validated at construction:

``deposit`` — is a PTE table allocated and deposited when an anonymous huge PMD is created (and so withdrawn at
split, freed at zap, moved by mremap/UFFDIO_MOVE, and is the old table deposited at collapse)? The table hooks
in huge_memory.py (``pgtable_alloc_deposit``, ``pgtable_trans_huge_deposit``, ``split_pgtable_alloc``, ...) are
the only readers; ``zap_split_failure`` — what a partial zap does when the split fails (series v3: skip the PMD
and return success; variants: zero in place, ENOMEM from every zap, or MADV_DONTNEED splitting up front);
``change_prot_split_failure`` — what change_pmd_range does (series v3: cond_resched and
retry the same PMD; variant: split up front before changing anything, failing with ENOMEM); ``rmap_tables`` —
where try_to_unmap/try_to_migrate get the split table (series v3: one pte_alloc_one per rmap_one call; variant:
a reserved pool with mempool semantics — the page allocator first, the pool when it fails, refilled by the
next page tables freed; a thpsim what-if that no reviewer proposed). ``pmd_swap`` — does reclaim install PMD-level swap entries (``lazy-pmd-swap``, docs/pmd-swap.md)?
``split_vma_order`` — whether ``__split_vma`` write-locks the VMA before or after splitting the PMD its new boundary
cuts (upstream: before; v3 02/24: after, which ``thpsim races`` shows lets a per-VMA-lock fault map a THP across
the boundary; ``lazy-vma-lock-first`` is the fix). ``arch_needs_pgtable_deposit()`` (powerpc hash) overrides
everything: the design then deposits and never fails a split, as series patch 17 does.

Left out: designs that deposit lazily per PMD table or pre-allocate per VMA (not proposed in the thread).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TypeVar

from thpsim.errors import ThpsimError
from thpsim.model.arch import Arch

__all__ = ["DESIGNS", "VARIANTS", "ChangeProtSplitFailure", "Design", "RmapTables", "SplitVmaOrder",
           "ZapSplitFailure", "get_design"]


class ZapSplitFailure(StrEnum):
    """zap_pmd_range when the split of a partially zapped huge PMD fails (lazy designs only)."""

    SKIP = "skip"        # series v3: leave the PMD mapped, return success
    ZERO = "zero"        # zero the skipped range in place (only if nobody else maps the folio), else ENOMEM
    ENOMEM = "enomem"    # fail the syscall with ENOMEM
    UPFRONT = "upfront"  # MADV_DONTNEED splits the partial PMDs before zapping anything (ENOMEM, nothing zapped);
    #                      the other zap callers skip as v3 does


class ChangeProtSplitFailure(StrEnum):
    """change_pmd_range when the split of a partially covered huge PMD fails (lazy designs only)."""

    RETRY = "retry"        # series v3: cond_resched(), goto again (same PMD, no bound)
    UPFRONT = "upfront"    # split the partial PMDs first, ENOMEM before changing anything


class SplitVmaOrder(StrEnum):
    """Where __split_vma / vma_shrink split a huge PMD the new boundary cuts, relative to vma_start_write()."""

    LOCK_THEN_SPLIT = "lock_then_split"    # upstream (and the fix): write-lock the VMA first, no fault can race
    SPLIT_THEN_LOCK = "split_then_lock"    # series v3 02/24: vma_adjust_trans_huge at the top, before the lock


class RmapTables(StrEnum):
    """Where try_to_unmap / try_to_migrate get the PTE table for a PMD split (lazy designs only)."""

    PREALLOC = "prealloc"            # series v3: pte_alloc_one per rmap_one call (PF_MEMALLOC in reclaim)
    RESERVE_POOL = "reserve_pool"    # thpsim what-if: a mempool (allocator first, then the pool; refilled as
    #                                  page tables are freed, outside reclaim)


E = TypeVar("E", bound=StrEnum)


def _enum(cls: type[E], value: object, field: str, design: str) -> E:
    try:
        return cls(value)  # type: ignore[arg-type]   # anything else raises ValueError, reported below
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)
        raise ThpsimError(f"design {design!r}: {field} must be one of {allowed}, not {value!r}") from None


@dataclass(frozen=True)
class Design:
    name: str
    deposit: bool
    zap_split_failure: ZapSplitFailure = ZapSplitFailure.SKIP
    change_prot_split_failure: ChangeProtSplitFailure = ChangeProtSplitFailure.RETRY
    rmap_tables: RmapTables = RmapTables.PREALLOC
    reserve_pool_size: int = 0
    split_vma_order: SplitVmaOrder | None = None     # None: v3 02's order when the split can fail, else upstream's
    pmd_swap: bool = False                           # reclaim installs PMD swap entries (the follow-up series)
    description: str = ""

    def __post_init__(self) -> None:
        """Validate and normalise: the policy fields accept their enum or its string value."""
        if not isinstance(self.deposit, bool):
            raise ThpsimError(f"design {self.name!r}: deposit must be True or False, not {self.deposit!r}")
        for fld, cls in (("zap_split_failure", ZapSplitFailure),
                         ("change_prot_split_failure", ChangeProtSplitFailure), ("rmap_tables", RmapTables)):
            object.__setattr__(self, fld, _enum(cls, getattr(self, fld), fld, self.name))
        order = (SplitVmaOrder.LOCK_THEN_SPLIT if self.deposit else SplitVmaOrder.SPLIT_THEN_LOCK) \
            if self.split_vma_order is None else _enum(SplitVmaOrder, self.split_vma_order, "split_vma_order", self.name)
        object.__setattr__(self, "split_vma_order", order)
        if isinstance(self.reserve_pool_size, bool) or not isinstance(self.reserve_pool_size, int) \
                or self.reserve_pool_size < 0:
            raise ThpsimError(f"design {self.name!r}: reserve_pool_size must be an integer >= 0, "
                              f"not {self.reserve_pool_size!r}")
        if not isinstance(self.pmd_swap, bool):
            raise ThpsimError(f"design {self.name!r}: pmd_swap must be True or False, not {self.pmd_swap!r}")
        if self.pmd_swap and self.deposit:
            raise ThpsimError(f"design {self.name!r}: pmd_swap is modelled on the lazy series only (deposit=False)")
        if self.rmap_tables is RmapTables.RESERVE_POOL and self.reserve_pool_size == 0:
            raise ThpsimError(f"design {self.name!r}: rmap_tables='reserve_pool' needs reserve_pool_size > 0")

    def for_arch(self, arch: Arch) -> Design:
        """arch_needs_pgtable_deposit() overrides the design (powerpc hash keeps the deposit), and an arch without
        the PMD swap entry helpers keeps splitting at swap-out (pmd_swap off)."""
        d = self
        if d.pmd_swap and not arch.pmd_swap_entries:
            d = replace(d, pmd_swap=False)
        if arch.needs_pgtable_deposit and not d.deposit:
            d = replace(d, deposit=True, pmd_swap=False)
        return d

    @property
    def split_can_fail(self) -> bool:
        """A PMD split allocates its PTE table (no deposit to withdraw) and so can fail with -ENOMEM."""
        return not self.deposit

    @property
    def pool_tables(self) -> int:
        """Tables held in the rmap reserve pool (0 unless ``rmap_tables`` is the reserve pool)."""
        return self.reserve_pool_size if self.rmap_tables is RmapTables.RESERVE_POOL else 0


DESIGNS: dict[str, Design] = {
    d.name: d
    for d in (
        Design("upstream", True, description="Linux 6.18: one PTE table deposited per anonymous huge PMD; splits "
                                             "never allocate and cannot fail"),
        Design("lazy", False, description="Usama Arif's series v3 as posted: no deposit, pte_alloc_one at split, "
                                          "callers handle -ENOMEM; zap skips, mprotect retries"),
        Design("lazy-zap-zero", False, zap_split_failure=ZapSplitFailure.ZERO,
               description="lazy, but a failed split in a partial zap zeroes the skipped range (Kiryl's minimum)"),
        Design("lazy-zap-enomem", False, zap_split_failure=ZapSplitFailure.ENOMEM,
               description="lazy, but MADV_DONTNEED fails with ENOMEM when a split fails (opt-in skip)"),
        Design("lazy-dontneed-upfront", False, zap_split_failure=ZapSplitFailure.UPFRONT,
               description="thpsim what-if after Kiryl's opt-in point: lazy, but MADV_DONTNEED splits the "
                           "partial PMDs at the range ends before zapping and fails with ENOMEM, nothing zapped; "
                           "other zap callers skip as v3 does"),
        Design("lazy-mprotect-upfront", False, change_prot_split_failure=ChangeProtSplitFailure.UPFRONT,
               description="lazy, but change_protection splits the partial PMDs up front and fails with ENOMEM "
                           "before changing anything (Kiryl's suggestion)"),
        Design("lazy-pmd-swap", False, pmd_swap=True,
               description="lazy plus the follow-up \"mm: PMD-level swap entries for anonymous THPs\" (v1/v2): "
                           "reclaim swaps a PMD-mapped THP out as one PMD swap entry per mapping when a whole "
                           "512-slot swap cluster is free (no PTE table); swap-in maps it whole again"),
        Design("lazy-vma-lock-first", False, split_vma_order=SplitVmaOrder.LOCK_THEN_SPLIT,
               description="thpsim's fix for the race `thpsim races` found: lazy, but __split_vma and vma_shrink "
                           "write-lock the VMA before vma_adjust_trans_huge (v3 02/24 splits first), so no "
                           "per-VMA-lock fault can map a THP across the new boundary"),
        Design("lazy-reclaim-pool", False, rmap_tables=RmapTables.RESERVE_POOL, reserve_pool_size=64,
               description="thpsim what-if (not proposed in the thread): lazy, but reclaim's split tables come "
                           "from a 64-table mempool when the allocator (without PF_MEMALLOC reserves) fails; "
                           "the pool is refilled by the page tables freed later"),
    )
}
VARIANTS = ("lazy-zap-zero", "lazy-zap-enomem", "lazy-dontneed-upfront", "lazy-mprotect-upfront", "lazy-reclaim-pool")


def get_design(name: str) -> Design:
    try:
        return DESIGNS[name]
    except KeyError:
        raise ThpsimError(f"unknown design {name!r}; choose one of: {', '.join(DESIGNS)}") from None
