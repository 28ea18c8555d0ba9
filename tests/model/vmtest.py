"""Shared helpers of the model-area tests (tests/model/test_*.py), in the spirit of the kernel's
tools/testing/vma: build a tiny address space by calling the model's kernel entry points directly, then assert
the counters a behaviour change would move.

Addresses are offsets from the arena base ``A``; ``M`` is 1 MiB, so on x86-64 one THP is [0, 2M).
"""

from __future__ import annotations

from thpsim.model import invariants, memory, mmap
from thpsim.model.engine import make_kernel
from thpsim.model.kernel import MM, VM_FAULT_OK, Kernel
from thpsim.model.knobs import Knobs
from thpsim.model.page_alloc import FailPolicy
from thpsim.model.pgtable import HugePmd, PteTable
from thpsim.trace.format import ARENA_BASE

A = ARENA_BASE
K = 4096
M = 1 << 20
G = 1 << 30
THP = 2 * M
NR = 512
RW = 3          # PROT_READ | PROT_WRITE

DESIGNS = ("upstream", "lazy")


def kernel(design: str = "upstream", *, fail: str | None = None, policy: FailPolicy | None = None,
           **knobs: object) -> Kernel:
    """A kernel with THP ``always``; ``fail`` names an allocation site that always fails from now on."""
    kn = Knobs(**{"thp_enabled": "always", **knobs})  # type: ignore[arg-type]
    k = make_kernel(design=design, knobs=kn, policy=policy)
    if fail is not None:
        set_fail(k, fail)
    return k


def set_fail(k: Kernel, site: str | None) -> None:
    """Make every allocation at ``site`` fail from now on (None: stop failing)."""
    k.alloc.set_policy(FailPolicy(persistent_site=site), counted=0)


def mapped(k: Kernel, start: int, length: int, name: str = "main", prot: int = RW) -> MM:
    """An mm with one anonymous private VMA [A + start, A + start + length)."""
    mm = k.procs.get(name) or k.new_mm(name)
    assert mmap.do_mmap(k, mm, A + start, length, prot, ()) == A + start
    return mm


def fault(k: Kernel, mm: MM, off: int, *, write: bool = True) -> None:
    assert memory.handle_mm_fault(k, mm, A + off, write) == VM_FAULT_OK


def thp(k: Kernel, mm: MM, off: int = 0) -> HugePmd:
    """Write-fault a THP at A + off (PMD aligned) and return its huge PMD."""
    fault(k, mm, off)
    hp = mm.pt.slot(A + off)
    assert isinstance(hp, HugePmd) and hp.folio is not None
    return hp


def pte_table(mm: MM, off: int) -> PteTable:
    t = mm.pt.slot(A + off)
    assert isinstance(t, PteTable)
    return t


def ev(k: Kernel, name: str) -> int:
    """A vm event counter (thp_split_pmd, thp_split_pmd_failed, ...)."""
    return k.vmstat.events[name]


def tables(mm: MM) -> tuple[int, int, int, int]:
    """(nr_ptes, nr_pmds, nr_puds, deposits): what pgtables_bytes is made of."""
    pt = mm.pt
    return pt.nr_ptes, pt.nr_pmds, pt.nr_puds, pt.deposits()


def consistent(k: Kernel) -> None:
    """The model's invariants (deposits, nr_ptes, RSS, mapcounts, NR_PAGETABLE) hold."""
    assert invariants.check(k) == []
