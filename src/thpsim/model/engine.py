"""The model engine: replays a resolved trace on a simulated kernel and emits one observation per step.

Pure: no I/O, no clock, randomness only through the seeded fault-injection policy. Syscall results are the
values Linux returns (an arena offset for mmap/mremap, 0, or an errno name); user accesses report "SIGSEGV"
when the kernel would, and "LIVELOCK" for a fault the kernel would retry forever. With ``check=True`` the invariants are verified after every step and a violation
raises :class:`InvariantViolation` carrying a replayable trace prefix; with ``shadow=True`` the data contract of
every syscall is checked against shadow memory and violations are reported in the observation.

The op table (:data:`OPS`) has one handler per op kind of the trace language's definitions
(:data:`thpsim.trace.ops.OP_DEFS`), registered with the op's class so that each handler takes its precise op
type (``Mremap``, ``Write``, ...); importing this module fails if a definition has no handler or two. A handler
translates arena offsets, calls the kernel entry point (in the module named after its kernel file), converts
errnos and applies the op's data contract to the shadow memory (the contract rules themselves live in
:mod:`thpsim.model.shadow`). Each entry also names the kernel entry point and which pages the op can change
(``Scope``); whether only the model can run it comes from the op's definition.
Left out: checkpoint/restore inside the engine (campaigns replay a prefix), concurrency between processes (ops
run one at a time, each atomic), and the live engine (thpsim.live), which shares only the trace and StepObs.
"""

from __future__ import annotations

import errno as _errno
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, TypeVar

from thpsim.errors import InvariantViolation, LivelockDetected
from thpsim.model import (
    exit as kexit,
)
from thpsim.model import (
    fork,
    gup,
    invariants,
    khugepaged,
    madvise,
    migrate_device,
    mlock,
    mmap,
    mprotect,
    mremap,
    swapfile_unuse,
    task_mmu,
    uaccess,
    userfaultfd,
    vmscan,
)
from thpsim.model.arch import get_arch
from thpsim.model.design import get_design
from thpsim.model.folio import read_digest
from thpsim.model.huge_memory import deferred_split_scan
from thpsim.model.kernel import MM, Kernel, StepLog
from thpsim.model.knobs import Knobs
from thpsim.model.page_alloc import INJECT_POINTS, FailPolicy
from thpsim.model.shadow import Shadow, compare
from thpsim.model.vma import VM_DONTCOPY, VM_WIPEONFORK
from thpsim.observation import (
    MEMINFO_FIELDS,
    VMSTAT_FIELDS,
    ContractViolation,
    StepObs,
    StepViolation,
    no_process_note,
)
from thpsim.trace.format import ARENA_BASE, PROTS, Op, Trace, dumps_op
from thpsim.trace.ops import (
    OP_DEFS,
    Exit,
    Expect,
    Fork,
    Gup,
    Khugepaged,
    Madvise,
    Migrate,
    Mlock,
    Mmap,
    Mprotect,
    Mremap,
    Munlock,
    Munmap,
    OpBase,
    PagemapScanWp,
    RangeOp,
    Read,
    Reclaim,
    ShrinkDeferred,
    Swapoff,
    UffdMove,
    UffdRegister,
    UffdUnregister,
    UffdWp,
    Write,
)

__all__ = ["OPS", "ModelRun", "OpKind", "Scope", "Simulator", "make_kernel", "run_model"]

VMSTAT_REPORTED = frozenset(VMSTAT_FIELDS)
OpResult = tuple[int | str | None, str | None]     # (result, data: the crc of what a read returned)


@dataclass
class ModelRun:
    design: str
    arch: str
    steps: list[StepObs] = field(default_factory=list)
    logs: list[StepLog] = field(default_factory=list)
    kernel: Kernel | None = None
    peak_pgtables_bytes: int = 0
    final_pgtables_bytes: int = 0
    peak_pagetable_bytes: int = 0     # NR_PAGETABLE peak (whole pages)
    split_sites: Counter[str] = field(default_factory=Counter)
    failed_sites: Counter[str] = field(default_factory=Counter)
    contract_violations: list[StepViolation] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        """The data-contract violations as text ("step i (line L): main: [4K, 8K): ..."), as ``run --json``
        prints them."""
        return [str(v) for v in self.contract_violations]

    @property
    def table_allocs(self) -> int:
        assert self.kernel is not None
        return sum(n for s, n in self.kernel.alloc.per_site.items()
                   if s.startswith("pte_alloc_one") or s == "__pte_alloc")


