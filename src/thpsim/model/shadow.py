"""Shadow memory: an independent, deliberately simple model of what a program reads at each address.

It knows nothing about page tables: it follows only the syscall contracts (mmap gives zeroes, writes store
bytes, MADV_DONTNEED and munmap discard, mremap moves contents, fork copies, MADV_FREE makes a page "old data or
zero" until written). After every step the page-table model's contents must agree with it; a disagreement is a
*data-contract violation* (a :class:`~thpsim.observation.ContractViolation`: the pages, the rule broken, and the
operation whose contract was broken; e.g. the lazy design's zap skip is "main: [4K, 8K): MADV_DONTNEED returned 0
but the page still holds data").

The contract of each syscall is a method here (``user_write``, ``madvise``, ``mremap``, ...), called by the
engine's op handler after the syscall returned. It follows no kernel version: only the
syscalls' documented contracts (man-pages 6.x). Left out: file contents, partial-page contracts of reads
(a read only digests what the model returns; it defines nothing).
"""

from __future__ import annotations

from thpsim.model.folio import ZERO, Content, content_is_zero, content_write
from thpsim.model.kernel import MM, Kernel
from thpsim.model.pgtable import PTE_PAGE, PTE_SWAP, HugePmd, PteTable, SwapPmd
from thpsim.observation import ContractRule, ContractViolation

__all__ = ["Ranges", "Shadow", "compare", "model_contents"]


class Shadow:
    def __init__(self, page: int) -> None:
        self.page = page
        self.procs: dict[str, dict[int, Content]] = {}
        self.maybe_zero: dict[str, set[int]] = {}   # MADV_FREE'd pages: old data or zero
        self.last_op: dict[str, dict[int, str]] = {}  # page -> op that last defined its expected content

    def proc(self, name: str) -> dict[int, Content]:
        return self.procs.setdefault(name, {})

    def discard(self, name: str, start: int, end: int, why: str) -> None:
        d = self.proc(name)
        mz = self.maybe_zero.setdefault(name, set())
        lo = self.last_op.setdefault(name, {})
        for a in range(start - start % self.page, end, self.page):
            d.pop(a, None)
            mz.discard(a)
            lo[a] = why

    def write(self, name: str, addr: int, c: Content, why: str) -> None:
        self.proc(name)[addr] = c
        self.maybe_zero.setdefault(name, set()).discard(addr)
        self.last_op.setdefault(name, {})[addr] = why

    def user_write(self, name: str, pages: list[tuple[int, dict[int, int] | None, bool]], byte: int) -> None:
        """A store of ``byte`` (at the offsets of each page, or the ``full`` page) was performed."""
        for pg, offsets, full in pages:
            old = self.proc(name).get(pg, (0, ()))
            new = content_write(old, None if full else dict.fromkeys(offsets or {}, byte), byte if full else None)
            self.write(name, pg, new, "write")

    def madvise(self, name: str, advice: str, mapped: list[tuple[int, int]], *, hole_enomem: bool,
                split_can_fail: bool) -> None:
        """MADV_* returned 0 over ``mapped``, or ENOMEM for a hole (``hole_enomem``: the advice was still applied
        to every mapped part). DONTNEED and GUARD_INSTALL discard; FREE makes pages "old data or zero". Under a
        design whose splits can fail, an ENOMEM may also be a failed split: data or zero."""
        why = f"MADV_{advice.upper()} returned {'ENOMEM (hole)' if hole_enomem else '0'}"
        for lo, hi in mapped:
            if advice in ("dontneed", "dontneed_locked", "guard_install"):
                if not hole_enomem or not split_can_fail:
                    self.discard(name, lo, hi, why)
                else:
                    self.lazyfree(name, lo, hi)
            elif advice == "free":
                self.lazyfree(name, lo, hi)

    def mremap(self, name: str, old: int, old_len: int, new: int, new_len: int, *, dontunmap: bool) -> None:
        """mremap succeeded: shrink, grow, or move the contents to ``new``."""
        keep = min(old_len, new_len)
        if new_len < old_len:
            self.discard(name, old + new_len, old + old_len, "mremap shrink")
        if new != old:
            # MREMAP_FIXED (and DONTUNMAP) unmap whatever was at the destination first
            self.discard(name, new, new + new_len, "mremap to a fixed destination")
            self.move(name, old, new, keep)
            self.discard(name, old, old + old_len, "MREMAP_DONTUNMAP" if dontunmap else "mremap")
        if new_len > old_len:
            self.discard(name, new + old_len, new + new_len, "mremap grow")

    def lazyfree(self, name: str, start: int, end: int) -> None:
        mz = self.maybe_zero.setdefault(name, set())
        for a in range(start - start % self.page, end, self.page):
            if a in self.proc(name):
                mz.add(a)

    def move(self, name: str, old: int, new: int, length: int) -> None:
        d = self.proc(name)
        mz = self.maybe_zero.setdefault(name, set())
        moved = {a - old + new: c for a, c in d.items() if old <= a < old + length}
        mzm = {a - old + new for a in mz if old <= a < old + length}
        for a in [a for a in d if old <= a < old + length]:
            del d[a]
        for a in [a for a in mz if old <= a < old + length]:
            mz.discard(a)
        d.update(moved)
        mz.update(mzm)

    def fork(self, parent: str, child: str, skip: list[tuple[int, int]]) -> None:
        d = {a: c for a, c in self.proc(parent).items() if not any(s <= a < e for s, e in skip)}
        self.procs[child] = d
        self.maybe_zero[child] = {a for a in self.maybe_zero.get(parent, set()) if a in d}
        self.last_op[child] = dict(self.last_op.get(parent, {}))

    def drop(self, name: str) -> None:
        self.procs.pop(name, None)
        self.maybe_zero.pop(name, None)
        self.last_op.pop(name, None)


