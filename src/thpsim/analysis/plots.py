"""Matplotlib figures for the savings report (thpsim.analysis.report).

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly — no pyplot, so no global
figure state and no dependence on the configured backend. :func:`render` gives PNG or SVG bytes that depend only
on the figure: the PNG ``Software`` and SVG ``Creator``/``Date`` metadata are fixed and the SVG hash salt is set,
so the same data always renders to the same bytes.

* :func:`pgtables_figure` — one trace: pgtables (KiB) after every step, one line per design (designs whose series
  are identical share one line and one legend entry);
* :func:`savings_figure` — every trace: bytes saved against upstream at the peak and at the end, per design;
* :func:`split_sources_figure` — one trace: PMD splits per design, stacked by the kernel function they came from
  (failed splits hatched), including the pressure passes.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

if TYPE_CHECKING:
    from thpsim.analysis.report import DesignResult, ReportData, TraceReport

# one fixed colour and line style per design, the same in every figure
DESIGN_STYLE: dict[str, tuple[str, Any]] = {   # (colour, matplotlib linestyle)
    "upstream": ("#222222", "-"),
    "lazy": ("#1f77b4", "-"),
    "lazy-zap-zero": ("#ff7f0e", "--"),
    "lazy-zap-enomem": ("#2ca02c", "-."),
    "lazy-mprotect-upfront": ("#9467bd", ":"),
    "lazy-reclaim-pool": ("#8c564b", (0, (5, 1, 1, 1, 1, 1))),
}
_FALLBACK = ("#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#d62728")
_SITE_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#bab0ac", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")
RC: dict[Any, Any] = {   # (matplotlib types the keys as Literals)
    "font.family": "DejaVu Sans", "font.size": 9.5, "axes.titlesize": 11, "axes.labelsize": 9.5,
    "legend.fontsize": 8.5, "axes.grid": True, "grid.alpha": 0.35, "axes.spines.top": False,
    "axes.spines.right": False, "svg.hashsalt": "thpsim-report", "svg.fonttype": "path",
    "path.simplify": True,
}
DPI = 100


def design_style(name: str, i: int = 0) -> tuple[str, Any]:
    return DESIGN_STYLE.get(name, (_FALLBACK[i % len(_FALLBACK)], "-"))


def _kib_axis(ax: Any, axis: str = "y") -> None:
    fmt = FuncFormatter(lambda v, _p: f"{v:,.0f}" if abs(v - round(v)) < 1e-9 else f"{v:,.1f}")
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(fmt)


def _new(w: float, h: float) -> Figure:
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
    return fig


def render(fig: Figure, fmt: str = "png") -> bytes:
    """The figure as PNG or SVG bytes (deterministic: fixed metadata and hash salt)."""
    meta = {"Software": "thpsim"} if fmt == "png" else {"Creator": "thpsim", "Date": None}
    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        FigureCanvasAgg(fig)
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=meta)
    return buf.getvalue()


def png(fig: Figure) -> bytes:
    return render(fig, "png")


# ------------------------------------------------------------------------------------------------ figures
def _groups(runs: list[DesignResult]) -> list[tuple[list[str], DesignResult]]:
    """Designs with identical series share a line: [(names, representative run)] in design order."""
    out: list[tuple[list[str], DesignResult]] = []
    for r in runs:
        for names, rep in out:
            if rep.series == r.series:
                names.append(r.design)
                break
        else:
            out.append(([r.design], r))
    return out


def pgtables_figure(t: TraceReport) -> Figure:
    """pgtables (KiB) after each trace step, one line per design (identical series merged)."""
    runs = [r for r in t.runs if r.error is None]
    with matplotlib.rc_context(RC):
        fig = _new(10, 4.8)
        ax = fig.add_subplot()
        n = max((r.steps for r in runs), default=1)
        groups = _groups(runs)
        for gi, (names, r) in enumerate(groups):
            xs = [s for s, _ in r.series] + [max(n - 1, r.series[-1][0])]
            ys = [v / 1024 for _, v in r.series] + [r.series[-1][1] / 1024]
            colour, ls = design_style(names[0], gi)
            lw = 2.4 if names[0] == "upstream" else 1.6
            label = " = ".join(names) + f"  (peak {r.peak_bytes / 1024:,.0f} KiB, end {r.final_bytes / 1024:,.0f})"
            ax.plot(xs, ys, drawstyle="steps-post", color=colour, linestyle=ls, linewidth=lw, label=label,
                    zorder=3 + (len(groups) - gi))
            ax.plot([r.peak_step], [r.peak_bytes / 1024], marker="o", markersize=4.5, color=colour, zorder=10)
        ax.set_title(f"{t.name}: page-table memory (sum of VmPTE over processes)")
        ax.set_xlabel("trace step (op index)")
        ax.set_ylabel("pgtables (KiB)")
        ax.set_xlim(0, max(n - 1, 1))
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _kib_axis(ax)
        if groups:
            fig.legend(loc="outside lower center", ncols=1 if len(groups) > 2 else len(groups),
                       title="design  (● = first step at the peak)", title_fontsize=8.5, frameon=False)
    return fig


def savings_figure(data: ReportData) -> Figure:
    """Page-table memory saved against upstream, at the peak and at the end: grouped bars per trace."""
    traces = [t for t in data.traces if t.error is None]
    designs = [d for d in data.designs if d != "upstream"]
    with matplotlib.rc_context(RC):
        width_in = min(16.0, max(8.0, 1.0 + 0.45 * len(traces) * max(len(designs), 1)))
        fig = _new(width_in, 6.4)
        axes = fig.subplots(2, 1, sharex=True)
        bw = 0.8 / max(len(designs), 1)
        annotate = len(traces) * len(designs) <= 24
        for ax, which, title in ((axes[0], "peak", "saved at the peak"), (axes[1], "final", "saved at the end")):
            for di, d in enumerate(designs):
                xs, ys, pcts = [], [], []
                for ti, t in enumerate(traces):
                    r = t.run(d)
                    b = None if r is None or r.error is not None else getattr(r, f"saved_{which}_bytes")
                    if b is None:
                        continue
                    xs.append(ti - 0.4 + bw * (di + 0.5))
                    ys.append(b / 1024)
                    pcts.append(getattr(r, f"saved_{which}_pct"))
                colour, _ls = design_style(d, di)
                bars = ax.bar(xs, ys, width=bw * 0.92, color=colour, label=d, zorder=3)
                if annotate:
                    labels = ["—" if p is None else f"{p:.0f}%" for p in pcts]
                    ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
            ax.axhline(0, color="#444444", linewidth=0.8, zorder=4)
            ax.set_title(f"Page-table memory {title}, against upstream (label: % of upstream)")
            ax.set_ylabel("saved (KiB)")
            _kib_axis(ax)
            ax.margins(y=0.15)
        axes[1].set_xticks(range(len(traces)), [t.name for t in traces],
                           rotation=20 if len(traces) > 4 else 0, ha="right" if len(traces) > 4 else "center")
        axes[1].set_xlim(-0.6, len(traces) - 0.4)
        if designs:
            axes[0].legend(title="design", loc="upper left", bbox_to_anchor=(1.0, 1.0), framealpha=0.9)
    return fig


def split_sources_figure(t: TraceReport) -> Figure:
    """PMD splits per design, stacked by the kernel function that split (hatched: failed splits)."""
    runs = [r for r in t.runs if r.error is None] + [r for r in t.pressure_runs if r.error is None]
    labels = [r.design + (" (pressure)" if r.pressure else "") for r in runs]
    totals: dict[str, int] = {}
    for r in runs:
        for k, v in [*r.split_sites.items(), *r.failed_sites.items()]:
            totals[k] = totals.get(k, 0) + v
    sites = sorted(totals, key=lambda k: (-totals[k], k))
    colour = {s: _SITE_COLOURS[i % len(_SITE_COLOURS)] for i, s in enumerate(sites)}
    with matplotlib.rc_context(RC):
        fig = _new(max(8.0, 1.2 + 1.1 * len(runs)), 4.6)
        ax = fig.add_subplot()
        xs = list(range(len(runs)))
        bottom = [0.0] * len(runs)
        for failed in (False, True):
            for s in sites:
                ys = [float((r.failed_sites if failed else r.split_sites).get(s, 0)) for r in runs]
                if not any(ys):
                    continue
                ax.bar(xs, ys, bottom=bottom, width=0.6, color=colour[s], zorder=3,
                       hatch="///" if failed else None, edgecolor="white" if not failed else "#333333",
                       linewidth=0.6, label=("failed: " if failed else "") + s)
                bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
        for x, b in zip(xs, bottom, strict=True):
            ax.annotate(f"{int(b):,}", (x, b), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=8)
        ax.set_xticks(xs, labels, rotation=30 if len(runs) > 4 else 0, ha="right" if len(runs) > 4 else "center",
                      rotation_mode="anchor")
        ax.set_ylabel("PMD splits, done + failed (count)")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{t.name}: where PMD splits came from (hatched: the split failed)")
        ax.set_ylim(0, max(bottom, default=0) * 1.15 + 1)
        if sites:
            ax.legend(title="kernel function", loc="upper left", bbox_to_anchor=(1.0, 1.0), framealpha=0.9)
        else:
            ax.text(0.5, 0.5, "no PMD splits", transform=ax.transAxes, ha="center", va="center", color="#666666")
    return fig


__all__ = ["pgtables_figure", "savings_figure", "split_sources_figure", "render", "png", "DESIGN_STYLE"]
