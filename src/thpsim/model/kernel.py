"""The simulated kernel: mm_structs (include/linux/mm_types.h) and the global state they share.

Holds every process's mm (VMA tree, page tables, RSS counters, locked_vm), the global vmstat, the allocator with
fault injection, the deferred-split queue, and the global huge zero folio. Table allocation and freeing helpers
(``__pte_alloc``, ``__pmd_alloc``, ``__pud_alloc``, ``pte_alloc_one``, ``pte_free``) live here because every
other module uses them; the kernel rules themselves live in the modules named after their kernel files.
Follows Linux 6.18 / 7.3.4 (and series v3 for the tables the lazy design allocates).
Left out: NUMA nodes, memcgs (the allocator's page budget stands in for a limit), per-CPU counter batching,
mm refcounts, locks (every step is atomic).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thpsim.errors import ThpsimError
from thpsim.model.arch import Arch
from thpsim.model.design import Design
from thpsim.model.folio import Folio
from thpsim.model.knobs import Knobs
from thpsim.model.page_alloc import FailPolicy, PageAllocator
from thpsim.model.pgtable import PageTables
from thpsim.model.swapfile import SwapSpace
from thpsim.model.vma import VmaTree
from thpsim.model.vmstat import VmStat
from thpsim.trace.format import ARENA_BASE

__all__ = ["Kernel", "MM", "StepLog", "VM_FAULT_FALLBACK", "VM_FAULT_OK", "VM_FAULT_OOM", "VM_FAULT_SIGSEGV"]

# fault results (include/linux/mm_types.h vm_fault_reason)
VM_FAULT_OK = 0
VM_FAULT_OOM = 0x1
VM_FAULT_SIGSEGV = 0x40
VM_FAULT_FALLBACK = 0x800


class MM:
    """One process's address space (struct mm_struct)."""

    def __init__(self, name: str, arch: Arch) -> None:
        self.name = name
        self.pt = PageTables(arch, ARENA_BASE)
        self.vmas = VmaTree()
        self.anon_pages = 0        # MM_ANONPAGES
        self.swap_ents = 0         # MM_SWAPENTS
        self.locked_vm = 0         # pages
        self.huge_zero_ref = False  # MMF_HUGE_ZERO_FOLIO
        self.alive = True


@dataclass
class StepLog:
    """What happened inside one step, for reports (not part of the observation record)."""

    split_sites: list[str] = field(default_factory=list)      # where PMD splits came from
    failed_sites: list[str] = field(default_factory=list)     # where split allocations failed
    notes: list[str] = field(default_factory=list)


