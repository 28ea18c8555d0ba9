"""Checking a trace's ``expect`` fields against an observation stream (from either engine).

Keys: ``result`` and ``data`` (the step's syscall result and read digest); the status values of the op's
process after the step (``vm_pte_kb``, ``vm_rss_kb``, ``rss_anon_kb``, ``vm_lck_kb``, ``vm_swap_kb``, changes
since that process's baseline, as in the observation) and ``anon_huge_kb`` (its smaps rollup over the arena);
any ``thp_*`` counter name, compared with how much that counter moved during this step. Keys nested under a
design name apply to that design only (``{"lazy": {"result": "ENOMEM"}}``).

A live run on a busy host cannot check a ``thp_*`` expectation on a counter that other processes were seen
moving (``host_noise``: :attr:`thpsim.analysis.diff.TraceDiff.host_noise`): those keys are left unchecked.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from thpsim.errors import TraceError
from thpsim.observation import StepObs
from thpsim.trace.format import Trace, expectation_for

STATUS_KEYS = ("vm_pte_kb", "vm_rss_kb", "rss_anon_kb", "vm_lck_kb", "vm_swap_kb")


def _actual(key: str, step: StepObs, prev: StepObs | None, proc: str) -> Any:
    if key == "result":
        return step.result
    if key == "data":
        return step.data
    if key.startswith("thp_"):
        return step.counter(key) - (prev.counter(key) if prev is not None else 0)
    p = step.proc_obs(proc)
    if p is None:
        return None
    if key in STATUS_KEYS:
        return getattr(p, key)
    if key == "anon_huge_kb":
        return p.rollup()["anon_huge_kb"] if p.vmas else None
    raise KeyError(key)


def check_expectations(trace: Trace, steps: Sequence[StepObs], design: str = "upstream", *,
                       host_noise: Collection[str] = ()) -> list[str]:
    """One line per expectation the observations do not meet ("file:line: key: expected X, got Y"); thp_*
    counters named in ``host_noise`` (moved by other processes during a live run) are not checked."""
    out: list[str] = []
    prev: StepObs | None = None
    for op, step in zip(trace.ops, steps, strict=False):
        for key, want in sorted(expectation_for(op, design).items()):
            if key in host_noise:
                continue
            try:
                got = _actual(key, step, prev, op.proc)
            except KeyError:
                raise TraceError(f"unknown expectation {key!r}; use result, data, anon_huge_kb, a thp_* counter "
                                 f"or one of {', '.join(STATUS_KEYS)}", line=op.line, field="expect",
                                 source=trace.source) from None
            if got != want:
                out.append(f"{trace.source}:{op.line}: {op.describe()}: {key}: expected {want!r}, got {got!r}")
        prev = step
    return out
