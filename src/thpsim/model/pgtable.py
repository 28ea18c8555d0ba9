"""Page-table levels and byte-exact ``mm->pgtables_bytes`` (include/linux/mm.h, mm/memory.c __p*_alloc,
mm/pgtable-generic.c deposit/withdraw).

Represents what the kernel represents, lazily: PUD tables as a set of P4D indices, PMD tables as a dict of PUD
indices (each with its deposit count: ``ptdesc->pmd_huge_pte`` with split PMD ptlocks), and one slot per PMD that
is either a :class:`PteTable` or a :class:`HugePmd`. ``pgtables_bytes`` counts PTE + PMD + PUD tables; P4D and
PGD are never counted (spec upstream.md checklist 1). Deposited tables are fungible, so only their count per PMD
table is kept. ``nr_pagetable`` mirrors NR_PAGETABLE (/proc/meminfo PageTables) for this mm's tables.

Where the arena shares its top-level (PGD) entry with the program's text — arm64 with 16K pages: one entry
covers 128 TiB, so the arena at 32 TiB sits in entry 0 beside a non-PIE python at 4 MiB — the PUD table the
arena hangs off exists before the trace starts and is never freed by it (``preexisting_pud``); measured in the
arm64-16k lab guest (7.3.4): the first THP adds 32 KiB of VmPTE there (PMD table + deposit), 48 KiB would have
a fresh PUD table too. On x86-64 (512 GiB per entry) the arena's entry is its own.

Left out: PGD/P4D allocation (not in pgtables_bytes), PUD-mapped THPs, file/DAX PMDs.
"""

from __future__ import annotations

from thpsim.model.arch import Arch
from thpsim.model.folio import Folio

__all__ = ["HugePmd", "PTE_GUARD", "PTE_PAGE", "PTE_SWAP", "PTE_ZERO", "PageTables", "PmdTable", "Pte", "SwapPmd",
           "PteTable", "pmd_ranges"]

# PTE kinds
PTE_PAGE = 0     # present page of a folio
PTE_ZERO = 1     # the shared 4K zero page
PTE_SWAP = 2     # swap entry
PTE_GUARD = 3    # guard marker (MADV_GUARD_INSTALL)


def pmd_ranges(start: int, end: int, pmd_size: int) -> list[tuple[int, int]]:
    """[start, end) cut at PMD boundaries: the kernel's ``next = pmd_addr_end(addr, end)`` loop."""
    out = []
    addr = start
    while addr < end:
        nxt = min((addr | (pmd_size - 1)) + 1, end)
        out.append((addr, nxt))
        addr = nxt
    return out


class Pte:
    __slots__ = ("kind", "folio", "idx", "write", "dirty")

    def __init__(self, kind: int, folio: Folio | None = None, idx: int = 0, write: bool = False,
                 dirty: bool = False) -> None:
        self.kind = kind
        self.folio = folio
        self.idx = idx
        self.write = write
        self.dirty = dirty


class PteTable:
    """A PTE table installed in a PMD slot: entries keyed by index 0..PTRS_PER_PTE-1 (absent = pte_none).

    ``cont``: the arm64 contpte blocks (index // CONT_PTES) whose entries carry the contiguous bit
    (:mod:`thpsim.model.contpte`); always empty on arches without contpte."""

    __slots__ = ("ptes", "cont")

    def __init__(self) -> None:
        self.ptes: dict[int, Pte] = {}
        self.cont: set[int] = set()


class HugePmd:
    """A huge PMD: an anonymous THP (folio) or the huge zero page (folio None)."""

    __slots__ = ("folio", "write", "dirty", "uffd_wp")

    def __init__(self, folio: Folio | None, write: bool, dirty: bool) -> None:
        self.folio = folio
        self.write = write
        self.dirty = dirty
        self.uffd_wp = False   # write-protected by UFFDIO_WRITEPROTECT (async mode: a write fault splits)

    @property
    def is_zero(self) -> bool:
        return self.folio is None


