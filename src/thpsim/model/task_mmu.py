"""What /proc shows (fs/proc/task_mmu.c, fs/proc/array.c): status (VmPTE, VmRSS, RssAnon, VmLck, VmSwap),
smaps per VMA (Rss, Anonymous, AnonHugePages, LazyFree, Locked, Swap — walked from the page tables like
``smaps_pmd_entry`` / ``smaps_pte_entry`` / ``smaps_account``, so the huge zero page and the zero page count in
nothing, Locked is PSS-based), the page-map view (PAGEMAP_SCAN categories), and the PAGEMAP_SCAN write-protect
ioctl path that splits a partially covered huge PMD (series v3 13/24). Reading never splits anything.
Follows Linux 6.18 / 7.3.4.
Left out: numa_maps, clear_refs/soft-dirty, smaps_rollup, /proc/PID/pagemap's PFN bits, file and shmem
mappings (every VMA is anonymous private).
"""

from __future__ import annotations

from thpsim.model import huge_memory
from thpsim.model.folio import Folio
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_GUARD, PTE_PAGE, PTE_SWAP, PTE_ZERO, HugePmd, PteTable, SwapPmd
from thpsim.model.vma import VM_LOCKED
from thpsim.observation import ProcObs, Run, VmaObs, merge_runs

__all__ = ["PSS_SHIFT", "pagemap_runs", "pagemap_scan_wp", "proc_obs", "smaps"]

PSS_SHIFT = 12


def _pss(f: Folio, i: int, page: int) -> int:
    mc = f.page_mapcount(i)
    unit = page << PSS_SHIFT
    return unit // mc if mc >= 2 else unit


def smaps(k: Kernel, mm: MM, base: int) -> tuple[VmaObs, ...]:
    out = []
    pt = mm.pt
    page = k.page
    for v in mm.vmas:
        rss = anon = ahp = lazy = swap = 0
        pss_locked = 0
        locked = bool(v.flags & VM_LOCKED)
        for idx in range(v.start >> pt.pmd_shift, ((v.end - 1) >> pt.pmd_shift) + 1):
            s = pt.slots.get(idx)
            if s is None:
                continue
            if isinstance(s, HugePmd):
                f = s.folio
                if f is None:
                    continue
                size = k.pmd_size
                rss += size
                anon += size
                ahp += size
                if not f.swapbacked and not s.dirty and not f.dirty:
                    lazy += size
                if locked:
                    pss_locked += sum(_pss(f, i, page) for i in range(f.nr)) if f.refcount() != 1 else \
                        size << PSS_SHIFT
                continue
            if isinstance(s, SwapPmd):
                swap += k.pmd_size       # smaps_pmd_entry of a PMD swap entry: Swap, no Rss
                continue
            base_addr = idx << pt.pmd_shift
            lo = max(v.start, base_addr)
            hi = min(v.end, base_addr + k.pmd_size)
            first = pt.pte_index(lo)
            assert isinstance(s, PteTable)
            for i in range(first, first + ((hi - lo) >> pt.page_shift)):
                pte = s.ptes.get(i)
                if pte is None:
                    continue
                if pte.kind == PTE_SWAP:
                    swap += page
                    continue
                if pte.kind != PTE_PAGE:
                    continue
                f = pte.folio
                assert f is not None
                rss += page
                anon += page
                if not f.swapbacked and not pte.dirty and not f.dirty:
                    lazy += page
                if locked:
                    pss_locked += _pss(f, pte.idx, page)
        out.append(VmaObs(
            start=v.start - base, end=v.end - base, perms=v.perms(), rss_kb=rss >> 10, anonymous_kb=anon >> 10,
            anon_huge_kb=ahp >> 10, lazyfree_kb=lazy >> 10, locked_kb=(pss_locked >> PSS_SHIFT) >> 10,
            swap_kb=swap >> 10,
        ))
    return tuple(out)


def pagemap_runs(k: Kernel, mm: MM, base: int) -> tuple[Run, ...]:
    pt = mm.pt
    # coalesce while walking (address order): plain [start, end, kind] lists, Run objects only at the end
    runs: list[list] = []
    pmd_size, page, shift, pshift = k.pmd_size, k.page, pt.pmd_shift, pt.page_shift
    simple = {PTE_ZERO: "zero", PTE_SWAP: "swap", PTE_GUARD: "guard"}
    for idx in sorted(pt.slots):
        s = pt.slots[idx]
        a = (idx << shift) - base
        if isinstance(s, HugePmd | SwapPmd):
            kind = "swap" if isinstance(s, SwapPmd) else "pmd_zero" if s.is_zero else "pmd"
            if runs and runs[-1][1] == a and runs[-1][2] == kind:
                runs[-1][1] = a + pmd_size
            else:
                runs.append([a, a + pmd_size, kind])
            continue
        ptes = s.ptes
        for i in sorted(ptes):
            pte = ptes[i]
            pk = pte.kind
            if pk == PTE_PAGE:
                kind = "pte_thp" if pte.folio is not None and pte.folio.large else "pte"
            else:
                simple_kind = simple.get(pk)
                if simple_kind is None:
                    continue
                kind = simple_kind
            pa = a + (i << pshift)
            if runs and runs[-1][1] == pa and runs[-1][2] == kind:
                runs[-1][1] = pa + page
            else:
                runs.append([pa, pa + page, kind])
    return merge_runs([Run(r[0], r[1], r[2]) for r in runs])


def proc_obs(k: Kernel, mm: MM, base: int, *, full: bool = True) -> ProcObs:
    """The status values, plus smaps and the page-map view when ``full``."""
    return ProcObs(
        proc=mm.name,
        vm_pte_kb=mm.pt.pgtables_bytes >> 10,
        vm_rss_kb=mm.anon_pages * k.page >> 10,
        rss_anon_kb=mm.anon_pages * k.page >> 10,
        vm_lck_kb=mm.locked_vm * k.page >> 10,
        vm_swap_kb=mm.swap_ents * k.page >> 10,
        vmas=smaps(k, mm, base) if full else (),
        pagemap=pagemap_runs(k, mm, base) if full else (),
    )


def pagemap_scan_wp(k: Kernel, mm: MM, start: int, end: int) -> int:
    """PAGEMAP_SCAN with PM_SCAN_WP_MATCHING: write-protect [start, end); a partly covered huge PMD is split."""
    p = k.pmd_size
    for v in mm.vmas.overlapping(start, end):
        lo, hi = max(v.start, start), min(v.end, end)
        a = lo
        while a < hi:
            nxt = min((a | (p - 1)) + 1, hi)
            s = mm.pt.slot(a)
            if (isinstance(s, HugePmd) and nxt - a != p
                    and huge_memory.__split_huge_pmd(k, mm, v, a, caller="pagemap_scan_thp_entry") != 0):
                return -12
            a = nxt
    return 0
