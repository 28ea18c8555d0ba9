"""Real page faults for the strace importer's ``"perf"`` touch policy: read ``perf script`` text, put it on the
strace log's clock.

Reads the ``perf script`` output of ``perf record -e exceptions:page_fault_user -e exceptions:page_fault_kernel
-k monotonic`` (lines ``COMM TID[/TID] [CPU] SECS.USECS: [PERIOD] exceptions:page_fault_{user,kernel}:
address=0x... ip=0x... error_code=0x...``); lines of other events are skipped, unreadable fault lines counted.
perf refuses ``-k CLOCK_REALTIME`` here ("wrong clockid"), so the caller passes CLOCK_REALTIME -
CLOCK_MONOTONIC measured at recording time, which moves the faults onto strace's ``-ttt`` clock; for a ``-tt``
log (times of day) the epoch times are converted to local times of day and unwrapped across midnight the way
:mod:`.lex` unwraps the log's times.

What a fault becomes (a one-page ``write`` when error_code bit 1 is set, else a ``read``, folded into strided
runs) is decided by the replay, which knows the address space (:mod:`.replay`). Left out: perf's own clock
options other than ``monotonic`` plus an offset, ``-r`` (relative) strace logs, the fault's ip and the
remaining error_code bits (user/kernel, protection, instruction fetch).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from thpsim.errors import TraceError

__all__ = ["Fault", "align_fault_clock", "load_faults", "parse_perf_faults"]

Fault = tuple[float, int, int, bool]          # (time, tid, address, is_write)

_FAULT_RE = re.compile(
    r"(?P<tid>\d+)(?:/(?P<tid2>\d+))?\s+(?:\[\d+\]\s+)?(?P<t>\d+\.\d+):\s+(?:\d+\s+)?"
    r"exceptions:page_fault_(?:user|kernel):\s+address=(?P<addr>0x[0-9a-fA-F]+)\s+ip=\S+\s+"
    r"error_code=(?P<err>0x[0-9a-fA-F]+)")


def parse_perf_faults(text_or_lines: str | Iterable[str]) -> tuple[list[Fault], int]:
    """Read ``perf script`` output of exceptions:page_fault_{user,kernel}.

    Returns ([(time, tid, address, is_write)], number of unreadable lines). Lines of other events are skipped.
    """
    lines = text_or_lines.splitlines() if isinstance(text_or_lines, str) else text_or_lines
    out: list[Fault] = []
    bad = 0
    for raw in lines:
        if "page_fault_" not in raw:
            continue
        m = _FAULT_RE.search(raw)
        if m is None:
            bad += 1
            continue
        tid = int(m.group("tid2") or m.group("tid"))
        out.append((float(m.group("t")), tid, int(m.group("addr"), 16), bool(int(m.group("err"), 16) & 2)))
    out.sort(key=lambda f: f[0])
    return out, bad


def align_fault_clock(faults: list[Fault], clock: str, first_t: float | None) -> list[Fault]:
    """Fault times (epoch) on the log's clock: unchanged unless the log has ``-tt`` times of day."""
    if clock != "time-of-day" or not faults or faults[0][0] < 1e8:
        return faults
    out = []
    for ft, tid, addr, w in faults:
        lt = time.localtime(ft)
        tod = lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (ft - int(ft))
        out.append((tod, tid, addr, w))
    # unwrap midnight the same way the strace times were unwrapped
    day = 0.0
    prev = None
    res = []
    for tod, tid, addr, w in out:
        if prev is not None and tod < prev - 43200:
            day += 86400.0
        prev = tod
        res.append((tod + day, tid, addr, w))
    if first_t is not None and res and res[0][0] < first_t - 43200:
        res = [(t + 86400.0, a, b, c) for t, a, b, c in res]
    return res


def load_faults(faults: str | Iterable[str] | None, *, clock: str, offset: float, first_t: float | None,
                source: str) -> tuple[list[Fault], int]:
    """The faults of *faults* (``perf script`` text) on the log's clock, and the number of unreadable lines.

    *clock* is the log's (:attr:`.lex.Importer.clock`), *offset* is added to every fault time, *first_t* is the
    log's first timestamp. Raises a one-line TraceError when there are no faults or the log has no times."""
    if faults is None:
        raise TraceError("the 'perf' touch policy needs the perf script output of the page faults "
                         "(faults=...)", source=source)
    if clock == "none":
        raise TraceError("the 'perf' touch policy needs strace timestamps (-tt or -ttt) to place the faults",
                         source=source)
    fault_list, bad = parse_perf_faults(faults)
    if offset:
        fault_list = [(ft + offset, tid, a, w) for ft, tid, a, w in fault_list]
    return align_fault_clock(fault_list, clock, first_t), bad
