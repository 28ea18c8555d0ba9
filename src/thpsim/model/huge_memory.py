"""Anonymous PMD-mapped THPs (mm/huge_memory.c).

Models: THP eligibility (``thp_vma_allowable_order`` / ``thp_vma_suitable_order``), the anonymous THP fault
(``do_huge_pmd_anonymous_page`` / ``__do_huge_pmd_anonymous_page``), the huge zero page (``set_huge_zero_folio``,
``mm_get_huge_zero_folio``), COW (``do_huge_pmd_wp_page``, ``do_huge_zero_wp_pmd``), PMD splits
(``__split_huge_pmd``, ``__split_huge_pmd_locked``, ``split_huge_pmd_address``, ``vma_adjust_trans_huge``),
``zap_huge_pmd``, ``copy_huge_pmd``, ``move_huge_pmd``, ``change_huge_pmd``, ``madvise_free_huge_pmd``, folio
splits (``split_folio`` → ``__folio_split`` with zero-filled subpages remapped to the shared zero page) and the
deferred-split shrinker (``deferred_split_scan``, underused THPs).

Where the table comes from is the design's one question here (``k.design.deposit``), asked only by the table
hooks in the first section: upstream deposits at creation (``pgtable_alloc_deposit`` +
``pgtable_trans_huge_deposit``) and withdraws at split; the lazy series allocates at split
(``split_pgtable_alloc``: ``pte_alloc_one@split``) and the split can fail with -ENOMEM, counted in
``thp_split_pmd_failed``. zap, collapse, fork and mremap/UFFDIO_MOVE go through the same hooks. Follows Linux
6.18 / 7.3.4 and the series v3.

Left out: file/shmem/DAX PMDs, PMD migration entries (NUMA), userfaultfd-wp bits, mTHP orders.
"""

from __future__ import annotations

from thpsim.model import rmap
from thpsim.model.contpte import contpte_fold_all
from thpsim.model.errnos import ENOMEM
from thpsim.model.folio import Folio, content_is_zero
from thpsim.model.kernel import MM, VM_FAULT_FALLBACK, VM_FAULT_OK, VM_FAULT_OOM, Kernel
from thpsim.model.pgtable import PTE_PAGE, PTE_SWAP, PTE_ZERO, HugePmd, Pte, PteTable, SwapPmd
from thpsim.model.vma import VM_HUGEPAGE, VM_LOCKED, VM_NOHUGEPAGE, Vma

__all__ = ["__split_huge_pmd", "__split_huge_pmd_locked", "change_huge_pmd", "collapse_old_table",
           "copy_huge_pmd", "deferred_split_scan", "do_huge_pmd_anonymous_page", "do_huge_pmd_wp_page",
           "folio_mark_lazyfree", "madvise_free_huge_pmd", "mm_get_huge_zero_folio", "move_deposited_table",
           "move_huge_pmd", "pgtable_alloc_deposit", "pgtable_free_deposit", "pgtable_trans_huge_deposit",
           "pmd_deposits", "split_folio", "split_huge_pmd_address", "split_huge_pmd_if_needed",
           "split_pgtable_alloc", "split_pgtable_take", "thp_underused", "thp_vma_allowable",
           "thp_vma_suitable", "vma_adjust_trans_huge", "wp_huge_pmd", "zap_deposited_table", "zap_huge_pmd"]


# ---- the PTE table behind a huge PMD (the design hooks) -------------------------------------------------------
def pmd_deposits(k: Kernel, huge_pmds: int) -> int:
    """How many deposited tables a PMD table carries for the ``huge_pmds`` anonymous huge PMDs under it: one
    each when the design deposits (upstream, arch_needs_pgtable_deposit), none under the lazy series."""
    return huge_pmds if k.design.deposit else 0


def pgtable_alloc_deposit(k: Kernel, site: str) -> bool:
    """pte_alloc_one() for the table a new huge PMD deposits (fault, huge zero page, fork); False on failure.
    True without allocating when the design does not deposit."""
    return not k.design.deposit or k.pte_alloc_one(site)


