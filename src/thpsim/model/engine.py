"""The model engine: replays a resolved trace on a simulated kernel and emits one observation per step.

Pure: no I/O, no clock, randomness only through the seeded fault-injection policy. Syscall results are the
values Linux returns (an arena offset for mmap/mremap, 0, or an errno name); user accesses report "SIGSEGV" or
"OOM" when the kernel would. With ``check=True`` the invariants are verified after every step and a violation
raises :class:`InvariantViolation` carrying a replayable trace prefix; with ``shadow=True`` the data contract of
every syscall is checked against shadow memory and violations are reported in the observation.
"""

from __future__ import annotations

import errno as _errno
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

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
    memory,
    migrate_device,
    mlock,
    mmap,
    mprotect,
    mremap,
    task_mmu,
    userfaultfd,
    vmscan,
)
from thpsim.model.arch import get_arch
from thpsim.model.design import get_design
from thpsim.model.folio import content_write, read_digest
from thpsim.model.huge_memory import deferred_split_scan
from thpsim.model.kernel import Kernel, StepLog
from thpsim.model.knobs import Knobs
from thpsim.model.page_alloc import INJECT_POINTS, FailPolicy
from thpsim.model.shadow import Shadow, compare
from thpsim.model.vma import VM_DONTCOPY, VM_WIPEONFORK
from thpsim.observation import MEMINFO_FIELDS, VMSTAT_FIELDS, StepObs, no_process_note
from thpsim.trace.format import ARENA_BASE, PROTS, Op, Trace, dumps_op

