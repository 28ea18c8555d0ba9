"""The strace importer end to end: lex (:mod:`.lex`), optional perf faults (:mod:`.faults`), replay
(:mod:`.replay`), arena mapping (:mod:`.arena`), and the validated trace with its statistics.

Reads what the passes read (an ``strace -f -tt|-ttt -e trace=memory,process`` log, and for the ``"perf"`` touch
policy the ``perf script`` text of ``exceptions:page_fault_{user,kernel}``); the result is always passed
through :func:`thpsim.trace.format.parse`, so it is a valid trace or a one-line error. Left out: writing files
(the caller stores :attr:`ImportResult.text`) and running the program (:mod:`thpsim.trace.record` does that).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from thpsim.errors import TraceError
from thpsim.trace import format as fmt
from thpsim.trace.strace.arena import ARENA_SLOTS, GiB, arena_map, to_arena, trace_text
from thpsim.trace.strace.faults import Fault, load_faults
from thpsim.trace.strace.lex import Importer, ImportNote
from thpsim.trace.strace.replay import Sim

__all__ = ["TOUCH_POLICIES", "ImportResult", "import_strace", "import_strace_file"]

TOUCH_POLICIES = ("write-all", "none", "perf")


@dataclass
class ImportResult:
    """The imported trace plus what happened to every syscall of the log."""

    trace: fmt.Trace
    text: str                                  # the trace as JSON Lines (what write_trace stores)
    stats: dict[str, Any]
    warnings: list[ImportNote]
    procs: dict[str, int]                      # proc name -> real pid that created the mm
    op_times: tuple[float | None, ...]         # log timestamp of each trace op (None without -tt)
    windows: tuple[tuple[int, int], ...]       # (real 1 GiB window base, arena offset)
    clock: str = "none"                        # "epoch" (-ttt), "time-of-day" (-tt), "relative" or "none"

    def summary(self) -> str:
        ign = ", ".join(f"{k} {v}" for k, v in sorted(self.stats["ignored"].items())) or "none"
        return (f"{self.stats['syscalls_total']} syscalls, {self.stats['imported']} imported, "
                f"{len(self.trace.ops)} ops, {len(self.procs)} procs; ignored: {ign}; "
                f"{len(self.warnings)} warnings")


def import_strace(text_or_lines: str | Iterable[str], *, source: str = "strace.log", touch: str = "write-all",
                  strict: bool = False, faults: str | Iterable[str] | None = None,
                  fault_clock_offset: float = 0.0, name: str = "", notes: bool = True) -> ImportResult:
    """Turn an strace log into a validated thpsim trace (see :mod:`thpsim.trace.strace` for the policies).

    *touch* is ``"write-all"``, ``"none"`` or ``"perf"`` (the latter needs *faults*, the ``perf script`` text of
    ``exceptions:page_fault_user``/``page_fault_kernel``, next to an strace log with ``-ttt`` or ``-tt``
    timestamps). perf on this kernel refuses ``-k CLOCK_REALTIME`` ("wrong clockid"), so record with
    ``-k monotonic`` and pass *fault_clock_offset* = CLOCK_REALTIME - CLOCK_MONOTONIC (seconds) measured at
    recording time; it is added to every fault time. *notes* adds ``"note": "strace:LINE"`` to each op.
    """
    if touch not in TOUCH_POLICIES:
        raise TraceError(f"unknown touch policy {touch!r}; use one of {', '.join(TOUCH_POLICIES)}", source=source)
    lines = text_or_lines.splitlines() if isinstance(text_or_lines, str) else [str(x) for x in text_or_lines]
    imp = Importer(source, touch, strict)
    events = imp.read_events(lines)
    fault_list: list[Fault] | None = None
    bad_faults = 0
    if touch == "perf":
        first_t = next((e.t for e in events if e.t is not None), None)
        fault_list, bad_faults = load_faults(faults, clock=imp.clock, offset=fault_clock_offset, first_t=first_t,
                                             source=source)
    sim = Sim(imp, events, fault_list)
    sim.run()
    slots, dropped = arena_map(sim.ops)
    if dropped:
        imp.warn(0, f"the anonymous memory spans more than {ARENA_SLOTS} 1 GiB windows; "
                    f"{len(dropped)} windows are left out of the trace")
    objs, times, left_out = to_arena(sim.ops, slots, notes=notes)
    if left_out:
        imp.ignored["arena full"] += left_out
    header: dict[str, Any] = {"thpsim": fmt.TRACE_VERSION, "name": name or f"strace:{source}",
                              "description": f"imported from strace log {source} (touch policy {touch})"}
    text = trace_text(header, objs)
    trace = _parse_imported(text, source)
    stats = _stats(imp, sim, len(lines), len(trace.ops), len(slots))
    if fault_list is not None:
        stats["faults"] = dict(sim.fault_stats)
        stats["faults"]["unreadable lines"] = bad_faults
    windows = tuple(sorted(((w << 30), s * GiB) for w, s in slots.items()))
    return ImportResult(trace=trace, text=text, stats=stats, warnings=imp.warnings, procs=dict(sim.procs),
                        op_times=tuple(times), windows=windows, clock=imp.clock)


def _parse_imported(text: str, source: str) -> fmt.Trace:
    """The generated text as a trace; a failure is an importer bug, reported as a clean one-line error."""
    try:
        return fmt.parse(text, source=f"{source} (imported)")
    except TraceError as e:
        raise TraceError(f"the imported trace is invalid ({e.reason}); please report this", line=e.line,
                         source=f"{source} (imported)") from None


def _stats(imp: Importer, sim: Sim, lines: int, ops: int, windows: int) -> dict[str, Any]:
    """What happened to the log: ``ImportResult.stats`` without the perf fault counts."""
    syscalls = dict(sorted(imp.seen.items()))
    return {
        "lines": lines,
        "syscalls": syscalls,
        "syscalls_total": sum(syscalls.values()),
        "imported": imp.imported,
        "ignored": dict(sorted(imp.ignored.items())),
        "not_memory_related": imp.other,
        "signals": imp.signals,
        "touch_ops": imp.stats_touch,
        "ops": ops,
        "procs": len(sim.procs),
        "arena_windows": windows,
    }


def import_strace_file(path: str, **kw: Any) -> ImportResult:
    """Read *path* and :func:`import_strace` it (the source name in messages is *path*)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise TraceError(f"cannot read the strace log: {e.strerror}", source=path) from None
    return import_strace(text, source=path, **kw)
