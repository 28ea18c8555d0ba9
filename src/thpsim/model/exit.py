"""Process exit (kernel/exit.c → mm/mmap.c exit_mmap): unmap every VMA, free every page table
(floor FIRST_USER_ADDRESS, ceiling USER_PGTABLES_CEILING), drop the huge zero folio reference.
Afterwards ``check_mm`` expects pgtables_bytes and every RSS counter to be zero (checked by invariants.py).
"""

from __future__ import annotations

from thpsim.model import memory
from thpsim.model.kernel import MM, Kernel


def exit_mmap(k: Kernel, mm: MM) -> None:
    vmas = list(mm.vmas)
    memory.unmap_vmas(k, mm, vmas)
    for v in vmas:
        mm.vmas.remove(v)
    memory.free_pgtables(k, mm, [(v.start, v.end) for v in vmas], 0, 0)
    mm.locked_vm = 0
    if mm.huge_zero_ref:
        mm.huge_zero_ref = False
        k.huge_zero_users -= 1
    mm.alive = False
