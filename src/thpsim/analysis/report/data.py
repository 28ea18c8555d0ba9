"""The savings report's data: frozen result classes and their deterministic JSON form.

:class:`ReportData` holds one :class:`TraceReport` per trace, each with one :class:`DesignResult` per design (and
per pressure pass). ``to_json`` / ``from_json`` give a fixed-key-order JSON form (no timestamps) that reads back
to equal objects. Nothing here replays or renders (``build`` and ``html`` do); the data-contract violations are
kept as their text (``Violation.text``), so the JSON form is the same as when they were strings.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from thpsim import __version__
from thpsim.errors import ThpsimError

REPORT_FORMAT = 1
CONTRACT_MODES = ("op", "every", "off")


@dataclass(frozen=True)
class Violation:
    """A data-contract violation, at the first step it was seen (``text``: the ContractViolation's text)."""

    step: int
    line: int
    text: str


@dataclass(frozen=True)
class OpError:
    """A trace step whose result was an error (errno name, ``SIGSEGV``, ``LIVELOCK``)."""

    step: int
    line: int
    op: str
    result: str


@dataclass(frozen=True)
class DesignResult:
    """One replay of one trace under one design (``pressure`` True: under the injected FailPolicy)."""

    design: str
    pressure: bool = False
    error: str | None = None               # the replay could not run (the numbers are then zero)
    steps: int = 0
    series: list[tuple[int, int]] = field(default_factory=list)   # (step, pgtables_bytes) change points
    peak_bytes: int = 0
    peak_step: int = 0
    final_bytes: int = 0
    # savings against the upstream replay of the same trace (None: no upstream run, or no pressure-free run)
    saved_peak_bytes: int | None = None
    saved_peak_pct: float | None = None
    saved_final_bytes: int | None = None
    saved_final_pct: float | None = None
    peak_pagetables_kb: int = 0            # meminfo PageTables (NR_PAGETABLE, whole table pages) peak
    peak_anon_huge_kb: int = 0             # meminfo AnonHugePages peak: how much was PMD-mapped at most
    thp_fault_alloc: int = 0
    table_allocs: int = 0                  # PTE-table allocation calls (ModelRun.table_allocs)
    table_alloc_failures: int = 0
    injected_failures: int = 0             # failures the FailPolicy injected (all sites)
    thp_split_pmd: int = 0
    thp_split_pmd_failed: int = 0
    split_sites: dict[str, int] = field(default_factory=dict)
    failed_sites: dict[str, int] = field(default_factory=dict)
    violation_count: int = 0               # new violations: reports naming pages not violating at the check before
    violations: list[Violation] = field(default_factory=list)     # the first MAX_LISTED
    op_error_counts: dict[str, int] = field(default_factory=dict)
    op_errors: list[OpError] = field(default_factory=list)        # the first MAX_LISTED

    def series_values(self) -> list[int]:
        """pgtables_bytes after every step (the change points expanded)."""
        out: list[int] = []
        pts = self.series
        for i, (s, v) in enumerate(pts):
            nxt = pts[i + 1][0] if i + 1 < len(pts) else self.steps
            out.extend([v] * (nxt - s))
        return out


@dataclass(frozen=True)
class TraceReport:
    path: str
    name: str = ""
    description: str = ""
    error: str | None = None               # the trace could not be loaded: one line, file:line
    ops: int = 0
    procs: list[str] = field(default_factory=list)
    kernel: dict[str, Any] = field(default_factory=dict)   # the trace header's knob overrides
    runs: list[DesignResult] = field(default_factory=list)
    pressure_runs: list[DesignResult] = field(default_factory=list)

    def run(self, design: str, *, pressure: bool = False) -> DesignResult | None:
        return next((r for r in (self.pressure_runs if pressure else self.runs) if r.design == design), None)


@dataclass(frozen=True)
class ReportData:
    traces: list[TraceReport]
    designs: list[str]
    arch: str = "x86_64"
    pressure: dict[str, Any] | None = None   # the FailPolicy fields, if a pressure pass was run
    knobs: dict[str, Any] | None = None      # the Knobs fields, if not the defaults
    contract: str = "op"
    thpsim_version: str = __version__
    format: int = REPORT_FORMAT
    design_descriptions: dict[str, str] = field(default_factory=dict)
    # Hugh's reclaim sweep (thpsim.analysis.hugh.HughCell fields per cell), if the report was asked for it
    hugh: list[dict[str, Any]] = field(default_factory=list)

    @property
    def errors(self) -> list[TraceReport]:
        return [t for t in self.traces if t.error is not None]


# ------------------------------------------------------------------------------------------------ JSON
def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(x) for x in obj]
    return obj


def to_json(data: ReportData) -> str:
    """Deterministic JSON (fixed key order, no timestamps); :func:`from_json` reads it back. A report without the
    Hugh sweep has no ``hugh`` key (the format of reports written before it)."""
    obj = _plain(data)
    if not obj["hugh"]:
        del obj["hugh"]
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def _design_from(d: dict[str, Any]) -> DesignResult:
    d = dict(d)
    d["series"] = [(int(s), int(v)) for s, v in d.get("series", [])]
    d["violations"] = [Violation(**v) for v in d.get("violations", [])]
    d["op_errors"] = [OpError(**v) for v in d.get("op_errors", [])]
    return DesignResult(**d)


def from_json(text: str) -> ReportData:
    obj = json.loads(text)
    if obj.get("format") != REPORT_FORMAT:
        raise ThpsimError(f"not a thpsim report (format {obj.get('format')!r}, expected {REPORT_FORMAT})")
    traces = []
    for t in obj["traces"]:
        t = dict(t)
        t["runs"] = [_design_from(r) for r in t.get("runs", [])]
        t["pressure_runs"] = [_design_from(r) for r in t.get("pressure_runs", [])]
        traces.append(TraceReport(**t))
    obj["traces"] = traces
    return ReportData(**obj)


__all__ = ["REPORT_FORMAT", "CONTRACT_MODES", "Violation", "OpError", "DesignResult", "TraceReport", "ReportData",
           "to_json", "from_json"]
