"""Reverse mapping (mm/rmap.c): __folio_add_rmap / __folio_remove_rmap arithmetic, the deferred-split decision,
the rmap walk, and try_to_unmap / try_to_migrate with TTU_SPLIT_HUGE_PMD.

The add/remove functions reproduce CONFIG_PAGE_MAPCOUNT exactly: the entire mapcount, per-page mapcounts,
``_nr_pages_mapped`` (with ENTIRELY_MAPPED folded in as "entire > 0"), NR_ANON_THPS on the first/last PMD
mapping, NR_ANON_MAPPED, and ``deferred_split_folio(folio, true)`` when some pages become unmapped while others
stay mapped and no PMD mapping is left. A folio whose last mapping goes away (and has no pins) is freed.

The rmap walk finds a folio's mappings by scanning the mms; the rmap_one calls of try_to_unmap/try_to_migrate
follow rmap_walk_anon: every VMA whose anon_vma chain (``Vma.avc``) holds the folio's anon_vma
(``Folio.mapping``) and covers ``folio->index``, in (pgoff, process creation) order, until no mapping is left
(``done`` = folio_not_mapped). Under the lazy design each such call — also for a VMA that no longer maps the
folio — pre-allocates one PTE table (``pte_alloc_one@rmap_prealloc``, in PF_MEMALLOC context when called from reclaim);
a PMD mapping met with no table ends the walk with ``ret = false`` and counts ``thp_split_pmd_failed``; tables
used by earlier VMAs stay (series §5.5, Hugh Dickins' objection). The ``lazy-reclaim-pool`` variant takes the
tables from a pool reserved in advance instead.

rmap ↔ huge_memory import each other at module level, as mm/rmap.c and mm/huge_memory.c call each other
(folio_add/remove_rmap_pmd one way, split_huge_pmd_locked from try_to_unmap_one the other): the one cycle.
Left out: KSM, file rmap, mlock bookkeeping beyond "mapped in a VM_LOCKED VMA"; anon_vma reuse in
anon_vma_clone and the tree position of a VMA re-inserted by a split or mremap (it keeps its process's place).
"""

from __future__ import annotations

from collections.abc import Callable

from thpsim.model import huge_memory
from thpsim.model.design import RmapTables
from thpsim.model.folio import Folio
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_PAGE, HugePmd, Pte, PteTable
from thpsim.model.vma import Vma

__all__ = ["deferred_split_folio", "folio_add_anon_rmap_pmd", "folio_add_anon_rmap_ptes",
           "folio_add_new_anon_rmap", "folio_put", "folio_maybe_mapped_shared", "folio_remove_rmap_pmd",
           "folio_remove_rmap_ptes", "mms_mapping", "rmap_walk", "try_to_migrate", "try_to_unmap",
           "vma_ptes_of"]


def _mapped_pages(f: Folio) -> int:
    if not f.large:
        return 1 if f.entire_mapcount > 0 else 0
    return f.nr if f.entire_mapcount > 0 else f.nr_pages_mapped


def folio_add_new_anon_rmap(k: Kernel, mm: MM, f: Folio, *, pmd: bool, vma: Vma, addr: int) -> None:
    """folio_add_new_anon_rmap + add_mm_counter(MM_ANONPAGES): a fresh, exclusive folio mapped once, under
    vma's anon_vma (__folio_set_anon) at its linear page index."""
    f.anon_exclusive = True
    f.mapping, f.index = vma.anon_vma, vma.linear_page_index(addr, mm.pt.page_shift)
    if pmd:
        f.entire_mapcount = 1
        k.vmstat.nr_anon_thps += 1
    elif f.large:
        f.pte_mapcount = [1] * f.nr
        f.nr_pages_mapped = f.nr
    else:
        f.entire_mapcount = 1
    k.vmstat.nr_anon_pages += f.nr
    mm.anon_pages += f.nr


def folio_move_anon_rmap(f: Folio, vma: Vma, *, index: int | None = None) -> None:
    """folio_move_anon_rmap(): an exclusive folio now belongs to vma's anon_vma (a reused COW page; UFFDIO_MOVE,
    which also sets folio->index to its new linear page index)."""
    f.mapping = vma.anon_vma
    if index is not None:
        f.index = index


def folio_add_anon_rmap_pmd(k: Kernel, mm: MM, f: Folio) -> None:
    before = _mapped_pages(f)
    f.entire_mapcount += 1
    if f.entire_mapcount == 1:
        k.vmstat.nr_anon_thps += 1
    k.vmstat.nr_anon_pages += _mapped_pages(f) - before
    mm.anon_pages += f.nr


