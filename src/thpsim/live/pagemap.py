"""Classify the pages of the arena into observation Runs (see thpsim.observation for the kinds).

Method (read only; nothing here splits a PMD, write-protects or faults anything in the observed process):

1. ``PAGEMAP_SCAN`` (fs/proc/task_mmu.c, Linux 6.7+) over the arena with
   ``category_anyof_mask = PRESENT | SWAPPED [| GUARD]`` returns the populated sub-ranges with their categories.
   ``PAGE_IS_HUGE`` on a present range means it is mapped by a huge PMD; ``PAGE_IS_PFNZERO`` means the (huge)
   zero page; ``PAGE_IS_GUARD`` (6.16+) a guard marker (which the kernel also reports as SWAPPED).
2. For present ranges that are not PMD-mapped and not the zero page, the PFN of every page is read from
   ``/proc/PID/pagemap`` (needs root, otherwise the PFN reads 0) and its ``/proc/kpageflags`` entry tells a page of
   a large folio (KPF_THP) — ``pte_thp`` — from an order-0 page — ``pte``. A PMD-mapped range the scan did not
   mark PFNZERO is checked the same way (KPF_ZERO_PAGE), for kernels whose scan tests only the 4 KiB zero pfn.

What the kernel offers is probed once per process (:func:`probe_pagemap`, cached by :func:`pagemap_features`)
on a private page of the calling process, never inferred from the version number:

* ``PAGE_IS_GUARD`` in a mask is ``EINVAL`` before 6.16, so the scan then asks without it. Guard markers exist
  since 6.13 (MADV_GUARD_INSTALL) and read as SWAPPED; in the swapped ranges they are told apart by pagemap bit 58
  (PM_GUARD_REGION, 6.15+) or, before that, by the pagemap encoding of a guard marker learnt by the probe (the
  swap-type/offset bits, shown to root only). Where neither works guard regions are not observed (a note says so).
* No ioctl at all (``ENOTTY``: before 6.7): :meth:`PagemapReader.scan` raises one ProcError line naming 6.7.

The scan can be done on another process (``/proc/PID/pagemap``), which is how the runner observes its children
without running any code inside them. Only the given range is ever read. Nothing here prints.
"""

from __future__ import annotations

import errno
import functools
import os
import platform
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from thpsim.errors import ProcError
from thpsim.live import syscalls as S
from thpsim.live.features import since
from thpsim.observation import Run, merge_runs

PAGE = S.PAGE_SIZE
_SCAN_BASE = S.PAGE_IS_PRESENT | S.PAGE_IS_SWAPPED
_RET_BASE = S.PAGE_IS_PRESENT | S.PAGE_IS_SWAPPED | S.PAGE_IS_HUGE | S.PAGE_IS_PFNZERO | S.PAGE_IS_FILE


@dataclass(frozen=True)
class PagemapFeatures:
    """What /proc/PID/pagemap of the running kernel can report (found by :func:`probe_pagemap`)."""

    scan: bool                        # the PAGEMAP_SCAN ioctl works (6.7+)
    scan_guard: bool = False          # ... and takes PAGE_IS_GUARD (6.16+; EINVAL before)
    guard_install: bool = False       # MADV_GUARD_INSTALL works (6.13+), so guard markers can exist
    pagemap_guard_bit: bool = False   # a guard marker sets pagemap bit 58, PM_GUARD_REGION (6.15+)
    guard_marker_frame: int = 0       # pagemap bits 0-54 (swap type | offset << 5) of a guard marker; 0 unknown
    scan_error: str | None = None     # errno name of the failed PAGEMAP_SCAN (ENOTTY: no ioctl, before 6.7)

    @property
    def anyof(self) -> int:
        return _SCAN_BASE | (S.PAGE_IS_GUARD if self.scan_guard else 0)

    @property
    def return_mask(self) -> int:
        return _RET_BASE | (S.PAGE_IS_GUARD if self.scan_guard else 0)

    @property
    def guards_from_entries(self) -> bool:
        """Guard markers can exist but the scan does not mark them: look at the swapped ranges' entries."""
        return self.guard_install and not self.scan_guard

    @property
    def guards_visible(self) -> bool:
        """Would a guard marker in the arena show up as a ``guard`` run?"""
        return self.scan_guard or self.pagemap_guard_bit or self.guard_marker_frame != 0

    def is_guard_entry(self, e: int) -> bool:
        """Is this raw /proc/PID/pagemap entry a guard marker (for kernels without PAGE_IS_GUARD)?"""
        if e & S.PM_PRESENT:
            return False
        if self.pagemap_guard_bit:
            return bool(e & S.PM_GUARD_REGION)
        return self.guard_marker_frame != 0 and bool(e & S.PM_SWAP) and (e & S.PM_PFN_MASK) == self.guard_marker_frame