def make_kernel(*, design: str = "upstream", arch: str = "x86_64", knobs: Knobs | None = None,
                policy: FailPolicy | None = None, overrides: tuple[tuple[str, Any], ...] = (),
                max_retries: int = 1000) -> Kernel:
    kn = (knobs or Knobs()).with_overrides(overrides) if overrides else (knobs or Knobs())
    return Kernel(get_arch(arch), kn, get_design(design), policy, max_retries=max_retries)


def _result(rc: int) -> int | str:
    if rc < 0:
        return _errno.errorcode.get(-rc, str(rc))
    return rc


# ---- the op table -------------------------------------------------------------------------------------------------
class Scope(Enum):
    """Where an op can change what the program reads, for the shadow-memory comparison after it."""

    RANGE = "range"          # the op's range (and its destination), in the op's process
    ANYWHERE = "anywhere"    # any page of any process (fork, reclaim, khugepaged, ...)
    NOTHING = "nothing"      # nothing left to compare (exit)


OpT = TypeVar("OpT", bound=OpBase)
Handler = Callable[["Simulator", MM, Any, int], OpResult]    # (simulator, the op's mm, the op, its absolute start)


@dataclass(frozen=True)
class OpKind:
    """The model side of one trace op kind (trace.ops.OP_DEFS): its handler and metadata."""

    name: str
    handler: Handler
    kernel: str                  # the kernel entry point it models
    scope: Scope = Scope.RANGE

    @property
    def model_only(self) -> bool:
        """No unprivileged, side-effect-free live trigger (the op's definition says so)."""
        return OP_DEFS[self.name].model_only


OPS: dict[str, OpKind] = {}


def _op(cls: type[OpT], kernel: str, *,
        scope: Scope = Scope.RANGE) -> Callable[[Callable[[Simulator, MM, OpT, int], OpResult]], Handler]:
    """Register the model handler of the op kind ``cls`` (exactly one per definition)."""
    def register(fn: Callable[[Simulator, MM, OpT, int], OpResult]) -> Handler:
        if OP_DEFS.get(cls.kind) is None or OP_DEFS[cls.kind].cls is not cls:
            raise AssertionError(f"{cls.__name__} is not an op kind of trace.ops.OP_DEFS")
        if cls.kind in OPS:
            raise AssertionError(f"two model handlers for op {cls.kind!r}")
        OPS[cls.kind] = OpKind(cls.kind, fn, kernel, scope)
        return fn
    return register


@_op(Mmap, "mm/mmap.c do_mmap")
def _mmap(sim: Simulator, mm: MM, op: Mmap, a: int) -> OpResult:
    rc = mmap.do_mmap(sim.k, mm, a, op.length, PROTS[op.prot], op.flags)
    if rc < 0:
        return _result(rc), None
    if sim.shadow:
        sim.shadow.discard(op.proc, a, a + op.length, "mmap")
    return rc - sim.base, None


@_op(Munmap, "mm/vma.c do_vmi_munmap")
def _munmap(sim: Simulator, mm: MM, op: Munmap, a: int) -> OpResult:
    rc = mmap.do_munmap(sim.k, mm, a, op.length)
    if rc == 0 and sim.shadow:
        sim.shadow.discard(op.proc, a, a + op.length, "munmap")
    return _result(rc), None


@_op(Mprotect, "mm/mprotect.c do_mprotect_pkey")
def _mprotect(sim: Simulator, mm: MM, op: Mprotect, a: int) -> OpResult:
    return _result(mprotect.do_mprotect(sim.k, mm, a, op.length, PROTS[op.prot])), None


@_op(Mremap, "mm/mremap.c do_mremap")
def _mremap(sim: Simulator, mm: MM, op: Mremap, a: int) -> OpResult:
    dest = None if op.dest is None else sim.base + op.dest
    rc = mremap.do_mremap(sim.k, mm, a, op.length, op.new_length, op.flags, dest)
    if rc < 0:
        return _result(rc), None
    if sim.shadow:
        sim.shadow.mremap(op.proc, a, op.length, rc, op.new_length, dontunmap="dontunmap" in op.flags)
    return rc - sim.base, None


@_op(Mlock, "mm/mlock.c do_mlock")
def _mlock(sim: Simulator, mm: MM, op: Mlock, a: int) -> OpResult:
    return _result(mlock.do_mlock(sim.k, mm, a, op.length, op.flags)), None


@_op(Munlock, "mm/mlock.c munlock")
def _munlock(sim: Simulator, mm: MM, op: Munlock, a: int) -> OpResult:
    return _result(mlock.do_munlock(sim.k, mm, a, op.length)), None


