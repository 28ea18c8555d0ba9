"""Anonymous collapse (mm/khugepaged.c): ``hpage_collapse_scan_pmd``, ``collapse_huge_page``,
``madvise_collapse`` and one full khugepaged pass.

The scan checks the 512 PTEs: none/zero entries up to ``max_ptes_none`` (khugepaged only), shared pages up to
``max_ptes_shared`` (khugepaged only), no guard markers, pins; at least one writable PTE for khugepaged only where
the kernel still has that rule (knob ``collapse_needs_writable``; 7.3.4 has not).
The collapse allocates a PMD-order folio (``folio@collapse``; failure → thp_collapse_alloc_failed), copies the
contents, drops the old mappings, and then either deposits the old PTE table (upstream: VmPTE unchanged) or frees
it (lazy: VmPTE −4 KiB). RSS grows by the number of none/zero PTEs filled.

MADV_COLLAPSE returns 0 when every PMD range in [start, end) ends up PMD-mapped, else an errno from
``madvise_collapse_errno`` (ENOMEM for allocation failure, EINVAL for ranges that cannot be collapsed).
Left out: khugepaged's referenced-page rule (SCAN_LACK_REFERENCED_PAGE: every page the model maps was just
touched, so it holds), file/shmem collapse, swap-in during collapse, mTHP collapse, the khugepaged scan budget and sleep.
"""

from __future__ import annotations

from thpsim.model import huge_memory, rmap
from thpsim.model.contpte import contpte_batches
from thpsim.model.errnos import EAGAIN, EBUSY, EINVAL, ENOMEM
from thpsim.model.folio import Folio
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_GUARD, PTE_SWAP, PTE_ZERO, HugePmd, PteTable
from thpsim.model.vma import Vma

__all__ = ["SCAN_ALLOC_FAIL", "SCAN_EXCEED_NONE_PTE", "SCAN_EXCEED_SHARED_PTE", "SCAN_EXCEED_SWAP_PTE",
           "SCAN_PAGE_COUNT", "SCAN_PAGE_RO", "SCAN_PMD_MAPPED", "SCAN_PMD_NULL", "SCAN_PTE_NON_PRESENT",
           "SCAN_SUCCEED", "collapse_huge_page", "khugepaged_pass", "madvise_collapse", "scan_pmd"]

SCAN_SUCCEED = "succeed"
SCAN_PMD_MAPPED = "pmd_mapped"
SCAN_PMD_NULL = "pmd_null"
SCAN_EXCEED_NONE_PTE = "exceed_none_pte"
SCAN_EXCEED_SHARED_PTE = "exceed_shared_pte"
SCAN_EXCEED_SWAP_PTE = "exceed_swap_pte"
SCAN_PAGE_RO = "page_ro"
SCAN_PAGE_COUNT = "page_count"
SCAN_ALLOC_FAIL = "alloc_huge_page_fail"
SCAN_PTE_NON_PRESENT = "pte_non_present"


def _errno(result: str) -> int:
    if result == SCAN_ALLOC_FAIL:
        return ENOMEM
    if result == SCAN_EXCEED_NONE_PTE:
        return EBUSY
    if result == SCAN_PAGE_COUNT:
        return EAGAIN
    return EINVAL


def scan_pmd(k: Kernel, mm: MM, vma: Vma, haddr: int, *, is_khugepaged: bool) -> str:
    s = mm.pt.slot(haddr)
    if isinstance(s, HugePmd):
        return SCAN_PMD_MAPPED
    if not isinstance(s, PteTable):
        return SCAN_PMD_NULL
    none_or_zero = shared = present = 0
    writable = False
    for i in range(k.nr):
        pte = s.ptes.get(i)
        if pte is None or pte.kind == PTE_ZERO:
            none_or_zero += 1
            if is_khugepaged and none_or_zero > k.max_ptes_none:
                k.vmstat.count("thp_scan_exceed_none_pte")
                return SCAN_EXCEED_NONE_PTE
            continue
        if pte.kind == PTE_SWAP:
            return SCAN_EXCEED_SWAP_PTE
        if pte.kind == PTE_GUARD:
            return SCAN_PTE_NON_PRESENT
        f = pte.folio
        assert f is not None
        if f.page_mapcount(pte.idx) > 1:
            shared += 1
            if is_khugepaged and shared > k.max_ptes_shared:
                k.vmstat.count("thp_scan_exceed_share_pte")
                return SCAN_EXCEED_SHARED_PTE
        if f.pins:
            return SCAN_PAGE_COUNT
        present += 1
        if pte.write:
            writable = True
    if not present:
        # measured on 6.18: MADV_COLLAPSE of a range holding only none/zero-page PTEs fails (EINVAL)
        return SCAN_PAGE_RO
    if not writable and k.knobs.collapse_needs_writable:
        # 6.12's hpage_collapse_scan_pmd wants one writable PTE, for khugepaged and MADV_COLLAPSE alike
        # (debian-6.12 guest: EINVAL for read-only data); 6.18 and 7.3.4 have no such check: a read-only range
        # and a range write-protected by fork both collapse (docs/findings.md L11, L13)
        return SCAN_PAGE_RO
    return SCAN_SUCCEED