class ProbeTarget(Protocol):
    """One private page of the probing process and its pagemap (faked by the tests)."""

    def scan(self, anyof: int, ret_mask: int) -> list[tuple[int, int, int]]: ...   # raises OSError

    def madvise(self, advice: int) -> str | None: ...                               # errno name or None

    def entry(self) -> int: ...


class _SelfPage:
    def __init__(self, fd: int, addr: int) -> None:
        self.fd, self.addr = fd, addr

    def scan(self, anyof: int, ret_mask: int) -> list[tuple[int, int, int]]:
        return S.pagemap_scan(self.fd, self.addr, self.addr + PAGE, anyof=anyof, ret_mask=ret_mask, max_regions=4)

    def madvise(self, advice: int) -> str | None:
        return S.madvise(self.addr, PAGE, advice)[1]

    def entry(self) -> int:
        data = os.pread(self.fd, 8, self.addr // PAGE * 8)
        return struct.unpack("<Q", data)[0] if len(data) == 8 else 0


@contextmanager
def _self_page() -> Iterator[_SelfPage]:
    addr, err = S.mmap(0, PAGE, S.PROT_READ | S.PROT_WRITE, S.MAP_PRIVATE | S.MAP_ANONYMOUS)
    if err is not None:
        raise OSError(errno.ENOMEM, f"mmap of the probe page failed: {err}")
    try:
        try:
            fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        except OSError as oe:
            raise OSError(oe.errno, f"no /proc/self/pagemap (CONFIG_PROC_PAGE_MONITOR): {oe.strerror}") from None
        try:
            yield _SelfPage(fd, addr)
        finally:
            os.close(fd)
    finally:
        S.munmap(addr, PAGE)


def _ename(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno)) if e.errno else str(e)


def probe_pagemap(target: ProbeTarget | None = None) -> PagemapFeatures:
    """Find what PAGEMAP_SCAN and pagemap report here, on one fresh private page of this process.

    The page is scanned with PAGE_IS_GUARD (EINVAL → scanned again without it), then guarded with
    MADV_GUARD_INSTALL (EINVAL before 6.13) and its pagemap entry read, then unmapped. ``target`` replaces the
    page (tests simulate older kernels with it).
    """
    if target is None:
        try:
            with _self_page() as page:
                return probe_pagemap(page)
        except OSError as err:
            return PagemapFeatures(scan=False, scan_error=f"{_ename(err)}: {err.strerror or err}")
    full_any, full_ret = _SCAN_BASE | S.PAGE_IS_GUARD, _RET_BASE | S.PAGE_IS_GUARD
    scan, scan_guard, scan_error = True, True, None
    try:
        target.scan(full_any, full_ret)
    except OSError as err:
        scan_guard = False
        if err.errno == errno.EINVAL:
            try:
                target.scan(_SCAN_BASE, _RET_BASE)
            except OSError as err2:
                scan, scan_error = False, _ename(err2)
        else:
            scan, scan_error = False, _ename(err)
    guard = target.madvise(S.MADV["guard_install"]) is None
    bit, frame = False, 0
    if guard:
        e = target.entry()
        bit = bool(e & S.PM_GUARD_REGION)
        if e & S.PM_SWAP and not e & S.PM_PRESENT:
            frame = e & S.PM_PFN_MASK          # 0 unless we may see PFNs / swap offsets (CAP_SYS_ADMIN)
        if scan_guard and not any(c & S.PAGE_IS_GUARD for _s, _e, c in target.scan(full_any, full_ret)):
            scan_guard = False                 # accepted in the mask but not reported
        target.madvise(S.MADV["guard_remove"])
    return PagemapFeatures(scan=scan, scan_guard=scan and scan_guard, guard_install=guard, pagemap_guard_bit=bit,
                           guard_marker_frame=frame, scan_error=scan_error)


@functools.cache
def pagemap_features() -> PagemapFeatures:
    """:func:`probe_pagemap` of this kernel, probed once per process."""
    return probe_pagemap()


