"""Run a resolved trace on the live kernel and observe it after every step.

Design (see docs/live.md):

* Every trace runs in a fresh child interpreter (``python -m thpsim.live._child``) with glibc malloc, a large
  pre-faulted heap and every mapping outside the arena populated, so the interpreter itself does not move
  VmRSS/RssAnon/VmPTE between snapshots. The arena sits at ARENA_BASE (32 TiB), alone in its 512 GiB PGD slot,
  so every page table under it belongs to the trace.
* The child only issues syscalls and memory accesses. All observation is done from this (the calling) process
  by reading /proc/PID/{status,smaps,maps,pagemap} of each live trace process, /proc/kpageflags, /proc/vmstat
  and /proc/meminfo — nothing runs inside the observed processes between steps.
* Forked trace processes run the same command loop on a socketpair; their parent relays commands to them.
* Baselines: ``main`` = its values right before the first op. A forked child's baseline = the values of a
  calibration child forked (and set up exactly like a real one) while the arena was still empty.
* Kernel features: the pagemap features are probed once (:func:`thpsim.live.pagemap.pagemap_features`); what
  this kernel lacks (:func:`thpsim.live.env.feature_notes`, e.g. PAGE_IS_GUARD before 6.16) is noted on the
  first step, and an op it does not know (MADV_GUARD_INSTALL before 6.13: EINVAL from the kernel) gets a note
  on its step (:func:`thpsim.live.env.op_notes`). The run goes on in both cases.

Errors: a crashing or hanging child raises :class:`LiveRunError`, whose ``steps`` holds the observations
recorded so far and whose message names the last completed step.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any

from thpsim.errors import ThpsimError
from thpsim.live import env as live_env
from thpsim.live import procfs
from thpsim.live import syscalls as S
from thpsim.live.cgroup import CGROUP_THP_EVENTS, RunCgroup, cgroup2_mount, enable_in_guest
from thpsim.live.inject import FailPageAlloc, injection_unavailable
from thpsim.live.khugepaged import KhugepagedTrigger, in_lab_guest
from thpsim.live.pagemap import PagemapFeatures, PagemapReader, pagemap_features
from thpsim.observation import MEMINFO_FIELDS, VMSTAT_FIELDS, ProcObs, StepObs, VmaObs, no_process_note
from thpsim.trace.format import ARENA_BASE, GiB, Op, Trace
from thpsim.trace.geometry import Geometry, arena_size, map_trace
from thpsim.trace.ops import (
    OP_DEFS,
    Access,
    Exit,
    Expect,
    Fork,
    Khugepaged,
    Madvise,
    Mmap,
    Mremap,
    OpBase,
    Write,
)

GEOMETRY = Geometry(S.PAGE_SIZE, S.PMD_SIZE)        # this kernel's
ARENA_SPAN = arena_size(GEOMETRY)                   # the arena the mapped traces use

MODEL_ONLY_NOTE = "model-only op: not run on the live kernel"
CALIBRATION_PROC = "__calibration__"
_MiB = 1024 * 1024


class LiveRunError(ThpsimError):
    """The live run could not complete; ``steps`` holds the observations recorded before the failure."""

    def __init__(self, message: str, *, steps: list[StepObs] | None = None, last_step: int | None = None) -> None:
        self.steps = list(steps or [])
        self.last_step = last_step
        super().__init__(message)


def child_env() -> dict[str, str]:
    """Environment of the arena-owning child: glibc malloc, big top pad, no trimming, no mmap'd chunks."""
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({
        "PYTHONMALLOC": "malloc",
        "MALLOC_TOP_PAD_": str(64 * _MiB),
        "MALLOC_MMAP_THRESHOLD_": str(32 * _MiB),
        "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
        "MALLOC_ARENA_MAX": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


def address_space_budget(trace: Trace) -> int:
    """RLIMIT_AS for the child: everything the trace could map, plus 4 GiB for the interpreter."""
    total = 0
    for op in trace.ops:
        if isinstance(op, Mmap):
            total += op.length
        elif isinstance(op, Mremap):
            total += op.new_length
    return min(total, ARENA_SPAN) + 4 * GiB


_NOT_SENT = frozenset(f.name for f in fields(OpBase)) | {"handle"}


def op_message(op: Op) -> dict[str, Any]:
    """The op as the live child's command reads it (live._child.CHILD_OPS): "kind", then the kind's own fields
    under their names ("start", "length", "prot", "flags", "new_length", "dest", "stride", "child", ...)."""
    msg: dict[str, Any] = {"kind": op.kind}
    for f in fields(op):
        if f.name not in _NOT_SENT:
            v = getattr(op, f.name)
            msg[f.name] = list(v) if isinstance(v, tuple) else v
    return msg


@dataclass
class _LiveProc:
    name: str
    pid: int
    path: list[str]
    base: procfs.Status
    children: list[str] = field(default_factory=list)


def _has_pku() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return " ospke" in f.read()
    except OSError:
        return False


def access_faults(pid: int, start: int, end: int, stride: int, write: bool, *, pku: bool = True,
                  features: PagemapFeatures | None = None) -> bool:
    """Would touching one byte at every ``stride`` of [start, end) (absolute) fault in process ``pid``?

    A touched page faults if no VMA covers it, the VMA forbids the access (write needs 'w'; read needs 'r' or
    'w', or 'x' without protection keys), or it holds a guard marker (MADV_GUARD_INSTALL) that the kernel lets
    us see (``features``; see :attr:`PagemapFeatures.guards_visible`).
    """
    if end <= start:
        return False
    bad: list[tuple[int, int]] = []
    pos = start
    for lo, hi, perms, _name in procfs.read_maps(pid):
        if hi <= start or lo >= end:
            continue
        if lo > pos:
            bad.append((pos, lo))
        ok = "w" in perms if write else ("r" in perms or "w" in perms or ("x" in perms and not pku))
        if not ok:
            bad.append((max(lo, start), min(hi, end)))
        pos = max(pos, hi)
    if pos < end:
        bad.append((pos, end))
    if not bad:
        with PagemapReader(pid, features) as pm:
            bad = pm.guard_ranges(start, end)
    for bs, be in bad:
        k = max(0, -(-(bs - start) // stride))
        a = start + k * stride
        if a < be and a < end:
            return True
    return False


class _Session:
    def __init__(self, trace: Trace, timeout: float, features: PagemapFeatures | None = None) -> None:
        self.trace = trace
        self.features = features if features is not None else pagemap_features()
        self.release = platform.release()
        self.run_notes = live_env.detect(self.features).notes
        self.unseen_guard = False   # a guard region was installed that this kernel cannot report
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.steps: list[StepObs] = []
        self.procs: dict[str, _LiveProc] = {}
        self.child_base: procfs.Status | None = None
        self.pku = _has_pku()
        self.khugepaged = KhugepagedTrigger() if KhugepagedTrigger.unavailable() is None else None
        self.fpa: FailPageAlloc | None = None
        self.cg: RunCgroup | None = None     # the run's memory cgroup: THP events of the trace's own processes
        self.own: tuple[str, ...] = ()       # the vmstat counters read from it
        if any(op.inject is not None for op in trace.ops):
            why = injection_unavailable()
            if why:
                raise LiveRunError(f"the trace injects allocation failures, but {why}")
            self.fpa = FailPageAlloc()
        self.p = subprocess.Popen(
            [sys.executable, "-m", "thpsim.live._child", str(address_space_budget(trace))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
            cwd="/", close_fds=True)
        self.buf = b""

    # -- transport
    def call(self, path: list[str], msg: dict[str, Any]) -> dict[str, Any]:
        assert self.p.stdin is not None and self.p.stdout is not None
        data = (json.dumps({**msg, "path": path}) + "\n").encode()
        try:
            self.p.stdin.write(data)
            self.p.stdin.flush()
        except BrokenPipeError:
            raise self._died() from None
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"the live run exceeded its {self.timeout:g} s timeout")
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise self._died()
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        reply = json.loads(line)
        if "error" in reply:
            raise self._fail(f"the live child reported: {reply['error']}")
        return reply

    def _where(self) -> str:
        if not self.steps:
            return "before the first step completed"
        s = self.steps[-1]
        return f"after step {s.step} (line {s.line}: {s.op})"

    def _fail(self, why: str) -> LiveRunError:
        self.close(kill=True)
        last = self.steps[-1].step if self.steps else None
        return LiveRunError(f"live run of {self.trace.source} failed {self._where()}: {why}", steps=self.steps,
                            last_step=last)

    def _died(self) -> LiveRunError:
        err = b""
        with contextlib.suppress(Exception):
            self.p.wait(timeout=2)
            if self.p.stderr is not None:
                err = self.p.stderr.read()[-400:]
        tail = err.decode(errors="replace").strip().splitlines()
        why = f"the live child exited unexpectedly (status {self.p.returncode})"
        if tail:
            why += f": {tail[-1]}"
        if self.unseen_guard and self.p.returncode == -signal.SIGSEGV:
            why += (f"; probably an access to a guard region, which kernel {self.release} cannot report "
                    "(see the notes of the first step)")
        return self._fail(why)

    def close(self, kill: bool = False) -> None:
        if self.fpa is not None:
            self.fpa.close()
        if self.p.poll() is None:
            if kill:
                self.p.kill()
            else:
                with contextlib.suppress(Exception):
                    self.p.stdin.close()  # type: ignore[union-attr]
                try:
                    self.p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.p.kill()
        with contextlib.suppress(Exception):
            self.p.wait(timeout=10)
        for s in (self.p.stdin, self.p.stdout, self.p.stderr):
            with contextlib.suppress(Exception):
                s.close()  # type: ignore[union-attr]
        if self.cg is not None:
            self.cg.remove()

    # -- observation
    def status(self, pid: int) -> procfs.Status:
        return procfs.read_status(pid)

    def observe_proc(self, lp: _LiveProc) -> ProcObs:
        d = self.status(lp.pid).minus(lp.base)
        vmas = tuple(
            VmaObs(start=v.start - ARENA_BASE, end=v.end - ARENA_BASE, perms=v.perms, rss_kb=v.get("Rss"),
                   anonymous_kb=v.get("Anonymous"), anon_huge_kb=v.get("AnonHugePages"),
                   lazyfree_kb=v.get("LazyFree"), locked_kb=v.get("Locked"), swap_kb=v.get("Swap"))
            for v in procfs.read_smaps(lp.pid) if v.start >= ARENA_BASE and v.end <= ARENA_BASE + ARENA_SPAN)
        with PagemapReader(lp.pid, self.features) as pm:
            runs = pm.runs(ARENA_BASE, ARENA_BASE + ARENA_SPAN, base=ARENA_BASE)
        return ProcObs(proc=lp.name, vm_pte_kb=d.vm_pte_kb, vm_rss_kb=d.vm_rss_kb, rss_anon_kb=d.rss_anon_kb,
                       vm_lck_kb=d.vm_lck_kb, vm_swap_kb=d.vm_swap_kb, vmas=vmas, pagemap=runs)

    def globals_now(self) -> tuple[dict[str, int], dict[str, int]]:
        vm = procfs.read_vmstat(refresh=True)
        mi = procfs.read_meminfo(refresh=False)
        if self.cg is not None:     # the trace's own processes' events instead of the host's
            vm = {**vm, **self.cg.counters()}
        return ({k: vm.get(k, 0) for k in VMSTAT_FIELDS}, {k: mi.get(k, 0) for k in MEMINFO_FIELDS})

    def own_cgroup(self, pid: int) -> None:
        """Count the events memcg counts per cgroup (live.cgroup) for the trace's processes only."""
        if in_lab_guest() and (root := cgroup2_mount()):
            enable_in_guest(root)
        self.cg, _why = RunCgroup.create(pid, f"thpsim-{os.getpid()}-{pid}")
        if self.cg is not None:
            self.own = tuple(k for k in CGROUP_THP_EVENTS if k in self.cg.counters() and k in VMSTAT_FIELDS)

    def record(self, idx: int, op: Op, result: int | str | None, data: str | None, notes: tuple[str, ...],
               injected: tuple[str, ...] = ()) -> None:
        order = [n for n in self.trace.procs() if n in self.procs]
        procs = tuple(self.observe_proc(self.procs[n]) for n in order)
        vm, mi = self.globals_now()
        vmd = tuple(sorted((k, v - self.vm0[k]) for k, v in vm.items() if v != self.vm0[k]))
        mid = tuple(sorted((k, v - self.mi0[k]) for k, v in mi.items() if v != self.mi0[k]))
        if not self.steps:
            notes = self.run_notes + notes
        self.steps.append(StepObs(step=idx, line=op.line, op=op.describe(), proc=op.proc, result=result,
                                  data=data, procs=procs, vmstat=vmd, meminfo=mid, notes=notes,
                                  injected=injected, own_counters=self.own))

    # -- driving
    def start(self) -> None:
        hello = self.call([], {"cmd": "hello"})
        self.call([], {"cmd": "warmup"})
        # calibration fork: a child forked while the arena is empty, set up like every real child
        r = self.call([], {"cmd": "op", "op": {"kind": "fork", "child": CALIBRATION_PROC}})
        if r.get("result") != 0:
            raise self._fail(f"the calibration fork failed: {r.get('result')}")
        self.child_base = self.status(int(r["pid"]))
        self.call([CALIBRATION_PROC], {"cmd": "op", "op": {"kind": "exit"}})
        main_pid = int(hello["pid"])
        self.own_cgroup(main_pid)
        self.procs["main"] = _LiveProc("main", main_pid, [], self.status(main_pid))
        if self.fpa is not None:
            self.fpa.setup()
        self.vm0, self.mi0 = self.globals_now()

    def run_op(self, idx: int, op: Op) -> None:
        if isinstance(op, Khugepaged) and self.khugepaged is not None:    # lab guests: the real thread
            collapsed, kh_notes = self.khugepaged.full_scan()
            self.record(idx, op, collapsed, None, kh_notes)
            return
        lp = self.procs.get(op.proc)
        skip = self._not_run(op, lp)
        if skip is not None:
            self.record(idx, op, skip[0], None, skip[1])
            return
        assert lp is not None
        reply, injected = self._send(lp, op)
        result = reply.get("result")
        if isinstance(op, Fork) and result == 0:
            assert self.child_base is not None
            self.procs[op.child] = _LiveProc(op.child, int(reply["pid"]), [*lp.path, op.child], self.child_base)
            lp.children.append(op.child)
        elif isinstance(op, Exit):
            self._drop(op.proc)
        advice = op.advice if isinstance(op, Madvise) else None
        notes = live_env.op_notes(op.kind, advice, result, self.features, self.release)
        if advice == "guard_install" and result == 0 and not self.features.guards_visible:
            self.unseen_guard = True
        self.record(idx, op, result, reply.get("data"), notes, injected)

    def _not_run(self, op: Op, lp: _LiveProc | None) -> tuple[str | None, tuple[str, ...]] | None:
        """(result, notes) of an op that does not reach the child, or None: model-only ops, expect, an op of a
        process that is gone, an access that would fault."""
        if OP_DEFS[op.kind].model_only:
            return None, (MODEL_ONLY_NOTE,)
        if isinstance(op, Expect):
            return None, ()
        if lp is None:   # its fork failed (e.g. an injected ENOMEM) or it exited: as the model does
            return None, (no_process_note(op.proc),)
        if isinstance(op, Access) and access_faults(
                lp.pid, ARENA_BASE + op.start, ARENA_BASE + op.end, op.stride, isinstance(op, Write), pku=self.pku,
                features=self.features):
            return "SIGSEGV", ("access would fault: not performed",)
        return None

    def _send(self, lp: _LiveProc, op: Op) -> tuple[dict[str, Any], tuple[str, ...]]:
        """Run the op in its process (allocation failures armed for it if it injects): (reply, injected)."""
        fpa = self.fpa if op.inject is not None else None
        if fpa is not None and op.inject is not None:
            fpa.arm(op.inject.at, op.inject.times, lp.pid)
        reply: dict[str, Any] = {}
        injected: tuple[str, ...] = ()
        try:
            reply = self.call(lp.path, {"cmd": "op", "op": op_message(op)})
        finally:
            if fpa is not None:   # a fork's new child inherits make_it_fail: clear it there too
                injected = fpa.disarm((int(reply["pid"]),) if isinstance(op, Fork) and reply.get("pid") else ())
        return reply, injected

    def _drop(self, name: str) -> None:
        lp = self.procs.pop(name, None)
        if lp is None:
            return
        for c in lp.children:
            self._drop(c)
        for other in self.procs.values():
            if name in other.children:
                other.children.remove(name)


def run_live(trace: Trace, *, timeout: float = 120.0, features: PagemapFeatures | None = None) -> list[StepObs]:
    """Run ``trace`` on the live kernel in a fresh child process; one StepObs per op.

    The runner writes sysfs only inside a lab guest, where the ``khugepaged`` op wakes the real thread
    (:mod:`thpsim.live.khugepaged`); elsewhere it and the other model-only ops (their definitions' ``model_only``,
    trace.ops.OP_DEFS) are recorded with result None and a note.
    A trace is mapped onto this kernel's page and PMD size first (:func:`thpsim.trace.geometry.map_trace`).
    Raises LiveRunError (with ``.steps``, the observations so far) if the child crashes or the run times out.
    Exit of ``main`` exits every still-live trace process first (the final observation lists none).
    ``features`` replaces the probed pagemap features (tests simulate older kernels on this one); what the
    kernel lacks is noted on the first step (:func:`thpsim.live.env.feature_notes`).
    """
    trace = map_trace(trace, GEOMETRY)    # a 4K/2M trace on this kernel's pages
    s = _Session(trace, timeout, features)
    try:
        s.start()
        for idx, op in enumerate(trace.ops):
            s.run_op(idx, op)
            if isinstance(op, Exit) and op.proc == "main":
                break
    except LiveRunError:
        raise
    except Exception as e:
        raise s._fail(f"{type(e).__name__}: {e}") from e
    finally:
        s.close()
    return s.steps


__all__ = ["run_live", "LiveRunError", "MODEL_ONLY_NOTE", "access_faults", "child_env"]
