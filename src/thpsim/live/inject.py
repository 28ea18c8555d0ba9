"""Real allocation-failure injection for the live runner: ``fail_page_alloc`` (mm/fail_page_alloc.c,
lib/fault-inject.c, Documentation/fault-injection/fault-injection.rst), driven per trace op.

An op's ``inject`` (``{"at": POINT, "times": N}``, :data:`thpsim.model.page_alloc.INJECT_POINTS`) becomes:

* ``probability=100``, ``interval=1``, ``space=0``, ``task-filter=Y`` and ``ignore-gfp-wait=N`` /
  ``ignore-gfp-highmem=N`` (page tables are GFP_PGTABLE_USER, which may direct-reclaim: the default Y
  would exempt them), ``min-order`` from the point (9 for THP folios), and with
  CONFIG_FAULT_INJECTION_STACKTRACE_FILTER a ``require-start``/``require-end`` covering the point's
  kernel function (``pte_alloc_one``'s text, from /proc/kallsyms), so only allocations whose stack passes
  through it can fail;
* ``times=N`` and ``/proc/PID/make-it-fail=1`` for the op's process only while the op runs; afterwards
  ``times`` is read back (the kernel decrements it per injected failure) and set to 0, and make-it-fail is
  cleared again in that process and in a child a fork just created (make_it_fail is inherited);
* ``verbose=2``: each injected failure dumps its stack to the kernel log; the records read from /dev/kmsg
  name the function that called the allocator, classified with the model's
  :data:`~thpsim.model.page_alloc.SITE_CALLER` vocabulary, so the diff compares *which* allocation failed.

How exact the match is: the model fails the first N allocations at the point's sites that the op makes;
the kernel fails the first N allocations of the op's *task* that pass the filters. Allocations the op
causes in other tasks (kworkers, khugepaged, RCU callbacks) are not failed on the kernel; PF_MEMALLOC does
not exempt an allocation from fail_page_alloc (nor from the model's injection); ``__GFP_NOFAIL``
allocations are never failed (none of the points uses it).

Injection only runs inside a lab guest (``THPSIM_LAB_KERNEL`` is set by the guest's init): thpsim never
writes the host's debugfs.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

from thpsim.errors import ThpsimError
from thpsim.model.page_alloc import INJECT_POINTS, SITE_CALLER, InjectPoint

__all__ = ["FailPageAlloc", "injection_unavailable", "classify_stack", "FAIL_PAGE_ALLOC", "KNOWN_CALLERS"]

FAIL_PAGE_ALLOC = "/sys/kernel/debug/fail_page_alloc"
ULONG_MAX = (1 << 64) - 1
# functions a failed allocation's stack may show for a model caller (inlined helpers, renamed variants)
CALLER_ALIASES = {"__do_huge_pmd_anonymous_page": "do_huge_pmd_anonymous_page",
                  "vma_alloc_anon_folio_pmd": "do_huge_pmd_anonymous_page",
                  "alloc_charge_folio": "collapse_huge_page", "split_huge_pmd_address": "__split_huge_pmd"}
KNOWN_CALLERS = frozenset(SITE_CALLER.values())


def injection_unavailable() -> str | None:
    """Why this kernel cannot inject allocation failures for a trace, or None."""
    if not os.environ.get("THPSIM_LAB_KERNEL"):
        return ("allocation-failure injection runs only inside a lab guest, e.g. thpsim diff --kernel "
                "upstream-7.3 TRACE (thpsim never writes the host's debugfs)")
    if not os.path.isdir(FAIL_PAGE_ALLOC):
        return (f"this kernel has no {FAIL_PAGE_ALLOC} (needs CONFIG_FAIL_PAGE_ALLOC, "
                "CONFIG_FAULT_INJECTION_DEBUG_FS and debugfs mounted); the lab's own builds have it, Debian's "
                "prebuilt images do not")
    return None


def _symbol_range(name: str) -> tuple[int, int]:
    """[start, end) of a kernel function's text from /proc/kallsyms (end: the next higher symbol)."""
    start = None
    addrs: list[int] = []
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            a = int(parts[0], 16)
            addrs.append(a)
            if parts[2] == name and parts[1] in "tT" and start is None:
                start = a
    if start is None:
        raise ThpsimError(f"/proc/kallsyms has no function {name!r}: the injection point cannot be filtered")
    if start == 0:
        raise ThpsimError("/proc/kallsyms shows zero addresses (kptr_restrict): run the lab guest as root")
    end = min((a for a in addrs if a > start), default=start + 1)
    return start, end


_FRAME = re.compile(r"^\s*(\?\s*)?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")


