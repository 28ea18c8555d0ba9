"""Designs as strategy objects: which kernel (upstream deposit, the lazy series, or a variant) is simulated.

The model code never asks "which design is this?"; it asks the strategy's questions:
``deposit`` — is a PTE table allocated and deposited when an anonymous huge PMD is created (and so withdrawn at
split, freed at zap, and is the old table deposited at collapse)?; ``zap_split_failure`` — what a partial zap does
when the split fails (series v3: skip the PMD and return success); ``change_prot_split_failure`` — what
change_pmd_range does (series v3: cond_resched and retry the same PMD; variant: split up front before changing
anything, failing with ENOMEM); ``rmap_tables`` — where try_to_unmap/try_to_migrate get the split table
(series v3: one pte_alloc_one per rmap_one call; variant: a reserved pool refilled outside reclaim).
``arch_needs_pgtable_deposit()`` (powerpc hash) overrides everything: the design then deposits and never fails a
split, as series patch 17 does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from thpsim.errors import ThpsimError
from thpsim.model.arch import Arch


@dataclass(frozen=True)
class Design:
    name: str
    deposit: bool
    zap_split_failure: str = "skip"          # skip | zero | enomem
    change_prot_split_failure: str = "retry"  # retry | upfront
    rmap_tables: str = "prealloc"             # prealloc | reserve_pool
    reserve_pool_size: int = 0
    description: str = ""

    def for_arch(self, arch: Arch) -> Design:
        """arch_needs_pgtable_deposit() overrides the design (powerpc hash keeps the deposit)."""
        if arch.needs_pgtable_deposit and not self.deposit:
            return replace(self, deposit=True)
        return self

    @property
    def split_can_fail(self) -> bool:
        return not self.deposit


DESIGNS: dict[str, Design] = {
    d.name: d
    for d in (
        Design("upstream", True, description="Linux 6.18: one PTE table deposited per anonymous huge PMD; splits "
                                             "never allocate and cannot fail"),
        Design("lazy", False, description="Usama Arif's series v3 as posted: no deposit, pte_alloc_one at split, "
                                          "callers handle -ENOMEM; zap skips, mprotect retries"),
        Design("lazy-zap-zero", False, zap_split_failure="zero",
               description="lazy, but a failed split in a partial zap zeroes the skipped range (Kiryl's minimum)"),
        Design("lazy-zap-enomem", False, zap_split_failure="enomem",
               description="lazy, but MADV_DONTNEED fails with ENOMEM when a split fails (opt-in skip)"),
        Design("lazy-mprotect-upfront", False, change_prot_split_failure="upfront",
               description="lazy, but change_protection splits the partial PMDs up front and fails with ENOMEM "
                           "before changing anything (Kiryl's suggestion)"),
        Design("lazy-reclaim-pool", False, rmap_tables="reserve_pool", reserve_pool_size=64,
               description="lazy, but reclaim takes split tables from a reserved pool (a mempool) instead of "
                           "PF_MEMALLOC reserves"),
    )
}
VARIANTS = ("lazy-zap-zero", "lazy-zap-enomem", "lazy-mprotect-upfront", "lazy-reclaim-pool")


def get_design(name: str) -> Design:
    try:
        return DESIGNS[name]
    except KeyError:
        raise ThpsimError(f"unknown design {name!r}; choose one of: {', '.join(DESIGNS)}") from None
