"""Reclaim of anonymous folios (mm/vmscan.c shrink_folio_list), on top of the rmap unmap walk
(``rmap.try_to_unmap``: under the lazy design a PMD split there can fail, and the folio is kept).

Without swap, anonymous folios cannot be swapped: a THP is split (``thp_swpout_fallback``) and its pages kept;
clean lazyfree folios are discarded (a PMD-mapped one without a split, freeing its deposit).
Follows Linux 6.18 / 7.3.4 and series v3 (17/24: prealloc_pte in try_to_unmap_one).
Swap slots come from :mod:`thpsim.model.swapfile` (a THP needs a whole free cluster, else it is split first:
``thp_swpout_fallback``). Left out: LRU ordering, referenced/young heuristics, swap cache, zswap, writeback.
"""

from __future__ import annotations

from enum import StrEnum

from thpsim.model import huge_memory, rmap
from thpsim.model.folio import Folio
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_PAGE, PTE_SWAP, HugePmd, PteTable
from thpsim.model.vma import Vma

__all__ = ["Reclaimed", "reclaim_range", "shrink_folio"]


class Reclaimed(StrEnum):
    """What shrink_folio_list did with one folio (the label of the goto it ended at)."""

    GONE = "gone"                      # freed before reclaim got to it
    KEPT = "kept"                      # keep_locked: pinned or mlocked, left where it is
    ACTIVATED = "activated"            # activate_locked: still mapped after try_to_unmap, or a failed split
    DISCARDED = "discarded"            # a clean lazyfree folio, freed
    SWAPPED = "swapped"                # swapped out whole
    SPLIT_KEPT = "split-kept"          # split_folio_to_list, pages kept (no swap, or a deferred split)
    SPLIT_SWAPPED = "split-swapped"    # split, then its order-0 folios swapped
    SHARED_SKIPPED = "shared-skipped"  # MADV_PAGEOUT skips a folio mapped by another process


def shrink_folio(k: Kernel, f: Folio, *, memalloc: bool = True, caller: str = "shrink_folio_list") -> Reclaimed:
    """Reclaim one folio; what happened (:class:`Reclaimed`)."""
    if f.freed:
        return Reclaimed.GONE
    if f.pins or f.mlocked:
        return Reclaimed.KEPT
    if not f.swapbacked:
        return _discard_lazyfree(k, f, memalloc=memalloc, caller=caller)
    if f.large and f.partially_mapped:
        return _split_and_keep(k, f, memalloc=memalloc, caller=caller, fallback=False)
    if k.swap is None:               # no swap device (or swapoff removed it)
        return _split_and_keep(k, f, memalloc=memalloc, caller=caller, fallback=True) if f.large else Reclaimed.ACTIVATED
    swap = k.swap
    assert swap is not None
    if f.large and not k.knobs.thp_swap:
        return _split_and_swap(k, f, memalloc=memalloc, caller=caller)
    # folio_alloc_swap(): a whole free cluster for a THP; none (a full or fragmented device) → split_folio_to_list,
    # thp_swpout_fallback, and the pages are swapped one by one; no slot for an order-0 folio → activate
    base = swap.alloc(f.order)
    if base is None:
        return _split_and_swap(k, f, memalloc=memalloc, caller=caller) if f.large else Reclaimed.ACTIVATED
    # swap out whole (CONFIG_THP_SWAP): split every PMD mapping in try_to_unmap_one, then swap entries; under
    # lazy-pmd-swap a PMD-mappable swap-cache folio is unmapped without TTU_SPLIT_HUGE_PMD: PMD swap entries
    f.swapcache = True   # add_to_swap() before try_to_unmap(): deferred_split_folio() now skips the folio
    pmd_swap = None
    if k.design.pmd_swap and not k.knobs.zswap_ever_enabled and f.large and f.nr == k.nr:
        content = Folio(0, f.order, f.nr)
        content.copy_contents(f)

        def pmd_swap(mm: MM, addr: int, hp: HugePmd) -> None:
            huge_memory.set_pmd_swap_entry(k, mm, addr, hp, content, base)
    unmapped = rmap.try_to_unmap(k, f, caller=f"{caller}/try_to_unmap_one", memalloc=memalloc,
                                 per_vma=lambda mm, vma: _swap_out_vma(k, f, mm, vma, base), pmd_swap=pmd_swap)
    for s in range(base, base + f.nr):
        swap.free(s)     # the swap cache's reference (the model has no swap cache: the entries keep theirs)
    if not unmapped:
        return Reclaimed.ACTIVATED   # folio_mapped() after try_to_unmap: activate_locked (VMAs visited before stay swapped)
    if f.large:
        k.vmstat.count("thp_swpout")
        k.vmstat.mthp["swpout"] += 1
    return Reclaimed.SWAPPED