def collapse_huge_page(k: Kernel, mm: MM, vma: Vma, haddr: int) -> str:
    f = k.folio_alloc("folio@collapse", k.nr.bit_length() - 1)
    if f is None:
        k.vmstat.count("thp_collapse_alloc_failed")
        return SCAN_ALLOC_FAIL
    k.vmstat.count("thp_collapse_alloc")
    pt = mm.pt
    table = pt.slot(haddr)
    assert isinstance(table, PteTable)
    filled = 0
    by_folio: dict[int, tuple[Folio, list[int]]] = {}
    for i in range(k.nr):
        pte = table.ptes.get(i)
        if pte is None or pte.kind == PTE_ZERO:
            filled += 1
            continue
        old = pte.folio
        assert old is not None
        f.set_content(i, old.content(pte.idx))
        by_folio.setdefault(id(old), (old, []))[1].append(i)
    # __collapse_huge_page_copy_succeeded: release the old pages (RSS moves to the new folio), one
    # folio_pte_batch() at a time (on arm64 a batch stops at a contpte fold boundary: pgtable.contpte_batches)
    for old, where in by_folio.values():
        runs = contpte_batches(table, where, k.arch.cont_ptes) if k.knobs.pte_batch_unmap else \
            [[i] for i in where]         # 6.12: folio_remove_rmap_pte() one page at a time
        for run in runs:
            rmap.folio_remove_rmap_ptes(k, mm, old, [table.ptes[i].idx for i in run])
    table.ptes.clear()
    del pt.slots[haddr >> pt.pmd_shift]
    pt.nr_ptes -= 1   # the old table leaves the tree ...
    hp = HugePmd(f, write=vma.writable, dirty=True)
    pt.slots[haddr >> pt.pmd_shift] = hp
    rmap.folio_add_new_anon_rmap(k, mm, f, pmd=True, vma=vma, addr=haddr)
    huge_memory.collapse_old_table(k, mm, haddr)   # ... and becomes the deposit, or is freed (lazy)
    rmap.deferred_split_folio(k, f, False)
    k.log.notes.append(f"collapse at {haddr:#x}: {filled} none/zero PTEs filled")
    return SCAN_SUCCEED


def madvise_collapse(k: Kernel, mm: MM, start: int, end: int) -> int:
    vma = mm.vmas.find(start)
    if vma is None:
        return ENOMEM
    if not huge_memory.thp_vma_allowable(k, vma, enforce_sysfs=False):
        return EINVAL
    p = k.pmd_size
    if ((vma.start + p - 1) & ~(p - 1)) + p > vma.end:
        return EINVAL     # collapse_possible(): the VMA holds no whole PMD (thp_vma_suitable_order)
    hstart = (start + p - 1) & ~(p - 1)
    hend = end & ~(p - 1)
    thps = 0
    last_fail = SCAN_SUCCEED
    if hstart >= hend:   # no whole PMD range in [start, end): measured EINVAL on 6.18, 0 on 7.3.4
        return EINVAL if k.knobs.collapse_small_einval else 0
    total = (hend - hstart) // p
    for haddr in range(hstart, hend, p):
        v = mm.vmas.find(haddr)
        if v is None or not huge_memory.thp_vma_suitable(k, v, haddr):
            last_fail = SCAN_PMD_NULL
            continue
        r = scan_pmd(k, mm, v, haddr, is_khugepaged=False)
        if r == SCAN_SUCCEED:
            r = collapse_huge_page(k, mm, v, haddr)
        if r in (SCAN_SUCCEED, SCAN_PMD_MAPPED):
            thps += 1
        else:
            last_fail = r
            if r == SCAN_ALLOC_FAIL:
                break
    return 0 if thps == total else _errno(last_fail)


def khugepaged_pass(k: Kernel) -> int:
    """One full scan of every mm: collapse every eligible PMD range. Returns the number collapsed."""
    done = 0
    for mm in list(k.procs.values()):
        if not mm.alive:
            continue
        for v in mm.vmas:
            if not huge_memory.thp_vma_allowable(k, v) or v.anon_vma is None:
                continue
            p = k.pmd_size
            for haddr in range((v.start + p - 1) & ~(p - 1), v.end & ~(p - 1), p):
                if not huge_memory.thp_vma_suitable(k, v, haddr):
                    continue
                if scan_pmd(k, mm, v, haddr, is_khugepaged=True) == SCAN_SUCCEED and \
                        collapse_huge_page(k, mm, v, haddr) == SCAN_SUCCEED:
                    done += 1
    return done
