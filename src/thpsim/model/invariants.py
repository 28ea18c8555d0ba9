"""Model invariants, checked after every step in test runs (spec upstream.md §9.2, series.md §5.6).

1. Deposits: where the design deposits, every PMD table carries exactly one deposit per huge PMD under it;
   where it does not, no PMD table carries any.
2. ``nr_ptes`` = PTE tables in the tree + deposits; ``nr_pmds``/``nr_puds`` = PMD/PUD tables in the tree.
3. MM_ANONPAGES = pages mapped by this mm (512 per huge anon PMD, one per present PTE page); MM_SWAPENTS = swap
   PTEs.
4. Folio mapcounts (entire, per page, nr_pages_mapped) equal what the page tables map; NR_ANON_THPS counts folios
   with a PMD mapping.
5. Every huge PMD lies in one VMA covering its whole range; every PTE lies inside a VMA.
6. NR_PAGETABLE = every table of every mm (+ the reserve pool); the allocator's pages = tables + folio pages.
7. A process that exited has nothing left (check_mm).
8. With swap: the swap slots' reference counts add up to the swap PTEs of every process (swap_map).

They mirror the kernel's own checks: check_mm() (kernel/fork.c: "non-zero pgtables_bytes", "Bad rss-counter
state"), the VM_BUG_ONs of pgtable_trans_huge_withdraw and free_pmd_range, and the mapcount arithmetic of
mm/rmap.c. Deposits are counted through huge_memory's hook (``pmd_deposits``), never the design's name.
Left out: anything the model does not represent (TLB state, LRU lists, refcounts other than mappings and pins).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thpsim.model.folio import Folio
from thpsim.model.huge_memory import pmd_deposits
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_PAGE, PTE_SWAP, HugePmd, PteTable, SwapPmd

__all__ = ["check", "check_exited"]


def check(k: Kernel) -> list[str]:
    errs: list[str] = []
    entire: dict[int, int] = {}
    per_page: dict[int, dict[int, int]] = {}
    folios: dict[int, Folio] = {}
    tables = 0
    for mm in k.procs.values():
        if not mm.alive:
            continue
        errs += _check_mm(k, mm, entire, per_page, folios)
        tables += (mm.pt.nr_ptes * k.arch.pagetable_page_bytes + mm.pt.nr_pmds * k.arch.pmd_nr_pagetable_bytes
                   + mm.pt.nr_puds * k.arch.pud_nr_pagetable_bytes)
    for fid, f in folios.items():
        want_entire = entire.get(fid, 0)
        pages = per_page.get(fid, {})
        if f.large:
            if f.entire_mapcount != want_entire:
                errs.append(f"folio {fid}: entire mapcount {f.entire_mapcount}, page tables map it by PMD "
                            f"{want_entire} times")
            pm = f.pte_mapcount or [0] * f.nr
            for i in range(f.nr):
                if pm[i] != pages.get(i, 0):
                    errs.append(f"folio {fid}: page {i} mapcount {pm[i]} vs {pages.get(i, 0)} PTEs")
                    break
            mapped = sum(1 for i in range(f.nr) if pm[i])
            if mapped != f.nr_pages_mapped:
                errs.append(f"folio {fid}: nr_pages_mapped {f.nr_pages_mapped} vs {mapped}")
        elif f.entire_mapcount != pages.get(0, 0):
            errs.append(f"folio {fid}: mapcount {f.entire_mapcount} vs {pages.get(0, 0)} PTEs")
        if f.freed:
            errs.append(f"folio {fid}: freed but still mapped")
    thps = sum(1 for f in folios.values() if f.large and f.entire_mapcount > 0)
    if thps != k.vmstat.nr_anon_thps:
        errs.append(f"NR_ANON_THPS {k.vmstat.nr_anon_thps} but {thps} folios have a PMD mapping")
    tables += (k.reserve_pool if k.design.pool_tables else 0) * k.arch.pagetable_page_bytes
    if tables != k.vmstat.nr_pagetable_bytes:
        errs.append(f"NR_PAGETABLE {k.vmstat.nr_pagetable_bytes} B but the page tables add up to {tables} B")
    if k.swap is not None:
        entries = sum(mm.swap_ents for mm in k.procs.values() if mm.alive)
        if k.swap.references() != entries:
            errs.append(f"swap_map: {k.swap.references()} slot references but {entries} swap PTEs")
    return errs


@dataclass
class _MmTally:
    """What one mm's page tables hold, counted by the walk of :func:`_check_mm`."""

    huge_under: dict[int, int] = field(default_factory=dict)   # huge PMDs per PMD table (addr >> pud_shift)
    pte_tables: int = 0
    anon: int = 0
    swap: int = 0