class SwapPmd:
    """A PMD-level swap entry (the follow-up series "mm: PMD-level swap entries for anonymous THPs", design
    ``lazy-pmd-swap``): HPAGE_PMD_NR consecutive swap slots from ``base``, one non-present PMD, no PTE table.
    ``content`` is a stand-in folio holding the swapped pages (shared by every process's entry for the same
    folio); ``exclusive`` is the swap entry's exclusive bit (the folio was anon-exclusive to this mapping)."""

    __slots__ = ("base", "content", "exclusive", "uffd_wp")

    def __init__(self, base: int, content: Folio, exclusive: bool, uffd_wp: bool = False) -> None:
        self.base = base
        self.content = content
        self.exclusive = exclusive
        self.uffd_wp = uffd_wp


class PmdTable:
    __slots__ = ("deposits",)

    def __init__(self) -> None:
        self.deposits = 0


class PageTables:
    """The page-table tree of one mm, with the counters behind VmPTE."""

    def __init__(self, arch: Arch, arena_base: int = 0) -> None:
        self.arch = arch
        self.pmd_shift = (arch.pmd_size).bit_length() - 1
        self.pud_shift = (arch.pud_size).bit_length() - 1
        self.p4d_shift = (arch.p4d_size).bit_length() - 1
        self.page_shift = (arch.page_size).bit_length() - 1
        self.pud_tables: set[int] = set()           # keyed by addr >> p4d_shift
        # the arena's top-level entry also maps the program's text: its PUD table is not the trace's
        self.preexisting_pud: frozenset[int] = frozenset({0}) if 0 < arena_base < arch.p4d_size else frozenset()
        self.pmd_tables: dict[int, PmdTable] = {}   # keyed by addr >> pud_shift
        self.slots: dict[int, PteTable | HugePmd | SwapPmd] = {}  # keyed by addr >> pmd_shift
        self.nr_ptes = 0
        self.nr_pmds = 0
        self.nr_puds = 0

    # ---- accounting ------------------------------------------------------------------------------------------
    @property
    def pgtables_bytes(self) -> int:
        a = self.arch
        return self.nr_ptes * a.pte_table_bytes + self.nr_pmds * a.pmd_table_bytes + self.nr_puds * a.pud_table_bytes

    def deposits(self) -> int:
        return sum(t.deposits for t in self.pmd_tables.values())

    # ---- lookups ---------------------------------------------------------------------------------------------
    def slot(self, addr: int) -> PteTable | HugePmd | SwapPmd | None:
        return self.slots.get(addr >> self.pmd_shift)

    def pmd_table_of(self, addr: int) -> PmdTable | None:
        return self.pmd_tables.get(addr >> self.pud_shift)

    def has_pud_table(self, addr: int) -> bool:
        return (addr >> self.p4d_shift) in self.pud_tables or (addr >> self.p4d_shift) in self.preexisting_pud

    def pte_index(self, addr: int) -> int:
        return (addr >> self.page_shift) & (self.arch.ptrs_per_pte - 1)

    def get_pte(self, addr: int) -> Pte | None:
        s = self.slots.get(addr >> self.pmd_shift)
        if isinstance(s, PteTable):
            return s.ptes.get(self.pte_index(addr))
        return None

    # ---- installing / removing tables (callers do the allocation through page_alloc) -------------------------
    def install_pud_table(self, addr: int) -> None:
        self.pud_tables.add(addr >> self.p4d_shift)
        self.nr_puds += 1

    def install_pmd_table(self, addr: int) -> None:
        self.pmd_tables[addr >> self.pud_shift] = PmdTable()
        self.nr_pmds += 1

    def install_pte_table(self, addr: int, table: PteTable | None = None) -> PteTable:
        """pmd_install(): populate a none PMD with a PTE table (counted +1)."""
        t = table if table is not None else PteTable()
        self.slots[addr >> self.pmd_shift] = t
        self.nr_ptes += 1
        return t

    def deposit(self, addr: int) -> None:
        """pgtable_trans_huge_deposit + mm_inc_nr_ptes for a freshly allocated table."""
        self.pmd_tables[addr >> self.pud_shift].deposits += 1
        self.nr_ptes += 1

    def withdraw(self, addr: int) -> None:
        """pgtable_trans_huge_withdraw (count unchanged: the table becomes live or is freed by the caller)."""
        t = self.pmd_tables[addr >> self.pud_shift]
        if t.deposits <= 0:
            raise AssertionError(f"withdraw from a PMD table with no deposit at {addr:#x}")
        t.deposits -= 1