def folio_add_anon_rmap_ptes(k: Kernel, mm: MM, f: Folio, idxs: range | list[int], *, count_rss: bool = True) -> None:
    before = _mapped_pages(f)
    if f.large:
        pm = f.pte_mapcount
        if pm is None:
            pm = f.pte_mapcount = [0] * f.nr
        if isinstance(idxs, range) and len(idxs) == f.nr and not f.nr_pages_mapped:
            # a whole PMD split of a folio mapped only by PMDs: one list, no per-page loop
            f.pte_mapcount = [1] * f.nr
            f.nr_pages_mapped = f.nr
        else:
            for i in idxs:
                pm[i] += 1
                if pm[i] == 1:
                    f.nr_pages_mapped += 1
    else:
        f.entire_mapcount += len(idxs)
    k.vmstat.nr_anon_pages += _mapped_pages(f) - before
    if count_rss:
        mm.anon_pages += len(idxs)


def folio_put(k: Kernel, f: Folio) -> bool:
    """folio_put() of the model's implicit reference: free the folio once nothing maps or pins it."""
    if f.total_mapcount() == 0 and f.pins == 0:
        k.folio_free(f)
        return True
    return False


def deferred_split_folio(k: Kernel, f: Folio, partially_mapped: bool) -> None:
    if not f.large or f.freed:
        return
    if f.swapcache:   # "Exclude swapcache" (mm/huge_memory.c): reclaim is already handling this folio
        return
    if partially_mapped and not f.partially_mapped:
        f.partially_mapped = True
        if f.nr == k.nr:
            k.vmstat.count("thp_deferred_split_page")
        k.vmstat.mthp["split_deferred"] += 1
        k.vmstat.mthp["nr_anon_partially_mapped"] += 1
    if not f.on_deferred:
        f.on_deferred = True
        k.deferred[f.id] = f


def folio_remove_rmap_pmd(k: Kernel, mm: MM, f: Folio, *, count_rss: bool = True) -> None:
    before = _mapped_pages(f)
    f.entire_mapcount -= 1
    partially = False
    if f.entire_mapcount == 0:
        k.vmstat.nr_anon_thps -= 1
        nr_unmapped = f.nr - f.nr_pages_mapped
        partially = 0 < nr_unmapped < f.nr
    k.vmstat.nr_anon_pages -= before - _mapped_pages(f)
    if count_rss:
        mm.anon_pages -= f.nr
    if not folio_put(k, f) and partially:
        deferred_split_folio(k, f, True)


def folio_remove_rmap_ptes(k: Kernel, mm: MM, f: Folio, idxs: range | list[int], *, count_rss: bool = True) -> None:
    before = _mapped_pages(f)
    if f.large:
        pm = f.pte_mapcount
        assert pm is not None, "removing PTE mappings of a folio never mapped by PTEs"
        last = 0
        for i in idxs:
            pm[i] -= 1
            if pm[i] == 0:
                last += 1
        f.nr_pages_mapped -= last
        nr = last if f.entire_mapcount == 0 else 0
        partially = nr > 0 and f.nr_pages_mapped > 0
    else:
        f.entire_mapcount -= len(idxs)
        partially = False
    k.vmstat.nr_anon_pages -= before - _mapped_pages(f)
    if count_rss:
        mm.anon_pages -= len(idxs)
    if not folio_put(k, f) and partially:
        deferred_split_folio(k, f, True)


def _single_mm(k: Kernel) -> MM | None:
    """The only live mm, if there is exactly one (then every mapped folio is mapped by it alone)."""
    alive = None
    for mm in k.procs.values():
        if mm.alive:
            if alive is not None:
                return None
            alive = mm
    return alive


def folio_maybe_mapped_shared(k: Kernel, f: Folio) -> bool:
    """Is the folio mapped by more than one mm? (exact here; the kernel's answer is an estimate)."""
    if _single_mm(k) is not None:
        return False
    return len({id(mm) for mm, _a, _kind in rmap_walk(k, f)}) > 1


def rmap_walk(k: Kernel, f: Folio) -> list[tuple[MM, int, str]]:
    """All mappings of folio f: (mm, address, "pmd" | "pte"), in process then address order. An anonymous
    folio is looked for only at its linear address in the VMAs whose anon_vma chain holds its anon_vma (what
    rmap_walk_anon visits); a folio without one, in every slot."""
    out: list[tuple[MM, int, str]] = []
    for mm in k.procs.values():
        if not mm.alive:
            continue
        if f.mapping is not None:
            for v in mm.vmas:
                if f.mapping in v.avc:
                    out += _vma_mappings(mm, v, f)
            continue
        pt = mm.pt
        for idx, s in pt.slots.items():
            base = idx << pt.pmd_shift
            if isinstance(s, HugePmd):
                if s.folio is f:
                    out.append((mm, base, "pmd"))
            elif isinstance(s, PteTable):
                for pi, pte in s.ptes.items():
                    if pte.kind == PTE_PAGE and pte.folio is f:
                        out.append((mm, base + (pi << pt.page_shift), "pte"))
    return out