def no_scan_message(f: PagemapFeatures, release: str | None = None) -> str:
    """One line: why pages cannot be classified here (the ioctl is missing before 6.7: ENOTTY)."""
    rel = release or platform.release()
    if f.scan_error in (None, "ENOTTY"):
        return (f"kernel {rel} has no PAGEMAP_SCAN ioctl on /proc/PID/pagemap ({f.scan_error or 'not probed'}): "
                f"the live runner needs Linux {since('pagemap_scan')}+ to classify pages")
    return (f"kernel {rel}: PAGEMAP_SCAN cannot be used ({f.scan_error}): the live runner needs it "
            f"(Linux {since('pagemap_scan')}+, CONFIG_PROC_PAGE_MONITOR) to classify pages")


def split_guards(start: int, entries: list[int], cats: int, f: PagemapFeatures) -> list[tuple[int, int, int]]:
    """Split a scanned range of ``cats`` starting at ``start`` (one raw pagemap entry per page) into sub-ranges,
    adding PAGE_IS_GUARD to the pages whose entry is a guard marker."""
    out: list[tuple[int, int, int]] = []
    for i, e in enumerate(entries):
        c = cats | S.PAGE_IS_GUARD if f.is_guard_entry(e) else cats
        a = start + i * PAGE
        if out and out[-1][2] == c and out[-1][1] == a:
            out[-1] = (out[-1][0], a + PAGE, c)
        else:
            out.append((a, a + PAGE, c))
    return out


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
    """Open /proc/PID/pagemap (and /proc/kpageflags if readable) and classify ranges of that process.

    ``features`` defaults to this kernel's (:func:`pagemap_features`); the tests pass others to simulate
    older kernels.
    """

    def __init__(self, pid: int | str = "self", features: PagemapFeatures | None = None) -> None:
        self.pid = pid
        self.features = features if features is not None else pagemap_features()
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
        """PAGEMAP_SCAN of [start, end): populated or guarded sub-ranges with PAGE_IS_* categories.

        Without PAGE_IS_GUARD in the kernel, guard markers found in the swapped ranges get it added here.
        """
        f = self.features
        if not f.scan:
            raise ProcError(no_scan_message(f))
        try:
            regions = S.pagemap_scan(self.fd, start, end, anyof=f.anyof, ret_mask=f.return_mask)
        except OSError as err:
            raise ProcError(f"/proc/{self.pid}/pagemap: PAGEMAP_SCAN of {start:#x}-{end:#x} with categories "
                            f"{f.anyof:#x} failed: {_ename(err)} ({err.strerror})") from None
        if not f.guards_from_entries:
            return regions
        out: list[tuple[int, int, int]] = []
        for s, e, c in regions:
            if c & S.PAGE_IS_SWAPPED and not c & S.PAGE_IS_PRESENT:
                out.extend(split_guards(s, self.entries(s, e), c, f))
            else:
                out.append((s, e, c))
        return out

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
                if cats & S.PAGE_IS_PFNZERO:
                    out.append(Run(s - base, e - base, "pmd_zero"))
                else:
                    out.extend(self._classify_pmds(s, e, base))
            elif cats & S.PAGE_IS_PRESENT and cats & S.PAGE_IS_PFNZERO:
                out.append(Run(s - base, e - base, "zero"))
            elif cats & S.PAGE_IS_PRESENT:
                out.extend(self._classify_ptes(s, e, base))
            elif cats & S.PAGE_IS_SWAPPED:
                out.append(Run(s - base, e - base, "swap"))
        return merge_runs(out)

    def _classify_pmds(self, s: int, e: int, base: int) -> list[Run]:
        # PMD-mapped but not PFNZERO: before the scan tested the huge zero folio (it looked at the 4 KiB zero
        # pfn only) a huge-zero PMD came back like this too; its first page's kpageflags say KPF_ZERO_PAGE
        out: list[Run] = []
        a = s
        while a < e:
            nxt = min(e, a - a % S.PMD_SIZE + S.PMD_SIZE)
            ent = self.entries(a, a + PAGE)[0]
            pfn = ent & S.PM_PFN_MASK if ent & S.PM_PRESENT else 0
            zero = bool(pfn) and bool(self.kpageflags([pfn])[0] & (1 << S.KPF_ZERO_PAGE))
            out.append(Run(a - base, nxt - base, "pmd_zero" if zero else "pmd"))
            a = nxt
        return out

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


__all__ = ["PagemapFeatures", "PagemapReader", "PageInfo", "decode_entry", "pagemap_features", "probe_pagemap",
           "no_scan_message", "split_guards"]
