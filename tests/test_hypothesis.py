"""Hypothesis stateful tests: random op sequences through ``engine.Simulator`` with invariants (check=True) and
shadow memory (shadow=True) on, for the upstream design, the lazy design, and the lazy design under random
allocation failures (FailPolicy probability + seed).

Asserted: no InvariantViolation ever (any design); no data-contract (shadow) violation for upstream. The lazy
design may report documented data-contract violations (e.g. the v3 zap skip after a failed split), so only its
invariants are asserted. Ops: mmap in a few slots (two of them in another 1 GiB region), MADV_HUGEPAGE, writes and
reads (strided or filled), partial/whole munmap, mprotect, mlock/munlock, madvise DONTNEED/FREE/COLD/PAGEOUT/
COLLAPSE, mremap (grow, shrink, move), fork of any live process, exit of a child, khugepaged, the deferred-split
shrinker; and for ``lazy-pmd-swap`` (always with swap, on a small device that may be fragmented) kswapd's reclaim of
a region, so PMD swap entries meet every other op. At the end every process exits and the whole model must be empty (check_mm).

Sizes: ``THPSIM_HYPOTHESIS_EXAMPLES`` (default 25 examples of up to 30 steps per design) keeps CI at about a
minute on 2 cores.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from thpsim.model import invariants
from thpsim.model.engine import Simulator, make_kernel
from thpsim.model.page_alloc import FailPolicy
from thpsim.trace.ops import OP_DEFS

K, M, G = 1 << 10, 1 << 20, 1 << 30
SLOTS = (0, 8 * M, 16 * M, G + 2 * M)          # arena offsets; regions are at most 6 MiB
OFFS = st.sampled_from((0, 4 * K, 1 * M, 2 * M, 2 * M + 12 * K, 3 * M, 4 * M))
LENS = st.sampled_from((4 * K, 8 * K, 1 * M, 2 * M, 2 * M + 4 * K, 4 * M))
EXAMPLES = int(os.environ.get("THPSIM_HYPOTHESIS_EXAMPLES", "25"))
SETTINGS = settings(max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


class ModelMachine(RuleBasedStateMachine):
    design = "upstream"
    random_failures = False
    force_swap = False          # always swap, on a small device that may be fragmented (lazy-pmd-swap)

    def __init__(self) -> None:
        super().__init__()
        self.sim: Simulator | None = None
        self.n = 0
        self.procs = ["main"]
        self.children = 0

    @initialize(prob=st.sampled_from((0.02, 0.1, 0.3)), seed=st.integers(0, 10_000),
                zero=st.booleans(), swap=st.booleans())
    def setup(self, prob: float, seed: int, zero: bool, swap: bool) -> None:
        policy = FailPolicy(probability=prob, seed=seed) if self.random_failures else None
        extra: tuple[tuple[str, object], ...] = ()
        if self.force_swap:
            clusters = (None, 2, 8)[seed % 3]
            extra = (("swap_clusters", clusters), ("swap_fragmented", 0 if clusters is None else seed % (clusters + 1)))
        k = make_kernel(design=self.design, policy=policy, max_retries=20,
                        overrides=(("use_zero_page", zero), ("swap", swap or self.force_swap), *extra))
        self.sim = Simulator(k, check=True, shadow=True)

    # ---- helpers
    def do(self, kind: str, proc: str = "main", **kw: object) -> None:
        assert self.sim is not None
        self.n += 1
        op = OP_DEFS[kind].cls(line=self.n, proc=proc, **kw)   # the kind's own class: unknown fields raise
        obs = self.sim.step(self.n, op)                   # raises InvariantViolation on any broken invariant
        if self.design == "upstream" and not self.random_failures:
            assert obs.violations == (), (op.describe(), obs.violations)
        if kind == "fork" and obs.result == 0:
            self.procs.append(str(kw["child"]))
        if kind == "exit":
            self.procs.remove(proc)

    # ---- rules
    @rule(slot=st.sampled_from(SLOTS), length=st.sampled_from((2 * M, 4 * M, 6 * M, 3 * M + 8 * K)),
          prot=st.sampled_from(("rw", "rw", "r", "none")), huge=st.booleans(), locked=st.booleans())
    def mmap(self, slot: int, length: int, prot: str, huge: bool, locked: bool) -> None:
        self.do("mmap", start=slot, length=length, prot=prot, flags=("locked",) if locked and prot == "rw" else ())
        if huge:
            self.do("madvise", start=slot, length=length, advice="hugepage")

    @rule(data=st.data(), slot=st.sampled_from(SLOTS), off=OFFS, length=LENS,
          how=st.sampled_from(("stride4k", "stride2m", "stride64k", "fill")), write=st.booleans())
    def access(self, data: st.DataObject, slot: int, off: int, length: int, how: str, write: bool) -> None:
        proc = data.draw(st.sampled_from(self.procs))
        stride = {"stride4k": 4 * K, "stride2m": 2 * M, "stride64k": 64 * K, "fill": 4 * K}[how]
        byte = data.draw(st.integers(1, 255))
        own = {"fill": how == "fill", "byte": byte} if write else {}     # a read has neither
        self.do("write" if write else "read", proc=proc, start=slot + off, length=length, stride=stride, **own)

    @rule(data=st.data(), slot=st.sampled_from(SLOTS), off=OFFS, length=LENS,
          advice=st.sampled_from(("dontneed", "free", "cold", "pageout", "collapse", "hugepage", "nohugepage",
                                  "populate_write", "populate_read", "dontneed_locked")))
    def madvise(self, data: st.DataObject, slot: int, off: int, length: int, advice: str) -> None:
        proc = data.draw(st.sampled_from(self.procs))
        self.do("madvise", proc=proc, start=slot + off, length=length, advice=advice)

    @precondition(lambda self: self.force_swap)
    @rule(data=st.data(), slot=st.sampled_from(SLOTS), length=st.sampled_from((2 * M, 4 * M, 6 * M)))
    def reclaim(self, data: st.DataObject, slot: int, length: int) -> None:
        """kswapd over a region (every folio, shared ones too): swap-out, PMD swap entries, the fallback."""
        proc = data.draw(st.sampled_from(self.procs))
        self.do("reclaim", proc=proc, start=slot, length=length)

    @precondition(lambda self: self.force_swap)
    @rule()
    def swapoff(self) -> None:
        """swapoff: every swap entry (PMD ones whole) back in, then no more swap."""
        self.do("swapoff")

    @precondition(lambda self: self.force_swap)
    @rule(slot=st.sampled_from(SLOTS), share=st.booleans())
    def thp_then_reclaim(self, slot: int, share: bool) -> None:
        """A fresh THP (shared with a child if ``share``) swapped out at once: PMD swap entries for the other
        rules to meet."""
        self.do("mmap", start=slot, length=4 * M, prot="rw", flags=())
        self.do("madvise", start=slot, length=4 * M, advice="hugepage")
        self.do("write", start=slot, length=2 * M, stride=4 * K, fill=True, byte=0x5A)
        if share:
            self.children += 1
            self.do("fork", child=f"s{self.children}")
        self.do("reclaim", start=slot, length=4 * M)

    @rule(slot=st.sampled_from(SLOTS), off=OFFS, length=st.one_of(LENS, st.just(8 * M)))
    def munmap(self, slot: int, off: int, length: int) -> None:
        self.do("munmap", start=slot + off, length=length)

    @rule(slot=st.sampled_from(SLOTS), off=OFFS, length=LENS, prot=st.sampled_from(("r", "rw", "none")))
    def mprotect(self, slot: int, off: int, length: int, prot: str) -> None:
        self.do("mprotect", start=slot + off, length=length, prot=prot)

    @rule(slot=st.sampled_from(SLOTS), off=OFFS, length=LENS, lock=st.booleans(), onfault=st.booleans())
    def mlock(self, slot: int, off: int, length: int, lock: bool, onfault: bool) -> None:
        if lock:
            self.do("mlock", start=slot + off, length=length, flags=("onfault",) if onfault else ())
        else:
            self.do("munlock", start=slot + off, length=length)

    @rule(slot=st.sampled_from(SLOTS), dest=st.sampled_from(SLOTS + (G + 12 * M + 4 * K, 24 * M + 2 * M)),
          length=st.sampled_from((2 * M, 4 * M, 1 * M)), new_length=st.sampled_from((2 * M, 4 * M, 1 * M, 6 * M)),
          how=st.sampled_from(("inplace", "maymove", "fixed", "dontunmap")))
    def mremap(self, slot: int, dest: int, length: int, new_length: int, how: str) -> None:
        flags: tuple[str, ...] = {"inplace": (), "maymove": ("maymove",), "fixed": ("fixed", "maymove"),
                                  "dontunmap": ("dontunmap", "maymove")}[how]
        if how == "dontunmap":
            new_length = length
        self.do("mremap", start=slot, length=length, new_length=new_length, flags=flags,
                dest=None if how == "inplace" else dest)

    @precondition(lambda self: len(self.procs) < 4)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        self.children += 1
        self.do("fork", proc=data.draw(st.sampled_from(self.procs)), child=f"c{self.children}")

    @precondition(lambda self: len(self.procs) > 1)
    @rule(data=st.data())
    def exit_child(self, data: st.DataObject) -> None:
        self.do("exit", proc=data.draw(st.sampled_from(self.procs[1:])))

    @rule(which=st.sampled_from(("khugepaged", "shrink_deferred")))
    def background(self, which: str) -> None:
        self.do(which)

    @invariant()
    def pgtables_consistent(self) -> None:
        if self.sim is not None:
            assert invariants.check(self.sim.k) == []

    def teardown(self) -> None:
        if self.sim is None:
            return
        self.do("exit")     # main: every child first, then main (check_exited runs for each)
        k = self.sim.k
        assert all(not mm.alive and mm.pt.pgtables_bytes == 0 for mm in k.procs.values())
        assert k.vmstat.nr_anon_thps == 0 and k.vmstat.nr_anon_pages == 0
        pool = k.reserve_pool if k.design.rmap_tables == "reserve_pool" else 0
        assert k.vmstat.nr_pagetable_bytes == pool * k.arch.pagetable_page_bytes


class UpstreamMachine(ModelMachine):
    design = "upstream"


class LazyMachine(ModelMachine):
    design = "lazy"


class LazyFailingMachine(ModelMachine):
    design = "lazy"
    random_failures = True


class UpstreamFailingMachine(ModelMachine):
    """Upstream under random allocation failures (folio and table allocations fail; splits never allocate)."""
    design = "upstream"
    random_failures = True


class PmdSwapMachine(ModelMachine):
    """lazy-pmd-swap: reclaim installs PMD swap entries; every path that meets one must keep the invariants."""
    design = "lazy-pmd-swap"
    force_swap = True


class PmdSwapFailingMachine(ModelMachine):
    design = "lazy-pmd-swap"
    force_swap = True
    random_failures = True


TestUpstream = UpstreamMachine.TestCase
TestUpstream.settings = SETTINGS
TestLazy = LazyMachine.TestCase
TestLazy.settings = SETTINGS
TestLazyFailing = LazyFailingMachine.TestCase
TestLazyFailing.settings = SETTINGS
TestUpstreamFailing = UpstreamFailingMachine.TestCase
TestUpstreamFailing.settings = SETTINGS
TestPmdSwap = PmdSwapMachine.TestCase
TestPmdSwap.settings = SETTINGS
TestPmdSwapFailing = PmdSwapFailingMachine.TestCase
TestPmdSwapFailing.settings = SETTINGS