def _linear_range(mm: MM, v: Vma, f: Folio) -> tuple[int, int]:
    """vma_address(): where in v an anonymous folio can be mapped (its index against vm_pgoff), clipped to v;
    empty (lo >= hi) if nowhere."""
    shift = mm.pt.page_shift
    return (max(v.start, v.start + ((f.index - v.pgoff) << shift)),
            min(v.end, v.start + ((f.index + f.nr - v.pgoff) << shift)))


def _vma_mappings(mm: MM, v: Vma, f: Folio) -> list[tuple[MM, int, str]]:
    """f's mappings in VMA v: its huge PMD, or its PTEs in the folio's linear range there."""
    pt = mm.pt
    lo, hi = _linear_range(mm, v, f)
    out: list[tuple[MM, int, str]] = []
    if lo >= hi:
        return out
    for idx in range(lo >> pt.pmd_shift, ((hi - 1) >> pt.pmd_shift) + 1):
        s = pt.slots.get(idx)
        base = idx << pt.pmd_shift
        if isinstance(s, HugePmd):
            if s.folio is f:
                out.append((mm, base, "pmd"))
        elif isinstance(s, PteTable):
            first = (max(lo, base) - base) >> pt.page_shift
            last = (min(hi, base + (1 << pt.pmd_shift)) - base) >> pt.page_shift
            for pi in range(first, last):
                pte = s.ptes.get(pi)
                if pte is not None and pte.kind == PTE_PAGE and pte.folio is f:
                    out.append((mm, base + (pi << pt.page_shift), "pte"))
    return out


def mms_mapping(k: Kernel, f: Folio) -> list[MM]:
    only = _single_mm(k)
    if only is not None:
        return [only] if f.total_mapcount() else []
    seen: list[MM] = []
    for mm in k.procs.values():
        if mm.alive and _maps(mm, f):
            seen.append(mm)
    return seen


def _maps(mm: MM, f: Folio) -> bool:
    """Does mm map f anywhere? (stops at the first mapping found)"""
    for s in mm.pt.slots.values():
        if isinstance(s, HugePmd):
            if s.folio is f:
                return True
        elif isinstance(s, PteTable) and any(p.folio is f and p.kind == PTE_PAGE for p in s.ptes.values()):
            return True
    return False


# ---- try_to_unmap / try_to_migrate (TTU_SPLIT_HUGE_PMD) -------------------------------------------------------
def _take_table(k: Kernel, *, memalloc: bool) -> bool:
    """The table of one rmap_one call. ``lazy-reclaim-pool`` (a thpsim what-if, not proposed in the thread)
    behaves like mempool_alloc(): the page allocator first without the emergency reserves (__GFP_NOMEMALLOC),
    then an element of the pool; the pool is refilled as page tables are freed (Kernel.pte_free)."""
    if k.design.rmap_tables is RmapTables.RESERVE_POOL:
        if k.pte_alloc_one("pte_alloc_one@rmap_prealloc", memalloc=False):
            return True
        if k.reserve_pool > 0:
            k.reserve_pool -= 1
            return True
        return False
    return k.pte_alloc_one("pte_alloc_one@rmap_prealloc", memalloc=memalloc)


def _return_table(k: Kernel) -> None:
    k.pte_free()     # pte_free(mm, prealloc_pte) of an unused table (back to a short pool first)


def _rmap_vmas(k: Kernel, f: Folio) -> list[tuple[MM, Vma, list[tuple[int, str]]]]:
    """The rmap_one calls of rmap_walk_anon, in order: one per VMA of the folio's anon_vma interval tree that
    covers its index (``anon_vma_interval_tree_foreach``: pgoff order, then insertion — parent before its fork
    children), with that VMA's mappings of the folio — none for a VMA the folio's family shares but that no
    longer maps it (a child that zapped or COWed it): the kernel calls try_to_unmap_one for it all the same.
    The walk ends when no mapping is left in the VMAs not yet visited (``rmap_walk_control.done`` =
    folio_not_mapped). Mappings outside the tree (a folio whose anon_vma the model does not know) come last."""
    groups: dict[tuple[int, int], tuple[MM, Vma, list[tuple[int, str]]]] = {}
    for mm, addr, kind in rmap_walk(k, f):
        vma = mm.vmas.find(addr)
        assert vma is not None
        g = groups.get((id(mm), id(vma)))
        if g is None:
            g = groups[(id(mm), id(vma))] = (mm, vma, [])
        g[2].append((addr, kind))
    if f.mapping is None:
        return list(groups.values())
    first, last = f.index, f.index + f.nr - 1
    tree = sorted(((v.pgoff, n, mm, v) for n, mm in enumerate(k.procs.values()) if mm.alive for v in mm.vmas
                   if f.mapping in v.avc and v.pgoff <= last
                   and first < v.pgoff + ((v.end - v.start) >> mm.pt.page_shift)), key=lambda t: (t[0], t[1]))
    out: list[tuple[MM, Vma, list[tuple[int, str]]]] = []
    left = len(groups)
    for _pgoff, _n, mm, v in tree:
        if not left:
            break
        g = groups.pop((id(mm), id(v)), None)
        left -= g is not None
        out.append(g if g is not None else (mm, v, []))
    return out + list(groups.values())


