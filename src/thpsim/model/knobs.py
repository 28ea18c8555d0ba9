"""Kernel knobs that change THP page-table behaviour, as one frozen value object.

Models /sys/kernel/mm/transparent_hugepage/{enabled,defrag,use_zero_page,khugepaged/max_ptes_*} and the
config options CONFIG_PT_RECLAIM, CONFIG_PERSISTENT_HUGE_ZERO_FOLIO, CONFIG_THP_SWAP, CONFIG_PGTABLE_LEVELS,
CONFIG_NO_PAGE_MAPCOUNT, plus whether swap is present and how big and fragmented the swap device is. The live runner fills it from sysfs and
/proc/config.gz (thpsim.live.env) so the model matches the running kernel (6.12 behaviour where the knobs below say so, 6.18 / 7.3.4 by default).
Left out: shmem_enabled and the per-size mTHP ``hugepages-*kB/enabled`` knobs (only PMD order is modelled),
khugepaged's scan timing (pages_to_scan, scan_sleep_millisecs), and two knobs kept for the trace format and
LiveEnv but not read by the model: ``max_ptes_swap`` (the scan refuses every swap PTE: no swap-in during
collapse) and ``no_page_mapcount`` (the folio keeps CONFIG_PAGE_MAPCOUNT's per-page mapcounts).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from thpsim.errors import ThpsimError

__all__ = ["Knobs", "THP_MODES"]

THP_MODES = ("always", "madvise", "never")


@dataclass(frozen=True)
class Knobs:
    thp_enabled: str = "madvise"
    thp_defrag: str = "madvise"
    use_zero_page: bool = True
    pt_reclaim: bool = True
    # khugepaged's limits; None: the kernel's defaults for the arch (HPAGE_PMD_NR - 1, / 8, / 2: 511, 64, 256 on
    # x86-64), resolved by Kernel (mm/khugepaged.c khugepaged_init)
    max_ptes_none: int | None = None
    max_ptes_swap: int | None = None
    max_ptes_shared: int | None = None
    swap: bool = False
    thp_swap: bool = True
    # the swap device (model/swapfile.py): clusters of HPAGE_PMD_NR slots (None: room for everything), and how
    # many of them start with one slot in use (a fragmented device: no whole cluster for a THP there)
    swap_clusters: int | None = None
    swap_fragmented: int = 0
    # zswap was enabled at some point (zswap_never_enabled() false): PMD swap entries are not used (PMD swap v2)
    zswap_ever_enabled: bool = False
    pgtable_levels: int = 4
    persistent_huge_zero: bool = False
    huge_zero_allocated: bool = False   # is the global huge zero folio already allocated at trace start?
    no_page_mapcount: bool = False
    madv_guard: bool = True             # MADV_GUARD_INSTALL/REMOVE exist (6.13+); EINVAL before
    collapse_small_einval: bool = True  # MADV_COLLAPSE with no whole PMD in range: EINVAL (6.18), 0 (7.3.4)
    # behaviour that changed between 6.12 (measured in the debian-6.12 guest) and 6.18/7.3.4 (host, lab guests):
    collapse_needs_writable: bool = False  # collapse needs one writable PTE (SCAN_PAGE_RO → EINVAL): 6.12
    huge_zero_wp_thp: bool = True          # a write to the huge zero PMD allocates a THP (6.12: split + 4K COW)
    pte_batch_unmap: bool = True           # collapse / lazyfree discard unmap a large folio in PTE batches
                                           # (6.12: one PTE at a time, so the folio is queued for deferred split)
    # reclaim discards a clean PMD-mapped lazyfree THP at PMD level, without a split (__discard_anon_folio_pmd_
    # locked: 6.15 until "mm/rmap: don't discard lazyfree THPs at PMD level", stable 7.3.2; measured on 7.2.13)
    lazyfree_pmd_discard: bool = False

    def __post_init__(self) -> None:
        if self.thp_enabled not in THP_MODES:
            raise ThpsimError(f"thp_enabled must be one of {', '.join(THP_MODES)} (got {self.thp_enabled!r})")
        for name in ("max_ptes_none", "max_ptes_swap", "max_ptes_shared"):   # the upper bound is per arch
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):   # (Kernel: HPAGE_PMD_NR - 1)
                raise ThpsimError(f"{name} must be a number of PTEs, 0 or more (got {v!r})")
        for name in ("swap_clusters", "swap_fragmented"):
            v = getattr(self, name)
            if (v is not None or name == "swap_fragmented") and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ThpsimError(f"{name} must be a number of swap clusters, 0 or more (got {v!r})")
        if self.swap_clusters is not None and self.swap_fragmented > self.swap_clusters:
            raise ThpsimError(f"swap_fragmented ({self.swap_fragmented}) cannot exceed swap_clusters "
                              f"({self.swap_clusters})")
        if self.pgtable_levels not in (4, 5):
            raise ThpsimError(f"pgtable_levels must be 4 or 5 (got {self.pgtable_levels})")

    def with_overrides(self, items: dict[str, Any] | tuple[tuple[str, Any], ...]) -> Knobs:
        """Apply trace-header or CLI overrides; unknown names are an error that lists the known ones."""
        d = dict(items)
        known = {f.name for f in fields(self)}
        alias = {"enabled": "thp_enabled", "defrag": "thp_defrag"}
        out: dict[str, Any] = {}
        for k, v in d.items():
            k = alias.get(k, k)
            if k not in known:
                raise ThpsimError(f"unknown kernel knob {k!r}; known: {', '.join(sorted(known))}")
            out[k] = v
        return replace(self, **out)
