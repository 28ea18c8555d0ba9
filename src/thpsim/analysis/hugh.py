"""Hugh Dickins' reclaim objection, swept: one anonymous THP mapped by N processes (a parent and N−1 forked
children) is reclaimed to swap, over a grid of N × PF_MEMALLOC reserves × free memory, for each design.

Per cell: whether the THP was swapped out, how many PTE tables reclaim allocated (one per ``try_to_unmap_one``
call under the lazy series, v3 17/24), at which call the walk found no table, how many reserve pages are still
consumed afterwards (tables left in the split mappings: Hugh's "k−1 reserve pages consumed"), and the net pages
freed (negative: reclaim used more memory than it freed). The setup (N processes sharing the THP) is built once per
(design, N); every cell reclaims a copy of it, with the allocator limited to the pages in use plus the free
headroom and the given reserves (``FailPolicy(budget_pages, reserve_pages)``).

The swap device has ``SWAP_CLUSTERS`` 512-slot clusters, a share of which (``fragmentation``) start with one slot
in use: a THP needs a whole free cluster (``folio_alloc_swap``), else reclaim splits it first
(``thp_swpout_fallback``) — which under ``lazy-pmd-swap`` (the follow-up "mm: PMD-level swap entries for
anonymous THPs", docs/pmd-swap.md) brings the table per mapping back. Follows
:func:`thpsim.analysis.review.hugh_reclaim` (the single-cell review row). Left out: kswapd vs direct reclaim,
watermarks and the OOM killer.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from thpsim.analysis.review import hugh_trace
from thpsim.model import invariants
from thpsim.model.engine import Simulator, make_kernel
from thpsim.model.kernel import Kernel
from thpsim.model.page_alloc import FailPolicy

__all__ = ["DEFAULT_DESIGNS", "DEFAULT_FRAGMENTATION", "DEFAULT_HEADROOM", "DEFAULT_NS", "DEFAULT_RESERVES",
           "HughCell", "format_sweep",
           "hugh_sweep", "sweep_figure"]

DEFAULT_DESIGNS = ("upstream", "lazy", "lazy-reclaim-pool", "lazy-pmd-swap")
DEFAULT_NS = (1, 4, 16, 64, 256, 1024)          # 4096 works too (--ns): a few minutes more
DEFAULT_RESERVES = (0, 256, 1024)          # PF_MEMALLOC reserve pages (min_free_kbytes-sized: 1, 4 MiB)
DEFAULT_HEADROOM = (0,)                    # free pages beyond those in use when reclaim starts
DEFAULT_FRAGMENTATION = (0.0, 1.0)         # the share of the swap device's clusters with a slot in use
SWAP_CLUSTERS = 64                         # the swap device of the sweep: 64 clusters (128 MiB on x86-64)


@dataclass(frozen=True)
class HughCell:
    design: str
    n: int
    reserve_pages: int
    headroom_pages: int
    fragmentation: float          # share of swap clusters that cannot take a THP whole
    swapped: bool                 # the THP left memory (thp_swpout)
    table_allocs: int             # reclaim's PTE-table allocations (rmap pre-allocation, lazy)
    failed_at: int | None         # the rmap_one call that found no table (None: none failed)
    reserve_used: int             # reserve pages still consumed after reclaim
    pages_freed: int              # net pages freed by reclaim (negative: it used more than it freed)
    invariant_violations: int


def _cell(setup: Simulator, design: str, n: int, reserve: int, headroom: int, frag: float) -> HughCell:
    sim = copy.deepcopy(setup)
    k = sim.k
    in_use = k.alloc.pages_in_use
    k.alloc.set_policy(FailPolicy(budget_pages=in_use + headroom, reserve_pages=reserve), counted=0)
    before = len(k.alloc.log)
    sim.execute(hugh_trace(1).ops[-1])             # reclaim the THP (the same op for every N)
    tables = [x for x in k.alloc.log[before:] if x.site.startswith("pte_alloc_one@rmap_prealloc")]
    failed = k.vmstat.events["thp_split_pmd_failed"] > 0
    return HughCell(design, n, reserve, headroom, frag, k.vmstat.events["thp_swpout"] > 0
                    or k.vmstat.events["thp_swpout_fallback"] > 0 and _all_swapped(k), len(tables),
                    len(tables) if failed else None, k.alloc.reserve_used, in_use - k.alloc.pages_in_use,
                    len(invariants.check(k)))


def _all_swapped(k: Kernel) -> bool:
    """After a fallback (split + per-page swap): did every page leave memory (no anonymous page left)?"""
    return all(mm.anon_pages == 0 for mm in k.procs.values() if mm.alive)


def _group(args: tuple[str, float, int, tuple[int, ...], tuple[int, ...]]) -> list[HughCell]:
    """One (design, fragmentation, N): the setup once, then every (headroom, reserves) cell on a copy."""
    d, frag, n, reserves, headroom = args
    t = hugh_trace(n)
    swap = (("swap_clusters", SWAP_CLUSTERS), ("swap_fragmented", round(frag * SWAP_CLUSTERS)))
    k0 = make_kernel(design=d, overrides=(*t.header.kernel, *swap))
    sim = Simulator(k0)
    for op in t.ops[:-1]:
        sim.execute(op)
    return [_cell(sim, d, n, r, h, frag) for h in headroom for r in reserves]


def hugh_sweep(designs: tuple[str, ...] = DEFAULT_DESIGNS, ns: tuple[int, ...] = DEFAULT_NS,
               reserves: tuple[int, ...] = DEFAULT_RESERVES, headroom: tuple[int, ...] = DEFAULT_HEADROOM,
               fragmentation: tuple[float, ...] = DEFAULT_FRAGMENTATION, *,
               workers: int | None = None) -> list[HughCell]:
    """Every cell of the grid, in (design, fragmentation, N, headroom, reserves) order whatever ``workers``
    (process pool size; default: the CPUs, 1 runs here)."""
    if not ns or min(ns) < 1 or min(reserves, default=0) < 0 or min(headroom, default=0) < 0:
        raise ValueError("N must be >= 1, reserves and headroom >= 0")
    if any(not 0.0 <= x <= 1.0 for x in fragmentation):
        raise ValueError("fragmentation is a share of the swap clusters: 0.0 .. 1.0")
    jobs = [(d, frag, n, reserves, headroom) for d in designs for frag in fragmentation for n in ns]
    # the big N first, so the pool's workers finish together
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i][2])
    nw = min(workers or os.cpu_count() or 1, len(jobs))
    if nw <= 1:
        done = {i: _group(jobs[i]) for i in order}
    else:
        with ProcessPoolExecutor(max_workers=nw) as ex:
            done = dict(zip(order, ex.map(_group, [jobs[i] for i in order]), strict=True))
    return [c for i in range(len(jobs)) for c in done[i]]


def format_sweep(cells: list[HughCell]) -> str:
    """One table per (design, fragmentation, headroom): rows N, columns reserves; each cell the outcome, the
    reserve pages left consumed and the net pages freed."""
    lines: list[str] = []
    order = {d: i for i, d in enumerate(dict.fromkeys(c.design for c in cells))}
    keys = sorted({(c.design, c.fragmentation, c.headroom_pages) for c in cells}, key=lambda x: (order[x[0]], x))
    for d, fr, h in keys:
        sub = [c for c in cells if (c.design, c.fragmentation, c.headroom_pages) == (d, fr, h)]
        rs = sorted({c.reserve_pages for c in sub})
        lines += ["", f"{d}, swap {fr:.0%} fragmented, {h} free pages when reclaim starts (cells: outcome, "
                      "reserve pages left consumed, net pages freed)",
                  f"{'N':>6} " + " ".join(f"{'reserves ' + str(r):>24}" for r in rs)]
        for n in sorted({c.n for c in sub}):
            row = {c.reserve_pages: c for c in sub if c.n == n}
            lines.append(f"{n:>6} " + " ".join(f"{_short(row[r]):>24}" for r in rs))
    return "\n".join(lines).lstrip("\n")


def _short(c: HughCell) -> str:
    what = "swapped" if c.swapped else (f"no table @{c.failed_at}" if c.failed_at else "kept")
    return f"{what} {c.reserve_used} {c.pages_freed:+d}"


def sweep_figure(cells: list[HughCell]):  # noqa: ANN201  (a matplotlib Figure)
    """Heat maps, one per design and fragmentation (the least headroom): net pages freed per N × reserves."""
    from matplotlib.colors import TwoSlopeNorm

    from thpsim.analysis.plots import _new

    sub = [c for c in cells if c.headroom_pages == min(x.headroom_pages for x in cells)]
    panels = list(dict.fromkeys((c.design, c.fragmentation) for c in sub))
    ns = sorted({c.n for c in sub})
    rs = sorted({c.reserve_pages for c in sub})
    fig = _new(2.8 * len(panels), 3.4)
    vals = [c.pages_freed for c in sub]
    lo, hi = min(vals + [-1]), max(vals + [1])
    norm = TwoSlopeNorm(vmin=lo, vcenter=0, vmax=hi)
    for i, (d, fr) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        cell = {(c.n, c.reserve_pages): c for c in sub if (c.design, c.fragmentation) == (d, fr)}
        grid = [[cell[(n, r)].pages_freed for r in rs] for n in ns]
        im = ax.imshow(grid, cmap="RdYlGn", norm=norm, aspect="auto", origin="lower")
        for y, n in enumerate(ns):
            for x, r in enumerate(rs):
                ax.text(x, y, "S" if cell[(n, r)].swapped else "x", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(rs)), [str(r) for r in rs], fontsize=7)
        ax.set_yticks(range(len(ns)), [str(n) for n in ns], fontsize=7)
        ax.set_xlabel("PF_MEMALLOC reserve pages", fontsize=8)
        if i == 0:
            ax.set_ylabel("processes mapping the THP (N)", fontsize=8)
        ax.set_title(f"{d}\nswap {fr:.0%} fragmented", fontsize=8)
    fig.colorbar(im, ax=fig.axes, shrink=0.8, label="net pages freed")
    fig.suptitle("Reclaiming one shared THP (S: swapped out, x: not)", fontsize=9)
    return fig
