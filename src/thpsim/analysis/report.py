"""The savings report: replay traces under every design and write one self-contained HTML page.

``build_report(paths)`` replays each trace under upstream, lazy and the variants (and, with ``pressure``, once
more per lazy-family design under that :class:`FailPolicy`) and returns a :class:`ReportData` — pure data, no
I/O besides reading the traces. ``write_html`` turns it into one HTML file (inline CSS, plots embedded as base64
PNG, no external resource), ``write_images`` writes the plots as separate PNG/SVG files and ``to_json`` /
``from_json`` give a deterministic JSON form. Same input, same bytes: no timestamps, fixed matplotlib metadata
and SVG hash salt, the Agg renderer.

What is measured (per trace, per design), all from the observation stream of the replay:

* ``pgtables_bytes`` after every step: the sum over live processes of ``VmPTE`` (``vm_pte_kb``) × 1024, stored
  as change points ``(step, bytes)``; its peak (and the first step reaching it) and its final value;
* savings against upstream at the peak and at the end, in bytes and percent of upstream;
* PTE-table allocations (``pte_alloc_one@*`` and ``__pte_alloc`` calls, as :attr:`ModelRun.table_allocs`),
  ``thp_split_pmd`` / ``thp_split_pmd_failed`` and the kernel functions the splits (and failed splits) came from;
* data-contract violations (shadow memory), each with the step and trace line where it first appeared;
* op results that were errors (``ENOMEM``, ``SIGSEGV``, ``LIVELOCK``...).

Data-contract checking: ``contract="op"`` (the default) uses the engine's op-scoped shadow check: after each
step only the range the op touched is compared (forks, exits and kernel-wide ops compare everything), so a
violation is found at the step that causes it and the cost stays linear. ``contract="every"`` compares every
page of every process after every step (quadratic; the tests check that both give the same report); ``"off"``
skips it.

A violation is counted once, at the step where it first appears: a later check of the same stale pages (a read
over them, a fork) reports them again, possibly with a changed text, so a report counts as new only if it names
pages that were not already known to violate.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from thpsim import __version__
from thpsim.errors import LivelockDetected, ThpsimError, TraceError
from thpsim.model.arch import get_arch
from thpsim.model.design import DESIGNS, VARIANTS, get_design
from thpsim.model.engine import Simulator, make_kernel
from thpsim.model.knobs import Knobs
from thpsim.model.page_alloc import FailPolicy
from thpsim.observation import StepObs
from thpsim.trace import format as fmt

REPORT_FORMAT = 1
CONTRACT_MODES = ("op", "every", "off")
DEFAULT_DESIGNS: tuple[str, ...] = ("upstream", "lazy", *VARIANTS)
MAX_LISTED = 50          # violations / op errors listed per run (the counts are always complete)
_TABLE_SITES = ("pte_alloc_one", "__pte_alloc")

Progress = Callable[[int, int, str], None]


# ------------------------------------------------------------------------------------------------ the data
@dataclass(frozen=True)
class Violation:
    """A data-contract violation, at the first step it was seen."""

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


@dataclass
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


@dataclass
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


@dataclass
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

    @property
    def errors(self) -> list[TraceReport]:
        return [t for t in self.traces if t.error is not None]


# ------------------------------------------------------------------------------------------------ replay
_VIOLATION_RE = re.compile(r"^(?P<proc>[^:\s]+): \[(?P<lo>[^,\]]+), (?P<hi>[^)\]]+)\): ")


def _violation_range(text: str) -> tuple[str, int, int] | None:
    """(proc, start, end) of a shadow.compare() report, or None if it does not have that form."""
    m = _VIOLATION_RE.match(text)
    if m is None:
        return None
    try:
        return m["proc"], fmt.parse_size(m["lo"]), fmt.parse_size(m["hi"])
    except TraceError:
        return None


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


def _new_violations(current: tuple[str, ...], before: set[str],
                    ranges: dict[str, list[tuple[int, int]]]) -> list[str]:
    """The reports in *current* that are new: they name pages that were not violating at the previous check.

    shadow.compare() describes the current state, so a violation is reported again after every checked step, and
    its text changes when the user overwrites part of the range or the reason changes; neither is a new
    violation. Reports that are not of the ``proc: [lo, hi): ...`` form are new when their text is new.
    """
    out = []
    for v in current:
        r = _violation_range(v)
        if r is None:
            if v not in before:
                out.append(v)
        elif not _covered(r[1], r[2], ranges.get(r[0], [])):
            out.append(v)
    return out


def _violation_ranges(current: tuple[str, ...]) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for v in current:
        r = _violation_range(v)
        if r is not None:
            out.setdefault(r[0], []).append((r[1], r[2]))
    return out


def _sorted_counts(c: Counter[str] | dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])) if v}


def _replay(trace: fmt.Trace, design: str, *, arch: str, knobs: Knobs | None, policy: FailPolicy | None,
            contract: str, pressure: bool) -> DesignResult:
    """Replay one trace under one design and reduce the observation stream to a :class:`DesignResult`."""
    k = make_kernel(design=design, arch=arch, knobs=knobs, policy=policy, overrides=trace.header.kernel)
    sim = Simulator(k, shadow=contract != "off", shadow_scope="all" if contract == "every" else "op",
                    observe="status")
    res = DesignResult(design=design, pressure=pressure, steps=len(trace.ops))
    split_sites: Counter[str] = Counter()
    failed_sites: Counter[str] = Counter()
    errs: Counter[str] = Counter()
    seen: set[str] = set()                              # every report so far
    seen_ranges: dict[str, list[tuple[int, int]]] = {}  # ... and the pages they named
    last: int | None = None
    obs: StepObs | None = None
    for i, op in enumerate(trace.ops):
        obs = sim.step(i, op)
        total = sum(p.vm_pte_kb for p in obs.procs) * 1024
        if total != last:
            res.series.append((i, total))
            last = total
        if total > res.peak_bytes:
            res.peak_bytes, res.peak_step = total, i
        mi = dict(obs.meminfo)
        res.peak_pagetables_kb = max(res.peak_pagetables_kb, mi.get("PageTables", 0))
        res.peak_anon_huge_kb = max(res.peak_anon_huge_kb, mi.get("AnonHugePages", 0))
        split_sites.update(k.log.split_sites)
        failed_sites.update(k.log.failed_sites)
        for v in _new_violations(obs.violations, seen, seen_ranges):
            res.violation_count += 1
            if len(res.violations) < MAX_LISTED:
                res.violations.append(Violation(i, op.line, v))
        seen.update(obs.violations)
        for proc, rs in _violation_ranges(obs.violations).items():
            seen_ranges.setdefault(proc, []).extend(rs)
        if isinstance(obs.result, str):
            errs[obs.result] += 1
            if len(res.op_errors) < MAX_LISTED:
                res.op_errors.append(OpError(i, op.line, op.describe(), obs.result))
    res.final_bytes = last or 0
    if obs is not None:
        res.thp_split_pmd = obs.counter("thp_split_pmd")
        res.thp_split_pmd_failed = obs.counter("thp_split_pmd_failed")
        res.thp_fault_alloc = obs.counter("thp_fault_alloc")
    if not res.series:
        res.series.append((0, 0))
    res.split_sites = _sorted_counts(split_sites)
    res.failed_sites = _sorted_counts(failed_sites)
    res.op_error_counts = _sorted_counts(errs)
    a = k.alloc
    res.table_allocs = sum(n for s, n in a.per_site.items() if s.startswith(_TABLE_SITES))
    res.table_alloc_failures = sum(1 for r in a.log if not r.ok and r.site.startswith(_TABLE_SITES))
    res.injected_failures = a.injected
    return res


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _fill_savings(t: TraceReport) -> None:
    up = t.run("upstream")
    if up is None or up.error is not None:
        return
    for r in t.runs:
        if r.error is not None:
            continue
        r.saved_peak_bytes = up.peak_bytes - r.peak_bytes
        r.saved_peak_pct = _pct(r.saved_peak_bytes, up.peak_bytes)
        r.saved_final_bytes = up.final_bytes - r.final_bytes
        r.saved_final_pct = _pct(r.saved_final_bytes, up.final_bytes)


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if isinstance(e, ThpsimError) else f"internal error ({type(e).__name__}): {msg}"


def build_report(paths: list[str], *, designs: tuple[str, ...] = DEFAULT_DESIGNS,
                 pressure: FailPolicy | None = None, arch: str = "x86_64",
                 progress: Progress | None = None, knobs: Knobs | None = None,
                 contract: str = "op") -> ReportData:
    """Replay every trace in *paths* under every design in *designs* and collect the report data.

    A trace that cannot be loaded becomes an entry with ``error`` set (one line naming file:line); the others are
    still replayed. A replay that raises is recorded on its :class:`DesignResult` the same way. *progress* is
    called as ``progress(done, total, label)`` after every replay. *knobs* sets the kernel knobs (the trace
    header's overrides still apply on top); *contract* is one of :data:`CONTRACT_MODES` (see the module doc).
    Raises :class:`ThpsimError` only for bad arguments (unknown design, arch or contract mode).
    """
    if contract not in CONTRACT_MODES:
        raise ThpsimError(f"unknown contract mode {contract!r}; choose one of: {', '.join(CONTRACT_MODES)}")
    get_arch(arch)
    names = list(dict.fromkeys(designs))
    if not names:
        raise ThpsimError("choose at least one design")
    for d in names:
        get_design(d)
    lazy_family = [d for d in names if not DESIGNS[d].deposit] if pressure is not None else []

    loaded: list[tuple[TraceReport, fmt.Trace | None]] = []
    for p in paths:
        t = TraceReport(path=p, name=os.path.basename(p))
        trace: fmt.Trace | None = None
        try:
            trace = fmt.load(p)
        except TraceError as e:
            t.error = _one_line(e)
        except ThpsimError as e:
            t.error = f"{p}: {_one_line(e)}"
        if trace is not None:
            t.name = trace.header.name or t.name
            t.description = " ".join(trace.header.description.split())
            t.ops = len(trace.ops)
            t.procs = list(trace.procs())
            t.kernel = {k: (list(v) if isinstance(v, tuple) else v) for k, v in trace.header.kernel}
        loaded.append((t, trace))

    # trace by trace: every design, then the pressure passes
    jobs = [(t, tr, d, pr) for t, tr in loaded if tr is not None
            for d, pr in [*((d, False) for d in names), *((d, True) for d in lazy_family)]]
    total = len(jobs)
    for n, (t, tr, d, pr) in enumerate(jobs, 1):
        assert tr is not None
        try:
            res = _replay(tr, d, arch=arch, knobs=knobs, policy=pressure if pr else None, contract=contract,
                          pressure=pr)
        except Exception as e:   # a report records a failed replay (one line) instead of dying on it
            res = DesignResult(design=d, pressure=pr, steps=len(tr.ops), error=_one_line(e))
            if isinstance(e, LivelockDetected):
                res.error = f"livelock: {res.error}"
        (t.pressure_runs if pr else t.runs).append(res)
        if progress is not None:
            progress(n, total, f"{t.name}: {d}{' under pressure' if pr else ''}")
    for t, _tr in loaded:
        _fill_savings(t)
    return ReportData(
        traces=[t for t, _ in loaded], designs=names, arch=arch,
        pressure=dataclasses.asdict(pressure) if pressure is not None else None,
        knobs=dataclasses.asdict(knobs) if knobs is not None and knobs != Knobs() else None,
        contract=contract, design_descriptions={d: DESIGNS[d].description for d in names},
    )


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
    """Deterministic JSON (fixed key order, no timestamps); :func:`from_json` reads it back."""
    return json.dumps(_plain(data), indent=1, ensure_ascii=False) + "\n"


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


# ------------------------------------------------------------------------------------------------ HTML
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:2em auto;max-width:1180px;
 padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #ddd;padding-bottom:.2em}
h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .55em;vertical-align:top}
th{background:#f2f2f4;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.upstream td{background:#fafafa}
.good{color:#0a6b2d}.bad{color:#b00020}.muted{color:#666}
.err{background:#fff0f0;border-left:4px solid #b00020;padding:.4em .8em;margin:.5em 0;font-family:monospace}
.note{background:#f5f8ff;border-left:4px solid #3366cc;padding:.4em .8em;margin:.8em 0}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0}
code,.mono{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.92em}
ul.v{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.85em}
"""


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def kib(nbytes: int | None) -> str:
    """Bytes as KiB with thousands separators ("1,234 KiB"); '—' for None."""
    if nbytes is None:
        return "—"
    v = nbytes / 1024
    return f"{v:,.0f}" if v == int(v) else f"{v:,.2f}"


def _pct_s(p: float | None) -> str:
    return "—" if p is None else f"{p:.1f}%"


def _saved(b: int | None, p: float | None) -> str:
    if b is None:
        return "—"
    cls = "good" if b > 0 else "bad" if b < 0 else "muted"
    return f'<span class="{cls}">{kib(b)} ({_pct_s(p)})</span>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _sites(d: dict[str, int]) -> str:
    return ", ".join(f"<code>{_e(k)}</code> {v}" for k, v in d.items()) or '<span class="muted">none</span>'


def _table(head: list[str], rows: list[list[str]], row_class: list[str] | None = None) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for i, r in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        out.append(f"<tr{cls}>" + "".join(r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _n(v: Any) -> str:
    return f'<td class="n">{v}</td>'


def _design_rows(t: TraceReport) -> tuple[list[str], list[list[str]], list[str]]:
    head = ["design", "peak pgtables (KiB)", "at step", "final (KiB)", "saved at peak (KiB, %)",
            "saved at end (KiB, %)", "PTE-table allocs", "thp_split_pmd", "thp_split_pmd_failed",
            "violations", "PageTables peak (KiB)"]
    rows, cls = [], []
    for r in t.runs:
        if r.error is not None:
            rows.append([f"<td><b>{_e(r.design)}</b></td>",
                         f'<td colspan="{len(head) - 1}"><span class="bad">replay failed: {_e(r.error)}</span></td>'])
        else:
            rows.append([f"<td><b>{_e(r.design)}</b></td>", _n(kib(r.peak_bytes)), _n(r.peak_step),
                         _n(kib(r.final_bytes)), _n(_saved(r.saved_peak_bytes, r.saved_peak_pct)),
                         _n(_saved(r.saved_final_bytes, r.saved_final_pct)), _n(f"{r.table_allocs:,}"),
                         _n(f"{r.thp_split_pmd:,}"), _n(f"{r.thp_split_pmd_failed:,}"),
                         _n(f'<span class="bad">{r.violation_count}</span>' if r.violation_count else "0"),
                         _n(f"{r.peak_pagetables_kb:,}")])
        cls.append("upstream" if r.design == "upstream" else "")
    return head, rows, cls


def _violations_html(r: DesignResult, label: str) -> str:
    parts = []
    if r.violation_count:
        items = "".join(f"<li>step {v.step} (line {v.line}): {_e(v.text)}</li>" for v in r.violations)
        more = r.violation_count - len(r.violations)
        more_s = f"<li>… and {more} more</li>" if more > 0 else ""
        parts.append(f"<p><b>{_e(label)}</b>: {r.violation_count} data-contract violation(s), first seen at:</p>"
                     f'<ul class="v">{items}{more_s}</ul>')
    if r.op_error_counts:
        counts = ", ".join(f"{_e(k)} ×{v}" for k, v in r.op_error_counts.items())
        items = "".join(f"<li>step {o.step} (line {o.line}) {_e(o.op)} → {_e(o.result)}</li>" for o in r.op_errors)
        more = sum(r.op_error_counts.values()) - len(r.op_errors)
        more_s = f"<li>… and {more} more</li>" if more > 0 else ""
        parts.append(f"<p><b>{_e(label)}</b>: ops that returned an error: {counts}</p>"
                     f'<details><summary>steps</summary><ul class="v">{items}{more_s}</ul></details>')
    return "\n".join(parts)


def _pressure_html(t: TraceReport) -> str:
    head = ["design", "peak pgtables (KiB)", "final (KiB)", "injected failures", "PTE-table alloc failures",
            "thp_split_pmd", "thp_split_pmd_failed", "failed splits by caller", "op errors", "violations"]
    rows = []
    for r in t.pressure_runs:
        if r.error is not None:
            rows.append([f"<td><b>{_e(r.design)}</b></td>",
                         f'<td colspan="{len(head) - 1}"><span class="bad">replay failed: {_e(r.error)}</span></td>'])
            continue
        errs = ", ".join(f"{_e(k)} ×{v}" for k, v in r.op_error_counts.items()) or "0"
        rows.append([f"<td><b>{_e(r.design)}</b></td>", _n(kib(r.peak_bytes)), _n(kib(r.final_bytes)),
                     _n(r.injected_failures), _n(r.table_alloc_failures), _n(r.thp_split_pmd),
                     _n(r.thp_split_pmd_failed), f"<td>{_sites(r.failed_sites)}</td>", f"<td>{errs}</td>",
                     _n(f'<span class="bad">{r.violation_count}</span>' if r.violation_count else "0")])
    return _table(head, rows)


def _slug(i: int, name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "trace"
    return f"{i + 1:02d}-{s[:60]}"


def _policy_s(p: dict[str, Any]) -> str:
    defaults = dataclasses.asdict(FailPolicy())
    items = [f"{k}={v}" for k, v in p.items() if defaults.get(k) != v]
    return ", ".join(items) or "no failures (an inactive policy)"


def render_html(data: ReportData) -> str:
    """The report as one self-contained HTML document (a str)."""
    from thpsim.analysis import plots

    ok = [t for t in data.traces if t.error is None]
    title = "thpsim savings report"
    h: list[str] = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="thpsim {_e(data.thpsim_version)}">',
        f"<title>{title}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f"<h1>{title}</h1>",
        f'<p class="muted">{len(data.traces)} trace(s), {len(data.errors)} could not be loaded · arch '
        f"<code>{_e(data.arch)}</code> · designs {', '.join(f'<code>{_e(d)}</code>' for d in data.designs)} · "
        f"data-contract check: <code>{_e(data.contract)}</code> · thpsim {_e(data.thpsim_version)}</p>",
    ]
    if data.knobs:
        defaults = dataclasses.asdict(Knobs())
        ch = ", ".join(f"{k}={v}" for k, v in data.knobs.items() if defaults.get(k) != v)
        h.append(f"<p>Kernel knobs: <code>{_e(ch)}</code> (a trace header's own overrides apply on top).</p>")
    if data.pressure is not None:
        h.append(f"<p>Injected pressure (one extra replay per lazy-family design): "
                 f"<code>{_e(_policy_s(data.pressure))}</code></p>")
    h.append(
        '<div class="note"><b>How to read this.</b> Each trace was replayed on the model kernel once per design. '
        "<i>pgtables</i> is what <code>VmPTE</code> in <code>/proc/PID/status</code> would show, summed over the "
        "trace's live processes (PTE, PMD and PUD tables inside the trace's arena). Upstream deposits one PTE "
        "table for every PMD-mapped THP; the lazy designs allocate it only when the PMD is split, so "
        "<b>saved</b> = upstream − design is about 4 KiB per THP that was PMD-mapped at that moment and never "
        "split. A split under lazy can fail when that allocation fails: the <i>thp_split_pmd_failed</i> column "
        "and the pressure table show how often and from which kernel functions, and <i>violations</i> are "
        "user-visible data-contract breaks (data that should be gone but is not, or the reverse). "
        "PageTables is <code>/proc/meminfo</code>'s NR_PAGETABLE change, which also counts tables held outside "
        "any mm (e.g. a reserve pool). All sizes are KiB (1024 bytes). Peak step and violation steps count "
        "trace ops from 0; “line” is the line in the trace file.</div>")

    # ---- summary
    h.append("<h2>Summary</h2>")
    if ok:
        head = ["trace", "ops"] + [f"{_e(d)}<br>peak / final (KiB)" for d in data.designs]
        rows = []
        for t in ok:
            cells = [f'<td><a href="#{_slug(data.traces.index(t), t.name)}">{_e(t.name)}</a></td>', _n(t.ops)]
            for d in data.designs:
                r = t.run(d)
                if r is None or r.error is not None:
                    cells.append('<td class="bad">failed</td>')
                    continue
                s = f"{kib(r.peak_bytes)} / {kib(r.final_bytes)}"
                if d != "upstream" and r.saved_peak_bytes is not None:
                    s += f"<br>saved {_saved(r.saved_peak_bytes, r.saved_peak_pct)}"
                cells.append(_n(s))
            rows.append(cells)
        h.append(_table(head, rows))
        if any(d != "upstream" for d in data.designs) and "upstream" in data.designs:
            h.append(_img(plots.png(plots.savings_figure(data)),
                          "Bar chart: page-table bytes saved against upstream, at the peak and at the end, "
                          "per trace and design"))
    else:
        h.append("<p>No trace could be replayed.</p>")
    if data.errors:
        h.append("<h3>Traces that could not be loaded</h3>")
        h.extend(f'<div class="err">{_e(t.error)}</div>' for t in data.errors)

    # ---- per trace
    for i, t in enumerate(data.traces):
        h.append(f'<h2 id="{_slug(i, t.name)}">{_e(t.name)}</h2>')
        h.append(f'<p class="muted mono">{_e(t.path)}</p>')
        if t.error is not None:
            h.append(f'<div class="err">could not load this trace: {_e(t.error)}</div>')
            continue
        if t.description:
            h.append(f"<p>{_e(t.description)}</p>")
        up = t.run("upstream")
        thp = (f" · at most {kib((up.peak_anon_huge_kb if up else 0) * 1024)} KiB PMD-mapped (AnonHugePages), "
               f"{up.thp_fault_alloc if up else 0} THP faults under upstream") if up else ""
        kn = f" · header knobs <code>{_e(json.dumps(t.kernel))}</code>" if t.kernel else ""
        h.append(f"<p>{t.ops:,} ops · processes {', '.join(f'<code>{_e(p)}</code>' for p in t.procs)}{thp}{kn}</p>")
        if up is not None and up.error is None and up.peak_anon_huge_kb == 0:
            h.append('<div class="note">No THP was ever PMD-mapped in this replay, so there is nothing for the lazy '
                     "designs to save (THP <code>enabled</code> is <code>madvise</code> by default and the trace "
                     "never asks for <code>MADV_HUGEPAGE</code>; try the knobs <code>thp_enabled=always</code>)."
                     "</div>")
        head, rows, cls = _design_rows(t)
        h.append(_table(head, rows, cls))
        good = [r for r in t.runs if r.error is None]
        if good:
            h.append(_img(plots.png(plots.pgtables_figure(t)),
                          f"Line chart: pgtables (KiB) over trace steps per design for {t.name}"))
            h.append("<h3>Where PMD splits came from</h3>")
            srows = [[f"<td><b>{_e(r.design)}</b></td>", _n(r.thp_split_pmd), f"<td>{_sites(r.split_sites)}</td>",
                      f"<td>{_sites(r.failed_sites)}</td>"] for r in good]
            h.append(_table(["design", "splits", "split callers", "failed split callers"], srows))
            if any(r.split_sites or r.failed_sites for r in good):
                h.append(_img(plots.png(plots.split_sources_figure(t)),
                              f"Stacked bars: PMD splits per design by kernel function for {t.name}"))
        if t.pressure_runs:
            h.append("<h3>Under injected pressure</h3>")
            h.append(_pressure_html(t))
        details = [_violations_html(r, r.design) for r in t.runs]
        details += [_violations_html(r, f"{r.design} under pressure") for r in t.pressure_runs]
        details = [d for d in details if d]
        if details:
            h.append("<h3>Violations and failed operations</h3>")
            h.extend(details)
        elif good:
            h.append('<p class="muted">No data-contract violations and no failed operations.</p>')

    # ---- designs
    h.append("<h2>Designs</h2>")
    h.append(_table(["design", "what it is"],
                    [[f"<td><code>{_e(d)}</code></td>", f"<td>{_e(data.design_descriptions.get(d, ''))}</td>"]
                     for d in data.designs]))
    h.append(f'<p class="muted">Data-contract check mode <code>{_e(data.contract)}</code>: '
             + {"failures": "the shadow memory is compared after every step in which an allocation or a split "
                            "failed, and after the last step.",
                "every": "the shadow memory is compared after every step.",
                "off": "no data-contract check was made."}.get(data.contract, "") + "</p>")
    h += ["</body>", "</html>", ""]
    return "\n".join(h)


def write_html(data: ReportData, out_path: str) -> None:
    """Write the report to *out_path* as one self-contained HTML file."""
    text = render_html(data)
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_images(data: ReportData, out_dir: str, fmt: str = "png") -> list[str]:
    """Write every plot of the report to *out_dir* (created if missing) as PNG or SVG; returns the paths."""
    from thpsim.analysis import plots

    if fmt not in ("png", "svg"):
        raise ThpsimError(f"image format must be png or svg (got {fmt!r})")
    os.makedirs(out_dir, exist_ok=True)
    out: list[str] = []

    def save(fig: Any, name: str) -> None:
        path = os.path.join(out_dir, f"{name}.{fmt}")
        with open(path, "wb") as f:
            f.write(plots.render(fig, fmt))
        out.append(path)

    ok = [t for t in data.traces if t.error is None]
    if ok and "upstream" in data.designs and len(data.designs) > 1:
        save(plots.savings_figure(data), "savings")
    for i, t in enumerate(data.traces):
        good = [r for r in t.runs if r.error is None]
        if t.error is not None or not good:
            continue
        slug = _slug(i, t.name)
        save(plots.pgtables_figure(t), f"{slug}-pgtables")
        if any(r.split_sites or r.failed_sites for r in good):
            save(plots.split_sources_figure(t), f"{slug}-splits")
    return out


__all__ = ["build_report", "write_html", "write_images", "render_html", "to_json", "from_json", "ReportData",
           "TraceReport", "DesignResult", "Violation", "OpError", "CONTRACT_MODES", "DEFAULT_DESIGNS", "kib"]