def try_to_unmap(k: Kernel, f: Folio, *, caller: str, memalloc: bool,
                 per_vma: Callable[[MM, Vma], None] | None = None,
                 pmd_swap: Callable[[MM, int, HugePmd], None] | None = None) -> bool:
    """The rmap walk of try_to_unmap / try_to_migrate with TTU_SPLIT_HUGE_PMD (set for every PMD-order folio).

    Under the lazy design each rmap_one call (one per VMA mapping the folio, PMD- or PTE-mapped) first
    pre-allocates one PTE table (series §5.5); a failed pre-allocation is acted on only when the walk meets a
    PMD mapping: then the walk ends with ``ret = false`` and ``thp_split_pmd_failed`` is counted. An unused
    table is freed at the end of the call and never counted. ``per_vma`` is what the rmap_one call does to that
    VMA's (now PTE) mappings after the split (try_to_unmap_one installs swap entries as it goes), so the VMAs
    visited before a failure stay unmapped. Returns False if the walk bailed out.

    ``pmd_swap`` (lazy-pmd-swap: shrink_folio_list dropped TTU_SPLIT_HUGE_PMD) replaces each PMD mapping by a PMD
    swap entry instead of splitting it; no table is pre-allocated then (v3 17 allocates only with the flag).
    """
    needs_table = k.design.split_can_fail and pmd_swap is None   # the split takes a fresh table, not the deposit
    prealloc_needed = needs_table and f.large and f.nr == k.nr
    for mm, vma, maps in _rmap_vmas(k, f):
        table = _take_table(k, memalloc=memalloc) if prealloc_needed else False
        for addr, kind in maps:
            if kind != "pmd":
                continue
            if pmd_swap is not None:
                hp = mm.pt.slot(addr)
                assert isinstance(hp, HugePmd)
                pmd_swap(mm, addr, hp)
                continue
            if needs_table and not table:
                k.vmstat.count("thp_split_pmd_failed")
                k.log.failed_sites.append(caller)
                return False
            hp = mm.pt.slot(addr)
            assert isinstance(hp, HugePmd)
            huge_memory.__split_huge_pmd_locked(k, mm, vma, addr, hp, caller=caller)
            table = False   # consumed by split_huge_pmd_locked
        if table:
            _return_table(k)   # not needed (PTE-mapped here): freed at exit, never counted
        if per_vma is not None:
            per_vma(mm, vma)
    return True


def vma_ptes_of(mm: MM, vma: Vma, f: Folio) -> list[tuple[int, Pte]]:
    """The PTEs of ``vma`` that map folio ``f``: (address, pte), in address order. An anonymous folio can only
    be mapped at its linear address in the VMA (vma_address(): folio->index against vm_pgoff), so only that
    range is looked at; a folio without an anon_vma falls back to the whole VMA."""
    pt = mm.pt
    out: list[tuple[int, Pte]] = []
    lo, hi = _linear_range(mm, vma, f) if f.mapping is not None else (vma.start, vma.end)
    if lo >= hi:
        return out
    for idx in range(lo >> pt.pmd_shift, ((hi - 1) >> pt.pmd_shift) + 1):
        s = pt.slots.get(idx)
        if not isinstance(s, PteTable):
            continue
        base = idx << pt.pmd_shift
        first = (max(lo, base) - base) >> pt.page_shift
        last = (min(hi, base + (1 << pt.pmd_shift)) - base) >> pt.page_shift
        ptes = s.ptes
        for i in (range(first, last) if last - first < len(ptes) else sorted(ptes)):
            pte = ptes.get(i)
            if pte is None:
                continue
            a = base + (i << pt.page_shift)
            if pte.kind == PTE_PAGE and pte.folio is f and lo <= a < hi:
                out.append((a, pte))
    return out


def try_to_migrate(k: Kernel, f: Folio, *, caller: str, memalloc: bool) -> bool:
    """The unmap_folio() step of a folio split (freeze): every PMD mapping becomes PTEs. ``memalloc`` is the
    task's PF_MEMALLOC: try_to_migrate_one's pre-allocation inherits it from whoever split the folio."""
    return try_to_unmap(k, f, caller=f"{caller}/try_to_migrate_one", memalloc=memalloc)