def _check_mm(k: Kernel, mm: MM, entire: dict[int, int], per_page: dict[int, dict[int, int]],
              folios: dict[int, Folio]) -> list[str]:
    errs: list[str] = []
    pt = mm.pt
    tally = _MmTally()
    for idx, s in pt.slots.items():
        a = idx << pt.pmd_shift
        if pt.pmd_table_of(a) is None:
            errs.append(f"{mm.name}: a PMD slot at {a:#x} without a PMD table")
        if isinstance(s, HugePmd):
            errs += _check_huge_pmd(k, mm, a, s, tally, entire, folios)
        elif isinstance(s, SwapPmd):
            tally.swap += k.nr                  # MM_SWAPENTS counts the 512 slots of a PMD swap entry
            v = mm.vmas.find(a)
            if v is None or v.end < a + k.pmd_size or v.start > a:
                errs.append(f"{mm.name}: PMD swap entry at {a:#x} not inside one VMA")
        else:
            errs += _check_pte_table(mm, a, s, tally, per_page, folios)
    return errs + _check_deposits(k, mm, tally) + _check_counters(k, mm, tally)


def _check_huge_pmd(k: Kernel, mm: MM, a: int, s: HugePmd, tally: _MmTally, entire: dict[int, int],
                    folios: dict[int, Folio]) -> list[str]:
    key = a >> mm.pt.pud_shift
    tally.huge_under[key] = tally.huge_under.get(key, 0) + 1
    if s.folio is not None:
        tally.anon += s.folio.nr
        folios[s.folio.id] = s.folio
        entire[s.folio.id] = entire.get(s.folio.id, 0) + 1
    v = mm.vmas.find(a)
    if v is None or v.end < a + k.pmd_size:
        return [f"{mm.name}: huge PMD at {a:#x} not inside one VMA"]
    return []


def _check_pte_table(mm: MM, a: int, s: PteTable, tally: _MmTally, per_page: dict[int, dict[int, int]],
                     folios: dict[int, Folio]) -> list[str]:
    errs: list[str] = []
    pt = mm.pt
    tally.pte_tables += 1
    for i, pte in s.ptes.items():
        pa = a + (i << pt.page_shift)
        if mm.vmas.find(pa) is None:
            errs.append(f"{mm.name}: PTE at {pa:#x} outside every VMA")
        if pte.kind == PTE_PAGE:
            f = pte.folio
            assert f is not None
            tally.anon += 1
            folios[f.id] = f
            d = per_page.setdefault(f.id, {})
            d[pte.idx] = d.get(pte.idx, 0) + 1
        elif pte.kind == PTE_SWAP:
            tally.swap += 1
    return errs


def _check_deposits(k: Kernel, mm: MM, tally: _MmTally) -> list[str]:
    """Invariant 1, through huge_memory's deposit hook: the deposits each PMD table should carry."""
    pt = mm.pt
    errs: list[str] = []
    for key, t in pt.pmd_tables.items():
        huge = tally.huge_under.get(key, 0)
        want = pmd_deposits(k, huge)
        if t.deposits != want:
            why = "one per huge PMD" if pmd_deposits(k, 1) else "lazy: none"
            errs.append(f"{mm.name}: PMD table for [{key << pt.pud_shift:#x}) carries {t.deposits} deposits, "
                        f"{want} expected ({why})")
    return errs


def _check_counters(k: Kernel, mm: MM, tally: _MmTally) -> list[str]:
    """Invariants 2 and 3: the table counts behind pgtables_bytes, the RSS counters and locked_vm."""
    pt = mm.pt
    n = mm.name
    errs: list[str] = []
    deposits = pt.deposits()
    if pt.nr_ptes != tally.pte_tables + deposits:
        errs.append(f"{n}: nr_ptes {pt.nr_ptes} != {tally.pte_tables} PTE tables + {deposits} deposits")
    if pt.nr_pmds != len(pt.pmd_tables):
        errs.append(f"{n}: nr_pmds {pt.nr_pmds} != {len(pt.pmd_tables)} PMD tables")
    if pt.nr_puds != len(pt.pud_tables):
        errs.append(f"{n}: nr_puds {pt.nr_puds} != {len(pt.pud_tables)} PUD tables")
    if tally.anon != mm.anon_pages:
        errs.append(f"{n}: MM_ANONPAGES {mm.anon_pages} but the page tables map {tally.anon} anonymous pages")
    if tally.swap != mm.swap_ents:
        errs.append(f"{n}: MM_SWAPENTS {mm.swap_ents} but {tally.swap} swap PTEs")
    locked = sum((v.end - v.start) // k.page for v in mm.vmas if v.locked)
    if locked != mm.locked_vm:
        errs.append(f"{n}: locked_vm {mm.locked_vm} pages but VM_LOCKED VMAs span {locked}")
    return errs


def check_exited(k: Kernel, mm: MM) -> list[str]:
    pt = mm.pt
    errs = []
    if pt.pgtables_bytes:
        errs.append(f"{mm.name}: BUG: non-zero pgtables_bytes on freeing mm: {pt.pgtables_bytes}")
    if mm.anon_pages or mm.swap_ents:
        errs.append(f"{mm.name}: BUG: Bad rss-counter state anon={mm.anon_pages} swap={mm.swap_ents}")
    return errs
