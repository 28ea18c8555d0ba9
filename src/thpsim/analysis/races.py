"""Race exploration at the PMD split's lock boundaries: small scenarios of two threads whose operations are cut
into the atomic steps the kernel's locks allow, run on the model kernel in every interleaving.

A thread is a list of :class:`Step` (a label naming the kernel function, a guard that says whether the step can
run — a lock it needs is free — and an action on the model). :func:`explore` runs a depth-first search over
every interleaving of the enabled steps, pruning states it has already seen (a fingerprint of the page tables,
VMAs, counters, locks and thread positions), and checks the model's invariants (:mod:`thpsim.model.invariants`:
a huge PMD inside one VMA, no leaked or double-freed table, mapcounts, RSS) plus the scenario's own check (the
data a thread wrote) in every final state. A schedule that breaks one is a :class:`RaceFinding` that
:func:`replay` runs again step by step.

Locks modelled: mmap_lock (readers/writer), the per-VMA lock (``lock_vma_under_rcu`` reads it unless the VMA was
write-locked in this mmap write cycle — then the fault falls back to mmap_lock; ``vma_start_write`` waits for
readers), and the PMD lock (each step that takes it is one atomic step). Which order ``__split_vma`` runs
``vma_adjust_trans_huge`` and ``vma_start_write`` in is the design's (``Design.split_vma_order``): the lazy family
carries v3 02/24, which moved the PMD split to the top of ``__split_vma``, before ``vma_start_write()``;
``lazy-vma-lock-first`` write-locks first, as upstream does.

Follows 7.3.4 (mm/vma.c, mm/memory.c lock_vma_under_rcu, mm/huge_memory.c, mm/khugepaged.c, kernel/fork.c
dup_mmap) and v3 02/24 and 17/24. Left out: the mmap_lock fairness and RCU grace periods, TLB flushes, the
fault-around and retry paths other than the per-VMA-lock fallback, everything outside these scenarios. Nothing
here prints.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from thpsim.errors import ThpsimError
from thpsim.model import fork, huge_memory, invariants, khugepaged, madvise, memory, mmap, uaccess
from thpsim.model.design import SplitVmaOrder
from thpsim.model.engine import make_kernel
from thpsim.model.folio import content_byte
from thpsim.model.kernel import MM, Kernel
from thpsim.model.knobs import Knobs
from thpsim.model.pgtable import HugePmd, PteTable, SwapPmd
from thpsim.trace.format import ARENA_BASE

__all__ = ["SCENARIOS", "RaceFinding", "RaceResult", "RaceState", "Scenario", "Step", "explore", "format_races",
           "replay"]

A = ARENA_BASE
K = 4096
M = 1 << 20
RW = 3


@dataclass
class RaceState:
    """Everything an interleaving can change: the model kernel, each thread's position and locals, the locks."""

    k: Kernel
    pcs: list[int]
    local: list[dict[str, object]]
    mmap_readers: int = 0
    mmap_writer: int | None = None
    vma_readers: dict[int, int] = field(default_factory=dict)   # VMA start -> per-VMA-lock readers
    vma_wlocked: set[int] = field(default_factory=set)          # VMA starts write-locked in this mmap cycle

    @property
    def mm(self) -> MM:
        return self.k.procs["main"]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(repr((self.pcs, [sorted(d.items()) for d in self.local], self.mmap_readers, self.mmap_writer,
                       sorted(self.vma_readers.items()), sorted(self.vma_wlocked))).encode())
        for name, mm in sorted(self.k.procs.items()):
            h.update(name.encode())
            h.update(repr([(v.start, v.end, v.flags) for v in mm.vmas]).encode())
            for idx, s in sorted(mm.pt.slots.items()):
                if isinstance(s, HugePmd):
                    h.update(repr((idx, "H", s.folio.id if s.folio else None, s.write)).encode())
                elif isinstance(s, SwapPmd):
                    h.update(repr((idx, "S", s.base, s.exclusive)).encode())
                else:
                    h.update(repr((idx, "T", sorted((i, e.kind, e.folio.id if e.folio else None, e.idx, e.write)
                                                    for i, e in s.ptes.items()))).encode())
            h.update(repr((mm.pt.nr_ptes, mm.pt.nr_pmds, mm.pt.deposits(), mm.anon_pages)).encode())
        h.update(repr((sorted(self.k.vmstat.events.items()), self.k.vmstat.nr_pagetable_bytes)).encode())
        return h.hexdigest()