@_op(Madvise, "mm/madvise.c do_madvise")
def _madvise(sim: Simulator, mm: MM, op: Madvise, a: int) -> OpResult:
    end = a + op.length
    hole = not mm.vmas.covered(a, end)
    rc = madvise.do_madvise(sim.k, mm, a, op.length, op.advice)
    if sim.shadow and (rc == 0 or (rc == -_errno.ENOMEM and hole)):
        # ENOMEM for a hole: madvise_walk_vmas still applied the advice to every mapped part
        mapped = [(max(v.start, a), min(v.end, end)) for v in mm.vmas.overlapping(a, end)] if rc else [(a, end)]
        sim.shadow.madvise(op.proc, op.advice, mapped, hole_enomem=rc != 0,
                           split_can_fail=sim.k.design.split_can_fail)
    return _result(rc), None


@_op(Write, "user store (handle_mm_fault on a miss)")
def _write(sim: Simulator, mm: MM, op: Write, a: int) -> OpResult:
    res, _raw, pages = uaccess.access(sim.k, mm, a, a + op.length, write=True, stride=op.stride, fill=op.fill,
                                     byte=op.byte)
    if sim.shadow:
        sim.shadow.user_write(op.proc, pages, op.byte)
    return res, None


@_op(Read, "user load (handle_mm_fault on a miss)")
def _read(sim: Simulator, mm: MM, op: Read, a: int) -> OpResult:
    res, raw, _pages = uaccess.access(sim.k, mm, a, a + op.length, write=False, stride=op.stride, fill=False,
                                     byte=0xAA)
    return res, (read_digest(raw) if res == 0 else None)


@_op(Fork, "kernel/fork.c dup_mmap", scope=Scope.ANYWHERE)
def _fork(sim: Simulator, mm: MM, op: Fork, a: int) -> OpResult:
    rc = fork.do_fork(sim.k, mm, op.child)
    if rc == 0:
        sim.order.append(op.child)
        if sim.shadow:
            skip = [(v.start, v.end) for v in mm.vmas if v.flags & (VM_DONTCOPY | VM_WIPEONFORK)]
            sim.shadow.fork(op.proc, op.child, skip)
    return _result(rc), None


@_op(Exit, "kernel/exit.c do_exit → exit_mmap", scope=Scope.NOTHING)
def _exit(sim: Simulator, mm: MM, op: Exit, a: int) -> OpResult:
    k = sim.k
    names = [n for n in sim.order if n != "main"] + ["main"] if op.proc == "main" else [op.proc]
    for n in names:
        m = k.procs.get(n)
        if m is None or not m.alive:
            continue
        gup.unpin_all(k, m)
        kexit.exit_mmap(k, m)
        if sim.check:
            errs = invariants.check_exited(k, m)
            if errs:
                raise InvariantViolation("; ".join(errs), trace_prefix="\n".join(
                    dumps_op(o) for o in [*sim.ops_done, op]))
        if sim.shadow:
            sim.shadow.drop(n)
    return 0, None


@_op(Khugepaged, "mm/khugepaged.c khugepaged_scan_mm_slot", scope=Scope.ANYWHERE)
def _khugepaged(sim: Simulator, mm: MM, op: Khugepaged, a: int) -> OpResult:
    return khugepaged.khugepaged_pass(sim.k), None


@_op(ShrinkDeferred, "mm/huge_memory.c deferred_split_scan", scope=Scope.ANYWHERE)
def _shrink_deferred(sim: Simulator, mm: MM, op: ShrinkDeferred, a: int) -> OpResult:
    return deferred_split_scan(sim.k), None


@_op(Swapoff, "mm/swapfile.c try_to_unuse (swapoff)", scope=Scope.ANYWHERE)
def _swapoff(sim: Simulator, mm: MM, op: Swapoff, a: int) -> OpResult:
    return _result(swapfile_unuse.sys_swapoff(sim.k)), None


@_op(Reclaim, "mm/vmscan.c shrink_folio_list (kswapd)", scope=Scope.ANYWHERE)
def _reclaim(sim: Simulator, mm: MM, op: Reclaim, a: int) -> OpResult:
    outs = vmscan.reclaim_range(sim.k, mm, a, a + op.length, memalloc=True, skip_shared=False, caller="kswapd")
    return sum(1 for o in outs if o in ("swapped", "discarded")), None


@_op(Gup, "mm/gup.c __get_user_pages", scope=Scope.ANYWHERE)
def _gup(sim: Simulator, mm: MM, op: Gup, a: int) -> OpResult:
    return _result(gup.get_user_pages(sim.k, mm, a, a + op.length, op.flags)), None


