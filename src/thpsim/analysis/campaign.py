"""Exhaustive fault-injection campaigns: fail every allocation point of a trace, one at a time.

A first run without injection lists the allocation points (``kernel.alloc.log``, optionally only some sites) and
the step each one happens in. Then, for each point n, the trace is replayed with exactly the n-th allocation
failing (``FailPolicy(fail_nth=n, fail_site=site)``), with invariants checked after every step and shadow memory
comparing every syscall's data contract. Per point the result names the site, the step and op that failed, what
that op returned (and what it returned without injection), the data-contract violations, and any invariant
violation (a model bug: there must be none).

Two ways to replay, same results: ``mode="replay"`` runs the whole trace again for each point (spread over a local
process pool, results in point order); ``mode="checkpoint"`` snapshots the simulator (pickle) before each step
that has allocation points during the first run and restarts each point from the snapshot of its step. Which is
faster depends on the trace: see docs/series.md ("Campaign cost").

Deterministic: the same trace, design, arch and sites give the same points and the same outcomes.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from thpsim.errors import InvariantViolation
from thpsim.model.engine import Simulator, make_kernel
from thpsim.model.knobs import Knobs
from thpsim.model.page_alloc import FailPolicy
from thpsim.trace.format import Trace


@dataclass(frozen=True)
class Point:
    index: int            # 1-based position in the campaign
    site_filter: str | None
    nth: int              # fail_nth within the filter
    alloc_no: int         # global allocation number in the uninjected run
    site: str
    step: int
    line: int
    op: str


@dataclass(frozen=True)
class PointResult:
    point: Point
    result: Any                         # the failing step's result with injection
    baseline_result: Any                # ... and without
    injected: bool                      # did the allocation really fail (the replay reached it)?
    changed_steps: tuple[int, ...] = ()  # steps whose result differs from the uninjected run
    violations: tuple[str, ...] = ()    # data-contract violations (shadow memory), each listed once
    invariant: str | None = None        # invariant violation message (must be None)
    notes: tuple[str, ...] = ()

    @property
    def outcome(self) -> str:
        p = self.point
        s = f"{p.op} -> {self.result}"
        if self.result != self.baseline_result:
            s += f" (was {self.baseline_result})"
        if self.notes:
            s += f" [{self.notes[0]}{' ...' if len(self.notes) > 1 else ''}]"
        if self.changed_steps and self.changed_steps != (p.step,):
            s += f"; later steps changed: {', '.join(str(x) for x in self.changed_steps if x != p.step)}"
        return s


@dataclass(frozen=True)
class CampaignResult:
    trace: str
    design: str
    arch: str
    sites: tuple[str, ...] | None
    points: tuple[PointResult, ...]
    baseline_results: tuple[Any, ...]
    mode: str = "replay"
    elapsed_s: float = field(default=0.0, compare=False)

    @property
    def invariant_violations(self) -> list[PointResult]:
        return [p for p in self.points if p.invariant]

    @property
    def with_violations(self) -> list[PointResult]:
        return [p for p in self.points if p.violations]


def _policy(p: Point) -> FailPolicy:
    return FailPolicy(fail_nth=p.nth, fail_site=p.site_filter)


def _replay(sim: Simulator, trace: Trace, first_step: int, baseline: tuple[Any, ...], point: Point,
            results_before: list[Any]) -> PointResult:
    results = list(results_before)
    violations: list[str] = []
    notes: list[str] = []
    invariant: str | None = None
    for i in range(first_step, len(trace.ops)):
        op = trace.ops[i]
        try:
            obs = sim.step(i, op)
        except InvariantViolation as e:
            invariant = str(e)
            break
        results.append(obs.result)
        violations += [t for t in map(str, obs.violations) if t not in violations]   # first step that shows it
        if i == point.step:
            notes += list(obs.notes)
    injected = sim.k.alloc.injected > 0
    res = results[point.step] if point.step < len(results) else "INVARIANT"
    changed = tuple(i for i, (a, b) in enumerate(zip(results, baseline, strict=False)) if a != b)
    return PointResult(point=point, result=res, baseline_result=baseline[point.step], injected=injected,
                       changed_steps=changed, violations=tuple(dict.fromkeys(violations)), invariant=invariant,
                       notes=tuple(dict.fromkeys(notes)))


def _run_point_replay(args: tuple[Trace, str, str, Knobs | None, tuple[Any, ...], Point]) -> PointResult:
    trace, design, arch, knobs, baseline, point = args
    k = make_kernel(design=design, arch=arch, knobs=knobs, policy=_policy(point), overrides=trace.header.kernel)
    sim = Simulator(k, check=True, shadow=True)
    return _replay(sim, trace, 0, baseline, point, [])


def _run_point_checkpoint(args: tuple[Trace, bytes, tuple[Any, ...], Point]) -> PointResult:
    trace, snap, baseline, point = args
    sim: Simulator = pickle.loads(snap)
    alloc = sim.k.alloc
    # fail_nth counts the allocations matching the filter (all of them without one) up to the snapshot
    f = point.site_filter
    alloc.set_policy(_policy(point), counted=sum(1 for r in alloc.log if f is None or r.site.startswith(f)))
    return _replay(sim, trace, point.step, baseline, point, list(baseline[:point.step]))


def _matches(site: str, sites: tuple[str, ...] | None) -> str | None | bool:
    if sites is None:
        return None
    for s in sites:
        if site.startswith(s):
            return s
    return False


def enumerate_points(trace: Trace, *, design: str = "lazy", arch: str = "x86_64", sites: Iterable[str] | None = None,
                     knobs: Knobs | None = None, snapshots: bool = False
                     ) -> tuple[list[Point], tuple[Any, ...], dict[int, bytes]]:
    """The uninjected run: allocation points, every step's result, and (optionally) a snapshot per step."""
    site_t = tuple(sites) if sites is not None else None
    k = make_kernel(design=design, arch=arch, knobs=knobs, overrides=trace.header.kernel)
    sim = Simulator(k, check=True, shadow=True)
    results: list[Any] = []
    points: list[Point] = []
    counts: dict[str | None, int] = {}
    snaps: dict[int, bytes] = {}
    for i, op in enumerate(trace.ops):
        before = len(k.alloc.log)
        snap = pickle.dumps(sim) if snapshots else b""
        obs = sim.step(i, op)
        results.append(obs.result)
        new = k.alloc.log[before:]
        if snapshots and new:
            snaps[i] = snap
        for rec in new:
            m = _matches(rec.site, site_t)
            if m is False:
                continue
            key = m if isinstance(m, str) else None
            counts[key] = counts.get(key, 0) + 1
            points.append(Point(index=len(points) + 1, site_filter=key, nth=counts[key], alloc_no=rec.n,
                                site=rec.site, step=i, line=op.line, op=op.describe()))
    return points, tuple(results), snaps


