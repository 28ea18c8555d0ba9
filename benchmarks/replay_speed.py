"""Replay speed of the model vs the live kernel, per op class, on a THP-heavy trace.

    PYTHONPATH=src python benchmarks/replay_speed.py [--regions 8] [--size 32M] [--rounds 3] [--repeat 3] [--no-live]

The trace (built by :func:`build_trace`) maps ``regions`` areas of ``size`` with MADV_HUGEPAGE and then, per
round, faults them in with THP writes, reads them, splits some PMDs (partial mprotect, partial munmap, partial
MADV_DONTNEED), forks a child that COW-writes and exits, moves a region with mremap, MADV_COLLAPSEs, MADV_FREEs
and MADV_PAGEOUTs, and finally unmaps everything.

Printed, per op class (ops/s and the ratio model/live):

* ``model step``: ``Simulator.step`` — the op plus the full observation record (status, smaps per VMA, page map,
  global counters), without invariant or shadow checks (best of ``--repeat`` runs);
* ``model core``: only the op itself (``Simulator._do``), no observation;
* ``live step``: the live runner's whole step — the op in the child *and* the /proc observation from the parent
  (``_Session.run_op``);
* ``live op``: only the child round trip (``_Session.call``): JSON over a pipe, the syscall or the memory
  accesses (a Python loop of one-byte ``memset``s in the child), and the reply. This is the closest the runner
  gets to "kernel time"; it over-estimates the kernel's share by the pipe and interpreter overhead (~tens of µs
  per op).

Fair comparisons: ``model step`` vs ``live step`` (same observation record) and ``model core`` vs ``live op``.
Live timing is skipped with a printed reason when THP (or root) is unavailable.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

from thpsim.model.engine import Simulator, make_kernel
from thpsim.trace.format import MiB, Trace, parse, parse_size


def op_class(op) -> str:  # type: ignore[no-untyped-def]
    if op.kind == "madvise":
        return f"madvise:{op.advice}"
    return op.kind


def build_trace(regions: int = 8, size: int = 32 * MiB, rounds: int = 3) -> Trace:
    L: list[dict] = [{"thpsim": 1, "name": "replay-speed", "description": "THP-heavy benchmark trace"}]
    ids = [f"r{i}" for i in range(regions)]
    half = size // 2
    for r in range(rounds):
        for i, rid in enumerate(ids):
            L.append({"op": "mmap", "id": rid, "len": size})
            L.append({"op": "madvise", "id": rid, "advice": "hugepage"})
            L.append({"op": "write", "id": rid, "stride": "4K", "byte": 1 + (r + i) % 200})
            L.append({"op": "read", "id": rid, "stride": "4K"})
        for i, rid in enumerate(ids):
            kind = (i + r) % 4
            if kind == 0:
                L.append({"op": "mprotect", "id": rid, "off": "4K", "len": "4K", "prot": "r"})
            elif kind == 1:
                L.append({"op": "munmap", "id": rid, "off": half + 4096, "len": "8K"})
            elif kind == 2:
                L.append({"op": "madvise", "id": rid, "off": "6M+8K", "len": "1M", "advice": "dontneed"})
            else:
                L.append({"op": "madvise", "id": rid, "off": "2M", "len": "2M", "advice": "dontneed"})
        L.append({"op": "fork", "child": f"c{r}"})
        L.append({"op": "write", "proc": f"c{r}", "id": ids[0], "off": "8M", "len": "4M", "stride": "64K"})
        L.append({"op": "read", "proc": f"c{r}", "id": ids[1], "stride": "2M"})
        L.append({"op": "exit", "proc": f"c{r}"})
        L.append({"op": "madvise", "id": ids[2], "off": "2M", "len": "2M", "advice": "dontneed"})
        L.append({"op": "madvise", "id": ids[2], "off": "2M", "len": "2M", "advice": "populate_write"})
        L.append({"op": "madvise", "id": ids[3], "off": "8M", "len": "4M", "advice": "collapse"})
        L.append({"op": "madvise", "id": ids[4], "off": "12M", "len": "4M", "advice": "free"})
        L.append({"op": "madvise", "id": ids[4], "off": "12M", "len": "4M", "advice": "pageout"})
        L.append({"op": "madvise", "id": ids[5], "advice": "cold"})
        L.append({"op": "mlock", "id": ids[6], "off": "16M", "len": "4M"})
        L.append({"op": "munlock", "id": ids[6], "off": "16M", "len": "4M"})
        L.append({"op": "mremap", "id": ids[7], "len": "8M", "new_len": "16M", "flags": ["maymove"]})
        for rid in ids:
            L.append({"op": "munmap", "id": rid})
    L.append({"op": "exit"})
    return parse("\n".join(json.dumps(x) for x in L), source="replay-speed")


def time_model(trace: Trace, repeat: int) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    best_step: dict[str, float] | None = None
    best_core: dict[str, float] | None = None
    counts: dict[str, int] = defaultdict(int)
    for _ in range(repeat):
        step_t: dict[str, float] = defaultdict(float)
        core_t: dict[str, float] = defaultdict(float)
        counts = defaultdict(int)
        # core: ops only
        k = make_kernel(knobs=None, overrides=trace.header.kernel)
        sim = Simulator(k)
        for op in trace.ops:
            t = time.perf_counter()
            sim._do(op)
            core_t[op_class(op)] += time.perf_counter() - t
            counts[op_class(op)] += 1
        # step: op + observation record
        k = make_kernel(knobs=None, overrides=trace.header.kernel)
        sim = Simulator(k)
        for i, op in enumerate(trace.ops):
            t = time.perf_counter()
            sim.step(i, op)
            step_t[op_class(op)] += time.perf_counter() - t
        if best_step is None or sum(step_t.values()) < sum(best_step.values()):
            best_step = dict(step_t)
        if best_core is None or sum(core_t.values()) < sum(best_core.values()):
            best_core = dict(core_t)
    assert best_step is not None and best_core is not None
    return best_step, best_core, dict(counts)


def time_live(trace: Trace) -> tuple[dict[str, float], dict[str, float]] | str:
    from thpsim.live import runner
    from thpsim.live.env import skip_reason

    why = skip_reason()
    if why is not None:
        return why
    step_t: dict[str, float] = defaultdict(float)
    op_t: dict[str, float] = defaultdict(float)
    cur: list[str] = [""]
    orig_run_op, orig_call = runner._Session.run_op, runner._Session.call

    def run_op(self, idx, op):  # type: ignore[no-untyped-def]
        cur[0] = op_class(op)
        t = time.perf_counter()
        try:
            return orig_run_op(self, idx, op)
        finally:
            step_t[cur[0]] += time.perf_counter() - t

    def call(self, path, msg):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return orig_call(self, path, msg)
        finally:
            if cur[0] and msg.get("cmd") == "op":
                op_t[cur[0]] += time.perf_counter() - t

    runner._Session.run_op, runner._Session.call = run_op, call  # type: ignore[method-assign]
    try:
        runner.run_live(trace, timeout=1800)
    finally:
        runner._Session.run_op, runner._Session.call = orig_run_op, orig_call  # type: ignore[method-assign]
    return dict(step_t), dict(op_t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", type=int, default=8)
    ap.add_argument("--size", default="32M", help="size of each region (>= 24M)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3, help="model runs (best is reported)")
    ap.add_argument("--no-live", action="store_true")
    a = ap.parse_args(argv)
    size = parse_size(a.size)
    if size < 24 * MiB or a.regions < 8:
        ap.error("--size must be at least 24M and --regions at least 8")
    trace = build_trace(a.regions, size, a.rounds)
    step, core, counts = time_model(trace, a.repeat)
    live = "skipped (--no-live)" if a.no_live else time_live(trace)
    print(f"trace: {len(trace.ops)} ops, {a.regions} regions x {a.size} x {a.rounds} rounds (THP-heavy)")
    if isinstance(live, str):
        print(f"live: {live}")
        lstep: dict[str, float] = {}
        lop: dict[str, float] = {}
    else:
        lstep, lop = live
    hdr = (f"{'op class':<22}{'n':>5}{'model step/s':>14}{'model core/s':>14}{'live step/s':>13}{'live op/s':>11}"
           f"{'step ratio':>12}{'core/op ratio':>15}")
    print(hdr)
    print("-" * len(hdr))

    def rate(n: int, t: float) -> str:
        return f"{n / t:,.0f}" if t > 0 else "-"

    def ratio(live_t: float | None, model_t: float) -> str:
        return f"{live_t / model_t:,.1f}x" if live_t and model_t > 0 else "-"

    for c in sorted(counts, key=lambda c: -step[c]):
        n = counts[c]
        print(f"{c:<22}{n:>5}{rate(n, step[c]):>14}{rate(n, core[c]):>14}{rate(n, lstep.get(c, 0)):>13}"
              f"{rate(n, lop.get(c, 0)):>11}{ratio(lstep.get(c), step[c]):>12}{ratio(lop.get(c), core[c]):>15}")
    n = sum(counts.values())
    ts, tc = sum(step.values()), sum(core.values())
    tls, tlo = sum(lstep.values()), sum(lop.values())
    print("-" * len(hdr))
    print(f"{'overall':<22}{n:>5}{rate(n, ts):>14}{rate(n, tc):>14}{rate(n, tls):>13}{rate(n, tlo):>11}"
          f"{ratio(tls, ts):>12}{ratio(tlo, tc):>15}")
    print(f"totals: model step {ts:.3f} s, model core {tc:.3f} s"
          + ("" if isinstance(live, str) else f", live step {tls:.3f} s, live op {tlo:.3f} s"))
    if not isinstance(live, str):
        slow = [c for c in counts if lstep.get(c) and step[c] > lstep[c]]
        print("op classes where the model step is slower than the live step: " + (", ".join(slow) or "none"))
        slow = [c for c in counts if lop.get(c) and core[c] > lop[c]]
        print("op classes where the model core is slower than the live op: " + (", ".join(slow) or "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
