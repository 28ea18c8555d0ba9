"""Step-by-step comparison of two observation streams (model vs live kernel, or two designs).

Per-process fields (status values, smaps per VMA, page-map runs), the syscall result and the read digest are
compared exactly. Global counters (vmstat thp_*, meminfo) can be moved by other processes on a live host, so they
are compared separately: thp_* deltas must match too (on a quiet host), meminfo deltas (which include the
interpreter's own tables after a fork) and ``thp_zero_page_alloc`` (it depends on whether the system-wide huge
zero folio already existed) are reported but marked *noisy* and do not make a run differ. Steps the live side did not run (model-only
ops) end the comparison of that trace: later states are not comparable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from thpsim.engines import EngineBatch, LiveEngine, ModelEngine
from thpsim.live.procfs import vmstat_drift
from thpsim.observation import NOISY_ALWAYS, ProcObs, StepObs
from thpsim.trace.format import MODEL_ONLY_OPS

PROC_FIELDS = ("vm_pte_kb", "vm_rss_kb", "rss_anon_kb", "vm_lck_kb", "vm_swap_kb")
VMA_FIELDS = ("perms", "rss_kb", "anonymous_kb", "anon_huge_kb", "lazyfree_kb", "locked_kb", "swap_kb")


@dataclass(frozen=True)
class Mismatch:
    step: int
    line: int
    op: str
    proc: str
    field: str
    left: Any
    right: Any
    noisy: bool = False

    def describe(self, left: str = "model", right: str = "live") -> str:
        tag = " (noisy)" if self.noisy else ""
        who = f" {self.proc}" if self.proc else ""
        return f"step {self.step} (line {self.line}, {self.op}){who}: {self.field}: {left}={self.left!r} " \
               f"{right}={self.right!r}{tag}"


@dataclass
class DiffResult:
    mismatches: list[Mismatch] = field(default_factory=list)
    compared_steps: int = 0
    stopped_at: int | None = None      # first model-only step (not comparable afterwards)
    note: str = ""
    background_collapse: int | None = None   # first step where khugepaged collapsed something on its own
    own_counters: frozenset[str] = frozenset()   # vmstat counters the live side counted per cgroup (not host-wide)

    @property
    def identical(self) -> bool:
        return not any(not m.noisy for m in self.mismatches)

    @property
    def exact(self) -> list[Mismatch]:
        return [m for m in self.mismatches if not m.noisy]

    @property
    def noisy(self) -> list[Mismatch]:
        return [m for m in self.mismatches if m.noisy]


def _runs(p: ProcObs) -> list[tuple[int, int, str]]:
    return [(r.start, r.end, r.kind) for r in p.pagemap]


def diff_proc(step: StepObs, a: ProcObs, b: ProcObs) -> list[Mismatch]:
    out: list[Mismatch] = []

    def mm(fld: str, x: Any, y: Any) -> None:
        out.append(Mismatch(step.step, step.line, step.op, a.proc, fld, x, y))

    for f in PROC_FIELDS:
        if getattr(a, f) != getattr(b, f):
            mm(f, getattr(a, f), getattr(b, f))
    av = {(v.start, v.end): v for v in a.vmas}
    bv = {(v.start, v.end): v for v in b.vmas}
    if list(av) != list(bv):
        mm("vmas", [f"{s:#x}-{e:#x}" for s, e in av], [f"{s:#x}-{e:#x}" for s, e in bv])
    for key in av.keys() & bv.keys():
        for f in VMA_FIELDS:
            x, y = getattr(av[key], f), getattr(bv[key], f)
            if x != y:
                mm(f"smaps[{key[0]:#x}-{key[1]:#x}].{f}", x, y)
    if _runs(a) != _runs(b):
        mm("pagemap", _fmt_runs(a), _fmt_runs(b))
    return out


def _fmt_runs(p: ProcObs) -> list[str]:
    return [f"{r.start:#x}-{r.end:#x}:{r.kind}" for r in p.pagemap]


def diff_steps(left: list[StepObs], right: list[StepObs], *, model_only_ops: frozenset[str] = frozenset(),
               compare_globals: bool = True,
               skip_counters: frozenset[str] = frozenset({"thp_split_pmd_failed"})) -> DiffResult:
    """Compare two observation streams step by step. ``skip_counters`` are vmstat counters one side cannot
    have: by default ``thp_split_pmd_failed``, which only a kernel with the lazy-PTE series counts; pass an
    empty set for such a kernel so that failed splits are compared too."""
    res = DiffResult(own_counters=frozenset(right[0].own_counters) if right else frozenset())
    prev_a = prev_b = 0           # thp_collapse_alloc after the previous step, model and live
    for a, b in zip(left, right, strict=False):
        if a.op in model_only_ops and b.result is None:
            # (a lab guest runs the khugepaged op for real, with a result: then its step is compared)
            res.stopped_at = a.step
            res.note = f"step {a.step} ({a.op}) is model-only; later steps are not compared"
            break
        res.compared_steps += 1
        ca, cb = a.counter("thp_collapse_alloc"), b.counter("thp_collapse_alloc")
        rose_alone = cb - prev_b > ca - prev_a and a.op != "khugepaged"   # (a live khugepaged op collapses itself)
        prev_a, prev_b = ca, cb
        if res.background_collapse is None and rose_alone:
            # the kernel's khugepaged thread scans MADV_HUGEPAGE regions every scan_sleep_millisecs and may
            # collapse a PTE table between two steps; the model runs khugepaged only when the trace says so
            res.background_collapse = a.step
            res.note = (f"step {a.step}: the live kernel's khugepaged collapsed a range in the background "
                        "(thp_collapse_alloc rose without a collapse in the trace); rerun to compare")
        if a.result != b.result:
            res.mismatches.append(Mismatch(a.step, a.line, a.op, a.proc, "result", a.result, b.result))
        if a.data != b.data:
            res.mismatches.append(Mismatch(a.step, a.line, a.op, a.proc, "data", a.data, b.data))
        if a.injected != b.injected:   # which allocations an op's inject failed (kernel callers, in order)
            res.mismatches.append(Mismatch(a.step, a.line, a.op, a.proc, "injected", list(a.injected),
                                           list(b.injected)))
        ap = {p.proc: p for p in a.procs}
        bp = {p.proc: p for p in b.procs}
        if list(ap) != list(bp):
            res.mismatches.append(Mismatch(a.step, a.line, a.op, "", "processes", list(ap), list(bp)))
        for name in ap.keys() & bp.keys():
            res.mismatches += diff_proc(a, ap[name], bp[name])
        if compare_globals:
            for kind, xs, ys in (("vmstat", dict(a.vmstat), dict(b.vmstat)), ("meminfo", dict(a.meminfo),
                                                                               dict(b.meminfo))):
                for key in sorted(xs.keys() | ys.keys()):
                    if key in skip_counters:
                        continue
                    if xs.get(key, 0) != ys.get(key, 0):
                        noisy = kind == "meminfo" or key in NOISY_ALWAYS
                        res.mismatches.append(Mismatch(a.step, a.line, a.op, "", f"{kind}.{key}", xs.get(key, 0),
                                                       ys.get(key, 0), noisy=noisy))
    if len(left) != len(right) and res.stopped_at is None:
        res.mismatches.append(Mismatch(min(len(left), len(right)), 0, "", "", "steps", len(left), len(right)))
    return res


@dataclass(frozen=True)
class TraceDiff:
    """One trace's model-vs-live comparison, after the one retry policy (:func:`diff_live`)."""

    path: str
    diff: DiffResult
    live_error: str | None
    retried: bool
    model_steps: tuple[StepObs, ...] = ()
    live_steps: tuple[StepObs, ...] = ()
    # host-wide counters that still differed after the retries and that moved on their own while thpsim ran
    # nothing (vmstat_drift): other processes' events, flagged, never counted as the trace's
    host_noise: tuple[tuple[str, int], ...] = ()

    @property
    def identical(self) -> bool:
        return self.diff.identical and not self.live_error

    @property
    def identical_but_host_noise(self) -> bool:
        """Everything the trace's own processes show is identical; only host-wide counters that other
        processes were moving differ (a busy host: see ``host_noise``)."""
        return not self.identical and bool(self.host_noise) and not self.live_error and all(
            m.field.removeprefix("vmstat.") in dict(self.host_noise) for m in self.diff.exact)

    @property
    def note(self) -> str:
        noise = ", ".join(f"{k} +{v}" for k, v in self.host_noise)
        flag = (f"host-wide counters moved by other processes while thpsim was idle for {NOISE_PROBE_SECONDS:g} s "
                f"({noise}): their differences are not the trace's") if noise else ""
        return "; ".join(x for x in (self.diff.note, self.live_error or "", flag) if x)


