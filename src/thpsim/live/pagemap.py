"""Classify the pages of the arena into observation Runs (see thpsim.observation for the kinds).

Method (read only; nothing here splits a PMD, write-protects or faults anything):

1. ``PAGEMAP_SCAN`` (fs/proc/task_mmu.c, Linux 6.7+) over the arena with
   ``category_anyof_mask = PRESENT | SWAPPED | GUARD`` returns the populated sub-ranges with their categories.
   ``PAGE_IS_HUGE`` on a present range means it is mapped by a huge PMD; ``PAGE_IS_PFNZERO`` means the (huge)
   zero page; ``PAGE_IS_GUARD`` (6.15+) a guard marker (which the kernel also reports as SWAPPED).
2. For present ranges that are not PMD-mapped and not the zero page, the PFN of every page is read from
   ``/proc/PID/pagemap`` (needs root, otherwise the PFN reads 0) and its ``/proc/kpageflags`` entry tells a page of
   a large folio (KPF_THP) — ``pte_thp`` — from an order-0 page — ``pte``.

The scan can be done on another process (``/proc/PID/pagemap``), which is how the runner observes its children
without running any code inside them. Only the given range is ever read.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from thpsim.errors import ProcError
from thpsim.live import syscalls as S
from thpsim.observation import Run, merge_runs

PAGE = S.PAGE_SIZE
_SCAN_ANY = S.PAGE_IS_PRESENT | S.PAGE_IS_SWAPPED | S.PAGE_IS_GUARD
_SCAN_RET = (S.PAGE_IS_PRESENT | S.PAGE_IS_SWAPPED | S.PAGE_IS_GUARD | S.PAGE_IS_HUGE | S.PAGE_IS_PFNZERO
             | S.PAGE_IS_FILE)


@dataclass(frozen=True)
class PageInfo:
    """One pagemap entry decoded (for tests and debugging)."""

    present: bool
    swapped: bool
    guard: bool
    pfn: int
    exclusive: bool


def decode_entry(e: int) -> PageInfo:
    return PageInfo(bool(e & S.PM_PRESENT), bool(e & S.PM_SWAP), bool(e & S.PM_GUARD_REGION),
                    (e & S.PM_PFN_MASK) if e & S.PM_PRESENT else 0, bool(e & S.PM_MMAP_EXCLUSIVE))


class PagemapReader:
    """Open /proc/PID/pagemap (and /proc/kpageflags if readable) and classify ranges of that process."""

    def __init__(self, pid: int | str = "self") -> None:
        self.pid = pid
        path = f"/proc/{pid}/pagemap"
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise ProcError(f"cannot open {path}: {e.strerror}") from None
        try:
            self.kpf: int | None = os.open("/proc/kpageflags", os.O_RDONLY)
        except OSError:
            self.kpf = None

    def close(self) -> None:
        os.close(self.fd)
        if self.kpf is not None:
            os.close(self.kpf)
            self.kpf = None

    def __enter__(self) -> PagemapReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw access
    def scan(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """PAGEMAP_SCAN of [start, end): populated or guarded sub-ranges with PAGE_IS_* categories."""
        try:
            return S.pagemap_scan(self.fd, start, end, anyof=_SCAN_ANY, ret_mask=_SCAN_RET)
        except OSError as e:
            raise ProcError(f"/proc/{self.pid}/pagemap: {e.strerror} (PAGEMAP_SCAN needs Linux 6.7+)") from None

    def entries(self, start: int, end: int) -> list[int]:
        """Raw 64-bit pagemap entries of the pages in [start, end)."""
        n = (end - start) // PAGE
        out: list[int] = []
        off = start // PAGE * 8
        chunk = 65536
        while n > 0:
            k = min(n, chunk)
            data = os.pread(self.fd, 8 * k, off)
            if len(data) != 8 * k:
                raise ProcError(f"/proc/{self.pid}/pagemap: short read at {start:#x}")
            out.extend(struct.unpack(f"<{k}Q", data))
            off += 8 * k
            n -= k
        return out

    def kpageflags(self, pfns: list[int]) -> list[int]:
        """kpageflags of each PFN (0 when unreadable); reads consecutive PFNs in one pread."""
        if self.kpf is None:
            return [0] * len(pfns)
        out: list[int] = []
        i = 0
        while i < len(pfns):
            j = i + 1
            while j < len(pfns) and pfns[j] == pfns[j - 1] + 1 and j - i < 65536:
                j += 1
            if pfns[i] == 0:
                out.extend([0] * (j - i))
            else:
                data = os.pread(self.kpf, 8 * (j - i), pfns[i] * 8)
                vals = list(struct.unpack(f"<{len(data) // 8}Q", data))
                out.extend(vals + [0] * (j - i - len(vals)))
            i = j
        return out

    # -- classification
    def runs(self, start: int, end: int, base: int = 0) -> tuple[Run, ...]:
        """Classify [start, end) into Runs whose addresses are relative to ``base``."""
        out: list[Run] = []
        for s, e, cats in self.scan(start, end):
            if cats & S.PAGE_IS_GUARD:
                out.append(Run(s - base, e - base, "guard"))
            elif cats & S.PAGE_IS_PRESENT and cats & S.PAGE_IS_HUGE:
                out.append(Run(s - base, e - base, "pmd_zero" if cats & S.PAGE_IS_PFNZERO else "pmd"))
            elif cats & S.PAGE_IS_PRESENT and cats & S.PAGE_IS_PFNZERO:
                out.append(Run(s - base, e - base, "zero"))
            elif cats & S.PAGE_IS_PRESENT:
                out.extend(self._classify_ptes(s, e, base))
            elif cats & S.PAGE_IS_SWAPPED:
                out.append(Run(s - base, e - base, "swap"))
        return merge_runs(out)

    def _classify_ptes(self, s: int, e: int, base: int) -> list[Run]:
        ents = self.entries(s, e)
        pfns = [(x & S.PM_PFN_MASK) if x & S.PM_PRESENT else 0 for x in ents]
        flags = self.kpageflags(pfns)
        out: list[Run] = []
        for i, f in enumerate(flags):
            a = s + i * PAGE - base
            if f & (1 << S.KPF_ZERO_PAGE):
                kind = "zero"
            elif f & (1 << S.KPF_THP):
                kind = "pte_thp"
            else:
                kind = "pte"
            out.append(Run(a, a + PAGE, kind))
        return out

    def guard_ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        # PAGEMAP_SCAN wants page-aligned bounds (EINVAL otherwise); sub-page accesses are rounded out
        lo, hi = start - start % PAGE, -(-end // PAGE) * PAGE
        return [(s, e) for s, e, c in self.scan(lo, hi) if c & S.PAGE_IS_GUARD]
