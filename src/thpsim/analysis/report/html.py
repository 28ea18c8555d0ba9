"""Render the savings report: one self-contained HTML page, or the plots as separate image files.

:func:`render_html` fills the page template ``report.html`` (package data next to this module: the document
head, the inline CSS and the fixed "how to read this" note) with the generated sections; plots are embedded as
base64 PNG, so the page loads no external resource. Each ``${...}`` placeholder stands at the start of a line
and is replaced by whole lines (each ending in a newline, or nothing), so an empty section leaves no blank
line. :func:`write_images` writes the same plots as PNG or SVG files. Same data, same bytes (see
:mod:`thpsim.analysis.plots` for the fixed renderer settings).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
import re
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from thpsim.analysis.report.data import DesignResult, ReportData, TraceReport
from thpsim.errors import ThpsimError
from thpsim.model.knobs import Knobs
from thpsim.model.page_alloc import FailPolicy

TEMPLATE = "report.html"
_CONTRACT_NOTE = {"failures": "the shadow memory is compared after every step in which an allocation or a split "
                              "failed, and after the last step.",
                  "every": "the shadow memory is compared after every step.",
                  "off": "no data-contract check was made."}


@cache
def _template() -> Template:
    return Template(resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8"))


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


def _lines(parts: list[str]) -> str:
    """Template text for a section: each part on its own line(s), each ending in a newline."""
    return "".join(p + "\n" for p in parts)


def _failed_row(r: DesignResult, ncols: int) -> list[str]:
    return [f"<td><b>{_e(r.design)}</b></td>",
            f'<td colspan="{ncols - 1}"><span class="bad">replay failed: {_e(r.error)}</span></td>']


def _count_cell(n: int) -> str:
    return _n(f'<span class="bad">{n}</span>' if n else "0")


def _design_rows(t: TraceReport) -> tuple[list[str], list[list[str]], list[str]]:
    head = ["design", "peak pgtables (KiB)", "at step", "final (KiB)", "saved at peak (KiB, %)",
            "saved at end (KiB, %)", "PTE-table allocs", "thp_split_pmd", "thp_split_pmd_failed",
            "violations", "PageTables peak (KiB)"]
    rows, cls = [], []
    for r in t.runs:
        if r.error is not None:
            rows.append(_failed_row(r, len(head)))
        else:
            rows.append([f"<td><b>{_e(r.design)}</b></td>", _n(kib(r.peak_bytes)), _n(r.peak_step),
                         _n(kib(r.final_bytes)), _n(_saved(r.saved_peak_bytes, r.saved_peak_pct)),
                         _n(_saved(r.saved_final_bytes, r.saved_final_pct)), _n(f"{r.table_allocs:,}"),
                         _n(f"{r.thp_split_pmd:,}"), _n(f"{r.thp_split_pmd_failed:,}"),
                         _count_cell(r.violation_count), _n(f"{r.peak_pagetables_kb:,}")])
        cls.append("upstream" if r.design == "upstream" else "")
    return head, rows, cls


def _more(n: int) -> str:
    return f"<li>… and {n} more</li>" if n > 0 else ""


def _violations_html(r: DesignResult, label: str) -> str:
    parts = []
    if r.violation_count:
        items = "".join(f"<li>step {v.step} (line {v.line}): {_e(v.text)}</li>" for v in r.violations)
        parts.append(f"<p><b>{_e(label)}</b>: {r.violation_count} data-contract violation(s), first seen at:</p>"
                     f'<ul class="v">{items}{_more(r.violation_count - len(r.violations))}</ul>')
    if r.op_error_counts:
        counts = ", ".join(f"{_e(k)} ×{v}" for k, v in r.op_error_counts.items())
        items = "".join(f"<li>step {o.step} (line {o.line}) {_e(o.op)} → {_e(o.result)}</li>" for o in r.op_errors)
        more = _more(sum(r.op_error_counts.values()) - len(r.op_errors))
        parts.append(f"<p><b>{_e(label)}</b>: ops that returned an error: {counts}</p>"
                     f'<details><summary>steps</summary><ul class="v">{items}{more}</ul></details>')
    return "\n".join(parts)


def _pressure_html(t: TraceReport) -> str:
    head = ["design", "peak pgtables (KiB)", "final (KiB)", "injected failures", "PTE-table alloc failures",
            "thp_split_pmd", "thp_split_pmd_failed", "failed splits by caller", "op errors", "violations"]
    rows = []
    for r in t.pressure_runs:
        if r.error is not None:
            rows.append(_failed_row(r, len(head)))
            continue
        errs = ", ".join(f"{_e(k)} ×{v}" for k, v in r.op_error_counts.items()) or "0"
        rows.append([f"<td><b>{_e(r.design)}</b></td>", _n(kib(r.peak_bytes)), _n(kib(r.final_bytes)),
                     _n(r.injected_failures), _n(r.table_alloc_failures), _n(r.thp_split_pmd),
                     _n(r.thp_split_pmd_failed), f"<td>{_sites(r.failed_sites)}</td>", f"<td>{errs}</td>",
                     _count_cell(r.violation_count)])
    return _table(head, rows)


def _slug(i: int, name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "trace"
    return f"{i + 1:02d}-{s[:60]}"


def _policy_s(p: dict[str, Any]) -> str:
    defaults = dataclasses.asdict(FailPolicy())
    items = [f"{k}={v}" for k, v in p.items() if defaults.get(k) != v]
    return ", ".join(items) or "no failures (an inactive policy)"


def _overview(data: ReportData) -> list[str]:
    """The line under the title, and the knobs and pressure lines if any."""
    h = [f'<p class="muted">{len(data.traces)} trace(s), {len(data.errors)} could not be loaded · arch '
         f"<code>{_e(data.arch)}</code> · designs {', '.join(f'<code>{_e(d)}</code>' for d in data.designs)} · "
         f"data-contract check: <code>{_e(data.contract)}</code> · thpsim {_e(data.thpsim_version)}</p>"]
    if data.knobs:
        defaults = dataclasses.asdict(Knobs())
        ch = ", ".join(f"{k}={v}" for k, v in data.knobs.items() if defaults.get(k) != v)
        h.append(f"<p>Kernel knobs: <code>{_e(ch)}</code> (a trace header's own overrides apply on top).</p>")
    if data.pressure is not None:
        h.append(f"<p>Injected pressure (one extra replay per lazy-family design): "
                 f"<code>{_e(_policy_s(data.pressure))}</code></p>")
    return h


def _summary_cell(r: DesignResult | None, design: str) -> str:
    if r is None or r.error is not None:
        return '<td class="bad">failed</td>'
    s = f"{kib(r.peak_bytes)} / {kib(r.final_bytes)}"
    if design != "upstream" and r.saved_peak_bytes is not None:
        s += f"<br>saved {_saved(r.saved_peak_bytes, r.saved_peak_pct)}"
    return _n(s)


def _summary(data: ReportData, plots: Any) -> list[str]:
    """The summary table (and savings chart), then the traces that could not be loaded."""
    ok = [t for t in data.traces if t.error is None]
    h: list[str] = []
    if ok:
        head = ["trace", "ops"] + [f"{_e(d)}<br>peak / final (KiB)" for d in data.designs]
        rows = [[f'<td><a href="#{_slug(data.traces.index(t), t.name)}">{_e(t.name)}</a></td>', _n(t.ops)]
                + [_summary_cell(t.run(d), d) for d in data.designs] for t in ok]
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
    return h


def _trace_intro(t: TraceReport) -> list[str]:
    h = [f"<p>{_e(t.description)}</p>"] if t.description else []
    up = t.run("upstream")
    thp = (f" · at most {kib(up.peak_anon_huge_kb * 1024)} KiB PMD-mapped (AnonHugePages), "
           f"{up.thp_fault_alloc} THP faults under upstream") if up else ""
    kn = f" · header knobs <code>{_e(json.dumps(t.kernel))}</code>" if t.kernel else ""
    h.append(f"<p>{t.ops:,} ops · processes {', '.join(f'<code>{_e(p)}</code>' for p in t.procs)}{thp}{kn}</p>")
    if up is not None and up.error is None and up.peak_anon_huge_kb == 0:
        h.append('<div class="note">No THP was ever PMD-mapped in this replay, so there is nothing for the lazy '
                 "designs to save (THP <code>enabled</code> is <code>madvise</code> by default and the trace "
                 "never asks for <code>MADV_HUGEPAGE</code>; try the knobs <code>thp_enabled=always</code>)."
                 "</div>")
    return h


def _trace_plots(t: TraceReport, good: list[DesignResult], plots: Any) -> list[str]:
    h = [_img(plots.png(plots.pgtables_figure(t)), f"Line chart: pgtables (KiB) over trace steps per design for "
                                                   f"{t.name}"),
         "<h3>Where PMD splits came from</h3>"]
    srows = [[f"<td><b>{_e(r.design)}</b></td>", _n(r.thp_split_pmd), f"<td>{_sites(r.split_sites)}</td>",
              f"<td>{_sites(r.failed_sites)}</td>"] for r in good]
    h.append(_table(["design", "splits", "split callers", "failed split callers"], srows))
    if any(r.split_sites or r.failed_sites for r in good):
        h.append(_img(plots.png(plots.split_sources_figure(t)),
                      f"Stacked bars: PMD splits per design by kernel function for {t.name}"))
    return h


def _trace_section(i: int, t: TraceReport, plots: Any) -> list[str]:
    """One trace's section: its table, plots, pressure table, violations and failed operations."""
    h = [f'<h2 id="{_slug(i, t.name)}">{_e(t.name)}</h2>', f'<p class="muted mono">{_e(t.path)}</p>']
    if t.error is not None:
        return [*h, f'<div class="err">could not load this trace: {_e(t.error)}</div>']
    h += _trace_intro(t)
    h.append(_table(*_design_rows(t)))
    good = [r for r in t.runs if r.error is None]
    if good:
        h += _trace_plots(t, good, plots)
    if t.pressure_runs:
        h += ["<h3>Under injected pressure</h3>", _pressure_html(t)]
    details = [_violations_html(r, r.design) for r in t.runs]
    details += [_violations_html(r, f"{r.design} under pressure") for r in t.pressure_runs]
    details = [d for d in details if d]
    if details:
        h += ["<h3>Violations and failed operations</h3>", *details]
    elif good:
        h.append('<p class="muted">No data-contract violations and no failed operations.</p>')
    return h