VMSTAT_REPORTED = frozenset(VMSTAT_FIELDS)


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
    violations: list[str] = field(default_factory=list)

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
        self.baseline_events: Counter[str] = Counter()

    # ---- one step --------------------------------------------------------------------------------------------
    def step(self, i: int, op: Op) -> StepObs:
        k = self.k
        k.log = StepLog()
        result: int | str | None
        data: str | None = None
        if op.inject is not None:
            k.alloc.arm(INJECT_POINTS[op.inject.at], op.inject.times)
        try:
            result, data = self._do(op)
        except LivelockDetected as e:
            result = "LIVELOCK"
            k.log.notes.append(str(e))
        finally:
            injected = k.alloc.disarm() if op.inject is not None else ()
        self.ops_done.append(op)
        violations: list[str] = []
        if self.shadow is not None:
            scope = self._scope(op)
            for name in self.order:
                mm = k.procs.get(name)
                if mm is None or not mm.alive:
                    continue
                if scope is None:
                    violations += compare(k, mm, self.shadow, self.base)
                elif name == op.proc:
                    violations += compare(k, mm, self.shadow, self.base, scope)
        if self.check:
            errs = invariants.check(k)
            if errs:
                prefix = "\n".join(dumps_op(o) for o in self.ops_done)
                raise InvariantViolation("; ".join(errs[:5]), step=i, trace_prefix=prefix)
        obs = self.observe(i, op, result, data, violations)
        return replace(obs, injected=injected) if injected else obs

    def _scope(self, op: Op) -> list[tuple[int, int]] | None:
        """Where this op can change what the program reads (None: anywhere, in any process).

        With ``shadow_scope="op"`` (the default) a data-contract violation is reported at the step whose op
        caused it, by comparing only that range; ``"all"`` compares every page of every process every step.
        """
        if self.shadow_scope == "all" or op.kind in ("fork", "khugepaged", "shrink_deferred", "reclaim",
                                                      "migrate", "gup", "expect", "exit"):
            return None if op.kind != "exit" else []
        pg = self.k.page
        n = max(op.length, op.new_length)
        starts = [self.base + op.start] + ([self.base + op.dest] if op.dest is not None else [])
        return [(a - a % pg, -(-(a + n) // pg) * pg) for a in starts]   # whole pages

    def observe(self, i: int, op: Op, result: int | str | None, data: str | None,
                violations: list[str]) -> StepObs:
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

    # ---- dispatch --------------------------------------------------------------------------------------------
    def _do(self, op: Op) -> tuple[int | str | None, str | None]:
        k = self.k
        mm = k.procs.get(op.proc)
        if mm is None or not mm.alive:
            # e.g. the fork that should have created it failed (ENOMEM): nothing to run it in
            k.log.notes.append(no_process_note(op.proc))
            return None, None
        a = self.base + op.start
        sh = self.shadow
        kind = op.kind
        if kind == "mmap":
            rc = mmap.do_mmap(k, mm, a, op.length, PROTS[op.prot], op.flags)
            if rc >= 0:
                if sh:
                    sh.discard(op.proc, a, a + op.length, "mmap")
                return rc - self.base, None
            return _result(rc), None
        if kind == "munmap":
            rc = mmap.do_munmap(k, mm, a, op.length)
            if rc == 0 and sh:
                sh.discard(op.proc, a, a + op.length, "munmap")
            return _result(rc), None
        if kind == "mprotect":
            return _result(mprotect.do_mprotect(k, mm, a, op.length, PROTS[op.prot])), None
        if kind == "mremap":
            dest = None if op.dest is None else self.base + op.dest
            rc = mremap.do_mremap(k, mm, a, op.length, op.new_length, op.flags, dest)
            if rc >= 0:
                if sh:
                    self._shadow_mremap(op, a, rc)
                return rc - self.base, None
            return _result(rc), None
        if kind == "mlock":
            return _result(mlock.do_mlock(k, mm, a, op.length, op.flags)), None
        if kind == "munlock":
            return _result(mlock.do_munlock(k, mm, a, op.length)), None
        if kind == "madvise":
            end = a + op.length
            hole = not mm.vmas.covered(a, end)
            rc = madvise.do_madvise(k, mm, a, op.length, op.advice)
            if sh and (rc == 0 or (rc == -_errno.ENOMEM and hole)):
                # ENOMEM for a hole: madvise_walk_vmas still applied the advice to every mapped part
                mapped = [(max(v.start, a), min(v.end, end)) for v in mm.vmas.overlapping(a, end)] if rc else \
                    [(a, end)]
                why = f"MADV_{op.advice.upper()} returned {'0' if rc == 0 else 'ENOMEM (hole)'}"
                for lo, hi in mapped:
                    if op.advice in ("dontneed", "dontneed_locked", "guard_install"):
                        if rc == 0 or not k.design.split_can_fail:
                            sh.discard(op.proc, lo, hi, why)
                        else:   # lazy designs: the ENOMEM may also be a failed split; data or zero
                            sh.lazyfree(op.proc, lo, hi)
                    elif op.advice == "free":
                        sh.lazyfree(op.proc, lo, hi)
            return _result(rc), None
        if kind in ("write", "read"):
            res, raw, pages = memory.access(k, mm, a, a + op.length, write=kind == "write", stride=op.stride,
                                            fill=op.fill, byte=op.byte)
            if kind == "write" and sh:
                for pg, offsets, full in pages:
                    old = sh.proc(op.proc).get(pg, (0, ()))
                    new = content_write(old, None if full else dict.fromkeys(offsets or {}, op.byte),
                                        op.byte if full else None)
                    sh.write(op.proc, pg, new, "write")
            return res, (read_digest(raw) if kind == "read" and res == 0 else None)
        if kind == "fork":
            rc = fork.do_fork(k, mm, op.child)
            if rc == 0:
                self.order.append(op.child)
                if sh:
                    skip = [(v.start, v.end) for v in mm.vmas if v.flags & (VM_DONTCOPY | VM_WIPEONFORK)]
                    sh.fork(op.proc, op.child, skip)
            return _result(rc), None
        if kind == "exit":
            names = [n for n in self.order if n != "main"] + ["main"] if op.proc == "main" else [op.proc]
            for n in names:
                m = k.procs.get(n)
                if m is None or not m.alive:
                    continue
                gup.unpin_all(k, m)
                kexit.exit_mmap(k, m)
                if self.check:
                    errs = invariants.check_exited(k, m)
                    if errs:
                        raise InvariantViolation("; ".join(errs), trace_prefix="\n".join(
                            dumps_op(o) for o in [*self.ops_done, op]))
                if sh:
                    sh.drop(n)
            return 0, None
        if kind == "khugepaged":
            return khugepaged.khugepaged_pass(k), None
        if kind == "shrink_deferred":
            return deferred_split_scan(k), None
        if kind == "reclaim":
            outs = vmscan.reclaim_range(k, mm, a, a + op.length, memalloc=True, skip_shared=False, caller="kswapd")
            return sum(1 for o in outs if o in ("swapped", "discarded")), None
        if kind == "gup":
            return _result(gup.get_user_pages(k, mm, a, a + op.length, op.flags)), None
        if kind == "uffd_move":
            assert op.dest is not None
            rc, moved = userfaultfd.move_pages(k, mm, a, self.base + op.dest, op.length)
            if sh and moved:
                sh.move(op.proc, a, self.base + op.dest, moved)
            return (_result(rc) if rc else moved), None
        if kind == "uffd_wp":
            return _result(userfaultfd.writeprotect(k, mm, a, a + op.length)), None
        if kind == "pagemap_scan_wp":
            return _result(task_mmu.pagemap_scan_wp(k, mm, a, a + op.length)), None
        if kind == "migrate":
            return _result(migrate_device.migrate_vma(k, mm, a, a + op.length)), None
        if kind == "expect":
            return None, None
        raise AssertionError(f"unhandled op {kind}")

    def _shadow_mremap(self, op: Op, old: int, new: int) -> None:
        sh = self.shadow
        assert sh is not None
        keep = min(op.length, op.new_length)
        if op.new_length < op.length:
            sh.discard(op.proc, old + op.new_length, old + op.length, "mremap shrink")
        if new != old:
            # MREMAP_FIXED (and DONTUNMAP) unmap whatever was at the destination first
            sh.discard(op.proc, new, new + op.new_length, "mremap to a fixed destination")
            sh.move(op.proc, old, new, keep)
            if "dontunmap" not in op.flags:
                sh.discard(op.proc, old, old + op.length, "mremap")
            else:
                sh.discard(op.proc, old, old + op.length, "MREMAP_DONTUNMAP")
        if op.new_length > op.length:
            sh.discard(op.proc, new + op.length, new + op.new_length, "mremap grow")


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
        run.violations.extend(f"step {i} (line {op.line}): {v}" for v in obs.violations)
    if keep_kernel:
        run.kernel = k
    return run