Guard = Callable[[RaceState, int], bool]
Action = Callable[[RaceState, int], None]


def _always(st: RaceState, me: int) -> bool:
    return True


@dataclass(frozen=True)
class Step:
    label: str                 # the kernel function (and lock) this atomic step stands for
    action: Action
    guard: Guard = _always


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    setup: Callable[[Kernel], None]
    threads: Callable[[Kernel], tuple[tuple[str, tuple[Step, ...]], ...]]   # (name, steps) per thread
    check: Callable[[RaceState], list[str]] = lambda st: []


@dataclass(frozen=True)
class RaceFinding:
    scenario: str
    design: str
    schedule: tuple[str, ...]      # thread name per step, in order
    steps: tuple[str, ...]         # "thread: label" per step
    broken: tuple[str, ...]        # the invariants the final state breaks


@dataclass(frozen=True)
class RaceResult:
    scenario: str
    design: str
    threads: tuple[str, ...]
    steps_per_thread: tuple[int, ...]
    interleavings: int             # complete schedules the locks allow (counted through the state graph)
    states: int                    # distinct states visited
    final_states: int              # distinct final states (each checked)
    findings: tuple[RaceFinding, ...]


# ---- lock steps ------------------------------------------------------------------------------------------------
def _vma_start(st: RaceState, addr: int) -> int:
    v = st.mm.vmas.find(addr)
    if v is None:
        raise AssertionError(f"no VMA at {addr:#x}")
    return v.start


def mmap_write_lock() -> Step:
    def act(st: RaceState, me: int) -> None:
        st.mmap_writer = me
    return Step("mmap_write_lock", act, lambda st, me: st.mmap_writer is None and st.mmap_readers == 0)


def mmap_write_unlock() -> Step:
    def act(st: RaceState, me: int) -> None:
        st.mmap_writer = None
        st.vma_wlocked.clear()                # vma_end_write_all(): the mm_lock_seq moves on
    return Step("mmap_write_unlock", act)


def vma_start_write(addr: int) -> Step:
    def act(st: RaceState, me: int) -> None:
        st.vma_wlocked.add(_vma_start(st, addr))
    return Step("vma_start_write", act,
                lambda st, me: st.vma_readers.get(_vma_start(st, addr), 0) == 0)


def lock_vma_under_rcu(addr: int) -> Step:
    """The per-VMA read lock, or (the VMA is write-locked) the fallback to mmap_read_lock, taken in the next
    step when no writer holds mmap_lock."""
    def act(st: RaceState, me: int) -> None:
        start = _vma_start(st, addr)
        if start in st.vma_wlocked:
            st.local[me]["lock"] = "mmap"
        else:
            st.local[me]["lock"] = start
            st.vma_readers[start] = st.vma_readers.get(start, 0) + 1
    return Step("lock_vma_under_rcu", act)


def _locked(step: Step) -> Step:
    """The step runs under the thread's VMA read lock, or first takes mmap_read_lock (the fallback)."""
    def guard(st: RaceState, me: int) -> bool:
        return st.local[me].get("lock") != "mmap" or st.mmap_writer is None

    def act(st: RaceState, me: int) -> None:
        if st.local[me].get("lock") == "mmap" and not st.local[me].get("mmap_held"):
            st.local[me]["mmap_held"] = True
            st.mmap_readers += 1
        step.action(st, me)
    return Step(step.label, act, lambda st, me: guard(st, me) and step.guard(st, me))


def unlock_vma() -> Step:
    def act(st: RaceState, me: int) -> None:
        lock = st.local[me].pop("lock", None)
        if st.local[me].pop("mmap_held", False):
            st.mmap_readers -= 1
        elif isinstance(lock, int):
            st.vma_readers[lock] -= 1
            if not st.vma_readers[lock]:
                del st.vma_readers[lock]
    return Step("vma_end_read", act)


