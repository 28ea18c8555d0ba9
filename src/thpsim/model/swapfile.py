"""The swap device's slots (mm/swapfile.c, 7.3.4: the cluster allocator behind ``folio_alloc_swap``,
``swap_duplicate``/``folio_dup_swap`` and ``swap_free``).

Slots come in clusters of HPAGE_PMD_NR (512 on x86-64). A PMD-order folio needs one whole free cluster
(``cluster_alloc_swap_entry`` for order 9: a free cluster becomes an order-9 cluster); an order-0 slot comes from
a non-full order-0 cluster first, then a free cluster (which becomes order 0), then any cluster with a free slot
(the ``frag_clusters`` lists). A slot's count is the number of swap entries that reference it (``swap_map``);
at 0 the slot is free, and a cluster with no slot in use is free again.

``clusters`` None is a device with room for everything (clusters are made as needed): every order-9 request
succeeds, as the model assumed before this module. ``fragmented`` clusters start with one slot in use each (a
long-running system's swap), so they can serve order-0 requests only.

Left out: the per-CPU cluster cache, discard, swap priorities and several devices, the swap cache (a swapped-out
folio is freed at once), zswap, readahead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thpsim.errors import ThpsimError
from thpsim.model.folio import Folio

__all__ = ["SwapSpace", "free_swap_and_cache", "swap_duplicate"]


@dataclass
class _Cluster:
    order: int = -1                 # -1 free; else the order it serves
    used: int = 0


@dataclass
class SwapSpace:
    """One swap device of ``clusters`` clusters of ``nr`` slots (None: unlimited)."""

    nr: int
    clusters: int | None = None
    fragmented: int = 0
    _cl: list[_Cluster] = field(default_factory=list)
    _count: dict[int, int] = field(default_factory=dict)      # slot -> swap_map count
    _pinned: set[int] = field(default_factory=set)            # the fragmenting slots (never freed)

    def __post_init__(self) -> None:
        if self.clusters is not None and self.clusters < 0:
            raise ThpsimError(f"swap_clusters must be >= 0 (got {self.clusters})")
        if self.fragmented < 0 or (self.clusters is not None and self.fragmented > self.clusters):
            raise ThpsimError(f"fragmented swap clusters ({self.fragmented}) must be 0..swap_clusters "
                              f"({self.clusters})")
        for _ in range(self.clusters or 0):
            self._cl.append(_Cluster())
        for c in range(self.fragmented):
            slot = c * self.nr + self.nr // 2
            self._cl[c].order, self._cl[c].used = 0, 1
            self._count[slot] = 1
            self._pinned.add(slot)

    # ---- allocation ---------------------------------------------------------------------------------------
    def _grow(self) -> int | None:
        if self.clusters is not None:
            return None
        self._cl.append(_Cluster())
        return len(self._cl) - 1

    def alloc(self, order: int) -> int | None:
        """folio_alloc_swap(): the first slot of 1 << order consecutive slots, or None (no room)."""
        n = 1 << order
        if n > self.nr:
            raise ThpsimError(f"swap: order {order} is larger than a cluster")
        if n == self.nr:
            c = next((i for i, cl in enumerate(self._cl) if cl.order == -1), None)
            c = self._grow() if c is None else c
            if c is None:
                return None
            self._cl[c].order, self._cl[c].used = order, n
            base = c * self.nr
            for s in range(base, base + n):
                self._count[s] = 1
            return base
        if n != 1:
            raise ThpsimError("swap: only order 0 and PMD order are modelled")
        for want in (0, -1, None):      # non-full order-0 clusters, then free ones, then any (frag)
            for i, cl in enumerate(self._cl):
                if cl.used < self.nr and (want is None or cl.order == want):
                    return self._take(i)
        c = self._grow()
        return None if c is None else self._take(c)

    def _take(self, c: int) -> int:
        cl = self._cl[c]
        if cl.order == -1:
            cl.order = 0
        base = c * self.nr
        slot = next(s for s in range(base, base + self.nr) if s not in self._count)
        self._count[slot] = 1
        cl.used += 1
        return slot

    # ---- references -----------------------------------------------------------------------------------------
    def dup(self, slot: int) -> None:
        """swap_duplicate(): one more swap entry references ``slot`` (fork, another mapping unmapped)."""
        if slot not in self._count:
            raise AssertionError(f"swap_duplicate of free slot {slot}")
        self._count[slot] += 1

    def free(self, slot: int) -> None:
        """swap_free(): one reference fewer; the slot (and an emptied cluster) is free again at 0."""
        cnt = self._count.get(slot)
        if cnt is None:
            raise AssertionError(f"swap_free of free slot {slot}")
        if cnt > 1:
            self._count[slot] = cnt - 1
            return
        del self._count[slot]
        cl = self._cl[slot // self.nr]
        cl.used -= 1
        if cl.used == 0:
            cl.order = -1

    # ---- what /proc/swaps and the invariants see -----------------------------------------------------------
    def references(self) -> int:
        """Swap entries referencing slots (the sum of swap_map counts, fragmenting slots left out)."""
        return sum(c for s, c in self._count.items() if s not in self._pinned)

    @property
    def free_clusters(self) -> int:
        return sum(1 for cl in self._cl if cl.order == -1) if self.clusters is not None else -1


def free_swap_and_cache(swap: SwapSpace | None, entry: Folio | None) -> None:
    """A swap PTE goes away (zap, MADV_FREE, swap-in): its slot loses a reference. ``entry`` is the PTE's
    stand-in folio (its ``index`` is the slot)."""
    if swap is not None and entry is not None:
        swap.free(entry.index)


def swap_duplicate(swap: SwapSpace | None, entry: Folio | None) -> None:
    """fork copies a swap PTE: its slot gains a reference."""
    if swap is not None and entry is not None:
        swap.dup(entry.index)
