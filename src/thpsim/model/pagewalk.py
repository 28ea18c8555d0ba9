"""The generic page-table walker (mm/pagewalk.c ``walk_page_range_vma`` → ``walk_pmd_range`` → ``walk_pte_range``)
for one anonymous VMA, at the PMD and PTE levels.

Follows 7.3.4 and series v3 09/24 ("mm: handle walk_page_range() failure from THP split"): for a walker with a
``pte_entry`` (or an ``install_pte``) whose ``pmd_entry`` leaves ``ACTION_SUBTREE``, ``walk_pmd_range`` splits a
huge PMD before walking its PTEs (``split_huge_pmd(walk->vma, pmd, addr)``); under the lazy design that split
can fail, and the walk then stops with -ENOMEM — the PMDs walked before it stay processed. An ``install_pte``
walker allocates the missing tables (``__pmd_alloc``, ``__pte_alloc``: -ENOMEM) and fills none PTEs, and never
splits a present huge PMD it only installs into.

Which 7.3.4 walkers reach that split on anonymous memory: none. The walkers with a ``pte_entry`` are
``guard_install_walk_ops`` (its ``pmd_entry`` returns 1 for a huge PMD: the caller zaps instead),
``guard_remove_walk_ops`` (``ACTION_CONTINUE`` for a huge PMD), ``prot_none_walk_ops`` (mprotect of
VM_PFNMAP/VM_MIXEDMAP only), ``mapping_dirty_helpers`` (shared file mappings), ptdump and hugetlb_vmemmap (kernel
tables). The split path is modelled so that row 14 is tested on its own code (``tests/model/test_pagewalk.py``,
with a walker shaped like ``prot_none_walk_ops``); the guard advices in :mod:`thpsim.model.madvise` use this walker.

Left out: PUD-level entries (no anonymous PUD THPs), ``test_walk``, hugetlb, ``pte_hole`` depths, walks without a
VMA (``walk_page_range_novma``), the lock modes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from thpsim.model import huge_memory
from thpsim.model.errnos import ENOMEM
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import HugePmd, Pte, PteTable, SwapPmd, pmd_ranges
from thpsim.model.vma import Vma

__all__ = ["Action", "MmWalk", "MmWalkOps", "walk_page_range_vma"]


class Action(enum.Enum):
    """``walk->action`` (include/linux/pagewalk.h)."""

    SUBTREE = "subtree"     # descend (the default)
    CONTINUE = "continue"   # skip the entries below this one
    AGAIN = "again"         # walk this entry again


@dataclass
class MmWalk:
    """``struct mm_walk``: what a callback sees besides its entry."""

    k: Kernel
    mm: MM
    vma: Vma
    action: Action = Action.SUBTREE


# a callback returns 0 to go on, > 0 to stop the walk with that value (the caller's own meaning), < 0 an error
PmdEntry = Callable[[MmWalk, "HugePmd | PteTable", int, int], int]
PteEntry = Callable[[MmWalk, PteTable, int, int], int]      # (walk, table, index, addr) for a present/non-none PTE
InstallPte = Callable[[MmWalk, int], "Pte | int"]            # (walk, addr) -> the new PTE, or an error/stop value


@dataclass(frozen=True)
class MmWalkOps:
    """``struct mm_walk_ops`` restricted to what anonymous VMAs need."""

    pmd_entry: PmdEntry | None = None
    pte_entry: PteEntry | None = None
    install_pte: InstallPte | None = None


def walk_page_range_vma(k: Kernel, mm: MM, vma: Vma, start: int, end: int, ops: MmWalkOps, *,
                        caller: str = "walk_pmd_range") -> int:
    """Walk [start, end) of ``vma``: 0, the first non-zero callback value, or -ENOMEM (a table allocation for
    ``install_pte``, or under lazy the table of ``walk_pmd_range``'s split; the PMDs before stay processed)."""
    walk = MmWalk(k, mm, vma)
    pt = mm.pt
    for addr, nxt in pmd_ranges(start, end, k.pmd_size):
        while True:                                   # again:
            walk.action = Action.SUBTREE
            slot = pt.slot(addr)
            if slot is None:
                if ops.install_pte is None:
                    break                              # a hole: nothing to do (no pte_hole modelled)
                if not k.pmd_alloc(mm, addr) or not k.pte_alloc(mm, addr):
                    return ENOMEM                      # walk_pud_range's __pmd_alloc, walk_pmd_range's __pte_alloc
                slot = pt.slot(addr)
            assert slot is not None
            if isinstance(slot, SwapPmd):              # not pmd_trans_huge: split_huge_pmd (pmd_is_huge) splits it
                err = huge_memory.__split_huge_pmd(k, mm, vma, addr, caller=caller)
                if err:
                    return err
                slot = pt.slot(addr)
                assert slot is not None and not isinstance(slot, SwapPmd)
            if ops.pmd_entry is not None:
                err = ops.pmd_entry(walk, slot, addr, nxt)
                if err:
                    return err
            if walk.action is Action.AGAIN:
                continue
            if walk.action is Action.CONTINUE:
                break
            if ops.pte_entry is None and (ops.install_pte is None or isinstance(pt.slot(addr), HugePmd)):
                break                                  # no lower handler; or only installing: never split
            if isinstance(pt.slot(addr), HugePmd):
                err = huge_memory.__split_huge_pmd(k, mm, vma, addr, caller=caller)
                if err:
                    return err                         # v3 09/24: break; walk_page_range() returns -ENOMEM
            table = pt.slot(addr)
            if not isinstance(table, PteTable):
                walk.action = Action.AGAIN             # walk_pte_range: pte_offset_map_lock failed
                continue
            err = _walk_pte_range(walk, table, addr, nxt, ops)
            if err:
                return err
            if walk.action is not Action.AGAIN:
                break
    return 0


def _walk_pte_range(walk: MmWalk, table: PteTable, start: int, end: int, ops: MmWalkOps) -> int:
    """walk_pte_range_inner(): install into none PTEs (``install_pte``), else call ``pte_entry``."""
    pt = walk.mm.pt
    page = walk.k.page
    for a in range(start, end, page):
        i = pt.pte_index(a)
        pte = table.ptes.get(i)
        if ops.install_pte is not None and pte is None:
            new = ops.install_pte(walk, a)
            if isinstance(new, int):
                if new:
                    return new
                continue
            table.ptes[i] = new
        elif ops.pte_entry is not None:
            err = ops.pte_entry(walk, table, i, a)
            if err:
                return err
    return 0