def pgtable_free_deposit(k: Kernel) -> None:
    """pte_free() of a table from :func:`pgtable_alloc_deposit` that was not deposited after all."""
    if k.design.deposit:
        k.pte_free()


def pgtable_trans_huge_deposit(k: Kernel, mm: MM, haddr: int) -> None:
    """pgtable_trans_huge_deposit + mm_inc_nr_ptes, when the design deposits."""
    if k.design.deposit:
        mm.pt.deposit(haddr)


def split_pgtable_alloc(k: Kernel, caller: str) -> int:
    """The table a split will use, before the PMD lock: 1 freshly allocated (lazy), 0 the deposit (upstream),
    -ENOMEM when the lazy allocation fails (counted in thp_split_pmd_failed)."""
    if k.design.deposit:
        return 0
    if not k.pte_alloc_one("pte_alloc_one@split"):
        k.vmstat.count("thp_split_pmd_failed")
        k.log.failed_sites.append(caller)
        return ENOMEM
    return 1


def split_pgtable_take(k: Kernel, mm: MM, haddr: int) -> None:
    """__split_huge_pmd_locked's table: pgtable_trans_huge_withdraw (upstream), or the fresh one (mm_inc_nr_ptes)."""
    if k.design.deposit:
        mm.pt.withdraw(haddr)
    else:
        mm.pt.nr_ptes += 1


def zap_deposited_table(k: Kernel, mm: MM, haddr: int) -> None:
    """zap_huge_pmd: withdraw and free the deposited table (mm_dec_nr_ptes), when the design deposits."""
    if k.design.deposit:
        mm.pt.withdraw(haddr)
        mm.pt.nr_ptes -= 1
        k.pte_free()


def move_deposited_table(k: Kernel, mm: MM, old: int, new: int, *, must_withdraw: bool = True) -> None:
    """The deposit follows a moved huge PMD (move_huge_pmd when pmd_move_must_withdraw(), move_pages_huge_pmd
    always), when the design deposits."""
    if k.design.deposit and must_withdraw:
        mm.pt.withdraw(old)
        mm.pt.pmd_tables[new >> mm.pt.pud_shift].deposits += 1


def collapse_old_table(k: Kernel, mm: MM, haddr: int) -> None:
    """collapse_huge_page: the old PTE table, already out of the tree (mm_dec_nr_ptes), becomes the new huge PMD's
    deposit (count restored) or, under the lazy design, is freed."""
    if k.design.deposit:
        mm.pt.pmd_tables[haddr >> mm.pt.pud_shift].deposits += 1
        mm.pt.nr_ptes += 1
    else:
        k.pte_free()


# ---- eligibility ----------------------------------------------------------------------------------------------
def thp_vma_allowable(k: Kernel, vma: Vma, *, enforce_sysfs: bool = True) -> bool:
    """thp_vma_allowable_order(vma, PMD_ORDER) for an anonymous VMA."""
    if vma.flags & VM_NOHUGEPAGE:
        return False
    if not enforce_sysfs:
        return True
    mode = k.knobs.thp_enabled
    if mode == "always":
        return True
    if mode == "madvise":
        return bool(vma.flags & VM_HUGEPAGE)
    return False


def thp_vma_suitable(k: Kernel, vma: Vma, haddr: int) -> bool:
    return vma.start <= haddr and haddr + k.pmd_size <= vma.end


# ---- faults ---------------------------------------------------------------------------------------------------
def mm_get_huge_zero_folio(k: Kernel, mm: MM) -> bool:
    if mm.huge_zero_ref:
        return True
    if not k.huge_zero_allocated:
        if not k.alloc.alloc("folio@huge_zero", k.nr):
            k.vmstat.count("thp_zero_page_alloc_failed")
            return False
        k.huge_zero_allocated = True
        k.vmstat.count("thp_zero_page_alloc")
    mm.huge_zero_ref = True
    return True