Ranges = list[tuple[int, int]] | None


def _in(a: int, ranges: Ranges) -> bool:
    return ranges is None or any(lo <= a < hi for lo, hi in ranges)


def model_contents(k: Kernel, mm: MM, ranges: Ranges = None) -> dict[int, Content]:
    """Non-zero page contents the page-table model would return to a reader (present or swapped), over the
    whole address space or only inside ``ranges``."""
    out: dict[int, Content] = {}
    pt = mm.pt
    if ranges is None:
        items = list(pt.slots.items())
    else:
        idxs = sorted({i for lo, hi in ranges for i in range(lo >> pt.pmd_shift, ((hi - 1) >> pt.pmd_shift) + 1)
                       if hi > lo})
        items = [(i, pt.slots[i]) for i in idxs if i in pt.slots]
    for idx, s in items:
        base = idx << pt.pmd_shift
        if isinstance(s, HugePmd | SwapPmd):
            f = s.content if isinstance(s, SwapPmd) else s.folio
            if f is None:
                continue
            if f.pages is None and content_is_zero(f.default):
                continue
            for i in range(f.nr):
                c = f.content(i)
                a = base + i * k.page
                if not content_is_zero(c) and _in(a, ranges):
                    out[a] = c
            continue
        assert isinstance(s, PteTable)
        for i, pte in s.ptes.items():
            if pte.kind in (PTE_PAGE, PTE_SWAP) and pte.folio is not None:
                c = pte.folio.content(pte.idx)
                a = base + (i << pt.page_shift)
                if not content_is_zero(c) and _in(a, ranges):
                    out[a] = c
    return out


def compare(k: Kernel, mm: MM, shadow: Shadow, base: int, ranges: Ranges = None) -> list[ContractViolation]:
    """Data-contract violations for one process (whole address space, or only inside ``ranges``), one per run of
    adjacent pages with the same rule and cause, at arena offsets (addresses minus ``base``)."""
    want = shadow.proc(mm.name)
    if ranges is not None:
        npages = sum(max(hi - lo, 0) for lo, hi in ranges) // k.page
        if npages < len(want):
            pages = (a for lo, hi in ranges for a in range(lo - lo % k.page, hi, k.page))
            want = {a: want[a] for a in pages if a in want}
        else:
            want = {a: c for a, c in want.items() if _in(a, ranges)}
    mz = shadow.maybe_zero.get(mm.name, set())
    got = model_contents(k, mm, ranges)
    bad: list[tuple[int, ContractRule, str]] = []
    for a in sorted(set(want) | set(got)):
        w = want.get(a, ZERO)
        g = got.get(a, ZERO)
        if w == g or (a in mz and content_is_zero(g)):
            continue
        why = shadow.last_op.get(mm.name, {}).get(a, "the trace")
        rule = ContractRule.STILL_HOLDS_DATA if content_is_zero(w) else ContractRule.LOST_ITS_DATA \
            if content_is_zero(g) else ContractRule.HOLDS_DIFFERENT_DATA
        bad.append((a, rule, why))
    out: list[ContractViolation] = []
    i = 0
    while i < len(bad):
        j = i
        while j + 1 < len(bad) and bad[j + 1][0] == bad[j][0] + k.page and bad[j + 1][1:] == bad[i][1:]:
            j += 1
        out.append(ContractViolation(mm.name, bad[i][0] - base, bad[j][0] + k.page - base, bad[i][1], bad[i][2]))
        i = j + 1
    return out
