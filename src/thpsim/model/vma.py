"""VMAs and the VMA tree of one mm (mm/vma.c: __split_vma, vma merging rules, is_mergeable_anon_vma).

Models anonymous private VMAs only: flags, protection, vm_pgoff (for merge contiguity), and the anon_vma as an
identity plus whether its chain is singular (fork makes it non-singular). Merging follows mm/vma.c: same flags
(VM_SOFTDIRTY ignored), contiguous pgoff, compatible anon_vma. The PMD split that a VMA split needs
(``vma_adjust_trans_huge``) lives in huge_memory.py and is called by the syscall modules before the VMA changes,
as the series' patch 02 moved it (no effect on upstream ordering, which cannot fail).

Left out: file and shmem VMAs, VM_SPECIAL, stack guard gaps, mseal.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

__all__ = ["PROT_MASK", "VM_DONTCOPY", "VM_EXEC", "VM_HUGEPAGE", "VM_LOCKED", "VM_LOCKONFAULT",
           "VM_NOHUGEPAGE", "VM_NORESERVE", "VM_RAND_READ", "VM_READ", "VM_SEQ_READ", "VM_UFFD_WP", "VM_WIPEONFORK",
           "VM_WRITE", "Vma", "VmaTree", "can_merge", "is_mergeable_anon_vma", "prot_to_flags"]

VM_READ = 0x1
VM_WRITE = 0x2
VM_EXEC = 0x4
VM_LOCKED = 0x2000
VM_LOCKONFAULT = 0x80000
VM_DONTCOPY = 0x20000
VM_NORESERVE = 0x200000
VM_HUGEPAGE = 0x20000000
VM_NOHUGEPAGE = 0x40000000
VM_WIPEONFORK = 0x2000000
VM_RAND_READ = 0x10000
VM_SEQ_READ = 0x8000
VM_UFFD_WP = 0x1000        # registered with a userfaultfd in UFFDIO_REGISTER_MODE_WP
PROT_MASK = VM_READ | VM_WRITE | VM_EXEC


class Vma:
    __slots__ = ("start", "end", "flags", "pgoff", "anon_vma", "anon_vma_singular", "avc")

    def __init__(self, start: int, end: int, flags: int, pgoff: int, anon_vma: int | None = None,
                 anon_vma_singular: bool = True, avc: tuple[int, ...] = ()) -> None:
        self.start = start
        self.end = end
        self.flags = flags
        self.pgoff = pgoff
        self.anon_vma = anon_vma
        self.anon_vma_singular = anon_vma_singular
        # the anon_vma_chain: every anon_vma whose interval tree holds this VMA (its own, and after fork its
        # ancestors'), so that rmap_walk_anon of a folio visits it (mm/rmap.c anon_vma_clone/anon_vma_fork)
        self.avc = avc

    def copy(self) -> Vma:
        return Vma(self.start, self.end, self.flags, self.pgoff, self.anon_vma, self.anon_vma_singular, self.avc)

    def linear_page_index(self, addr: int, page_shift: int) -> int:
        """linear_page_index(): the page offset of addr in this VMA's (anonymous) address space."""
        return self.pgoff + ((addr - self.start) >> page_shift)

    @property
    def readable(self) -> bool:
        return bool(self.flags & VM_READ)

    @property
    def writable(self) -> bool:
        return bool(self.flags & VM_WRITE)

    @property
    def locked(self) -> bool:
        return bool(self.flags & VM_LOCKED)

    def perms(self) -> str:
        f = self.flags
        return ("r" if f & VM_READ else "-") + ("w" if f & VM_WRITE else "-") + ("x" if f & VM_EXEC else "-") + "p"

    def __repr__(self) -> str:
        return f"Vma({self.start:#x}-{self.end:#x} {self.perms()} flags={self.flags:#x})"


def prot_to_flags(prot_bits: int) -> int:
    """PROT_* bits (r=1,w=2,x=4) to VM_*. x86 implies READ for writable mappings; with protection keys (PKU,
    present on the validated host) an execute-only mapping stays unreadable."""
    f = prot_bits & PROT_MASK
    if f & VM_WRITE:
        f |= VM_READ
    return f