def do_huge_pmd_anonymous_page(k: Kernel, mm: MM, vma: Vma, addr: int, write: bool) -> int:
    haddr = addr & ~(k.pmd_size - 1)
    if not thp_vma_suitable(k, vma, haddr):
        return VM_FAULT_FALLBACK
    if vma.anon_vma is None:
        vma.anon_vma = k.new_anon_vma()
        vma.avc = (vma.anon_vma,)
    if not write and k.knobs.use_zero_page:
        if not pgtable_alloc_deposit(k, "pte_alloc_one@huge_zero"):
            return VM_FAULT_OOM
        if not mm_get_huge_zero_folio(k, mm):
            pgtable_free_deposit(k)
            k.vmstat.count("thp_fault_fallback")
            return VM_FAULT_FALLBACK
        mm.pt.slots[haddr >> mm.pt.pmd_shift] = HugePmd(None, write=False, dirty=False)
        pgtable_trans_huge_deposit(k, mm, haddr)
        return VM_FAULT_OK
    f = k.folio_alloc("folio@thp_fault", k.nr.bit_length() - 1)
    if f is None:
        k.vmstat.count("thp_fault_fallback")
        k.vmstat.mthp["anon_fault_fallback"] += 1
        return VM_FAULT_FALLBACK
    return _map_new_thp(k, mm, vma, haddr, f, site="pte_alloc_one@fault")


def _map_new_thp(k: Kernel, mm: MM, vma: Vma, haddr: int, f: Folio, *, site: str | None) -> int:
    """__do_huge_pmd_anonymous_page / map_anon_folio_pmd_pf: deposit (if the design does), map, count."""
    if site is not None and not pgtable_alloc_deposit(k, site):
        k.folio_free(f)
        return VM_FAULT_OOM
    mm.pt.slots[haddr >> mm.pt.pmd_shift] = HugePmd(f, write=vma.writable, dirty=True)
    rmap.folio_add_new_anon_rmap(k, mm, f, pmd=True, vma=vma, addr=haddr)
    if site is not None:
        pgtable_trans_huge_deposit(k, mm, haddr)
    k.vmstat.count("thp_fault_alloc")
    k.vmstat.mthp["anon_fault_alloc"] += 1
    rmap.deferred_split_folio(k, f, False)   # queued for the underused shrinker (no counter)
    if vma.flags & VM_LOCKED:
        f.mlocked = True
    return VM_FAULT_OK


def do_huge_pmd_wp_page(k: Kernel, mm: MM, vma: Vma, addr: int, hp: HugePmd) -> int:
    """Write fault on a write-protected huge PMD: reuse, a new THP for the huge zero page, or split + fallback."""
    haddr = addr & ~(k.pmd_size - 1)
    if hp.is_zero and not k.knobs.huge_zero_wp_thp:
        pass            # 6.12: no do_huge_zero_wp_pmd — split the zero PMD, the PTE fault COWs one 4K page
    elif hp.is_zero:
        f = k.folio_alloc("folio@thp_fault", k.nr.bit_length() - 1)
        if f is not None:
            # do_huge_zero_wp_pmd: the zero PMD's deposit (if any) is reused, no new table
            rc = _map_new_thp(k, mm, vma, haddr, f, site=None)
            return rc
        k.vmstat.count("thp_fault_fallback")
        k.vmstat.mthp["anon_fault_fallback"] += 1
    else:
        f = hp.folio
        assert f is not None
        if f.anon_exclusive or f.refcount() == 1:
            f.anon_exclusive = True
            hp.write = True
            hp.dirty = True
            return VM_FAULT_OK
    if __split_huge_pmd(k, mm, vma, haddr, caller="do_huge_pmd_wp_page") != 0:
        return VM_FAULT_OOM
    return VM_FAULT_FALLBACK


def wp_huge_pmd(k: Kernel, mm: MM, vma: Vma, addr: int, hp: HugePmd) -> int:
    """wp_huge_pmd() for an anonymous VMA: a uffd-wp-protected PMD in async mode goes to the ``split:`` label
    (series 06/21: a failed split is VM_FAULT_OOM; on success VM_FAULT_FALLBACK and the PTE fault resolves the
    write protection), everything else to do_huge_pmd_wp_page."""
    if hp.uffd_wp:
        haddr = addr & ~(k.pmd_size - 1)
        if __split_huge_pmd(k, mm, vma, haddr, caller="wp_huge_pmd") != 0:
            return VM_FAULT_OOM
        return VM_FAULT_FALLBACK
    return do_huge_pmd_wp_page(k, mm, vma, addr, hp)