# ---- model steps -------------------------------------------------------------------------------------------------
def _fault(addr: int, byte: int) -> Step:
    def act(st: RaceState, me: int) -> None:
        rc = uaccess.access(st.k, st.mm, addr, addr + 1, write=True, stride=K, fill=False, byte=byte)[0]
        st.local[me]["fault"] = rc
    return _locked(Step("handle_mm_fault (do_huge_pmd_anonymous_page)", act))


def _split_vma_steps(k: Kernel, addr: int) -> tuple[Step, ...]:
    """__split_vma(vma, addr) under mmap_write_lock, in the design's order (``split_vma_order``): v3 02/24's (PMD
    split, then vma_start_write) or upstream's (vma_start_write, then the PMD split)."""
    def adjust(st: RaceState, me: int) -> None:
        v = st.mm.vmas.find(addr)
        assert v is not None
        st.local[me]["adjust"] = huge_memory.vma_adjust_trans_huge(st.k, st.mm, v, v.start, addr, None,
                                                                   caller="__split_vma")

    def split(st: RaceState, me: int) -> None:
        if st.local[me].get("adjust"):
            return                             # -ENOMEM: nothing split
        v = st.mm.vmas.find(addr)
        assert v is not None
        st.mm.vmas.split_at(v, addr)

    pmd = Step("vma_adjust_trans_huge", adjust)
    if k.design.split_vma_order is SplitVmaOrder.SPLIT_THEN_LOCK:     # v3 02/24
        return (mmap_write_lock(), pmd, vma_start_write(addr), Step("vma_complete (the VMA split)", split),
                mmap_write_unlock())
    return (mmap_write_lock(), vma_start_write(addr), pmd, Step("vma_complete (the VMA split)", split),
            mmap_write_unlock())


def _split_huge_pmd_steps(addr: int) -> tuple[Step, Step]:
    """split_huge_pmd(): the lockless pmd_is_huge() test and (lazy) pte_alloc_one() before the PMD lock, then
    under the lock the re-check, the split or the unused table's pte_free()."""
    def alloc(st: RaceState, me: int) -> None:
        haddr = addr & ~(st.k.pmd_size - 1)
        if isinstance(st.mm.pt.slot(haddr), HugePmd):
            st.local[me]["table"] = huge_memory.split_pgtable_alloc(st.k, "zap_pmd_range")
        else:
            st.local[me]["table"] = None

    def locked(st: RaceState, me: int) -> None:
        haddr = addr & ~(st.k.pmd_size - 1)
        table = st.local[me].pop("table", None)
        if table is None or (isinstance(table, int) and table < 0):
            return
        s = st.mm.pt.slot(haddr)
        v = st.mm.vmas.find(haddr)
        if isinstance(s, HugePmd) and v is not None:
            huge_memory.__split_huge_pmd_locked(st.k, st.mm, v, haddr, s, caller="zap_pmd_range")
        elif table:
            st.k.pte_free()                  # no longer huge: the fresh table is freed
    return (_locked(Step("__split_huge_pmd: pte_alloc_one (before the PMD lock)", alloc)),
            _locked(Step("__split_huge_pmd: PMD lock, re-check, split", locked)))


def _zap_ptes(start: int, end: int) -> Step:
    def act(st: RaceState, me: int) -> None:
        s = st.mm.pt.slot(start)
        if isinstance(s, PteTable):
            memory.zap_pte_range(st.k, st.mm, s, start, end)
    return _locked(Step("zap_pte_range", act))


def _zap_range(start: int, end: int, label: str = "zap_pmd_range") -> Step:
    """MADV_DONTNEED's zap of [start, end) as one step (a partial huge PMD is split under its lock)."""
    def act(st: RaceState, me: int) -> None:
        v = st.mm.vmas.find(start)
        assert v is not None
        memory.zap_pmd_range(st.k, st.mm, v, start, end)
    return _locked(Step(label, act))


def _thp_region(k: Kernel, size: int = 4 * M) -> MM:
    mm = k.new_mm("main")
    assert mmap.do_mmap(k, mm, A, size, RW, ()) == A
    assert madvise.do_madvise(k, mm, A, size, "hugepage") == 0
    return mm


def _write(k: Kernel, mm: MM, addr: int, byte: int) -> None:
    rc = uaccess.access(k, mm, addr, addr + 1, write=True, stride=K, fill=False, byte=byte)[0]
    assert rc == 0


