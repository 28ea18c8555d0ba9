"""1 TiB of simulated THP: build a model holding 524,288 PMD-mapped THPs and report time and peak RSS.

    PYTHONPATH=src python benchmarks/tib_rss.py [--size 1T] [--stride 2M] [--design upstream] [--check]

The trace arena is 512 GiB, so the ops are built directly (``trace.ops`` objects, not parsed) and run through the model
core (``engine.Simulator``) with the arena base: the mapping [base, base + 1 TiB) spans two 512 GiB PGD slots,
i.e. two PUD tables and 1024 PMD tables. Steps: mmap 1 TiB, MADV_HUGEPAGE, a write of one byte every ``stride``
(one THP fault per 2 MiB with the default stride), one full observation record (status, smaps, page map),
optionally the invariant check, then munmap. Peak RSS is ``ru_maxrss`` of this process (includes the
interpreter, ~10-20 MiB). The design target is <= 1 GiB.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

from thpsim.model import invariants
from thpsim.model.engine import Simulator, make_kernel
from thpsim.trace.format import ARENA_BASE, parse_size
from thpsim.trace.ops import Madvise, Mmap, Munmap, Write


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1T")
    ap.add_argument("--stride", default="2M")
    ap.add_argument("--design", default="upstream")
    ap.add_argument("--check", action="store_true", help="also run the invariant checker once (slow, O(THPs))")
    a = ap.parse_args(argv)
    size, stride = parse_size(a.size), parse_size(a.stride)
    k = make_kernel(design=a.design)
    sim = Simulator(k, base=ARENA_BASE)
    ops = [Mmap(line=1, start=0, length=size), Madvise(line=2, start=0, length=size, advice="hugepage"),
           Write(line=3, start=0, length=size, stride=stride)]
    print(f"model: {a.design}, {a.size} mapped at {ARENA_BASE:#x}, write stride {a.stride}; start RSS {rss_mib():.0f} MiB")
    t0 = time.perf_counter()
    for op in ops[:2]:
        sim.execute(op)
    t = time.perf_counter()
    res, _ = sim.execute(ops[2])
    t_write = time.perf_counter() - t
    mm = k.procs["main"]
    thps = k.vmstat.nr_anon_thps
    print(f"write: result {res}, {thps:,} PMD-mapped THPs in {t_write:.1f} s "
          f"({t_write / max(thps, 1) * 1e6:.1f} us per THP fault), RSS now {rss_mib():.0f} MiB")
    t = time.perf_counter()
    obs = sim.observe(2, ops[2], res, None, [])
    p = obs.procs[0]
    print(f"observation: {time.perf_counter() - t:.1f} s; VmPTE {p.vm_pte_kb:,} kB, RssAnon {p.rss_anon_kb:,} kB, "
          f"AnonHugePages {sum(v.anon_huge_kb for v in p.vmas):,} kB, runs {[(r.kind) for r in p.pagemap]}")
    pt = mm.pt
    print(f"page tables: {pt.nr_ptes:,} PTE (deposits), {pt.nr_pmds:,} PMD, {pt.nr_puds:,} PUD tables "
          f"= {pt.pgtables_bytes:,} bytes")
    if a.check:
        t = time.perf_counter()
        errs = invariants.check(k)
        print(f"invariants: {'ok' if not errs else errs[:3]} in {time.perf_counter() - t:.1f} s")
    peak = rss_mib()
    t = time.perf_counter()
    rc, _ = sim.execute(Munmap(line=4, start=0, length=size))
    print(f"munmap: result {rc} in {time.perf_counter() - t:.1f} s; VmPTE after {mm.pt.pgtables_bytes} B, "
          f"THPs {k.vmstat.nr_anon_thps}")
    del sim, k, mm
    gc.collect()
    total = time.perf_counter() - t0
    print(f"peak RSS {peak:.0f} MiB (target <= 1024 MiB: {'met' if peak <= 1024 else 'MISSED'}); "
          f"total {total:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