# ---- PMD split ------------------------------------------------------------------------------------------------
def __split_huge_pmd(k: Kernel, mm: MM, vma: Vma, addr: int, *, caller: str,
                     alloc_even_if_not_huge: bool = False) -> int:
    """__split_huge_pmd(): 0 on success or when the PMD is not huge, -ENOMEM when the table allocation fails.

    Under the lazy design the table is allocated before the PMD lock is taken, i.e. before knowing whether the
    PMD is still huge; ``alloc_even_if_not_huge`` is the split_huge_pmd_address() path (spec series §3, 02/21).
    """
    haddr = addr & ~(k.pmd_size - 1)
    slot = mm.pt.slot(haddr)
    huge = isinstance(slot, HugePmd | SwapPmd)     # pmd_is_huge(): a PMD swap entry too (lazy-pmd-swap)
    if not huge and not alloc_even_if_not_huge:
        return 0
    allocated = split_pgtable_alloc(k, caller)
    if allocated < 0:
        return allocated
    if isinstance(slot, HugePmd | SwapPmd):
        __split_huge_pmd_locked(k, mm, vma, haddr, slot, caller=caller)
    elif allocated:
        k.pte_free()   # split_huge_pmd_locked found no huge PMD: the fresh table is freed, never counted
    return 0


def __split_huge_pmd_locked(k: Kernel, mm: MM, vma: Vma, haddr: int, hp: HugePmd | SwapPmd, *,
                            caller: str) -> PteTable:
    """Replace a huge PMD by a PTE table holding equivalent entries (the table is withdrawn or pre-allocated).

    A PMD swap entry (``lazy-pmd-swap``; the swap branch of PMD swap entries v2 08/16) becomes 512 PTE swap
    entries for its consecutive slots, the exclusive bit kept; no folio reference (they point at slots). Each
    PTE's stand-in folio holds its page's content and its slot (``index``); the slots' references pass to them."""
    k.vmstat.count("thp_split_pmd")
    k.log.split_sites.append(caller)
    pt = mm.pt
    split_pgtable_take(k, mm, haddr)
    table = PteTable()
    pt.slots[haddr >> pt.pmd_shift] = table
    ptes = table.ptes
    if isinstance(hp, SwapPmd):
        for i in range(k.nr):
            d = Folio(0, 0, 1)
            d.default = hp.content.content(i)
            d.index = hp.base + i
            d.anon_exclusive = hp.exclusive
            ptes[i] = Pte(PTE_SWAP, d)
        return table
    if hp.is_zero:
        for i in range(k.nr):
            ptes[i] = Pte(PTE_ZERO)
        return table
    f = hp.folio
    assert f is not None
    if hp.dirty:
        f.dirty = True
    for i in range(k.nr):
        ptes[i] = Pte(PTE_PAGE, f, i, write=hp.write, dirty=hp.dirty)
    contpte_fold_all(table, k.nr, k.arch.cont_ptes)          # one set_ptes() of the whole folio
    rmap.folio_add_anon_rmap_ptes(k, mm, f, range(k.nr), count_rss=False)
    rmap.folio_remove_rmap_pmd(k, mm, f, count_rss=False)
    return table


def zap_swap_pmd(k: Kernel, mm: MM, haddr: int) -> None:
    """zap_huge_pmd() of a PMD swap entry: the 512 slots are freed without a folio lookup; MM_SWAPENTS −512."""
    pt = mm.pt
    sp = pt.slots.pop(haddr >> pt.pmd_shift)
    assert isinstance(sp, SwapPmd) and k.swap is not None
    for s in range(sp.base, sp.base + k.nr):
        k.swap.free(s)
    mm.swap_ents -= k.nr