def diff_live(traces: dict[str, Any], *, design: str = "upstream", kernel: str | None = None, guest: Any = None,
              compare_globals: bool = True, stderr: Any = None) -> tuple[Any, list[TraceDiff]]:
    """Run ``traces`` (path -> Trace) live (here, or inside the lab guest ``kernel``) and on the model
    configured like that kernel with ``design``; compare step by step. Both engines run through
    :mod:`thpsim.engines`.

    The retry policy lives here only: a trace whose run something outside it disturbed (:func:`_disturbed`)
    is observed again, up to HOST_WIDE_RETRIES times. Returns (the kernel's LiveEnv, diffs).
    """
    live = LiveEngine(kernel, guest, stderr)
    batch = live.run(traces)
    env = batch.env
    assert env is not None
    # counters this kernel does not have cannot be compared (thp_split_pmd_failed exists only with the series)
    skip = frozenset(env.vmstat_missing) | (frozenset() if env.has_split_pmd_failed
                                            else frozenset({"thp_split_pmd_failed"}))
    models = ModelEngine.like(env, design).run(traces)

    def compare(lb: EngineBatch, paths: list[str], retried: bool) -> None:
        for p in paths:
            m, lr = models.get(p), lb.get(p)
            d = diff_steps(list(m.steps), list(lr.steps), model_only_ops=MODEL_ONLY_OPS,
                           compare_globals=compare_globals, skip_counters=skip)
            out[p] = TraceDiff(p, d, lr.error, retried, m.steps, lr.steps)

    out: dict[str, TraceDiff] = {}
    compare(batch, list(traces), False)
    for _ in range(HOST_WIDE_RETRIES):
        again = [p for p, td in out.items() if _disturbed(td.diff)]
        if not again:
            break
        compare(live.run({p: traces[p] for p in again}), again, True)
    still = [p for p, td in out.items() if _disturbed(td.diff) and td.diff.background_collapse is None]
    if still and kernel in (None, "host"):   # a lab guest runs nothing else; the host may
        fields = {f for p in still for f in _host_wide(out[p].diff)}
        drift = vmstat_drift(fields, NOISE_PROBE_SECONDS)
        for p in still:
            mine = set(_host_wide(out[p].diff))
            noise = tuple(sorted((k, v) for k, v in drift.items() if k in mine))
            out[p] = dataclasses.replace(out[p], host_noise=noise)
    return env, [out[p] for p in traces]


HOST_WIDE_RETRIES = 2
NOISE_PROBE_SECONDS = 2.0


def _host_wide(d: DiffResult) -> list[str]:
    """The differing vmstat counters that other processes can move: not the ones the live run counted for the
    trace's own processes (its memory cgroup, ``StepObs.own_counters``)."""
    return [m.field.removeprefix("vmstat.") for m in d.exact
            if m.field.startswith("vmstat.") and m.field.removeprefix("vmstat.") not in d.own_counters]


def _disturbed(d: DiffResult) -> bool:
    """Did something outside the trace move what the run observed? The kernel's own khugepaged collapsed a
    range, or the only differences are host-wide thp_* counters (other processes fault THPs too: a busy host,
    or a lab guest whose RAM QEMU backs with THPs). Such a trace is observed again."""
    if d.background_collapse is not None:
        return True
    return bool(d.exact) and len(_host_wide(d)) == len(d.exact)
