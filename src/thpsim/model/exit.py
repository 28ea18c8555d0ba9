"""Process exit (kernel/exit.c → mm/mmap.c exit_mmap): unmap every VMA, free every page table
(floor FIRST_USER_ADDRESS, ceiling USER_PGTABLES_CEILING), drop the huge zero folio reference.
Afterwards ``check_mm`` expects pgtables_bytes and every RSS counter to be zero (checked by invariants.py).
Follows Linux 6.18 / 7.3.4 (exit_mmap: unmap_vmas, free_pgtables, then mm_put_huge_zero_folio at mmput).
Left out: the OOM reaper, mm_users/mm_count (an mm dies at its exit op), CLONE_VM/vfork sharing, exit_aio etc.
"""

from __future__ import annotations

from thpsim.model import memory
from thpsim.model.kernel import MM, Kernel

__all__ = ["exit_mmap"]


def exit_mmap(k: Kernel, mm: MM) -> None:
    vmas = list(mm.vmas)
    memory.unmap_vmas(k, mm, vmas)
    for v in vmas:
        mm.vmas.remove(v)
    memory.free_pgtables(k, mm, [(v.start, v.end) for v in vmas], 0, 0)
    mm.locked_vm = 0
    mm.huge_zero_ref = False
    mm.alive = False