def set_pmd_swap_entry(k: Kernel, mm: MM, haddr: int, hp: HugePmd, content: Folio, base: int) -> None:
    """try_to_unmap_one's PMD branch (PMD swap entries v2 15/16): the huge PMD becomes one swap entry for the
    folio's 512 slots (each gains a reference), exclusive if the folio was anon-exclusive; MM_ANONPAGES −512,
    MM_SWAPENTS +512. No PTE table is needed."""
    f = hp.folio
    assert f is not None and k.swap is not None
    for s in range(base, base + k.nr):
        k.swap.dup(s)
    mm.pt.slots[haddr >> mm.pt.pmd_shift] = SwapPmd(base, content, exclusive=f.anon_exclusive, uffd_wp=hp.uffd_wp)
    mm.swap_ents += k.nr
    rmap.folio_remove_rmap_pmd(k, mm, f)


def copy_huge_non_present_pmd(k: Kernel, dst: MM, src: MM, haddr: int, sp: SwapPmd) -> None:
    """fork of a PMD swap entry: the child gets one too (folio_dup_swap of the 512 slots); both lose the
    exclusive bit, as copy_nonpresent_pte does for a PTE swap entry."""
    assert k.swap is not None
    for s in range(sp.base, sp.base + k.nr):
        k.swap.dup(s)
    sp.exclusive = False
    dst.pt.slots[haddr >> dst.pt.pmd_shift] = SwapPmd(sp.base, sp.content, exclusive=False)
    dst.swap_ents += k.nr


def do_huge_pmd_swap_page(k: Kernel, mm: MM, vma: Vma, addr: int, sp: SwapPmd) -> int:
    """The swap-in fault on a PMD swap entry (PMD swap entries v1 11/13): a PMD-order folio is read back and
    mapped whole (writable only if the entry was exclusive, the VMA writes and uffd-wp is not armed); the slots
    are freed. Without a folio, the entry is split into 512 PTE swap entries (under lazy the split needs a
    table: VM_FAULT_OOM) and the fault goes on at PTE level (VM_FAULT_FALLBACK)."""
    haddr = addr & ~(k.pmd_size - 1)
    f = k.folio_alloc("folio@swapin", k.nr.bit_length() - 1)
    if f is None:
        if __split_huge_pmd(k, mm, vma, haddr, caller="do_huge_pmd_swap_page") != 0:
            return VM_FAULT_OOM
        return VM_FAULT_FALLBACK
    f.copy_contents(sp.content)
    mm.pt.slots[haddr >> mm.pt.pmd_shift] = HugePmd(
        f, write=sp.exclusive and vma.writable and not sp.uffd_wp, dirty=False)
    rmap.folio_add_new_anon_rmap(k, mm, f, pmd=True, vma=vma, addr=haddr)
    f.anon_exclusive = sp.exclusive
    assert k.swap is not None
    for s in range(sp.base, sp.base + k.nr):
        k.swap.free(s)
    mm.swap_ents -= k.nr
    return VM_FAULT_OK


def split_huge_pmd_address(k: Kernel, mm: MM, vma: Vma, addr: int, *, caller: str) -> int:
    """mm_find_pmd() returns any PMD once its PMD table exists; the lazy design then allocates regardless."""
    if mm.pt.pmd_table_of(addr) is None:
        return 0
    return __split_huge_pmd(k, mm, vma, addr, caller=caller, alloc_even_if_not_huge=True)


def split_huge_pmd_if_needed(k: Kernel, mm: MM, vma: Vma, address: int, *, caller: str) -> int:
    p = k.pmd_size
    if address % p and vma.start <= (address & ~(p - 1)) and ((address + p - 1) & ~(p - 1)) <= vma.end:
        return split_huge_pmd_address(k, mm, vma, address, caller=caller)
    return 0


def vma_adjust_trans_huge(k: Kernel, mm: MM, vma: Vma, start: int, end: int, nxt: Vma | None,
                          *, caller: str = "vma_adjust_trans_huge") -> int:
    """Split the PMDs a VMA boundary change at start/end would cut; first error returned (series 02/21)."""
    for v, a in ((vma, start), (vma, end), (nxt, end)):
        if v is None:
            continue
        rc = split_huge_pmd_if_needed(k, mm, v, a, caller=caller)
        if rc:
            return rc
    return 0


