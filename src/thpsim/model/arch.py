"""Architecture profiles: page and table sizes and ``arch_needs_pgtable_deposit()``.

Models include/linux/pgtable.h (``arch_needs_pgtable_deposit``), the per-arch PTRS_PER_* constants and what
``mm_inc_nr_ptes/pmds/puds`` add to ``mm->pgtables_bytes`` (spec upstream.md §5.2). x86_64 is validated against
the live kernel (6.18) and the arm64 lab guests (7.3.4); the others come from the specs. Left out: ppc64 PTE fragments sharing a page are counted only
in ``pagetable_page_bytes`` (NR_PAGETABLE), riscv runtime folding is treated as 4 levels.
"""

from __future__ import annotations

from dataclasses import dataclass

from thpsim.errors import ThpsimError

__all__ = ["ARCHES", "Arch", "get_arch", "resolve_arch"]


@dataclass(frozen=True)
class Arch:
    name: str
    page_size: int
    ptrs_per_pte: int
    pte_table_bytes: int      # what mm_inc_nr_ptes adds
    pmd_table_bytes: int      # what mm_inc_nr_pmds adds (0 if folded)
    pud_table_bytes: int      # what mm_inc_nr_puds adds (0 if folded)
    ptrs_per_pmd: int
    ptrs_per_pud: int
    needs_pgtable_deposit: bool = False   # arch_needs_pgtable_deposit()
    pagetable_page_bytes: int = 4096      # NR_PAGETABLE unit for one PTE table (whole pages)
    validated_live: bool = False
    cont_ptes: int = 0                    # arm64 CONT_PTES (contpte blocks; 0: no contiguous-PTE folding)
    # pmd_swp_*exclusive helpers of the PMD-level swap entries series (x86, arm64, s390, riscv, loongarch):
    # elsewhere reclaim keeps splitting the PMD (design lazy-pmd-swap becomes lazy)
    pmd_swap_entries: bool = True

    @property
    def pmd_nr_pagetable_bytes(self) -> int:
        """NR_PAGETABLE for one PMD table: whole pages of the allocation (a 16 KiB s390 CRST table is four 4 KiB
        pages; on 16K/64K-page arm64 one page). From the specs; validated live on x86_64 only."""
        return max(self.pmd_table_bytes, self.page_size) if self.pmd_table_bytes else 0

    @property
    def pud_nr_pagetable_bytes(self) -> int:
        """Same for one PUD table; 0 where the level is folded (arm64 64K pages, 3 levels)."""
        return max(self.pud_table_bytes, self.page_size) if self.pud_table_bytes else 0

    @property
    def pmd_size(self) -> int:
        return self.page_size * self.ptrs_per_pte

    @property
    def pud_size(self) -> int:
        return self.pmd_size * self.ptrs_per_pmd

    @property
    def p4d_size(self) -> int:
        return self.pud_size * self.ptrs_per_pud

    @property
    def hpage_pmd_nr(self) -> int:
        return self.ptrs_per_pte


ARCHES: dict[str, Arch] = {
    a.name: a
    for a in (
        # name, page, PTRS_PER_PTE, PTE/PMD/PUD table bytes counted, PTRS_PER_PMD, PTRS_PER_PUD
        Arch("x86_64", 4096, 512, 4096, 4096, 4096, 512, 512, validated_live=True),
        # arm64: CONT_PTES 16 / 128 / 32 (a 64 KiB / 2 MiB / 2 MiB contiguous block), arch/arm64 contpte
        Arch("arm64-4k", 4096, 512, 4096, 4096, 4096, 512, 512, cont_ptes=16),
        Arch("arm64-16k", 16384, 2048, 16384, 16384, 16384, 2048, 2048, pagetable_page_bytes=16384,
             cont_ptes=128),
        # 64K granule, 48-bit VA: three levels, the PUD is folded (mm_inc_nr_puds adds nothing)
        Arch("arm64-64k", 65536, 8192, 65536, 65536, 0, 8192, 64, pagetable_page_bytes=65536, cont_ptes=32),
        # book3s64 hash, 64K pages: H_PTE_INDEX_SIZE 8 (2 KiB PTE fragments), 16 MiB PMD THPs,
        # H_PMD_INDEX_SIZE/H_PUD_INDEX_SIZE 10; the deposit is required (arch_needs_pgtable_deposit)
        Arch("ppc64-hash", 65536, 256, 2048, 8192, 8192, 1024, 1024, needs_pgtable_deposit=True, pmd_swap_entries=False,
             pagetable_page_bytes=65536),
        # book3s64 radix, 64K pages: R_PTE_INDEX_SIZE 5 (256-byte fragments), R_PMD/PUD_INDEX_SIZE 9, 2 MiB THPs
        Arch("ppc64-radix", 65536, 32, 256, 4096, 4096, 512, 512, pagetable_page_bytes=65536,
             pmd_swap_entries=False),
        # s390x: 2 KiB PTE tables (256 entries, a full 4K page since v6.7), 1 MiB segments, 16 KiB CRST tables
        Arch("s390x", 4096, 256, 2048, 16384, 16384, 2048, 2048, pagetable_page_bytes=4096),
        Arch("riscv64", 4096, 512, 4096, 4096, 4096, 512, 512),
    )
}
ARCHES["arm64"] = ARCHES["arm64-4k"]
ARCHES["ppc64"] = ARCHES["ppc64-radix"]


_MACHINE_TO_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "s390x": "s390x", "riscv64": "riscv64"}


def resolve_arch(machine: str, hpage_pmd_size: int, page_size: int, mmu: str | None) -> tuple[Arch | None, str]:
    """The thpsim arch profile for ``uname -m`` + THP size + page size (+ powerpc MMU), with a note."""
    name: str | None = _MACHINE_TO_ARCH.get(machine)
    if machine in ("aarch64", "arm64"):
        name = {4096: "arm64-4k", 16384: "arm64-16k", 65536: "arm64-64k"}.get(page_size)
    elif machine.startswith("ppc64"):
        kind = (mmu or "").lower()
        if kind.startswith("hash") or (not kind and hpage_pmd_size == 16 << 20):
            name = "ppc64-hash"
        elif page_size == 65536:
            name = "ppc64-radix"
        else:
            name = None
    if name is None:
        return None, f"no thpsim arch profile for machine {machine!r} (page size {page_size})"
    arch = ARCHES[name]
    if hpage_pmd_size and arch.pmd_size != hpage_pmd_size:
        return None, (f"machine {machine!r} maps to profile {name} but hpage_pmd_size {hpage_pmd_size} != "
                      f"{arch.pmd_size}")
    return arch, f"profile {name}"


def get_arch(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        raise ThpsimError(f"unknown arch {name!r}; choose one of: {', '.join(sorted(ARCHES))}") from None
