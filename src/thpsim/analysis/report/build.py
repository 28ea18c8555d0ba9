"""Build the savings report's data: replay every trace under every design and reduce each observation stream.

:func:`build_report` loads the traces (a trace that cannot be loaded becomes an entry with a one-line error),
replays each under every design (and, with ``pressure``, once more per lazy-family design under that
:class:`FailPolicy`) on the model engine, and returns a :class:`~thpsim.analysis.report.data.ReportData`. No
I/O besides reading the traces; no rendering.

A data-contract violation is counted once, at the step where it first appears: the shadow check describes the
current state, so a later check of the same stale pages (a read over them, a fork) reports them again, possibly
with a changed cause; a :class:`~thpsim.observation.ContractViolation` counts as new only if it names pages of its
process that were not already known to violate.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from thpsim.analysis.hugh import hugh_sweep
from thpsim.analysis.report.data import (
    CONTRACT_MODES,
    DesignResult,
    OpError,
    ReportData,
    TraceReport,
    Violation,
)
from thpsim.errors import LivelockDetected, ThpsimError, TraceError
from thpsim.model.arch import get_arch
from thpsim.model.design import DESIGNS, VARIANTS, get_design
from thpsim.model.engine import Simulator, make_kernel
from thpsim.model.kernel import StepLog
from thpsim.model.knobs import Knobs
from thpsim.model.page_alloc import FailPolicy, PageAllocator
from thpsim.observation import ContractViolation, StepObs
from thpsim.trace import format as fmt

DEFAULT_DESIGNS: tuple[str, ...] = ("upstream", "lazy", *VARIANTS)
MAX_LISTED = 50          # violations / op errors listed per run (the counts are always complete)
_TABLE_SITES = ("pte_alloc_one", "__pte_alloc")

Progress = Callable[[int, int, str], None]


def _covered(lo: int, hi: int, ranges: list[tuple[int, int]]) -> bool:
    """Is [lo, hi) inside the union of *ranges*?"""
    pos = lo
    for a, b in sorted(ranges):
        if a > pos:
            break
        pos = max(pos, b)
        if pos >= hi:
            return True
    return pos >= hi


def _new_violations(current: tuple[ContractViolation, ...],
                    known: dict[str, list[tuple[int, int]]]) -> list[ContractViolation]:
    """The violations in *current* that name pages not known to violate at the previous checks."""
    return [v for v in current if not _covered(v.start, v.end, known.get(v.proc, []))]


def _sorted_counts(c: Counter[str] | dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])) if v}


@dataclass
class _Tally:
    """What one replay accumulates, step by step."""

    series: list[tuple[int, int]] = field(default_factory=list)
    last: int | None = None
    peak_bytes: int = 0
    peak_step: int = 0
    peak_pagetables_kb: int = 0
    peak_anon_huge_kb: int = 0
    split_sites: Counter[str] = field(default_factory=Counter)
    failed_sites: Counter[str] = field(default_factory=Counter)
    errs: Counter[str] = field(default_factory=Counter)
    known: dict[str, list[tuple[int, int]]] = field(default_factory=dict)   # pages known to violate, per proc
    violation_count: int = 0
    violations: list[Violation] = field(default_factory=list)
    op_errors: list[OpError] = field(default_factory=list)

    def add(self, i: int, op: fmt.Op, obs: StepObs, log: StepLog) -> None:
        total = sum(p.vm_pte_kb for p in obs.procs) * 1024
        if total != self.last:
            self.series.append((i, total))
            self.last = total
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_step = total, i
        mi = dict(obs.meminfo)
        self.peak_pagetables_kb = max(self.peak_pagetables_kb, mi.get("PageTables", 0))
        self.peak_anon_huge_kb = max(self.peak_anon_huge_kb, mi.get("AnonHugePages", 0))
        self.split_sites.update(log.split_sites)
        self.failed_sites.update(log.failed_sites)
        self._violations(i, op.line, obs.violations)
        if isinstance(obs.result, str):
            self.errs[obs.result] += 1
            if len(self.op_errors) < MAX_LISTED:
                self.op_errors.append(OpError(i, op.line, op.describe(), obs.result))

    def _violations(self, i: int, line: int, current: tuple[ContractViolation, ...]) -> None:
        for v in _new_violations(current, self.known):
            self.violation_count += 1
            if len(self.violations) < MAX_LISTED:
                self.violations.append(Violation(i, line, str(v)))
        for v in current:
            self.known.setdefault(v.proc, []).append((v.start, v.end))

    def result(self, design: str, pressure: bool, steps: int, obs: StepObs | None,
               alloc: PageAllocator) -> DesignResult:
        return DesignResult(
            design=design, pressure=pressure, steps=steps, series=self.series or [(0, 0)],
            peak_bytes=self.peak_bytes, peak_step=self.peak_step, final_bytes=self.last or 0,
            peak_pagetables_kb=self.peak_pagetables_kb, peak_anon_huge_kb=self.peak_anon_huge_kb,
            thp_fault_alloc=obs.counter("thp_fault_alloc") if obs else 0,
            table_allocs=sum(n for s, n in alloc.per_site.items() if s.startswith(_TABLE_SITES)),
            table_alloc_failures=sum(1 for r in alloc.log if not r.ok and r.site.startswith(_TABLE_SITES)),
            injected_failures=alloc.injected,
            thp_split_pmd=obs.counter("thp_split_pmd") if obs else 0,
            thp_split_pmd_failed=obs.counter("thp_split_pmd_failed") if obs else 0,
            split_sites=_sorted_counts(self.split_sites), failed_sites=_sorted_counts(self.failed_sites),
            violation_count=self.violation_count, violations=self.violations,
            op_error_counts=_sorted_counts(self.errs), op_errors=self.op_errors)


def _replay(trace: fmt.Trace, design: str, *, arch: str, knobs: Knobs | None, policy: FailPolicy | None,
            contract: str, pressure: bool) -> DesignResult:
    """Replay one trace under one design and reduce the observation stream to a :class:`DesignResult`."""
    k = make_kernel(design=design, arch=arch, knobs=knobs, policy=policy, overrides=trace.header.kernel)
    sim = Simulator(k, shadow=contract != "off", shadow_scope="all" if contract == "every" else "op",
                    observe="status")
    tally = _Tally()
    obs: StepObs | None = None
    for i, op in enumerate(trace.ops):
        obs = sim.step(i, op)
        tally.add(i, op, obs, k.log)
    return tally.result(design, pressure, len(trace.ops), obs, k.alloc)


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _with_savings(runs: list[DesignResult]) -> list[DesignResult]:
    """*runs* with their savings against the (first) upstream run filled in, if that run succeeded."""
    up = next((r for r in runs if r.design == "upstream"), None)
    if up is None or up.error is not None:
        return runs
    out = []
    for r in runs:
        if r.error is None:
            peak, final = up.peak_bytes - r.peak_bytes, up.final_bytes - r.final_bytes
            r = dataclasses.replace(r, saved_peak_bytes=peak, saved_peak_pct=_pct(peak, up.peak_bytes),
                                    saved_final_bytes=final, saved_final_pct=_pct(final, up.final_bytes))
        out.append(r)
    return out


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if isinstance(e, ThpsimError) else f"internal error ({type(e).__name__}): {msg}"


def _check_args(designs: tuple[str, ...], arch: str, contract: str) -> list[str]:
    """The designs to run, once each; ThpsimError for an unknown design, arch or contract mode."""
    if contract not in CONTRACT_MODES:
        raise ThpsimError(f"unknown contract mode {contract!r}; choose one of: {', '.join(CONTRACT_MODES)}")
    get_arch(arch)
    names = list(dict.fromkeys(designs))
    if not names:
        raise ThpsimError("choose at least one design")
    for d in names:
        get_design(d)
    return names


def _load_trace(path: str) -> tuple[TraceReport, fmt.Trace | None]:
    """The trace at *path* and its report entry (with ``error`` set, and no trace, if it cannot be loaded)."""
    try:
        trace = fmt.load(path)
    except TraceError as e:
        return TraceReport(path=path, name=os.path.basename(path), error=_one_line(e)), None
    except ThpsimError as e:
        return TraceReport(path=path, name=os.path.basename(path), error=f"{path}: {_one_line(e)}"), None
    h = trace.header
    return TraceReport(path=path, name=h.name or os.path.basename(path), description=" ".join(h.description.split()),
                       ops=len(trace.ops), procs=list(trace.procs()),
                       kernel={k: (list(v) if isinstance(v, tuple) else v) for k, v in h.kernel}), trace


def _run_one(trace: fmt.Trace, design: str, pressure: bool, *, arch: str, knobs: Knobs | None,
             policy: FailPolicy | None, contract: str) -> DesignResult:
    """One replay; a replay that raises becomes a DesignResult with a one-line ``error``."""
    try:
        return _replay(trace, design, arch=arch, knobs=knobs, policy=policy if pressure else None,
                       contract=contract, pressure=pressure)
    except Exception as e:   # a report records a failed replay (one line) instead of dying on it
        error = _one_line(e)
        if isinstance(e, LivelockDetected):
            error = f"livelock: {error}"
        return DesignResult(design=design, pressure=pressure, steps=len(trace.ops), error=error)


@dataclass
class _Ticker:
    """Calls ``progress(done, total, label)`` after every replay."""

    progress: Progress | None
    total: int
    done: int = 0

    def tick(self, t: TraceReport, design: str, pressure: bool, res: DesignResult) -> DesignResult:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, f"{t.name}: {design}{' under pressure' if pressure else ''}")
        return res


def _fields(obj: FailPolicy | Knobs | None) -> dict[str, Any] | None:
    return dataclasses.asdict(obj) if obj is not None else None


def build_report(paths: list[str], *, designs: tuple[str, ...] = DEFAULT_DESIGNS,
                 pressure: FailPolicy | None = None, arch: str = "x86_64",
                 progress: Progress | None = None, knobs: Knobs | None = None,
                 contract: str = "op", hugh: bool = False) -> ReportData:
    """Replay every trace in *paths* under every design in *designs* and collect the report data.

    A trace that cannot be loaded becomes an entry with ``error`` set (one line naming file:line); the others are
    still replayed. A replay that raises is recorded on its :class:`DesignResult` the same way. *progress* is
    called as ``progress(done, total, label)`` after every replay. *knobs* sets the kernel knobs (the trace
    header's overrides still apply on top); *contract* is one of :data:`CONTRACT_MODES` (see the package doc).
    Raises :class:`ThpsimError` only for bad arguments (unknown design, arch or contract mode).
    """
    names = _check_args(designs, arch, contract)
    lazy_family = [d for d in names if not DESIGNS[d].deposit] if pressure is not None else []
    passes = [*((d, False) for d in names), *((d, True) for d in lazy_family)]
    loaded = [_load_trace(p) for p in paths]
    ticker = _Ticker(progress, len(passes) * sum(1 for _, tr in loaded if tr is not None))
    traces = []
    for t, tr in loaded:     # trace by trace: every design, then the pressure passes
        if tr is not None:
            res = [ticker.tick(t, d, pr, _run_one(tr, d, pr, arch=arch, knobs=knobs, policy=pressure,
                                                   contract=contract)) for d, pr in passes]
            t = dataclasses.replace(t, runs=_with_savings([r for r in res if not r.pressure]),
                                    pressure_runs=[r for r in res if r.pressure])
        traces.append(t)
    sweep = [dataclasses.asdict(c) for c in hugh_sweep()] if hugh else []
    return ReportData(traces=traces, designs=names, arch=arch, pressure=_fields(pressure),
                      knobs=_fields(knobs) if knobs != Knobs() else None, contract=contract,
                      design_descriptions={d: DESIGNS[d].description for d in names}, hugh=sweep)

__all__ = ["build_report", "DEFAULT_DESIGNS", "MAX_LISTED", "Progress"]