# ---- zap / copy / move / change -------------------------------------------------------------------------------
def zap_huge_pmd(k: Kernel, mm: MM, haddr: int) -> None:
    pt = mm.pt
    hp = pt.slots.pop(haddr >> pt.pmd_shift)
    assert isinstance(hp, HugePmd)
    if hp.folio is not None:
        rmap.folio_remove_rmap_pmd(k, mm, hp.folio)
    zap_deposited_table(k, mm, haddr)


def copy_huge_pmd(k: Kernel, dst: MM, src: MM, src_vma: Vma, haddr: int, hp: HugePmd) -> int:
    """fork: share the THP (or huge zero PMD) with the child. 0, -ENOMEM, or -EAGAIN (copy PTEs instead)."""
    if not pgtable_alloc_deposit(k, "pte_alloc_one@fork"):
        return ENOMEM
    if hp.is_zero:
        mm_get_huge_zero_folio(k, dst)
        dst.pt.slots[haddr >> dst.pt.pmd_shift] = HugePmd(None, write=False, dirty=False)
        pgtable_trans_huge_deposit(k, dst, haddr)
        return 0
    f = hp.folio
    assert f is not None
    if f.pins and f.anon_exclusive:
        # folio_try_dup_anon_rmap_pmd() failed: the folio may be pinned; split the parent, copy at PTE level
        pgtable_free_deposit(k)
        if __split_huge_pmd(k, src, src_vma, haddr, caller="copy_huge_pmd") != 0:
            return ENOMEM
        return -11  # -EAGAIN
    rmap.folio_add_anon_rmap_pmd(k, dst, f)
    f.anon_exclusive = False
    hp.write = False
    dst.pt.slots[haddr >> dst.pt.pmd_shift] = HugePmd(f, write=False, dirty=hp.dirty)
    pgtable_trans_huge_deposit(k, dst, haddr)
    return 0


def move_huge_pmd(k: Kernel, mm: MM, old: int, new: int) -> bool:
    """mremap of a whole PMD: the deposit follows only if the PMD tables (ptlocks) differ."""
    pt = mm.pt
    if pt.slot(new) is not None:
        return False
    hp = pt.slots.pop(old >> pt.pmd_shift)
    pt.slots[new >> pt.pmd_shift] = hp
    # pmd_move_must_withdraw(): only when the PMD tables (split PMD ptlocks) differ
    move_deposited_table(k, mm, old, new, must_withdraw=(old >> pt.pud_shift) != (new >> pt.pud_shift))
    return True


def change_huge_pmd(k: Kernel, mm: MM, haddr: int, hp: HugePmd, writable: bool) -> None:
    """Protection change of a whole huge PMD in place: never splits, never touches the deposit. A uffd-wp PMD
    stays write-protected (can_change_pmd_writable)."""
    if hp.is_zero:
        return
    f = hp.folio
    hp.write = writable and not hp.uffd_wp and f is not None and f.anon_exclusive