def _count_swpout_fallback(k: Kernel) -> None:
    k.vmstat.count("thp_swpout_fallback")
    k.vmstat.mthp["swpout_fallback"] += 1


def _split_and_keep(k: Kernel, f: Folio, *, memalloc: bool, caller: str, fallback: bool) -> Reclaimed:
    """A partially mapped THP (deferred split), or a THP without swap (``fallback``: thp_swpout_fallback):
    split_folio_to_list and keep the pages; a failed split activates the folio."""
    if not huge_memory.split_folio(k, f, caller=caller, memalloc=memalloc):
        return Reclaimed.ACTIVATED
    if fallback:
        _count_swpout_fallback(k)
    return Reclaimed.SPLIT_KEPT


def _split_and_swap(k: Kernel, f: Folio, *, memalloc: bool, caller: str) -> Reclaimed:
    """No CONFIG_THP_SWAP: split_folio_to_list, then the order-0 folios are swapped one by one."""
    where = rmap.rmap_walk(k, f)
    if not huge_memory.split_folio(k, f, caller=caller, memalloc=memalloc):
        return Reclaimed.ACTIVATED
    _count_swpout_fallback(k)
    small: list[Folio] = []
    for mm, addr, kind in where:
        for a in (range(addr, addr + k.pmd_size, k.page) if kind == "pmd" else (addr,)):
            pte = mm.pt.get_pte(a)
            if pte is not None and pte.kind == PTE_PAGE and pte.folio is not None and pte.folio not in small:
                small.append(pte.folio)
    for sf in small:
        shrink_folio(k, sf, memalloc=memalloc, caller=caller)
    return Reclaimed.SPLIT_SWAPPED


def _swap_out_vma(k: Kernel, f: Folio, mm: MM, vma: Vma, base: int) -> None:
    """try_to_unmap_one, after the split: every PTE of this VMA mapping f becomes a swap entry for slot
    base + page index (``swap_duplicate``). The entry's folio is a stand-in holding the page's content, its
    ``index`` the slot."""
    idxs = []
    assert k.swap is not None
    for _addr, pte in rmap.vma_ptes_of(mm, vma, f):
        swapped = Folio(0, 0, 1)
        swapped.default = f.content(pte.idx)
        swapped.index = base + pte.idx
        k.swap.dup(swapped.index)
        idxs.append(pte.idx)
        pte.kind, pte.folio, pte.idx, pte.write, pte.dirty = PTE_SWAP, swapped, 0, False, False
        mm.swap_ents += 1
    # one PTE at a time in the kernel; removing the first alone and the rest together gives the same
    # mapcounts, NR_ANON_MAPPED, RSS and deferred-split decision (the entire mapcount is constant here)
    if idxs:
        rmap.folio_remove_rmap_ptes(k, mm, f, idxs[:1])
    if len(idxs) > 1:
        rmap.folio_remove_rmap_ptes(k, mm, f, idxs[1:])


def _lazyfree_dirty(k: Kernel, f: Folio) -> bool:
    """Was the folio written after MADV_FREE (the folio's or any mapping's dirty bit)?"""
    dirty = f.dirty
    for mm, addr, kind in rmap.rmap_walk(k, f):
        if kind == "pmd":
            hp = mm.pt.slot(addr)
            dirty = dirty or (isinstance(hp, HugePmd) and hp.dirty)
        else:
            pte = mm.pt.get_pte(addr)
            dirty = dirty or (pte is not None and pte.dirty)
    return dirty