def is_mergeable_anon_vma(a: Vma, b: Vma) -> bool:
    if a.anon_vma is None or b.anon_vma is None:
        # vma_had_uncowed_parents(): the side that *has* an anon_vma must have a singular chain
        other = b if a.anon_vma is None else a
        return other.anon_vma_singular if (a.anon_vma or b.anon_vma) else True
    return a.anon_vma == b.anon_vma


def can_merge(prev: Vma, nxt: Vma) -> bool:
    """prev immediately followed by nxt: same flags, contiguous pgoff, compatible anon_vma."""
    if prev.end != nxt.start or prev.flags != nxt.flags:
        return False
    if prev.pgoff + ((prev.end - prev.start) >> 12) != nxt.pgoff:
        return False
    return is_mergeable_anon_vma(prev, nxt)


class VmaTree:
    """Sorted, non-overlapping VMAs (the maple tree, for our purposes)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._vmas: list[Vma] = []

    def __iter__(self) -> Iterator[Vma]:
        return iter(list(self._vmas))

    def __len__(self) -> int:
        return len(self._vmas)

    def insert(self, v: Vma) -> None:
        i = bisect.bisect_left(self._starts, v.start)
        self._starts.insert(i, v.start)
        self._vmas.insert(i, v)

    def remove(self, v: Vma) -> None:
        i = self._index(v)
        del self._starts[i]
        del self._vmas[i]

    def _index(self, v: Vma) -> int:
        i = bisect.bisect_left(self._starts, v.start)
        while i < len(self._vmas) and self._vmas[i] is not v:
            i += 1
        if i >= len(self._vmas):
            raise KeyError(v)
        return i

    def find(self, addr: int) -> Vma | None:
        """The VMA containing addr."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self._vmas[i].start <= addr < self._vmas[i].end:
            return self._vmas[i]
        return None

    def overlapping(self, start: int, end: int) -> list[Vma]:
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        while i < len(self._vmas) and self._vmas[i].start < end:
            if self._vmas[i].end > start:
                out.append(self._vmas[i])
            i += 1
        return out

    def prev_of(self, addr: int) -> Vma | None:
        """The last VMA ending at or before addr."""
        i = bisect.bisect_left(self._starts, addr) - 1
        while i >= 0:
            if self._vmas[i].end <= addr:
                return self._vmas[i]
            i -= 1
        return None

    def next_of(self, addr: int) -> Vma | None:
        """The first VMA starting at or after addr."""
        i = bisect.bisect_left(self._starts, addr)
        return self._vmas[i] if i < len(self._vmas) else None

    def covered(self, start: int, end: int) -> bool:
        """Is [start, end) fully covered by VMAs without holes?"""
        pos = start
        for v in self.overlapping(start, end):
            if v.start > pos:
                return False
            pos = max(pos, v.end)
        return pos >= end

    def split_at(self, v: Vma, addr: int) -> tuple[Vma, Vma]:
        """Split v at addr (start < addr < end) into two VMAs sharing the anon_vma."""
        assert v.start < addr < v.end
        upper = Vma(addr, v.end, v.flags, v.pgoff + ((addr - v.start) >> 12), v.anon_vma, v.anon_vma_singular,
                    v.avc)
        v.end = addr
        self.insert(upper)
        return v, upper

    def try_merge_around(self, start: int, end: int) -> None:
        """Merge VMAs in/around [start, end) with their neighbours where Linux's rules allow."""
        vs = self.overlapping(max(start - 1, 0), end + 1)
        i = 0
        while i < len(vs) - 1:
            a, b = vs[i], vs[i + 1]
            if can_merge(a, b):
                a.end = b.end
                if a.anon_vma is None:
                    a.anon_vma, a.anon_vma_singular, a.avc = b.anon_vma, b.anon_vma_singular, b.avc
                self.remove(b)
                del vs[i + 1]
            else:
                i += 1