# ---- folio split and the deferred-split queue -----------------------------------------------------------------
def split_folio(k: Kernel, f: Folio, *, caller: str, memalloc: bool = False) -> bool:
    """split_folio() to order 0: unmap (PMD splits, freeze), split, remap; zero-filled pages → zero page.

    Returns True on success. Fails (thp_split_page_failed) if the folio is pinned or, under the lazy design,
    if a PMD split in try_to_migrate_one had no table (the rmap walk bails out, ret = false). ``memalloc``: the
    caller runs with PF_MEMALLOC (shrink_folio_list's split_folio_to_list, the deferred-split shrinker), so
    try_to_migrate_one's table pre-allocation may dip into the reserves.
    """
    if f.freed or not f.large:
        return False
    if f.pins:
        k.vmstat.count("thp_split_page_failed")
        k.vmstat.mthp["split_failed"] += 1
        return False
    if not rmap.try_to_migrate(k, f, caller=caller, memalloc=memalloc):
        k.vmstat.count("thp_split_page_failed")
        k.vmstat.mthp["split_failed"] += 1
        return False
    # All mappings are now PTE mappings. __folio_split: each subpage becomes an order-0 folio.
    mappings = rmap.rmap_walk(k, f)
    small: dict[int, Folio] = {}
    kept = 0
    for mm, addr, kind in mappings:
        assert kind == "pte"
        pte = mm.pt.get_pte(addr)
        assert pte is not None
        i = pte.idx
        vma = mm.vmas.find(addr)
        locked = vma is not None and bool(vma.flags & VM_LOCKED)
        if content_is_zero(f.content(i)) and not locked and not f.mlocked:
            # remove_migration_pte with RMP_USE_SHARED_ZEROPAGE: map the zero page, drop the RSS page
            pte.kind, pte.folio, pte.idx, pte.write, pte.dirty = PTE_ZERO, None, 0, False, False
            mm.anon_pages -= 1
            continue
        nf = small.get(i)
        if nf is None:
            nf = Folio(k.next_folio, 0, 1)
            k.next_folio += 1
            nf.default = f.content(i)
            nf.dirty = f.dirty
            nf.swapbacked = f.swapbacked
            nf.anon_exclusive = f.anon_exclusive
            nf.mapping, nf.index = f.mapping, f.index + i     # __split_folio_to_order: same anon_vma
            small[i] = nf
            kept += 1
        nf.entire_mapcount += 1
        pte.folio, pte.idx = nf, 0
    # global bookkeeping: the large folio is gone, order-0 folios remain
    k.vmstat.nr_anon_pages += kept - f.nr_pages_mapped
    f.pte_mapcount = [0] * f.nr
    f.nr_pages_mapped = 0
    k.vmstat.count("thp_split_page")
    k.vmstat.mthp["split"] += 1
    k.folio_free(f, keep_pages=kept)     # the surviving order-0 folios keep their pages
    for nf in small.values():
        if nf.entire_mapcount > 1:
            nf.anon_exclusive = False
    return True


def thp_underused(k: Kernel, f: Folio) -> bool:
    if k.max_ptes_none == k.nr - 1:
        return False
    zero = sum(1 for i in range(f.nr) if f.subpage_is_zero(i))
    return zero > k.max_ptes_none


def deferred_split_scan(k: Kernel) -> int:
    """The deferred-split shrinker: split partially mapped folios, and underused ones (thp_underused).

    Shrinkers run from reclaim (shrink_slab under kswapd or direct reclaim, both PF_MEMALLOC), so the splits
    may take their tables from the reserves (issue 9 item 2).
    """
    done = 0
    for f in list(k.deferred.values()):
        if f.freed:
            continue
        if f.partially_mapped:
            if split_folio(k, f, caller="deferred_split_scan", memalloc=True):
                done += 1
        elif thp_underused(k, f) and split_folio(k, f, caller="deferred_split_scan", memalloc=True):
            k.vmstat.count("thp_underused_split_page")
            done += 1
        # otherwise the folio stays queued (the kernel puts it back on the list)
    return done


def madvise_free_huge_pmd(k: Kernel, mm: MM, vma: Vma, haddr: int, start: int, end: int) -> bool:
    """MADV_FREE over a huge PMD. True when the whole PMD was handled (lazyfree); False to continue with PTEs."""
    hp = mm.pt.slot(haddr)
    assert isinstance(hp, HugePmd)
    if hp.is_zero:
        return True
    f = hp.folio
    assert f is not None
    if rmap.folio_maybe_mapped_shared(k, f):
        return True
    if end - start != k.pmd_size:
        split_folio(k, f, caller="madvise_free_huge_pmd")
        return False
    f.dirty = False
    hp.dirty = False
    folio_mark_lazyfree(f)
    return True


def folio_mark_lazyfree(f: Folio) -> None:
    if f.swapbacked and not f.mlocked:
        f.swapbacked = False