@_op(UffdMove, "mm/userfaultfd.c move_pages")
def _uffd_move(sim: Simulator, mm: MM, op: UffdMove, a: int) -> OpResult:
    dst = sim.base + op.dest
    rc, moved = userfaultfd.move_pages(sim.k, mm, a, dst, op.length)
    if sim.shadow and moved:
        sim.shadow.move(op.proc, a, dst, moved)
    return (_result(rc) if rc else moved), None


@_op(UffdRegister, "mm/userfaultfd.c userfaultfd_register")
def _uffd_register(sim: Simulator, mm: MM, op: UffdRegister, a: int) -> OpResult:
    return _result(userfaultfd.userfaultfd_register(sim.k, mm, a, op.length)), None


@_op(UffdWp, "mm/userfaultfd.c mwriteprotect_range")
def _uffd_wp(sim: Simulator, mm: MM, op: UffdWp, a: int) -> OpResult:
    return _result(userfaultfd.mwriteprotect_range(sim.k, mm, a, op.length)), None


@_op(UffdUnregister, "mm/userfaultfd.c userfaultfd_unregister")
def _uffd_unregister(sim: Simulator, mm: MM, op: UffdUnregister, a: int) -> OpResult:
    return _result(userfaultfd.userfaultfd_unregister(sim.k, mm, a, op.length)), None


@_op(PagemapScanWp, "fs/proc/task_mmu.c do_pagemap_scan (PM_SCAN_WP_MATCHING)")
def _pagemap_scan_wp(sim: Simulator, mm: MM, op: PagemapScanWp, a: int) -> OpResult:
    return _result(task_mmu.pagemap_scan_wp(sim.k, mm, a, a + op.length)), None


@_op(Migrate, "mm/migrate_device.c migrate_vma_setup", scope=Scope.ANYWHERE)
def _migrate(sim: Simulator, mm: MM, op: Migrate, a: int) -> OpResult:
    return _result(migrate_device.migrate_vma(sim.k, mm, a, a + op.length)), None


@_op(Expect, "(none: checks the observation)", scope=Scope.ANYWHERE)
def _expect(sim: Simulator, mm: MM, op: Expect, a: int) -> OpResult:
    return None, None


if set(OPS) != set(OP_DEFS):
    raise AssertionError(f"op kinds without a model handler: {sorted(set(OP_DEFS) - set(OPS))}")


