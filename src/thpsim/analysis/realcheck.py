"""Real programs vs the model: VmPTE sampled while a recorded program ran (``<trace>.vmpte.json``, written by
``thpsim record``) against the model's upstream VmPTE at the same points of the trace.

Both sides are compared as changes since the process's first sample, because the real VmPTE also counts the
tables of the stack, the executable and the libraries, which a trace of anonymous memory does not contain.
Remaining differences have known causes: file-backed mappings (their faults allocate PTE tables the trace does
not see), and upper-level tables (the real heap shares PMD/PUD tables with the binary and libraries, while the
arena's regions keep only their offsets modulo 1 GiB); samples taken within a millisecond of an op may fall on
either side of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thpsim.trace import format as tf
from thpsim.trace.record import load_vmpte


@dataclass(frozen=True)
class SamplePoint:
    proc: str
    op_index: int
    live_delta_kb: int
    model_delta_kb: int        # after ops[:op_index]
    model_next_kb: int         # after ops[:op_index + 1] (the op that may have been in progress)
    model_prev_kb: int         # after ops[:op_index - 1] (an op whose faults were still running)

    @property
    def error_kb(self) -> int:
        """Distance of the live value from the model's values around the sample (0 if it lies between them).

        An op's log time is its start (a write op folds a run of page faults that can last milliseconds), so a
        sample may be taken while the op before or after ``op_index`` is still running."""
        vals = (self.model_prev_kb, self.model_delta_kb, self.model_next_kb)
        lo, hi = min(vals), max(vals)
        if lo <= self.live_delta_kb <= hi:
            return 0
        return (lo - self.live_delta_kb) if self.live_delta_kb < lo else (hi - self.live_delta_kb)


@dataclass
class Agreement:
    trace: str
    samples: int
    points: list[SamplePoint] = field(default_factory=list)

    @property
    def max_abs_error_kb(self) -> int:
        return max((abs(p.error_kb) for p in self.points), default=0)

    @property
    def mean_abs_error_kb(self) -> float:
        return sum(abs(p.error_kb) for p in self.points) / len(self.points) if self.points else 0.0

    @property
    def live_range_kb(self) -> int:
        vals = [p.live_delta_kb for p in self.points]
        return max(vals) - min(vals) if vals else 0

    def within(self, tolerance_kb: int) -> float:
        """Fraction of sample points whose model value is within tolerance_kb of the live one."""
        if not self.points:
            return 1.0
        return sum(1 for p in self.points if abs(p.error_kb) <= tolerance_kb) / len(self.points)


def vmpte_agreement(trace_path: str, samples_path: str | None = None) -> Agreement:
    from thpsim.model.engine import run_model

    trace = tf.load(trace_path)
    d = load_vmpte(samples_path or trace_path + ".vmpte.json")
    run = run_model(trace, design="upstream", observe="status")
    # model VmPTE per proc after ops[:i] (i = 0 means before any op)
    per_step: list[dict[str, int]] = [{}]
    for s in run.steps:
        per_step.append({p.proc: p.vm_pte_kb for p in s.procs})
    first: dict[int, tuple[int, int]] = {}
    agreement = Agreement(trace=trace.header.name or trace_path, samples=len(d["samples"]))
    for smp in d["samples"]:
        proc, pid, idx = smp.get("proc"), smp.get("pid"), smp.get("op_index")
        if proc is None or idx is None or not 0 <= idx < len(per_step):
            continue
        model_now = per_step[idx].get(proc)
        if model_now is None:
            continue
        if pid not in first:
            first[pid] = (smp["vm_pte_kb"], model_now)
        live0, model0 = first[pid]
        nxt = per_step[idx + 1].get(proc, model_now) if idx + 1 < len(per_step) else model_now
        prv = per_step[idx - 1].get(proc, model_now) if idx >= 1 else model_now
        agreement.points.append(SamplePoint(proc, idx, smp["vm_pte_kb"] - live0, model_now - model0,
                                            nxt - model0, prv - model0))
    return agreement


def format_agreement(a: Agreement, tolerance_kb: int) -> str:
    return (f"{a.trace}: {len(a.points)} sample points, VmPTE change over the run {a.live_range_kb} kB live; "
            f"model − live: max |err| {a.max_abs_error_kb} kB, mean |err| {a.mean_abs_error_kb:.1f} kB, "
            f"{100 * a.within(tolerance_kb):.0f}% within ±{tolerance_kb} kB")
