"""Pass 2 of the strace importer: replay the log's syscalls on a mini address-space model, emitting raw trace ops.

Why a model of its own and not :mod:`thpsim.model`: the importer does not simulate the kernel, it *infers* a
real program's address space from what the log shows. It keeps, per mm, only the segments the log revealed
(anonymous or not, protection, whether the touch policy already wrote them, MADV_DONTFORK), with no page tables,
folios, VMA flags or merging, and it must accept what thpsim.model would refuse: ranges it never saw being
mapped (stack, executable image, vdso), calls on file mappings, addresses chosen by ASLR. Its output is ops in
real addresses; the trace they become is what thpsim.model (and the live engine) then run. Keep the two apart.

Reads the events of :mod:`.lex` (``strace -f -e trace=memory,process``): ``mmap``/``mmap2``, ``brk``,
``munmap``, ``mprotect``/``pkey_mprotect``, ``madvise``, ``mlock``/``mlock2``/``munlock``, ``mremap``,
``clone``/``clone3``/``fork``/``vfork``, ``execve``/``execveat``, ``exit``/``exit_group`` and exit lines; and,
for the ``"perf"`` touch policy, the page faults of :mod:`.faults`, merged in by timestamp.

Policies (docs/workloads.md, "Importing strace logs"):

* **What is imported.** Only anonymous private memory: ``mmap(MAP_PRIVATE|MAP_ANONYMOUS)`` and the brk heap
  (each growth of the break becomes an ``mmap`` of the new pages next to the old heap, each shrink a
  ``munmap``). File mappings, shared anonymous mappings, hugetlb mappings, ranges the log never showed being
  mapped and failed calls are *ignored* and counted. ``munmap``/``mprotect``/``madvise``/``mlock``/``mlock2``/
  ``munlock``/``mremap``/``pkey_mprotect`` are clipped to the anonymous pieces they cover (one op per
  contiguous anonymous run). A ``MAP_FIXED`` mapping over anonymous memory is preceded by an explicit
  ``munmap`` of what it replaces. ``mremap`` follows mm/mremap.c's cases: shrink, grow in place, and a move
  (MAYMOVE / FIXED / DONTUNMAP) that becomes a ``fixed`` mremap to where the kernel put it.
* **Processes.** The first pid of the log is ``main``. ``clone``/``clone3`` *without* ``CLONE_VM`` and
  ``fork`` become a ``fork`` op whose child is named ``p<PID>``; ``clone`` with ``CLONE_VM`` (threads,
  ``vfork``, ``posix_spawn``) shares the parent's proc. A successful ``execve`` by the owner of an mm replaces
  it: all its anonymous regions are unmapped (``munmap`` ops) and the process continues under the same proc
  name with the new image. An ``execve`` by a task that only *shares* an mm (a ``vfork`` child) leaves that
  mm for a fresh one that the trace language cannot create, so that task's later calls are ignored (counted
  as ``exec-of-shared-mm``). A proc gets an ``exit`` op when its last task is gone (``exit_group``,
  ``+++ exited``, ``+++ killed``); ``main``'s exit is emitted last, because the trace language ends with it.
* **Touch policy** (strace shows no page faults). ``"write-all"``: right after every new anonymous writable
  mapping (mmap, brk growth, mremap growth, and the first time an untouched range becomes writable through
  mprotect) one byte per page is written over it. ``"none"``: no writes or reads are added. ``"perf"``: each
  recorded fault inside a tracked anonymous region becomes a one-page ``write`` (error_code bit 1 set) or
  ``read``, and runs of faults of one proc in one segment at a constant page stride (e.g. one per 2 MiB in a
  THP region; descending runs are written ascending) are folded into one op with a ``stride``.

Left out: the kernel's checks and errors (a call the log shows succeeding is taken as it succeeded, a failed
one is ignored), VMA merging and flags other than protection and MADV_DONTFORK, hugetlb, shmem and file contents, userfaultfd,
``mlockall``, ``mincore``, ``msync``, NUMA policy calls, ``process_madvise``, ``mseal`` and the like (counted as
"unsupported NAME"), and any mm that is not created by forking (the trace language has no other way).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from thpsim.trace import format as fmt
from thpsim.trace.strace.faults import Fault
from thpsim.trace.strace.lex import Event, Importer, split_args

__all__ = ["PAGE", "RawOp", "Sim"]

PAGE = fmt.PAGE

_PROT_BITS = {"PROT_READ": 1, "PROT_WRITE": 2, "PROT_EXEC": 4, "PROT_NONE": 0}
_PROT_NAMES = {v: k for k, v in fmt.PROTS.items()}
_MADV_NUM = {
    0: "normal", 1: "random", 2: "sequential", 3: "willneed", 4: "dontneed", 8: "free", 9: "remove",
    10: "dontfork", 11: "dofork", 12: "mergeable", 13: "unmergeable", 14: "hugepage", 15: "nohugepage",
    16: "dontdump", 17: "dodump", 18: "wipeonfork", 19: "keeponfork", 20: "cold", 21: "pageout",
    22: "populate_read", 23: "populate_write", 24: "dontneed_locked", 25: "collapse", 100: "hwpoison",
    101: "soft_offline", 102: "guard_install", 103: "guard_remove",
}
_MEMORY_CALLS = {"mmap", "mmap2", "munmap", "mprotect", "pkey_mprotect", "mremap", "madvise", "mlock", "mlock2",
                 "munlock", "brk"}
_PROCESS_CALLS = {"clone", "clone3", "fork", "vfork", "execve", "execveat", "exit", "exit_group"}


@dataclass
class _Seg:
    """A piece of an address space as far as the log showed it."""

    start: int
    end: int
    anon: bool
    prot: int = 3
    touched: bool = False
    dontfork: bool = False
    dead: bool = False


class _MM:
    """One mm: its segments (sorted, disjoint) and its brk heap; *owner* is the tgid that created it."""

    def __init__(self, owner_tgid: int) -> None:
        self.segs: list[_Seg] = []
        self.brk_start: int | None = None
        self.brk_cur: int | None = None
        self.owner = owner_tgid
        self._cache: _Seg | None = None

    def copy(self, owner_tgid: int) -> _MM:
        mm = _MM(owner_tgid)
        mm.segs = [_Seg(s.start, s.end, s.anon, s.prot, s.touched, s.dontfork) for s in self.segs if
                   not s.dontfork]
        mm.brk_start, mm.brk_cur = self.brk_start, self.brk_cur
        return mm

    def _split_at(self, addr: int) -> None:
        for i, s in enumerate(self.segs):
            if s.start < addr < s.end:
                self.segs.insert(i + 1, _Seg(addr, s.end, s.anon, s.prot, s.touched, s.dontfork))
                s.end = addr
                return

    def pieces(self, start: int, end: int, *, split: bool = False) -> list[_Seg]:
        if split:
            self._split_at(start)
            self._split_at(end)
            return [s for s in self.segs if s.start >= start and s.end <= end]
        return [s for s in self.segs if s.start < end and s.end > start]

    def unmap(self, start: int, end: int) -> list[_Seg]:
        gone = self.pieces(start, end, split=True)
        for s in gone:
            s.dead = True
        self.segs = [s for s in self.segs if not s.dead]
        return gone

    def map(self, seg: _Seg) -> None:
        self.unmap(seg.start, seg.end)
        self.segs.append(seg)
        self.segs.sort(key=lambda s: s.start)

    def lookup(self, addr: int) -> _Seg | None:
        c = self._cache
        if c is not None and not c.dead and c.start <= addr < c.end:
            return c
        for s in self.segs:
            if s.start <= addr < s.end:
                self._cache = s
                return s
        return None


def _runs(segs: Iterable[_Seg], lo: int = 0, hi: int = 1 << 64) -> list[tuple[int, int]]:
    """Contiguous runs of anonymous pieces, clipped to [lo, hi)."""
    out: list[tuple[int, int]] = []
    for s in sorted((s for s in segs if s.anon), key=lambda s: s.start):
        a, b = max(s.start, lo), min(s.end, hi)
        if a >= b:
            continue
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _page_up(x: int) -> int:
    return (x + PAGE - 1) & ~(PAGE - 1)


def _num(s: str) -> int:
    s = s.strip()
    if s in ("NULL", ""):
        return 0
    m = re.match(r"^(0x[0-9a-fA-F]+|\d+)", s)
    if m is None:
        raise ValueError(s)
    return int(m.group(1), 0)


def _prot(s: str) -> int:
    bits = 0
    for part in s.split("|"):
        part = part.strip()
        if part in _PROT_BITS:
            bits |= _PROT_BITS[part]
        elif part.startswith("PROT_"):
            continue      # PROT_GROWSDOWN, PROT_SEM, ...
        else:
            bits |= _num(part) & 7
    return bits & 7


@dataclass(frozen=True)
class _Remap:
    """One successful mremap as the log shows it: the source, its new length, where the kernel put it."""

    old: int
    old_len: int             # page-aligned, as the kernel rounds it
    new: int                 # the call's result
    new_len: int
    dontunmap: bool

    @classmethod
    def read(cls, args: list[str], ret: str) -> _Remap:
        flags = set(args[3].split("|")) if len(args) > 3 else set()
        return cls(_num(args[0]), _page_up(_num(args[1])), _num(ret), _page_up(_num(args[2])),
                   "MREMAP_DONTUNMAP" in flags)

    @property
    def old_end(self) -> int:
        return self.old + self.old_len

    @property
    def new_end(self) -> int:
        return self.new + self.new_len


@dataclass
class RawOp:
    """A trace op in real addresses (``_at``/``_len``/``_to``), before the arena mapping."""

    d: dict[str, Any]
    t: float | None
    line: int
    ranges: tuple[tuple[int, int], ...]      # real address ranges the op names (for the arena mapping)


class Sim:
    """The replay: every task's proc, every proc's mm, the raw ops emitted so far."""

    def __init__(self, imp: Importer, events: list[Event], faults: list[Fault] | None):
        self.imp = imp
        self.events = events
        self.faults = faults
        self.fault_pos = 0
        self.ops: list[RawOp] = []
        self.pid_proc: dict[int, str | None] = {}
        self.tgid: dict[int, int] = {}
        self.proc_pids: dict[str, set[int]] = {}
        self.mms: dict[str, _MM] = {}
        self.procs: dict[str, int] = {}
        self.dead: set[str] = set()
        self.main_exit: RawOp | None = None
        self.unknown_warned: set[int] = set()
        self.gone: set[int] = set()
        self.run_of_faults: dict[str, Any] | None = None
        self.fault_stats: Counter[str] = Counter()

    # -- helpers -----------------------------------------------------------------------------------------

    def emit(self, proc: str, op: str, t: float | None, line: int, ranges: tuple[tuple[int, int], ...] = (),
             **kw: Any) -> None:
        self._flush_fault_run()
        d: dict[str, Any] = {"op": op}
        if proc != "main":
            d["proc"] = proc
        d.update(kw)
        self.ops.append(RawOp(d, t, line, ranges))

    def ranged(self, proc: str, op: str, start: int, end: int, t: float | None, line: int, **kw: Any) -> None:
        if end <= start:
            return
        self.emit(proc, op, t, line, ((start, end),), _at=start, _len=end - start, **kw)

    def new_proc(self, name: str, pid: int, mm: _MM) -> str:
        base, n = name, 1
        while name in self.procs:
            n += 1
            name = f"{base}.{n}"
        self.procs[name] = pid
        self.mms[name] = mm
        self.proc_pids[name] = set()
        return name

    def attach(self, pid: int, proc: str | None, tgid: int) -> None:
        self.gone.discard(pid)
        self.pid_proc[pid] = proc
        self.tgid[pid] = tgid
        if proc is not None:
            self.proc_pids[proc].add(pid)

    def detach(self, pid: int, t: float | None, line: int) -> None:
        self.gone.add(pid)
        proc = self.pid_proc.pop(pid, None)
        self.tgid.pop(pid, None)
        if proc is None or proc in self.dead:
            return
        pids = self.proc_pids[proc]
        pids.discard(pid)
        if not pids:
            self.dead.add(proc)
            if proc == "main":
                self._flush_fault_run()
                self.main_exit = RawOp({"op": "exit"}, t, line, ())
            else:
                self.emit(proc, "exit", t, line)

    def touch(self, proc: str, segs: list[_Seg], t: float | None, line: int) -> None:
        if self.imp.touch != "write-all":
            return
        todo = [s for s in segs if s.anon and s.prot & 2 and not s.touched]
        for s in todo:
            s.touched = True
        for a, b in _runs(todo):
            self.ranged(proc, "write", a, b, t, line)
            self.imp.stats_touch += 1

    # -- faults ------------------------------------------------------------------------------------------

    def faults_until(self, t: float | None) -> None:
        if not self.faults:
            return
        i = self.fault_pos
        n = len(self.faults)
        while i < n and (t is None or self.faults[i][0] < t):
            self._fault(*self.faults[i])
            i += 1
        self.fault_pos = i

    def _fault(self, ft: float, tid: int, addr: int, write: bool) -> None:
        self.fault_stats["seen"] += 1
        proc = self.pid_proc.get(tid)
        if proc is None or proc in self.dead:
            self.fault_stats["other task or process"] += 1
            return
        seg = self.mms[proc].lookup(addr)
        if seg is None or not seg.anon:
            self.fault_stats["not anonymous"] += 1
            return
        if (write and not seg.prot & 2) or not seg.prot:
            self.fault_stats["no access"] += 1
            return
        self.fault_stats["imported"] += 1
        page = addr & ~(PAGE - 1)
        kind = "write" if write else "read"
        run = self.run_of_faults
        if run is not None and run["proc"] == proc and run["kind"] == kind:
            last = run["last"]
            if page == last:
                return
            stride = page - last
            if stride != 0 and (run["stride"] in (None, stride)) and seg is run["seg"]:
                run["stride"] = stride
                run["last"] = page
                return
        self._flush_fault_run()
        self.run_of_faults = {"proc": proc, "kind": kind, "first": page, "last": page, "stride": None,
                              "seg": seg, "t": ft}

    def _flush_fault_run(self) -> None:
        run = self.run_of_faults
        if run is None:
            return
        self.run_of_faults = None
        first, last, stride = run["first"], run["last"], run["stride"] or PAGE
        if stride < 0:      # a descending run (memmove backwards): the same pages, touched in ascending order
            first, last, stride = last, first, -stride
        kw: dict[str, Any] = {}
        if stride != PAGE:
            kw["stride"] = stride
        self.emit(run["proc"], run["kind"], run["t"], 0, ((first, last + PAGE),), _at=first,
                  _len=last + PAGE - first, **kw)
        self.run_of_faults = None

    # -- main loop ---------------------------------------------------------------------------------------

    def run(self) -> None:
        root: int | None = None
        for ev in self.events:
            if self.faults:
                self.faults_until(ev.t)
            if root is None:
                root = ev.pid
                name = self.new_proc("main", ev.pid, _MM(ev.pid))
                self.attach(ev.pid, name, ev.pid)
            if ev.pid not in self.pid_proc:
                if ev.pid in self.gone:   # the '+++ exited' line after exit_group, or a killed thread
                    if ev.kind == "call":
                        self.imp.ignored["after exit"] += 1
                    continue
                if ev.pid not in self.unknown_warned:
                    self.unknown_warned.add(ev.pid)
                    self.imp.warn(ev.line, f"pid {ev.pid} was not created by any clone/fork in the log; its calls "
                                           "are ignored")
                if ev.kind == "call":
                    self.imp.ignored["unknown process"] += 1
                continue
            proc = self.pid_proc[ev.pid]
            if ev.kind == "exit":
                self.detach(ev.pid, ev.t, ev.line)
                continue
            if proc is None:
                self.imp.ignored["exec-of-shared-mm"] += 1
                if ev.name in ("exit", "exit_group"):
                    self.detach(ev.pid, ev.t, ev.line)
                continue
            try:
                self.call(ev, proc)
            except (ValueError, IndexError):
                self.imp.warn(ev.line, f"cannot read the arguments of {ev.name}({ev.args[:60]}); ignored")
                self.imp.ignored["garbled"] += 1
        if self.faults:
            self.faults_until(None)
        self._flush_fault_run()
        if self.main_exit is not None:
            self.ops.append(self.main_exit)

    def call(self, ev: Event, proc: str) -> None:
        name = ev.name
        if name not in _MEMORY_CALLS and name not in _PROCESS_CALLS:
            if name in ("mlockall", "munlockall", "mincore", "msync", "remap_file_pages", "mbind", "shmat",
                        "shmdt", "process_madvise", "set_mempolicy", "get_mempolicy", "migrate_pages",
                        "move_pages", "mseal", "map_shadow_stack", "memfd_secret", "pkey_alloc", "pkey_free"):
                self.imp.ignored[f"unsupported {name}"] += 1
            else:
                self.imp.other += 1
            return
        if name in ("exit", "exit_group"):
            if name == "exit_group":
                tg = self.tgid.get(ev.pid, ev.pid)
                for p in [p for p, g in self.tgid.items() if g == tg and p != ev.pid]:
                    self.detach(p, ev.t, ev.line)
            self.detach(ev.pid, ev.t, ev.line)
            return
        if ev.ret == "?" or ev.ret.startswith("-") or ev.err:
            self.imp.ignored["failed call"] += 1
            return
        args = split_args(ev.args)
        mm = self.mms[proc]
        before = len(self.ops)
        getattr(self, "_" + name.replace("2", "_2"), self._unhandled)(ev, proc, mm, args)
        if len(self.ops) > before:
            self.imp.imported += 1

    def _unhandled(self, ev: Event, proc: str, mm: _MM, args: list[str]) -> None:  # pragma: no cover
        self.imp.other += 1

    # -- memory calls ------------------------------------------------------------------------------------

    def _mmap(self, ev: Event, proc: str, mm: _MM, args: list[str]) -> None:
        length = _page_up(_num(args[1]))
        prot = _prot(args[2])
        flags = set(args[3].split("|"))
        start = _num(ev.ret)
        end = start + length
        anon = bool(flags & {"MAP_ANONYMOUS", "MAP_ANON"})
        shared = bool(flags & {"MAP_SHARED", "MAP_SHARED_VALIDATE"})
        replaced = _runs(mm.pieces(start, end), start, end)
        if not anon or shared or "MAP_HUGETLB" in flags:
            mm.map(_Seg(start, end, False, prot))
            for a, b in replaced:
                self.ranged(proc, "munmap", a, b, ev.t, ev.line)
            reason = "hugetlb mapping" if "MAP_HUGETLB" in flags else (
                "shared mapping" if shared else "file mapping")
            self.imp.ignored[reason] += 1
            return
        for a, b in replaced:
            self.ranged(proc, "munmap", a, b, ev.t, ev.line)
        seg = _Seg(start, end, True, prot)
        mm.map(seg)
        tflags = [f for f, k in (("noreserve", "MAP_NORESERVE"), ("populate", "MAP_POPULATE"),
                                 ("locked", "MAP_LOCKED")) if k in flags]
        kw: dict[str, Any] = {}
        if prot != 3:
            kw["prot"] = _PROT_NAMES[prot]
        if tflags:
            kw["flags"] = tflags
        self.ranged(proc, "mmap", start, end, ev.t, ev.line, **kw)
        self.touch(proc, [seg], ev.t, ev.line)

    _mmap_2 = _mmap

    def _brk(self, ev: Event, proc: str, mm: _MM, args: list[str]) -> None:
        want = _num(args[0]) if args else 0
        got = _num(ev.ret)
        if mm.brk_cur is None:
            mm.brk_start = mm.brk_cur = got
            if want == 0 or want == got:
                return
        if want == 0:
            return
        if got != want:
            self.imp.ignored["failed call"] += 1
            return
        old, new = _page_up(mm.brk_cur or got), _page_up(got)
        mm.brk_cur = got
        if new > old:
            seg = _Seg(old, new, True, 3)
            replaced = _runs(mm.pieces(old, new), old, new)
            for a, b in replaced:
                self.ranged(proc, "munmap", a, b, ev.t, ev.line)
            mm.map(seg)
            self.ranged(proc, "mmap", old, new, ev.t, ev.line, note="brk")
            self.touch(proc, [seg], ev.t, ev.line)
        elif new < old:
            for a, b in _runs(mm.unmap(new, old)):
                self.ranged(proc, "munmap", a, b, ev.t, ev.line, note="brk")

    def _range(self, args: list[str]) -> tuple[int, int]:
        start = _num(args[0])
        return start, start + _page_up(_num(args[1]))

    def _clipped(self, ev: Event, mm: _MM, start: int, end: int, split: bool = False) -> list[_Seg]:
        segs = mm.pieces(start, end, split=split)
        if not any(s.anon for s in segs):
            self.imp.ignored["file mapping" if segs else "untracked range"] += 1
        return segs

    def _munmap(self, ev: Event, proc: str, mm: _MM, args: list[str]) -> None:
        start, end = self._range(args)
        runs = _runs(self._clipped(ev, mm, start, end), start, end)
        mm.unmap(start, end)
        for a, b in runs:
            self.ranged(proc, "munmap", a, b, ev.t, ev.line)

    def _mprotect(self, ev: Event, proc: str, mm: _MM, args: list[str], prot_arg: int = 2) -> None:
        start, end = self._range(args)
        prot = _prot(args[prot_arg])
        segs = self._clipped(ev, mm, start, end, split=True)
        for s in segs:
            s.prot = prot
        for a, b in _runs(segs):
            self.ranged(proc, "mprotect", a, b, ev.t, ev.line, prot=_PROT_NAMES[prot])
        self.touch(proc, segs, ev.t, ev.line)

    def _pkey_mprotect(self, ev: Event, proc: str, mm: _MM, args: list[str]) -> None:
        self._mprotect(ev, proc, mm, args)

    def _madvise(self, ev: Event, proc: str, mm: _MM, args: list[str]) -> None:
        start, end = self._range(args)
        a = args[2].strip()
        adv = a[5:].lower() if a.startswith("MADV_") else _MADV_NUM.get(_num(a), f"0x{_num(a):x}")
        if adv not in fmt.MADVICES:
            self.imp.ignored[f"unsupported madvise {adv}"] += 1
            return
        segs = self._clipped(ev, mm, start, end, split=adv in ("dontfork", "dofork"))
        if adv in ("dontfork", "dofork"):
            for s in segs:
                s.dontfork = adv == "dontfork"
        for a0, b0 in _runs(segs, start, end):
            self.ranged(proc, "madvise", a0, b0, ev.t, ev.line, advice=adv)

    def _mlock(self, ev: Event, proc: str, mm: _MM, args: list[str], op: str = "mlock") -> None:
        start, end = self._range(args)
        kw: dict[str, Any] = {}
        if op == "mlock" and len(args) > 2 and "MLOCK_ONFAULT" in args[2]:
            kw["flags"] = ["onfault"]
        for a, b in _runs(self._clipped(ev, mm, start, end), start, end):
            self.ranged(proc, op, a, b, ev.t, ev.line, **kw)

    def _mlock_2(self, ev: Event, proc: str, mm: _MM, args: list[str]) -> None:
        self._mlock(ev, proc, mm, args)

    def _munlock(self, ev: Event, proc: str, mm: _MM, args: list[str]) -> None:
        self._mlock(ev, proc, mm, args, op="munlock")

    def _mremap(self, ev: Event, proc: str, mm: _MM, args: list[str]) -> None:
        r = _Remap.read(args, ev.ret)
        segs = mm.pieces(r.old, r.old_end, split=True)
        src = [s for s in segs if s.anon]
        if r.old_len == 0 or not src or len(src) != len(segs) or _runs(src) != [(r.old, r.old_end)]:
            # a file mapping, or a range the model cannot express as one anonymous region
            self.imp.ignored["file mapping" if segs else "untracked range"] += 1
            self._mremap_untracked(ev, proc, mm, r)
        elif r.new != r.old:
            self._mremap_move(ev, proc, mm, r, src)
        elif r.new_len < r.old_len:
            self._mremap_shrink(ev, proc, mm, r)
        elif r.new_len > r.old_len:
            self._mremap_grow_in_place(ev, proc, mm, r, src[0].prot)

    def _mremap_untracked(self, ev: Event, proc: str, mm: _MM, r: _Remap) -> None:
        """The source is left alone; if it moved, whatever lands at the destination is unknown (and replaces
        any anonymous memory there)."""
        if r.new == r.old:
            return
        for a, b in _runs(mm.pieces(r.new, r.new_end), r.new, r.new_end):
            self.ranged(proc, "munmap", a, b, ev.t, ev.line)
        mm.map(_Seg(r.new, r.new_end, False))
        if not r.dontunmap:
            mm.unmap(r.old, r.old_end)

    def _mremap_shrink(self, ev: Event, proc: str, mm: _MM, r: _Remap) -> None:
        """Shrink in place: the tail past *new_len* is unmapped (do_mremap's do_munmap of the tail)."""
        mm.unmap(r.old + r.new_len, r.old_end)
        self.ranged(proc, "mremap", r.old, r.old_end, ev.t, ev.line, new_len=r.new_len)

    def _mremap_grow_in_place(self, ev: Event, proc: str, mm: _MM, r: _Remap, prot: int) -> None:
        """Grow in place (the VMA was expandable): the new tail is fresh memory with the region's protection,
        touched by the ``write-all`` policy."""
        self.ranged(proc, "mremap", r.old, r.old_end, ev.t, ev.line, new_len=r.new_len)
        seg = _Seg(r.old_end, r.old + r.new_len, True, prot)
        mm.map(seg)
        self.touch(proc, [seg], ev.t, ev.line)

    def _mremap_move(self, ev: Event, proc: str, mm: _MM, r: _Remap, src: list[_Seg]) -> None:
        """A move to where the kernel put it (MAYMOVE that could not grow in place, FIXED, DONTUNMAP), written
        as a ``fixed`` mremap (mremap_to + move_vma): the destination's anonymous memory outside the source is
        unmapped first, the source's segments move (DONTUNMAP leaves the source mapped but empty), and a grown
        tail is fresh memory, touched by ``write-all`` if all of the source had been."""
        prot, touched = src[0].prot, all(s.touched for s in src)
        for a, b in _runs(mm.pieces(r.new, r.new_end), r.new, r.new_end):
            if not (a >= r.old and b <= r.old_end):
                self.ranged(proc, "munmap", a, b, ev.t, ev.line)
        tflags = ["fixed", "maymove"] + (["dontunmap"] if r.dontunmap else [])
        self.emit(proc, "mremap", ev.t, ev.line, ((r.old, r.old_end), (r.new, r.new_end)), _at=r.old,
                  _len=r.old_len, new_len=r.new_len, flags=tflags, _to=r.new)
        moved = [_Seg(s.start - r.old + r.new, min(s.end, r.old + r.new_len) - r.old + r.new, True, s.prot,
                      s.touched, s.dontfork) for s in src if s.start < r.old + r.new_len]
        if r.dontunmap:
            for s in src:
                s.touched = False
        else:
            mm.unmap(r.old, r.old_end)
        mm.unmap(r.new, r.new_end)
        for s in moved:
            mm.map(s)
        if r.new_len > r.old_len:
            seg = _Seg(r.new + r.old_len, r.new_end, True, prot, False)
            mm.map(seg)
            if touched:
                self.touch(proc, [seg], ev.t, ev.line)

    # -- process calls -----------------------------------------------------------------------------------

    def _create(self, ev: Event, proc: str, mm: _MM, share_vm: bool, thread: bool) -> None:
        child = _num(ev.ret)
        if child in self.pid_proc:
            self.imp.warn(ev.line, f"pid {child} is created while the log still runs a task with that pid")
            self.detach(child, ev.t, ev.line)
        if share_vm:
            self.attach(child, proc, self.tgid[ev.pid] if thread else child)
            return
        name = self.new_proc(f"p{child}", child, mm.copy(child))
        self.emit(proc, "fork", ev.t, ev.line, child=name)
        self.attach(child, name, child)

    def _clone(self, ev: Event, proc: str, mm: _MM, args: list[str]) -> None:
        m = re.search(r"flags=([A-Za-z0-9_|]+)", ev.args)
        flags = set(m.group(1).split("|")) if m else set()
        self._create(ev, proc, mm, "CLONE_VM" in flags, "CLONE_THREAD" in flags)

    _clone3 = _clone

    def _fork(self, ev: Event, proc: str, mm: _MM, args: list[str]) -> None:
        self._create(ev, proc, mm, False, False)

    def _vfork(self, ev: Event, proc: str, mm: _MM, args: list[str]) -> None:
        self._create(ev, proc, mm, True, False)

    def _execve(self, ev: Event, proc: str, mm: _MM, args: list[str]) -> None:
        tg = self.tgid[ev.pid]
        if tg != mm.owner:
            # a vfork/CLONE_VM child leaves the shared mm for a new one the trace language cannot create
            self.proc_pids[proc].discard(ev.pid)
            self.pid_proc[ev.pid] = None
            return
        for p in [p for p, g in self.tgid.items() if g == tg and p != ev.pid]:
            self.detach(p, ev.t, ev.line)
        for a, b in _runs(mm.segs):
            self.ranged(proc, "munmap", a, b, ev.t, ev.line, note="execve")
        new = _MM(tg)
        self.mms[proc] = new

    _execveat = _execve

