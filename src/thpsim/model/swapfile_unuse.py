"""swapoff(2)'s half of mm/swapfile.c (7.3.4 ``try_to_unuse`` → ``unuse_mm`` → ``unuse_vma`` →
``unuse_pmd_range`` → ``unuse_pte_range``), plus the PMD swap entry branch of the PMD-level swap entries series
(v1 08/13, v2 10/16 ``unuse_pmd``). A module of its own because it calls the fault paths (memory.py), which call
the slot half (:mod:`thpsim.model.swapfile`).

Every swap entry of every live process is swapped back in: a PMD swap entry whole (a PMD-order folio), or, when
no such folio can be had, split into 512 PTE swap entries (``__split_huge_pmd``: a table under lazy) that go
through ``unuse_pte``; a PTE swap entry gets an order-0 folio. An allocation that fails makes swapoff fail with
-ENOMEM and the device stays (what was swapped in stays in memory). Then the device is gone: reclaim can no longer
swap. No device: -EINVAL.

Left out: the swap cache (swapped-out folios are freed at once in the model), readahead, shmem, the -EAGAIN
rescans when entries change under the walk.
"""

from __future__ import annotations

from thpsim.model import huge_memory, memory
from thpsim.model.errnos import EINVAL, ENOMEM
from thpsim.model.kernel import MM, VM_FAULT_FALLBACK, VM_FAULT_OK, Kernel
from thpsim.model.pgtable import PTE_SWAP, PteTable, SwapPmd

__all__ = ["sys_swapoff"]


def sys_swapoff(k: Kernel) -> int:
    """swapoff(2): 0, -EINVAL (no swap device) or -ENOMEM (an entry could not be swapped in)."""
    if k.swap is None:
        return EINVAL
    for mm in list(k.procs.values()):
        if mm.alive and _unuse_mm(k, mm) != 0:
            return ENOMEM
    k.swap = None
    return 0


def _unuse_mm(k: Kernel, mm: MM) -> int:
    pt = mm.pt
    for idx in sorted(pt.slots):
        s = pt.slots.get(idx)
        a = idx << pt.pmd_shift
        if isinstance(s, SwapPmd):
            v = mm.vmas.find(a)
            assert v is not None
            rc = huge_memory.do_huge_pmd_swap_page(k, mm, v, a, s)       # unuse_pmd
            if rc not in (VM_FAULT_OK, VM_FAULT_FALLBACK):
                return ENOMEM
            s = pt.slots.get(idx)
        if isinstance(s, PteTable):
            for i in sorted(s.ptes):
                pte = s.ptes.get(i)
                if pte is None or pte.kind != PTE_SWAP:
                    continue
                addr = a + (i << pt.page_shift)
                v = mm.vmas.find(addr)
                assert v is not None
                if memory.do_swap_page(k, mm, v, addr, pte) != VM_FAULT_OK:   # unuse_pte
                    return ENOMEM
    return 0
