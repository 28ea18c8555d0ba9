"""Global event counters and node statistics (include/linux/vm_event_item.h, mm/vmstat.c).

vm events (thp_* as in /proc/vmstat, plus ``thp_split_pmd_failed`` which only the series adds), NR_ANON_THPS
(meminfo AnonHugePages), NR_PAGETABLE (meminfo PageTables) and per-size PMD-order stats (nr_anon,
nr_anon_partially_mapped, split, split_deferred, anon_fault_alloc, ...).
Follows the counter names of Linux 6.18 / 7.3.4 and series v3.
Left out: per-node/per-zone split, vm events the model never moves, NR_ANON_MAPPED's per-memcg copies.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["VmStat"]


class VmStat:
    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.mthp: Counter[str] = Counter()     # hugepages-<pmd>kB/stats/*
        self.nr_anon_thps = 0                   # folios with at least one PMD mapping
        self.nr_pagetable_bytes = 0             # NR_PAGETABLE in bytes (whole pages)
        self.nr_anon_pages = 0                  # AnonPages (NR_ANON_MAPPED) in pages

    def count(self, name: str, n: int = 1) -> None:
        self.events[name] += n

    def snapshot(self) -> dict[str, int]:
        return dict(self.events)