def _byte_at(st: RaceState, addr: int) -> int | None:
    """The byte a read at addr would see without faulting (None if nothing is mapped there)."""
    hit = uaccess.translate(st.k, st.mm, addr, False)
    if hit is None:
        return None
    f, idx, _entry = hit
    return 0 if f is None else content_byte(f.content(idx), addr % K)


# ---- the scenarios -----------------------------------------------------------------------------------------------
def _s1_setup(k: Kernel) -> None:
    mm = _thp_region(k)
    _write(k, mm, A + 2 * M, 1)          # the second PMD's THP: the VMA has an anon_vma (per-VMA-lock faults)


def _s1_threads(k: Kernel) -> tuple[tuple[str, tuple[Step, ...]], ...]:
    return (("A", _split_vma_steps(k, A + M)),
            ("B", (lock_vma_under_rcu(A), _fault(A, 7), unlock_vma())))


def _s2_setup(k: Kernel) -> None:
    mm = _thp_region(k)
    _write(k, mm, A, 1)


def _s2_threads(k: Kernel) -> tuple[tuple[str, tuple[Step, ...]], ...]:
    alloc, locked = _split_huge_pmd_steps(A + 4 * K)
    return (("A", (lock_vma_under_rcu(A), alloc, locked, _zap_ptes(A + 4 * K, A + 8 * K), unlock_vma())),
            ("B", (lock_vma_under_rcu(A), _zap_range(A, A + 2 * M, "zap_pmd_range (zap_huge_pmd)"), unlock_vma())))


def _s3_threads(k: Kernel) -> tuple[tuple[str, tuple[Step, ...]], ...]:
    a1, a2 = _split_huge_pmd_steps(A + 4 * K)
    b1, b2 = _split_huge_pmd_steps(A + M)
    return (("A", (lock_vma_under_rcu(A), a1, a2, _zap_ptes(A + 4 * K, A + 8 * K), unlock_vma())),
            ("B", (lock_vma_under_rcu(A), b1, b2, _zap_ptes(A + M, A + M + 4 * K), unlock_vma())))


def _s3_check(st: RaceState) -> list[str]:
    errs = []
    for addr in (A + 4 * K, A + M):
        if _byte_at(st, addr) not in (None, 0):
            errs.append(f"{addr - A:#x} was zapped but still holds data")
    if _byte_at(st, A) != 1:
        errs.append("a page neither thread zapped lost its data")
    return errs


def _s4_threads(k: Kernel) -> tuple[tuple[str, tuple[Step, ...]], ...]:
    def dup(st: RaceState, me: int) -> None:
        st.local[me]["fork"] = fork.do_fork(st.k, st.mm, "child")
    return (("A", (mmap_write_lock(), vma_start_write(A), Step("dup_mmap (copy_page_range)", dup),
                   mmap_write_unlock())),
            ("B", (lock_vma_under_rcu(A + 2 * M), _fault(A + 2 * M, 9), unlock_vma())))


def _s4_setup(k: Kernel) -> None:
    mm = _thp_region(k)
    _write(k, mm, A, 1)


def _s4_check(st: RaceState) -> list[str]:
    return [] if _byte_at(st, A + 2 * M) == 9 else ["the fault's write was lost"]


def _s5_setup(k: Kernel) -> None:
    mm = k.new_mm("main")
    assert mmap.do_mmap(k, mm, A, 2 * M, RW, ()) == A
    for i in range(0, 2 * M, K):
        _write(k, mm, A + i, 1)              # 512 small pages (THP off for this VMA until now)
    assert madvise.do_madvise(k, mm, A, 2 * M, "hugepage") == 0


