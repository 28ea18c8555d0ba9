"""One interface for the two engines: run traces, get each trace's observations and a summary.

An :class:`Engine` runs a batch of traces (path -> resolved Trace) and returns an :class:`EngineBatch`: one
:class:`EngineRun` per trace (its :class:`~thpsim.observation.StepObs` stream, an error if the run stopped,
and a :class:`RunSummary` computed the same way from either engine's observations) and, for the live
engine, the kernel's :class:`~thpsim.live.env.LiveEnv`.

* :class:`ModelEngine` replays on the model (``run_model``); ``ModelEngine.like(env, design)`` configures it
  like a live kernel (arch profile, knobs, page/PMD geometry).
* :class:`LiveEngine` observes on the running kernel or inside a lab guest (``lab.remote.observe``): a batch
  goes to one guest boot.

``analysis.diff.diff_live`` compares the two through this interface; the summary is what both engines can
measure (page-table kB, thp_* deltas, failed allocations), and the model's own bookkeeping (allocations per
kernel call site) stays on ``EngineRun.model``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from thpsim.lab.remote import observe
from thpsim.model.engine import ModelRun, run_model
from thpsim.model.knobs import Knobs
from thpsim.observation import StepObs
from thpsim.trace.format import Trace
from thpsim.trace.geometry import Geometry, map_trace

if TYPE_CHECKING:
    from thpsim.live.env import LiveEnv

__all__ = ["Engine", "EngineBatch", "EngineRun", "LiveEngine", "ModelEngine", "RunSummary"]


@dataclass(frozen=True)
class RunSummary:
    """What a run measured, from its observations alone (so model and live summaries compare)."""

    steps: int
    peak_vm_pte_kb: int                        # VmPTE summed over the trace's processes, highest after a step
    final_vm_pte_kb: int
    counters: tuple[tuple[str, int], ...]      # thp_* (and other vmstat) deltas after the last step
    failed_allocations: int                    # allocations an op's ``inject`` failed
    errors: int                                # steps whose syscall returned an errno (or SIGSEGV/LIVELOCK)

    @classmethod
    def of(cls, steps: tuple[StepObs, ...]) -> RunSummary:
        ptes = [sum(p.vm_pte_kb for p in s.procs) for s in steps]
        return cls(steps=len(steps), peak_vm_pte_kb=max(ptes, default=0), final_vm_pte_kb=ptes[-1] if ptes else 0,
                   counters=steps[-1].vmstat if steps else (), failed_allocations=sum(len(s.injected) for s in steps),
                   errors=sum(isinstance(s.result, str) for s in steps))


@dataclass(frozen=True)
class EngineRun:
    path: str
    steps: tuple[StepObs, ...]
    error: str | None
    model: ModelRun | None = None     # the model engine's full record (allocations per call site, ...)

    @property
    def summary(self) -> RunSummary:
        return RunSummary.of(self.steps)


@dataclass(frozen=True)
class EngineBatch:
    runs: tuple[EngineRun, ...]
    env: LiveEnv | None = None        # the live engine's kernel

    def get(self, path: str) -> EngineRun:
        for r in self.runs:
            if r.path == path:
                return r
        raise KeyError(path)


class Engine(Protocol):
    @property
    def name(self) -> str: ...

    def run(self, traces: Mapping[str, Trace]) -> EngineBatch: ...


@dataclass(frozen=True)
class ModelEngine:
    design: str = "upstream"
    arch: str = "x86_64"
    knobs: Knobs | None = None
    geometry: Geometry | None = None     # map 4K/2M traces onto this geometry first (another kernel's)
    check: bool = True
    observe: str = "full"

    @classmethod
    def like(cls, env: LiveEnv, design: str) -> ModelEngine:
        """The model configured like the live kernel ``env`` describes."""
        return cls(design=design, arch=env.arch_profile or "x86_64", knobs=env.knobs(), geometry=env.geometry)

    @property
    def name(self) -> str:
        return f"model:{self.design}"

    def run(self, traces: Mapping[str, Trace]) -> EngineBatch:
        out = []
        for path, t in traces.items():
            mr = run_model(map_trace(t, self.geometry) if self.geometry else t, design=self.design,
                           arch=self.arch, knobs=self.knobs, check=self.check, observe=self.observe)
            steps = tuple(mr.steps)
            out.append(EngineRun(path, steps, None, mr))
        return EngineBatch(tuple(out))


@dataclass(frozen=True)
class LiveEngine:
    kernel: str | None = None     # a lab kernel, or None/"host" for the running one
    guest: Any = None             # lab.guest.GuestConfig
    stderr: BinaryIO | None = None

    @property
    def name(self) -> str:
        return f"live:{self.kernel or 'host'}"

    def run(self, traces: Mapping[str, Trace]) -> EngineBatch:
        batch = observe(list(traces), kernel=self.kernel, guest=self.guest, stderr=self.stderr)
        runs = []
        for path in traces:
            tl = batch.get(path)
            runs.append(EngineRun(path, tl.steps, tl.error))
        return EngineBatch(tuple(runs), batch.env)