def _designs(data: ReportData) -> list[str]:
    return [_table(["design", "what it is"],
                   [[f"<td><code>{_e(d)}</code></td>", f"<td>{_e(data.design_descriptions.get(d, ''))}</td>"]
                    for d in data.designs]),
            f'<p class="muted">Data-contract check mode <code>{_e(data.contract)}</code>: '
            + _CONTRACT_NOTE.get(data.contract, "") + "</p>"]


def _hugh(data: ReportData, plots: Any) -> list[str]:
    """Hugh's reclaim case (``thpsim report --hugh``): the heat maps and the table of the sweep."""
    if not data.hugh:
        return []
    from thpsim.analysis.hugh import HughCell, format_sweep, sweep_figure

    cells = [HughCell(**c) for c in data.hugh]
    return ["<h2>Hugh's reclaim case</h2>",
            "<p>One anonymous THP mapped by N processes is reclaimed to swap, with no free page when reclaim "
            "starts, per design and share of fragmented swap clusters: net pages freed (colour), S where the THP "
            "left memory. Lazy needs one PTE table per mapping from the PF_MEMALLOC reserves; lazy-pmd-swap "
            "needs none while a whole swap cluster is free (see <code>thpsim review hugh</code>).</p>",
            _img(plots.png(sweep_figure(cells)), "Heat maps: net pages freed per N and reserve pages, per design"),
            f"<pre>{_e(format_sweep(cells))}</pre>"]


def render_html(data: ReportData) -> str:
    """The report as one self-contained HTML document (a str)."""
    from thpsim.analysis import plots  # matplotlib: only when a report is rendered

    traces = [line for i, t in enumerate(data.traces) for line in _trace_section(i, t, plots)]
    return _template().substitute(version=_e(data.thpsim_version), overview=_lines(_overview(data)),
                                  summary=_lines(_summary(data, plots) + _hugh(data, plots)), traces=_lines(traces),
                                  designs=_lines(_designs(data)))


def write_html(data: ReportData, out_path: str) -> None:
    """Write the report to *out_path* as one self-contained HTML file."""
    text = render_html(data)
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_images(data: ReportData, out_dir: str, fmt: str = "png") -> list[str]:
    """Write every plot of the report to *out_dir* (created if missing) as PNG or SVG; returns the paths."""
    from thpsim.analysis import plots  # matplotlib: only when images are written

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


__all__ = ["render_html", "write_html", "write_images", "kib", "TEMPLATE"]