def _s5_threads(k: Kernel) -> tuple[tuple[str, tuple[Step, ...]], ...]:
    def scan(st: RaceState, me: int) -> None:
        v = st.mm.vmas.find(A)
        assert v is not None
        st.local[me]["scan"] = khugepaged.scan_pmd(st.k, st.mm, v, A, is_khugepaged=True)

    def collapse(st: RaceState, me: int) -> None:
        v = st.mm.vmas.find(A)
        assert v is not None
        if st.local[me].get("scan") != khugepaged.SCAN_SUCCEED:
            return
        # hugepage_vma_revalidate + __collapse_huge_page_isolate: the scan again, under the write lock
        if khugepaged.scan_pmd(st.k, st.mm, v, A, is_khugepaged=True) == khugepaged.SCAN_SUCCEED:
            st.local[me]["collapse"] = khugepaged.collapse_huge_page(st.k, st.mm, v, A)

    def read_lock(st: RaceState, me: int) -> None:
        st.mmap_readers += 1

    def read_unlock(st: RaceState, me: int) -> None:
        st.mmap_readers -= 1
    return (("khugepaged", (Step("mmap_read_lock", read_lock, lambda st, me: st.mmap_writer is None),
                            Step("hpage_collapse_scan_pmd", scan), Step("mmap_read_unlock", read_unlock),
                            mmap_write_lock(), vma_start_write(A), Step("collapse_huge_page", collapse),
                            mmap_write_unlock())),
            ("B", (lock_vma_under_rcu(A), _zap_range(A + 4 * K, A + 8 * K), unlock_vma())))


def _s5_check(st: RaceState) -> list[str]:
    errs = []
    if _byte_at(st, A + 4 * K) not in (None, 0):
        errs.append("the zapped page came back with its old data")
    if _byte_at(st, A + 12 * K) != 1:
        errs.append("a page nobody zapped lost its data")
    return errs


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("split-vma-vs-vma-lock-fault",
             "__split_vma at 1M of a [0, 4M) MADV_HUGEPAGE VMA whose first PMD is none, while a per-VMA-lock "
             "write fault at 0 installs a THP (do_huge_pmd_anonymous_page)", _s1_setup, _s1_threads),
    Scenario("split-alloc-vs-zap",
             "MADV_DONTNEED [4K, 8K) of a THP (split_huge_pmd: pte_alloc_one before the PMD lock, re-check "
             "under it) while another thread's MADV_DONTNEED zaps the whole PMD", _s2_setup, _s2_threads),
    Scenario("split-vs-split",
             "two partial MADV_DONTNEEDs of one THP ([4K, 8K) and [1M, 1M+4K)) split it at the same time: each "
             "allocates a table before the PMD lock, one finds it no longer huge", _s2_setup, _s3_threads,
             _s3_check),
    Scenario("fork-vs-vma-lock-fault",
             "fork (dup_mmap write-locks the VMA, copy_huge_pmd) while a per-VMA-lock fault installs a THP in "
             "the second PMD of the same VMA", _s4_setup, _s4_threads, _s4_check),
    Scenario("collapse-vs-zap",
             "khugepaged (scan under mmap_read_lock, collapse under mmap_write_lock after revalidation) while a "
             "per-VMA-lock MADV_DONTNEED zaps one page of the range", _s5_setup, _s5_threads, _s5_check),
)}


# ---- the search --------------------------------------------------------------------------------------------------
def _start(scn: Scenario, design: str) -> tuple[RaceState, tuple[tuple[str, tuple[Step, ...]], ...]]:
    k = make_kernel(design=design, knobs=Knobs(thp_enabled="madvise"))
    scn.setup(k)
    threads = scn.threads(k)
    return RaceState(k, [0] * len(threads), [{} for _ in threads]), threads


def _final_errors(scn: Scenario, st: RaceState) -> list[str]:
    return invariants.check(st.k) + scn.check(st)