def classify_stack(frames: list[str]) -> str:
    """The model caller of one failed allocation, from its stack (innermost frame first).

    Reliable frames decide; a stack of "? func" frames only (the guess unwinder, which the lab's
    tinyconfig-based guests use: every frame is a text address found on the stack) is read the same way,
    innermost first, since a stale return address above the allocation would have to sit between
    pte_alloc_one and its real caller to be taken instead."""
    parsed = [(bool(m.group(1)), CALLER_ALIASES.get(fn, fn))
              for m in map(_FRAME.match, frames) if m for fn in [m.group(2).split(".")[0]]]
    reliable = [fn for guess, fn in parsed if not guess]
    for fn in reliable or [fn for _, fn in parsed]:
        if fn in KNOWN_CALLERS:
            return fn
    return "?"


def parse_kmsg(records: list[str]) -> list[list[str]]:
    """The stacks of the ``FAULT_INJECTION: forcing a failure`` reports among /dev/kmsg records."""
    stacks: list[list[str]] = []
    cur: list[str] | None = None
    for rec in records:
        msg = rec.split(";", 1)[1] if ";" in rec else rec
        msg = msg.rstrip("\n")
        if "FAULT_INJECTION: forcing a failure" in msg:
            cur = []
            stacks.append(cur)
            continue
        if cur is not None:
            if msg.strip() in ("</TASK>",) or msg.startswith("FAULT_INJECTION"):
                cur = None
                continue
            cur.append(msg)
    return stacks


@dataclass
class FailPageAlloc:
    """The guest's fail_page_alloc, configured for one trace run (``close`` leaves it off)."""

    base: str = FAIL_PAGE_ALLOC

    def _w(self, name: str, value: str | int) -> None:
        with open(f"{self.base}/{name}", "w") as f:
            f.write(str(value))

    def _r(self, name: str) -> str:
        with open(f"{self.base}/{name}") as f:
            return f.read().strip()

    def setup(self) -> None:
        why = injection_unavailable()
        if why:
            raise ThpsimError(why)
        self._w("times", 0)
        for name, value in (("probability", 100), ("interval", 1), ("space", 0), ("verbose", 2),
                            ("task-filter", "Y"), ("ignore-gfp-wait", "N"), ("ignore-gfp-highmem", "N"),
                            ("min-order", 0)):
            self._w(name, value)
        self.stack_filter = os.path.exists(f"{self.base}/require-start")
        self.kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.kmsg, 0, os.SEEK_END)
        self.armed: tuple[InjectPoint, int, int] | None = None

    def arm(self, at: str, times: int, pid: int) -> None:
        point = INJECT_POINTS[at]
        self._w("min-order", point.min_order)
        if self.stack_filter:
            lo, hi = _symbol_range(point.kernel_function) if point.kernel_function else (0, ULONG_MAX)
            self._w("require-start", lo)
            self._w("require-end", hi)
            self._w("stacktrace-depth", 32)
        elif point.kernel_function:
            raise ThpsimError(f"injection at {at} needs CONFIG_FAULT_INJECTION_STACKTRACE_FILTER (no "
                              f"{self.base}/require-start on this kernel)")
        self._drain()
        self._w("times", times)
        self._make_it_fail(pid, 1)
        self.armed = (point, times, pid)

    def disarm(self, extra_pids: tuple[int, ...] = ()) -> tuple[str, ...]:
        """End the op's window; the callers of the allocations the kernel failed, in order."""
        assert self.armed is not None
        _point, times, pid = self.armed
        left = int(self._r("times"))
        self._w("times", 0)
        for p in (pid, *extra_pids):
            self._make_it_fail(p, 0)
        self.armed = None
        failed = times - left if left >= 0 else 0
        callers = [classify_stack(s) for s in parse_kmsg(self._drain())]
        if len(callers) != failed:     # a report lost from the log buffer: say so rather than guess
            callers = callers[:failed] + ["?"] * (failed - len(callers))
        return tuple(callers)

    def _make_it_fail(self, pid: int, on: int) -> None:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError), \
                open(f"/proc/{pid}/make-it-fail", "w") as f:
            f.write(str(on))

    def _drain(self) -> list[str]:
        out: list[str] = []
        while True:
            try:
                rec = os.read(self.kmsg, 8192)
            except BlockingIOError:
                break
            except OSError as e:    # EPIPE: records were overwritten; go on from the next one
                if e.errno == 32:
                    continue
                raise
            if not rec:
                break
            out.append(rec.decode("utf-8", "replace"))
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._w("times", 0)
            self._w("probability", 0)
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.kmsg)