def exhaustive(trace: Trace, *, design: str = "lazy", arch: str = "x86_64", sites: Iterable[str] | None = None,
               knobs: Knobs | None = None, workers: int | None = None, mode: str = "replay") -> CampaignResult:
    """Fail each allocation point of ``trace`` once (all sites, or those starting with one of ``sites``)."""
    if mode not in ("replay", "checkpoint"):
        raise ValueError("mode must be 'replay' or 'checkpoint'")
    t0 = time.perf_counter()
    site_t = tuple(sites) if sites is not None else None
    points, baseline, snaps = enumerate_points(trace, design=design, arch=arch, sites=site_t, knobs=knobs,
                                               snapshots=mode == "checkpoint")
    if mode == "replay":
        jobs: list[Any] = [(trace, design, arch, knobs, baseline, p) for p in points]
        fn: Any = _run_point_replay
    else:
        jobs = [(trace, snaps[p.step], baseline, p) for p in points]
        fn = _run_point_checkpoint
    n = workers if workers is not None else min(os.cpu_count() or 1, 8)
    if n <= 1 or len(jobs) < 4:
        out = [fn(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=n) as ex:
            out = list(ex.map(fn, jobs, chunksize=max(1, len(jobs) // (4 * n))))
    return CampaignResult(trace=trace.header.name or trace.source, design=design, arch=arch, sites=site_t,
                          points=tuple(out), baseline_results=baseline, mode=mode,
                          elapsed_s=time.perf_counter() - t0)


def format_campaign(r: CampaignResult, *, timing: bool = False) -> str:
    head = (f"campaign {r.trace}: design {r.design}, arch {r.arch}, sites "
            f"{', '.join(r.sites) if r.sites else 'all'}: {len(r.points)} allocation points")
    lines = [head]
    rows = [("#", "site", "step", "outcome", "contract")]
    for pr in r.points:
        p = pr.point
        contract = "; ".join(pr.violations) or "-"
        if pr.invariant:
            contract = f"INVARIANT VIOLATION: {pr.invariant}"
        outcome = pr.outcome if pr.injected else f"{p.op} -> not reached"
        rows.append((str(p.index), p.site, str(p.step), outcome, contract))
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        lines.append("  ".join(v.ljust(x) for v, x in zip(row[:4], w, strict=True)) + "  " + row[4])
    nv = len(r.with_violations)
    ni = len(r.invariant_violations)
    lines.append(f"{len(r.points)} points: {nv} with a data-contract violation, {ni} invariant violations")
    if timing:
        lines.append(f"{r.mode}: {r.elapsed_s:.2f} s")
    return "\n".join(lines)