def explore(name: str, design: str = "lazy", *, max_states: int = 200_000) -> RaceResult:
    """Every interleaving of scenario ``name`` under ``design``; the broken invariants found, as schedules.

    A depth-first search with memoisation on the state fingerprint: each distinct state is expanded once, and
    the number of complete schedules is counted through it (so ``interleavings`` is the exact number of
    schedules the locks allow, ``states`` the distinct states)."""
    scn = _scenario(name)
    init, threads = _start(scn, design)
    names = tuple(t for t, _ in threads)
    paths: dict[str, int] = {}
    findings: dict[tuple[str, ...], RaceFinding] = {}
    terminals = 0

    def visit(st: RaceState, sched: tuple[int, ...]) -> int:
        nonlocal terminals
        fp = st.fingerprint()
        if fp in paths:
            return paths[fp]
        if len(paths) >= max_states:
            raise ThpsimError(f"race scenario {name}: more than {max_states} states; the scenario is too large")
        paths[fp] = 0
        enabled = [i for i, (_, steps) in enumerate(threads)
                   if st.pcs[i] < len(steps) and steps[st.pcs[i]].guard(st, i)]
        if not enabled:
            terminals += 1
            stuck = [names[i] for i, (_, steps) in enumerate(threads) if st.pcs[i] < len(steps)]
            errs = [f"deadlock: {', '.join(stuck)} cannot go on"] if stuck else _final_errors(scn, st)
            if errs and tuple(errs) not in findings:
                findings[tuple(errs)] = RaceFinding(scn.name, design, tuple(names[i] for i in sched),
                                                    _labels(threads, sched), tuple(errs))
            paths[fp] = 1
            return 1
        total = 0
        for n, i in enumerate(enabled):
            nxt = st if n == len(enabled) - 1 else copy.deepcopy(st)
            _run_step(nxt, threads, i)
            total += visit(nxt, (*sched, i))
        paths[fp] = total
        return total

    count = visit(init, ())
    return RaceResult(scn.name, design, names, tuple(len(s) for _, s in threads), count, len(paths), terminals,
                      tuple(sorted(findings.values(), key=lambda f: f.schedule)))


def _run_step(st: RaceState, threads: tuple[tuple[str, tuple[Step, ...]], ...], i: int) -> None:
    step = threads[i][1][st.pcs[i]]
    step.action(st, i)
    st.pcs[i] += 1


def _labels(threads: tuple[tuple[str, tuple[Step, ...]], ...], sched: tuple[int, ...]) -> tuple[str, ...]:
    pcs = [0] * len(threads)
    out = []
    for i in sched:
        out.append(f"{threads[i][0]}: {threads[i][1][pcs[i]].label}")
        pcs[i] += 1
    return tuple(out)


def _scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ThpsimError(f"unknown race scenario {name!r}; scenarios: {', '.join(SCENARIOS)}") from None


def replay(name: str, design: str, schedule: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Run one schedule (thread names in order; the remaining steps of each thread run in order after it):
    the steps run and the invariants the final state breaks."""
    scn = _scenario(name)
    st, threads = _start(scn, design)
    names = [t for t, _ in threads]
    order: list[int] = []
    for t in schedule:
        if t not in names:
            raise ThpsimError(f"schedule names thread {t!r}; scenario {name} has {', '.join(names)}")
        i = names.index(t)
        steps = threads[i][1]
        if st.pcs[i] >= len(steps):
            raise ThpsimError(f"schedule step {len(order) + 1}: thread {t} has no steps left")
        if not steps[st.pcs[i]].guard(st, i):
            raise ThpsimError(f"schedule step {len(order) + 1}: thread {t} is blocked at "
                              f"{steps[st.pcs[i]].label} (a lock it needs is held)")
        _run_step(st, threads, i)
        order.append(i)
    for i, (_, steps) in enumerate(threads):
        while st.pcs[i] < len(steps) and steps[st.pcs[i]].guard(st, i):
            _run_step(st, threads, i)
            order.append(i)
    return _labels(threads, tuple(order)), tuple(_final_errors(scn, st))


def format_races(results: list[RaceResult]) -> str:
    """The exploration table, then every finding with its replayable schedule."""
    lines = [f"{'scenario':<30} {'design':<22} {'threads x steps':<18} {'interleavings':>13} {'states':>7} "
             f"{'findings':>8}"]
    for r in results:
        ts = " + ".join(f"{t}:{n}" for t, n in zip(r.threads, r.steps_per_thread, strict=True))
        lines.append(f"{r.scenario:<30} {r.design:<22} {ts:<18} {r.interleavings:>13} {r.states:>7} "
                     f"{len(r.findings):>8}")
    for r in results:
        for f in r.findings:
            lines += ["", f"{f.scenario} / {f.design}: {'; '.join(f.broken)}",
                      f"  replay: thpsim races --scenario {f.scenario} --designs {f.design} "
                      f"--replay {','.join(f.schedule)}"]
            lines += [f"  {n:>2}. {s}" for n, s in enumerate(f.steps, 1)]
    if not any(r.findings for r in results):
        lines += ["", "no interleaving breaks an invariant within these scenarios"]
    return "\n".join(lines)