def _discard_lazyfree_pmd(k: Kernel, f: Folio) -> Reclaimed:
    """7.2.13's try_to_unmap_one → unmap_huge_pmd_locked → __discard_anon_folio_pmd_locked: a PMD-mapped lazyfree
    folio is discarded whole — the PMD cleared without a split and its deposit freed — or, when it was
    re-dirtied, made swap-backed again with its PMD kept (walk_abort; no split either)."""
    if _lazyfree_dirty(k, f):
        f.swapbacked = True
        return Reclaimed.ACTIVATED   # walk_abort: still mapped after try_to_unmap, activate_locked
    for mm, addr, _kind in rmap.rmap_walk(k, f):
        huge_memory.zap_huge_pmd(k, mm, addr)     # pmdp_huge_clear_flush, zap_deposited_table, MM_ANONPAGES -512
    return Reclaimed.DISCARDED


def _discard_lazyfree(k: Kernel, f: Folio, *, memalloc: bool, caller: str) -> Reclaimed:
    """Reclaim of a MADV_FREE'd folio: discard it if still clean, else it becomes normal anon again.

    Since "mm/rmap: don't discard lazyfree THPs at PMD level" (stable 7.3.2; the host's 6.18.44 behaves the
    same) try_to_unmap_one no longer sends a PMD-mapped lazyfree folio to ``unmap_huge_pmd_locked``:
    shrink_folio_list's TTU_SPLIT_HUGE_PMD splits every PMD mapping first (thp_split_pmd +1; the table — the
    withdrawn deposit, or a fresh one under the lazy design — stays as an empty PTE table) and
    ``ttu_anon_lazyfree_folio`` then checks each PTE batch: re-dirtied → swap-backed again and the PTEs restored
    (the folio stays PTE-mapped), else the PTEs are discarded. Kernels before it (measured on 7.2.13; knob
    ``lazyfree_pmd_discard``) discard at PMD level without a split (docs/findings.md L14).
    """
    kinds = {kind for _mm, _a, kind in rmap.rmap_walk(k, f)}
    if f.large and k.knobs.lazyfree_pmd_discard and kinds == {"pmd"}:
        return _discard_lazyfree_pmd(k, f)
    if f.large and not rmap.try_to_unmap(k, f, caller=f"{caller}/try_to_unmap_one", memalloc=memalloc):
        return Reclaimed.ACTIVATED
    if _lazyfree_dirty(k, f):
        f.swapbacked = True   # re-dirtied after MADV_FREE: becomes normal anon again (PTE-mapped if split)
        return Reclaimed.ACTIVATED
    # batched unmap of a lazyfree large folio (folio_unmap_pte_batch): one rmap removal per mm
    per_mm: dict[str, tuple[MM, list[int]]] = {}
    for mm, addr, _kind in rmap.rmap_walk(k, f):
        table = mm.pt.slot(addr)
        assert isinstance(table, PteTable)
        gone = table.ptes.pop(mm.pt.pte_index(addr))
        per_mm.setdefault(mm.name, (mm, []))[1].append(gone.idx)
    for mm, idxs in per_mm.values():
        if k.knobs.pte_batch_unmap:
            rmap.folio_remove_rmap_ptes(k, mm, f, idxs)
        else:   # 6.12: one PTE at a time (the first alone leaves the folio partially mapped: deferred split)
            rmap.folio_remove_rmap_ptes(k, mm, f, idxs[:1])
            if idxs[1:]:
                rmap.folio_remove_rmap_ptes(k, mm, f, idxs[1:])
    return Reclaimed.DISCARDED


def reclaim_range(k: Kernel, mm: MM, start: int, end: int, *, memalloc: bool, skip_shared: bool,
                  caller: str) -> list[Reclaimed]:
    """Isolate the folios mapped in [start, end) of mm and reclaim them (reclaim_pages / kswapd)."""
    seen: list[Folio] = []
    pt = mm.pt
    a = start
    while a < end:
        s = pt.slot(a)
        if isinstance(s, HugePmd):
            if s.folio is not None and s.folio not in seen:
                seen.append(s.folio)
            a = (a | (k.pmd_size - 1)) + 1
            continue
        pte = pt.get_pte(a)
        if pte is not None and pte.kind == PTE_PAGE and pte.folio not in seen:
            seen.append(pte.folio)  # type: ignore[arg-type]
        a += k.page
    out: list[Reclaimed] = []
    for f in seen:
        if skip_shared and rmap.folio_maybe_mapped_shared(k, f):
            out.append(Reclaimed.SHARED_SKIPPED)
            continue
        out.append(shrink_folio(k, f, memalloc=memalloc, caller=caller))
    return out
