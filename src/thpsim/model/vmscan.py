"""Reclaim of anonymous folios (mm/vmscan.c shrink_folio_list) and the rmap unmap/migrate walks it and folio
splits use (mm/rmap.c try_to_unmap_one / try_to_migrate_one with TTU_SPLIT_HUGE_PMD).

Under the lazy design each rmap_one call (one per VMA mapping the folio) pre-allocates one PTE table
(``pte_alloc_one@rmap_prealloc``, in PF_MEMALLOC context when called from reclaim); a PMD mapping met with no
table ends the walk with ``ret = false`` and counts ``thp_split_pmd_failed``; tables used by earlier VMAs stay
(series §5.5, Hugh Dickins' objection). The ``lazy-reclaim-pool`` variant takes the tables from a pool reserved
in advance instead.

Without swap, anonymous folios cannot be swapped: a THP is split (``thp_swpout_fallback``) and its pages kept;
clean lazyfree folios are discarded (a PMD-mapped one without a split, freeing its deposit).
Left out: LRU ordering, referenced/young heuristics, swap cache, zswap, writeback.
"""

from __future__ import annotations

from thpsim.model import huge_memory, rmap
from thpsim.model.folio import Folio
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_PAGE, PTE_SWAP, HugePmd, Pte


def _take_table(k: Kernel, *, memalloc: bool) -> bool:
    if k.design.rmap_tables == "reserve_pool" and k.reserve_pool > 0:
        k.reserve_pool -= 1
        return True
    return k.pte_alloc_one("pte_alloc_one@rmap_prealloc", memalloc=memalloc)


def _return_table(k: Kernel) -> None:
    if k.design.rmap_tables == "reserve_pool" and k.reserve_pool < k.design.reserve_pool_size:
        k.reserve_pool += 1
    else:
        k.pte_free()


def _split_pmd_mappings(k: Kernel, f: Folio, *, caller: str, memalloc: bool) -> bool:
    """The TTU_SPLIT_HUGE_PMD part of try_to_unmap/try_to_migrate: split every PMD mapping of f.

    Returns False if a split could not get a table (the walk bailed out).
    """
    lazy = not k.design.deposit
    by_vma: list[tuple[MM, int]] = []
    for mm, addr, kind in rmap.rmap_walk(k, f):
        if kind == "pmd":
            by_vma.append((mm, addr))
    for mm, addr in by_vma:
        vma = mm.vmas.find(addr)
        assert vma is not None
        if lazy:
            # one pre-allocation per rmap_one call (per VMA), before the walk meets the PMD
            if not _take_table(k, memalloc=memalloc):
                k.vmstat.count("thp_split_pmd_failed")
                k.log.failed_sites.append(caller)
                return False
            # the pre-allocated table is consumed by split_huge_pmd_locked
            k.vmstat.nr_pagetable_bytes += 0
        hp = mm.pt.slot(addr)
        assert isinstance(hp, HugePmd)
        huge_memory.__split_huge_pmd_locked(k, mm, vma, addr, hp, caller=caller)
        if lazy and k.design.rmap_tables == "reserve_pool":
            # a pool table is already counted in NR_PAGETABLE; nothing more to add
            pass
    return True


def try_to_migrate(k: Kernel, f: Folio, *, caller: str) -> bool:
    """The unmap_folio() step of a folio split (freeze): every PMD mapping becomes PTEs."""
    return _split_pmd_mappings(k, f, caller=f"{caller}/try_to_migrate_one", memalloc=False)


def shrink_folio(k: Kernel, f: Folio, *, memalloc: bool = True, caller: str = "shrink_folio_list") -> str:
    """Reclaim one folio. Returns what happened: discarded | swapped | split-kept | kept | activated."""
    if f.freed:
        return "gone"
    if f.pins or f.mlocked:
        return "kept"
    if not f.swapbacked:
        return _discard_lazyfree(k, f, memalloc=memalloc, caller=caller)
    if f.large and f.partially_mapped:
        if not huge_memory.split_folio(k, f, caller=caller):
            return "activated"
        return "split-kept"
    if not k.knobs.swap:
        if f.large:
            if not huge_memory.split_folio(k, f, caller=caller):
                return "activated"
            k.vmstat.count("thp_swpout_fallback")
            k.vmstat.mthp["swpout_fallback"] += 1
            return "split-kept"
        return "activated"
    # swap out whole (CONFIG_THP_SWAP): split every PMD mapping in try_to_unmap_one, then swap entries
    if f.large and not _split_pmd_mappings(k, f, caller=f"{caller}/try_to_unmap_one", memalloc=memalloc):
        return "kept"
    for mm, addr, _kind in rmap.rmap_walk(k, f):
        pte = mm.pt.get_pte(addr)
        assert pte is not None and pte.kind == PTE_PAGE
        swapped = Folio(0, 0, 1)
        swapped.default = f.content(pte.idx)
        idx = pte.idx
        pte.kind, pte.folio, pte.idx, pte.write, pte.dirty = PTE_SWAP, swapped, 0, False, False
        rmap.folio_remove_rmap_ptes(k, mm, f, [idx])
        mm.swap_ents += 1
    if f.large:
        k.vmstat.count("thp_swpout")
        k.vmstat.mthp["swpout"] += 1
    return "swapped"


def _discard_lazyfree(k: Kernel, f: Folio, *, memalloc: bool, caller: str) -> str:
    """Reclaim of a MADV_FREE'd folio: discard it if still clean, else it becomes normal anon again.

    Measured on 6.18: a PMD-mapped lazyfree THP is PMD-split first (thp_split_pmd +1; the table — the
    withdrawn deposit, or a fresh one under the lazy design — stays as an empty PTE table) and then its PTEs are
    discarded. The spec's no-split ``__discard_anon_folio_pmd_locked`` path was not taken (docs/findings.md).
    """
    maps = rmap.rmap_walk(k, f)
    dirty = f.dirty
    for mm, addr, kind in maps:
        if kind == "pmd":
            hp = mm.pt.slot(addr)
            dirty = dirty or (isinstance(hp, HugePmd) and hp.dirty)
        else:
            pte = mm.pt.get_pte(addr)
            dirty = dirty or (pte is not None and pte.dirty)
    if dirty:
        f.swapbacked = True   # re-dirtied after MADV_FREE: becomes normal anon again
        return "kept"
    if f.large and not _split_pmd_mappings(k, f, caller=f"{caller}/try_to_unmap_one", memalloc=memalloc):
        return "kept"
    # batched unmap of a lazyfree large folio (folio_unmap_pte_batch): one rmap removal per mm
    per_mm: dict[str, tuple[MM, list[int]]] = {}
    for mm, addr, _kind in rmap.rmap_walk(k, f):
        table = mm.pt.slot(addr)
        pte: Pte = table.ptes.pop(mm.pt.pte_index(addr))  # type: ignore[union-attr]
        per_mm.setdefault(mm.name, (mm, []))[1].append(pte.idx)
    for mm, idxs in per_mm.values():
        rmap.folio_remove_rmap_ptes(k, mm, f, idxs)
    return "discarded"


def reclaim_range(k: Kernel, mm: MM, start: int, end: int, *, memalloc: bool, skip_shared: bool,
                  caller: str) -> list[str]:
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
    out = []
    for f in seen:
        if skip_shared and rmap.folio_maybe_mapped_shared(k, f):
            out.append("shared-skipped")
            continue
        out.append(shrink_folio(k, f, memalloc=memalloc, caller=caller))
    return out