def _max_ptes(arch: Arch, name: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if value > arch.hpage_pmd_nr - 1:
        raise ThpsimError(f"{name} must be 0..{arch.hpage_pmd_nr - 1} on {arch.name} (got {value})")
    return value


class Kernel:
    def __init__(self, arch: Arch, knobs: Knobs, design: Design, policy: FailPolicy | None = None,
                 *, max_retries: int = 10_000) -> None:
        self.arch = arch
        nr = arch.hpage_pmd_nr
        # khugepaged_init's defaults for None; a value above HPAGE_PMD_NR - 1 is EINVAL in the sysfs store
        self.max_ptes_none, self.max_ptes_swap, self.max_ptes_shared = (
            _max_ptes(arch, name, getattr(knobs, name), default)
            for name, default in (("max_ptes_none", nr - 1), ("max_ptes_swap", nr // 8), ("max_ptes_shared", nr // 2)))
        self.knobs = knobs
        self.design = design.for_arch(arch)
        self.alloc = PageAllocator(policy or FailPolicy())
        self.vmstat = VmStat()
        self.procs: dict[str, MM] = {}
        self.deferred: dict[int, Folio] = {}       # the deferred split queue (insertion ordered)
        self.huge_zero_allocated = knobs.huge_zero_allocated or knobs.persistent_huge_zero
        self.next_folio = 1
        self.next_anon_vma = 1
        self.max_retries = max_retries
        self.log = StepLog()
        self.pins: dict[str, list[Folio]] = {}     # FOLL_PIN references held per process
        self.reserve_pool = self.design.pool_tables
        if self.reserve_pool:
            # the pool is allocated up front (outside reclaim), like a mempool
            for _ in range(self.reserve_pool):
                self.alloc.alloc("pte_alloc_one@reserve_pool")
                self.vmstat.nr_pagetable_bytes += arch.pagetable_page_bytes
        self.pmd_size = arch.pmd_size
        self.page = arch.page_size
        self.nr = arch.hpage_pmd_nr
        self.swap = SwapSpace(nr, knobs.swap_clusters, knobs.swap_fragmented) if knobs.swap else None

    # ---- processes -------------------------------------------------------------------------------------------
    def new_mm(self, name: str) -> MM:
        mm = MM(name, self.arch)
        self.procs[name] = mm
        return mm

    # ---- folios ----------------------------------------------------------------------------------------------
    def folio_alloc(self, site: str, order: int) -> Folio | None:
        nr = 1 << order
        if not self.alloc.alloc(site, nr):
            return None
        f = Folio(self.next_folio, order, nr)
        self.next_folio += 1
        if nr > 1:
            self.vmstat.mthp["nr_anon"] += 1
        return f

    def folio_free(self, f: Folio, *, keep_pages: int = 0) -> None:
        """Free a folio; ``keep_pages`` of its pages live on (a folio split: the order-0 folios keep theirs, so
        only the pages remapped to the zero page go back to the allocator — and refill the reserves)."""
        if f.freed:
            return
        f.freed = True
        if f.large:
            self.vmstat.mthp["nr_anon"] -= 1
            if f.partially_mapped:
                self.vmstat.mthp["nr_anon_partially_mapped"] -= 1
                f.partially_mapped = False
        self.deferred.pop(f.id, None)
        f.on_deferred = False
        if f.nr - keep_pages:
            self.alloc.free(f.nr - keep_pages)

    # ---- page tables -----------------------------------------------------------------------------------------
    def pte_alloc_one(self, site: str, *, memalloc: bool = False) -> bool:
        """pte_alloc_one(): a PTE table page, constructed (NR_PAGETABLE) but not yet counted in pgtables_bytes."""
        if not self.alloc.alloc(site, 1, memalloc=memalloc):
            return False
        self.vmstat.nr_pagetable_bytes += self.arch.pagetable_page_bytes
        return True

    def pte_free(self) -> None:
        """Free one PTE table page; a reserve pool below its size takes it back instead (mempool_free()
        semantics: the ``lazy-reclaim-pool`` what-if refills outside reclaim from every table freed)."""
        if self.reserve_pool < self.design.pool_tables:
            self.reserve_pool += 1       # stays allocated and in NR_PAGETABLE, as the pool's pages always are
            return
        self.vmstat.nr_pagetable_bytes -= self.arch.pagetable_page_bytes
        self.alloc.free(1)

    def pud_alloc(self, mm: MM, addr: int) -> bool:
        if mm.pt.has_pud_table(addr):
            return True
        if not self.alloc.alloc("__pud_alloc", 1):
            return False
        self.vmstat.nr_pagetable_bytes += self.arch.pud_nr_pagetable_bytes
        mm.pt.install_pud_table(addr)
        return True

    def pmd_alloc(self, mm: MM, addr: int) -> bool:
        if not self.pud_alloc(mm, addr):
            return False
        if mm.pt.pmd_table_of(addr) is not None:
            return True
        if not self.alloc.alloc("__pmd_alloc", 1):
            return False
        self.vmstat.nr_pagetable_bytes += self.arch.pmd_nr_pagetable_bytes
        mm.pt.install_pmd_table(addr)
        return True

    def pte_alloc(self, mm: MM, addr: int) -> bool:
        """pte_alloc(): __pte_alloc + pmd_install if the PMD is none."""
        if mm.pt.slot(addr) is not None:
            return True
        if not self.pte_alloc_one("__pte_alloc"):
            return False
        mm.pt.install_pte_table(addr)
        return True

    def free_pte_table(self, mm: MM, addr: int) -> None:
        """free_pte_range / PT_RECLAIM free_pte: pmd_clear, pte_free_tlb, mm_dec_nr_ptes."""
        del mm.pt.slots[addr >> mm.pt.pmd_shift]
        mm.pt.nr_ptes -= 1
        self.pte_free()

    def free_pmd_table(self, mm: MM, addr: int) -> None:
        t = mm.pt.pmd_tables.pop(addr >> mm.pt.pud_shift)
        if t.deposits:
            raise AssertionError(f"{mm.name}: freeing a PMD table with {t.deposits} deposited tables (VM_BUG_ON)")
        mm.pt.nr_pmds -= 1
        self.vmstat.nr_pagetable_bytes -= self.arch.pmd_nr_pagetable_bytes
        self.alloc.free(1)

    def free_pud_table(self, mm: MM, addr: int) -> None:
        if (addr >> mm.pt.p4d_shift) in mm.pt.preexisting_pud:
            return                  # the program text's PUD table (pgtable.PageTables.preexisting_pud)
        mm.pt.pud_tables.discard(addr >> mm.pt.p4d_shift)
        mm.pt.nr_puds -= 1
        self.vmstat.nr_pagetable_bytes -= self.arch.pud_nr_pagetable_bytes
        self.alloc.free(1)

    def new_anon_vma(self) -> int:
        self.next_anon_vma += 1
        return self.next_anon_vma
