"""Design comparison: replay one trace under several designs (upstream pre-deposit, the lazy series, variants)
and report what the page tables cost and where splits happened or failed.

For every design: final and peak ``pgtables_bytes`` summed over the live processes (VmPTE), peak and final
NR_PAGETABLE (meminfo PageTables), PTE-table allocations (``pte_alloc_one@*`` and ``__pte_alloc`` sites), PMD
splits (``thp_split_pmd``), split failures (``thp_split_pmd_failed``), where splits and split failures came from,
allocation failures by site, data-contract violations (shadow memory) and every step's result. The savings are
baseline − candidate (``upstream`` − ``lazy`` by default) at the end and at the peak.

The architecture decides before the design: on ``ppc64-hash`` (``arch_needs_pgtable_deposit()``) every design
deposits, so the savings are 0 there. Pure and deterministic: same trace, design, arch and policy → same result.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from thpsim.model.arch import get_arch
from thpsim.model.design import get_design
from thpsim.model.engine import run_model
from thpsim.model.knobs import Knobs
from thpsim.model.page_alloc import FailPolicy
from thpsim.trace.format import Trace

TABLE_SITE_PREFIXES = ("pte_alloc_one", "__pte_alloc")


@dataclass(frozen=True)
class DesignResult:
    design: str
    arch: str
    deposits: bool                     # the effective design deposits (the arch rule applied)
    final_pgtables_bytes: int
    peak_pgtables_bytes: int
    final_nr_pagetable_bytes: int
    peak_nr_pagetable_bytes: int
    table_allocs: int                  # pte_alloc_one* + __pte_alloc attempts
    table_alloc_failures: int
    splits: int                        # thp_split_pmd
    split_failures: int                # thp_split_pmd_failed
    split_sites: dict[str, int] = field(default_factory=dict)
    failed_split_sites: dict[str, int] = field(default_factory=dict)
    alloc_failures_by_site: dict[str, int] = field(default_factory=dict)
    violations: tuple[str, ...] = ()
    results: tuple[Any, ...] = ()      # every step's result, in trace order


@dataclass(frozen=True)
class Comparison:
    trace: str
    arch: str
    designs: tuple[DesignResult, ...]
    baseline: str
    candidate: str
    saved_final_bytes: int             # pgtables_bytes, baseline − candidate, after the last step
    saved_peak_bytes: int              # peak pgtables_bytes, baseline − candidate
    saved_peak_nr_pagetable_bytes: int

    def by_design(self, name: str) -> DesignResult:
        for d in self.designs:
            if d.design == name:
                return d
        raise KeyError(name)


def _event(run: Any, name: str) -> int:
    k = run.kernel
    return int(k.vmstat.events[name]) if k is not None else 0


def run_design(trace: Trace, design: str, *, arch: str = "x86_64", knobs: Knobs | None = None,
               policy: FailPolicy | None = None) -> DesignResult:
    run = run_model(trace, design=design, arch=arch, knobs=knobs, policy=policy, check=True, shadow=True)
    k = run.kernel
    assert k is not None
    tables = [r for r in k.alloc.log if r.site.startswith(TABLE_SITE_PREFIXES)]
    fails = Counter(r.site for r in k.alloc.log if not r.ok)
    return DesignResult(
        design=design, arch=arch, deposits=k.design.deposit,
        final_pgtables_bytes=run.final_pgtables_bytes, peak_pgtables_bytes=run.peak_pgtables_bytes,
        final_nr_pagetable_bytes=k.vmstat.nr_pagetable_bytes, peak_nr_pagetable_bytes=run.peak_pagetable_bytes,
        table_allocs=run.table_allocs, table_alloc_failures=sum(1 for r in tables if not r.ok),
        splits=_event(run, "thp_split_pmd"), split_failures=_event(run, "thp_split_pmd_failed"),
        split_sites=dict(sorted(run.split_sites.items())), failed_split_sites=dict(sorted(run.failed_sites.items())),
        alloc_failures_by_site=dict(sorted(fails.items())), violations=tuple(run.violations),
        results=tuple(s.result for s in run.steps),
    )


def compare_trace(trace: Trace, *, designs: tuple[str, ...] = ("upstream", "lazy"), arch: str = "x86_64",
                  knobs: Knobs | None = None, policy: FailPolicy | None = None) -> Comparison:
    """Run ``trace`` under each design and compare. Savings: ``upstream`` − ``lazy`` when both are present,
    else the first design − the second (0 with a single design)."""
    if not designs:
        raise ValueError("compare_trace needs at least one design")
    get_arch(arch)
    for d in designs:
        get_design(d)
    res = tuple(run_design(trace, d, arch=arch, knobs=knobs, policy=policy) for d in designs)
    names = [r.design for r in res]
    base = "upstream" if "upstream" in names else names[0]
    cand = "lazy" if "lazy" in names and base != "lazy" else next((n for n in names if n != base), base)
    b, c = res[names.index(base)], res[names.index(cand)]
    return Comparison(
        trace=trace.header.name or trace.source, arch=arch, designs=res, baseline=base, candidate=cand,
        saved_final_bytes=b.final_pgtables_bytes - c.final_pgtables_bytes,
        saved_peak_bytes=b.peak_pgtables_bytes - c.peak_pgtables_bytes,
        saved_peak_nr_pagetable_bytes=b.peak_nr_pagetable_bytes - c.peak_nr_pagetable_bytes,
    )


def _counter_str(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def _errors_str(results: tuple[Any, ...] | list[Any]) -> str:
    """Steps whose result is an errno or a signal, as "step:ERRNO" (at most 6), or "none"."""
    bad = [f"{i}:{r}" for i, r in enumerate(results) if isinstance(r, str)]
    if not bad:
        return "none"
    return " ".join(bad[:6]) + (f" (+{len(bad) - 6})" if len(bad) > 6 else "")


def format_comparison(c: Comparison) -> str:
    """An aligned text table: one row per metric, one column per design."""
    rows: list[tuple[str, ...]] = [("", *(d.design for d in c.designs))]

    def row(label: str, fn: Any) -> None:
        rows.append((label, *(str(fn(d)) for d in c.designs)))

    row("deposits (arch rule applied)", lambda d: "yes" if d.deposits else "no")
    row("pgtables_bytes final", lambda d: d.final_pgtables_bytes)
    row("pgtables_bytes peak", lambda d: d.peak_pgtables_bytes)
    row("NR_PAGETABLE final (B)", lambda d: d.final_nr_pagetable_bytes)
    row("NR_PAGETABLE peak (B)", lambda d: d.peak_nr_pagetable_bytes)
    row("PTE-table allocations", lambda d: d.table_allocs)
    row("PTE-table alloc failures", lambda d: d.table_alloc_failures)
    row("thp_split_pmd", lambda d: d.splits)
    row("thp_split_pmd_failed", lambda d: d.split_failures)
    row("split sites", lambda d: _counter_str(d.split_sites))
    row("failed split sites", lambda d: _counter_str(d.failed_split_sites))
    row("alloc failures by site", lambda d: _counter_str(d.alloc_failures_by_site))
    row("data-contract violations", lambda d: len(d.violations))
    row("failed steps (errno)", lambda d: _errors_str(d.results))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = [f"trace {c.trace} on {c.arch}"]
    for r in rows:
        out.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    out.append(f"saved ({c.baseline} - {c.candidate}): pgtables_bytes final {c.saved_final_bytes} B, "
               f"peak {c.saved_peak_bytes} B; NR_PAGETABLE peak {c.saved_peak_nr_pagetable_bytes} B")
    for d in c.designs:
        for v in d.violations:
            out.append(f"{d.design}: data-contract violation: {v}")
    return "\n".join(out)