# ---- the simulator --------------------------------------------------------------------------------------------------
class Simulator:
    """Runs ops one at a time (so campaigns can drive it step by step)."""

    def __init__(self, k: Kernel, *, check: bool = False, shadow: bool = False, base: int = ARENA_BASE,
                 observe: str = "full", shadow_scope: str = "op") -> None:
        if shadow_scope not in ("op", "all"):
            raise ValueError(f"shadow_scope must be 'op' or 'all', not {shadow_scope!r}")
        self.shadow_scope = shadow_scope
        if observe not in ("full", "status"):
            raise ValueError(f"observe must be 'full' or 'status', not {observe!r}")
        self.k = k
        self.full = observe == "full"
        self.check = check
        self.base = base
        self.shadow = Shadow(k.page) if shadow else None
        self.order: list[str] = ["main"]
        k.new_mm("main")
        self.ops_done: list[Op] = []

    # ---- one step --------------------------------------------------------------------------------------------
    def step(self, i: int, op: Op) -> StepObs:
        """Run one op (fault injection armed for it if asked), then check and observe."""
        k = self.k
        k.log = StepLog()
        if op.inject is not None:
            k.alloc.arm(INJECT_POINTS[op.inject.at], op.inject.times)
        try:
            result, data = self.execute(op)
        except LivelockDetected as e:
            result, data = "LIVELOCK", None
            k.log.notes.append(str(e))
        finally:
            injected = k.alloc.disarm() if op.inject is not None else ()
        self.ops_done.append(op)
        violations = self._violations(op)
        if self.check:
            self._check_invariants(i)
        obs = self.observe(i, op, result, data, violations)
        return replace(obs, injected=injected) if injected else obs

    def execute(self, op: Op) -> OpResult:
        """Run the op in its process through the op table, without observing: (result, read digest)."""
        mm = self.k.procs.get(op.proc)
        if mm is None or not mm.alive:
            # e.g. the fork that should have created it failed (ENOMEM): nothing to run it in
            self.k.log.notes.append(no_process_note(op.proc))
            return None, None
        spec = OPS.get(op.kind)
        if spec is None:
            raise AssertionError(f"unhandled op {op.kind}")
        return spec.handler(self, mm, op, self.base + (op.start if isinstance(op, RangeOp) else 0))

    def _violations(self, op: Op) -> list[ContractViolation]:
        if self.shadow is None:
            return []
        k = self.k
        scope = self._scope(op)
        out: list[ContractViolation] = []
        for name in self.order:
            mm = k.procs.get(name)
            if mm is None or not mm.alive:
                continue
            if scope is None:
                out += compare(k, mm, self.shadow, self.base)
            elif name == op.proc:
                out += compare(k, mm, self.shadow, self.base, scope)
        return out

    def _check_invariants(self, i: int) -> None:
        errs = invariants.check(self.k)
        if errs:
            prefix = "\n".join(dumps_op(o) for o in self.ops_done)
            raise InvariantViolation("; ".join(errs[:5]), step=i, trace_prefix=prefix)

    def _scope(self, op: Op) -> list[tuple[int, int]] | None:
        """Where this op can change what the program reads (None: anywhere, in any process).

        With ``shadow_scope="op"`` (the default) a data-contract violation is reported at the step whose op
        caused it, by comparing only that range; ``"all"`` compares every page of every process every step.
        """
        scope = OPS[op.kind].scope
        if scope is Scope.NOTHING:
            return []
        if self.shadow_scope == "all" or scope is Scope.ANYWHERE:
            return None
        assert isinstance(op, RangeOp), f"op {op.kind!r} has Scope.RANGE but no range"
        pg = self.k.page
        n = max(op.length, op.new_length) if isinstance(op, Mremap) else op.length
        dest = op.dest if isinstance(op, Mremap | UffdMove) else None
        starts = [self.base + op.start] + ([self.base + dest] if dest is not None else [])
        return [(a - a % pg, -(-(a + n) // pg) * pg) for a in starts]   # whole pages

    def observe(self, i: int, op: Op, result: int | str | None, data: str | None,
                violations: list[ContractViolation]) -> StepObs:
        k = self.k
        procs = tuple(task_mmu.proc_obs(k, k.procs[n], self.base, full=self.full) for n in self.order
                      if n in k.procs and k.procs[n].alive)
        ev = k.vmstat.events
        vm = tuple(sorted((n, ev[n]) for n in ev if ev[n] and n in VMSTAT_REPORTED))
        mi = {"AnonHugePages": k.vmstat.nr_anon_thps * k.pmd_size >> 10,
              "PageTables": k.vmstat.nr_pagetable_bytes >> 10, "AnonPages": k.vmstat.nr_anon_pages * k.page >> 10}
        meminfo = tuple(sorted((n, v) for n, v in mi.items() if v and n in MEMINFO_FIELDS))
        return StepObs(step=i, line=op.line, op=op.kind, proc=op.proc, result=result, data=data, procs=procs,
                       vmstat=vm, meminfo=meminfo, notes=tuple(k.log.notes), violations=tuple(violations))


def run_model(trace: Trace, *, design: str = "upstream", arch: str = "x86_64", knobs: Knobs | None = None,
              policy: FailPolicy | None = None, check: bool = False, shadow: bool = False,
              max_retries: int = 1000, keep_kernel: bool = True, observe: str = "full",
              shadow_scope: str = "op") -> ModelRun:
    """Replay ``trace``. ``observe="status"`` skips smaps and the page-map view in the observations (much faster
    on large traces; enough for page-table accounting, comparisons and reports)."""
    k = make_kernel(design=design, arch=arch, knobs=knobs, policy=policy, overrides=trace.header.kernel,
                    max_retries=max_retries)
    sim = Simulator(k, check=check, shadow=shadow, observe=observe, shadow_scope=shadow_scope)
    run = ModelRun(design=design, arch=arch)
    for i, op in enumerate(trace.ops):
        obs = sim.step(i, op)
        run.steps.append(obs)
        run.logs.append(k.log)
        total = sum(mm.pt.pgtables_bytes for mm in k.procs.values() if mm.alive)
        run.peak_pgtables_bytes = max(run.peak_pgtables_bytes, total)
        run.peak_pagetable_bytes = max(run.peak_pagetable_bytes, k.vmstat.nr_pagetable_bytes)
        run.final_pgtables_bytes = total
        run.split_sites.update(k.log.split_sites)
        run.failed_sites.update(k.log.failed_sites)
        run.contract_violations.extend(StepViolation(i, op.line, v) for v in obs.violations)
    if keep_kernel:
        run.kernel = k
    return run
