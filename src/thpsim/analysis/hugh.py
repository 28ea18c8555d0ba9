"""Hugh Dickins' reclaim objection, swept: one anonymous THP mapped by N processes (a parent and N−1 forked
children) is reclaimed to swap, over a grid of N × PF_MEMALLOC reserves × free memory, for each design.

Per cell: whether the THP was swapped out, how many PTE tables reclaim allocated (one per ``try_to_unmap_one``
call under the lazy series, v3 17/24), at which call the walk found no table, how many reserve pages are still
consumed afterwards (tables left in the split mappings: Hugh's "k−1 reserve pages consumed"), and the net pages
freed (negative: reclaim used more memory than it freed). The setup (N processes sharing the THP) is built once per
(design, N); every cell reclaims a copy of it, with the allocator limited to the pages in use plus the free
headroom and the given reserves (``FailPolicy(budget_pages, reserve_pages)``).

Follows :func:`thpsim.analysis.review.hugh_reclaim` (the single-cell review row). Left out: the follow-up series
"mm: PMD-level swap entries for anonymous THPs" (design ``lazy-pmd-swap`` and the swap-fragmentation axis are
not modelled yet), kswapd vs direct reclaim, watermarks and the OOM killer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from thpsim.analysis.review import hugh_trace
from thpsim.model import invariants
from thpsim.model.engine import Simulator, make_kernel
from thpsim.model.page_alloc import FailPolicy

__all__ = ["DEFAULT_DESIGNS", "DEFAULT_HEADROOM", "DEFAULT_NS", "DEFAULT_RESERVES", "HughCell", "format_sweep",
           "hugh_sweep", "sweep_figure"]

DEFAULT_DESIGNS = ("upstream", "lazy", "lazy-reclaim-pool")
DEFAULT_NS = (1, 4, 16, 64, 256, 1024)          # 4096 works too (--ns): about 2 more minutes
DEFAULT_RESERVES = (0, 256, 1024, 4096)    # PF_MEMALLOC reserve pages (min_free_kbytes-sized: 1, 4, 16 MiB)
DEFAULT_HEADROOM = (0, 1024)               # free pages beyond those in use when reclaim starts


@dataclass(frozen=True)
class HughCell:
    design: str
    n: int
    reserve_pages: int
    headroom_pages: int
    swapped: bool                 # the THP left memory (thp_swpout)
    table_allocs: int             # reclaim's PTE-table allocations (rmap pre-allocation, lazy)
    failed_at: int | None         # the rmap_one call that found no table (None: none failed)
    reserve_used: int             # reserve pages still consumed after reclaim
    pages_freed: int              # net pages freed by reclaim (negative: it used more than it freed)
    invariant_violations: int


def _cell(setup: Simulator, design: str, n: int, reserve: int, headroom: int) -> HughCell:
    sim = copy.deepcopy(setup)
    k = sim.k
    in_use = k.alloc.pages_in_use
    k.alloc.set_policy(FailPolicy(budget_pages=in_use + headroom, reserve_pages=reserve), counted=0)
    before = len(k.alloc.log)
    sim.execute(hugh_trace(1).ops[-1])             # reclaim the THP (the same op for every N)
    tables = [x for x in k.alloc.log[before:] if x.site.startswith("pte_alloc_one@rmap_prealloc")]
    failed = k.vmstat.events["thp_split_pmd_failed"] > 0
    return HughCell(design, n, reserve, headroom, k.vmstat.events["thp_swpout"] > 0, len(tables),
                    len(tables) if failed else None, k.alloc.reserve_used, in_use - k.alloc.pages_in_use,
                    len(invariants.check(k)))


def hugh_sweep(designs: tuple[str, ...] = DEFAULT_DESIGNS, ns: tuple[int, ...] = DEFAULT_NS,
               reserves: tuple[int, ...] = DEFAULT_RESERVES,
               headroom: tuple[int, ...] = DEFAULT_HEADROOM) -> list[HughCell]:
    if not ns or min(ns) < 1 or min(reserves, default=0) < 0 or min(headroom, default=0) < 0:
        raise ValueError("N must be >= 1, reserves and headroom >= 0")
    cells: list[HughCell] = []
    for d in designs:
        for n in ns:
            t = hugh_trace(n)
            k0 = make_kernel(design=d, overrides=t.header.kernel)
            sim = Simulator(k0)
            for op in t.ops[:-1]:
                sim.execute(op)
            cells += [_cell(sim, d, n, r, h) for h in headroom for r in reserves]
    return cells


def format_sweep(cells: list[HughCell]) -> str:
    """One table per (design, headroom): rows N, columns reserves; each cell 'swapped/freed' or 'failed@k/used'."""
    lines: list[str] = []
    keys = sorted({(c.design, c.headroom_pages) for c in cells}, key=lambda x: (x[0] != "upstream", x))
    for d, h in keys:
        sub = [c for c in cells if c.design == d and c.headroom_pages == h]
        rs = sorted({c.reserve_pages for c in sub})
        lines += ["", f"{d}, {h} free pages when reclaim starts (cells: outcome, reserve pages left consumed, "
                      "net pages freed)",
                  f"{'N':>6} " + " ".join(f"{'reserves ' + str(r):>24}" for r in rs)]
        for n in sorted({c.n for c in sub}):
            row = {c.reserve_pages: c for c in sub if c.n == n}
            lines.append(f"{n:>6} " + " ".join(f"{_short(row[r]):>24}" for r in rs))
    return "\n".join(lines).lstrip("\n")


def _short(c: HughCell) -> str:
    what = "swapped" if c.swapped else (f"no table @{c.failed_at}" if c.failed_at else "kept")
    return f"{what} {c.reserve_used} {c.pages_freed:+d}"


def sweep_figure(cells: list[HughCell]):  # noqa: ANN201  (a matplotlib Figure)
    """Heat maps, one per design (headroom 0): net pages freed per N × reserves; hatched where not swapped."""
    from matplotlib.colors import TwoSlopeNorm

    from thpsim.analysis.plots import _new

    sub = [c for c in cells if c.headroom_pages == min(x.headroom_pages for x in cells)]
    designs = list(dict.fromkeys(c.design for c in sub))
    ns = sorted({c.n for c in sub})
    rs = sorted({c.reserve_pages for c in sub})
    fig = _new(3.2 * len(designs), 3.4)
    vals = [c.pages_freed for c in sub]
    lo, hi = min(vals + [-1]), max(vals + [1])
    norm = TwoSlopeNorm(vmin=lo, vcenter=0, vmax=hi)
    for i, d in enumerate(designs):
        ax = fig.add_subplot(1, len(designs), i + 1)
        grid = [[next(c for c in sub if c.design == d and c.n == n and c.reserve_pages == r).pages_freed
                 for r in rs] for n in ns]
        im = ax.imshow(grid, cmap="RdYlGn", norm=norm, aspect="auto", origin="lower")
        for y, n in enumerate(ns):
            for x, r in enumerate(rs):
                c = next(c for c in sub if c.design == d and c.n == n and c.reserve_pages == r)
                ax.text(x, y, "S" if c.swapped else "x", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(rs)), [str(r) for r in rs], fontsize=7)
        ax.set_yticks(range(len(ns)), [str(n) for n in ns], fontsize=7)
        ax.set_xlabel("PF_MEMALLOC reserve pages", fontsize=8)
        if i == 0:
            ax.set_ylabel("processes mapping the THP (N)", fontsize=8)
        ax.set_title(d, fontsize=9)
    fig.colorbar(im, ax=fig.axes, shrink=0.8, label="net pages freed")
    fig.suptitle("Reclaiming one shared THP (S: swapped out, x: not)", fontsize=9)
    return fig
