"""Injected-failure variants of a trace, for model-vs-kernel diffs under real allocation failure.

:func:`injection_variants` replays a trace on the model and, for every op during which the model allocates
at an injection point's sites (:data:`thpsim.model.page_alloc.INJECT_POINTS`), makes a copy of the trace
whose op carries ``inject`` (the first allocation at that point during that op fails). ``thpsim diff
--inject POINT`` writes the variants as trace files (a lab guest reads them through its read-only share of
the host's /) and diffs each one, model vs the guest's kernel with fail_page_alloc.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from thpsim.model.engine import Simulator, make_kernel
from thpsim.model.knobs import Knobs
from thpsim.model.page_alloc import INJECT_POINTS
from thpsim.trace.format import Inject, Trace, dumps

__all__ = ["Variant", "injection_variants", "write_variants"]


@dataclass(frozen=True)
class Variant:
    source: str       # the original trace's path
    step: int         # the op that fails its first allocation at the point
    line: int
    op: str           # the op, described
    sites: tuple[str, ...]   # the model sites the op allocates at (uninjected run)
    trace: Trace

    @property
    def label(self) -> str:
        return f"{self.source}@{self.step}"


def injection_variants(path: str, trace: Trace, point: str, *, design: str, knobs: Knobs | None = None,
                       times: int = 1) -> list[Variant]:
    p = INJECT_POINTS[point]
    k = make_kernel(design=design, knobs=knobs, overrides=trace.header.kernel)
    sim = Simulator(k)
    out: list[Variant] = []
    for i, op in enumerate(trace.ops):
        before = dict(k.alloc.per_site)
        sim.step(i, op)
        sites = tuple(sorted(s for s, n in k.alloc.per_site.items() if s.startswith(p.sites)
                             and n > before.get(s, 0)))
        if sites and op.inject is None:
            ops = list(trace.ops)
            ops[i] = replace(op, inject=Inject(point, times))
            out.append(Variant(path, i, op.line, op.describe(), sites, replace(trace, ops=tuple(ops))))
    return out


def write_variants(variants: list[Variant], folder: Path) -> dict[str, Variant]:
    """Write each variant as a trace file under ``folder``; return file path -> variant."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Variant] = {}
    for n, v in enumerate(variants):
        f = folder / f"{n:04d}-{Path(v.source).stem}-op{v.step}.jsonl"
        f.write_text(dumps(v.trace))
        out[str(f)] = v
    return out
