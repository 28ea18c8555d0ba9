"""Import an strace log of a real program as a thpsim trace (format v1).

Input: the text written by ``strace -f -tt -e trace=memory,process -o FILE CMD...``. Also accepted: logs
without ``-f`` (no pid column), the ``[pid N]`` prefix form strace prints to stderr, ``-ttt`` (epoch) or
``-r`` timestamps or none at all, ``-T`` durations, ``-y`` fd decorations, ``<unfinished ...>`` /
``<... NAME resumed>`` pairs, signal lines (``--- SIGCHLD ... ---``), exit lines (``+++ exited with 0 +++``,
``+++ killed by SIGKILL +++``), error returns (``= -1 ENOMEM (Cannot allocate memory)``) and ``strace:``
messages.

Policies (documented in docs/workloads.md, "Importing strace logs"):

* **What is imported.** Only anonymous private memory: ``mmap(MAP_PRIVATE|MAP_ANONYMOUS)`` and the brk heap
  (each growth of the break becomes an ``mmap`` of the new pages next to the old heap, each shrink a
  ``munmap``). File mappings, shared anonymous mappings, hugetlb mappings, ranges the log never showed being
  mapped (stack, executable image) and failed calls are *ignored* and counted in ``ImportResult.stats``.
  ``munmap``/``mprotect``/``madvise``/``mlock``/``mlock2``/``munlock``/``mremap``/``pkey_mprotect`` are
  clipped to the anonymous pieces they cover (one op per contiguous anonymous run). A ``MAP_FIXED``
  mapping over anonymous memory is preceded by an explicit ``munmap`` of what it replaces.
* **Addresses.** Real addresses are mapped into the 512 GiB arena so that offsets modulo 1 GiB are preserved
  (2 MiB alignment, misalignment and PMD/PUD-table sharing stay as they were): every run of consecutive
  1 GiB-aligned real windows that holds anonymous memory gets consecutive arena GiB slots, runs in order of
  first appearance, with one empty GiB slot between runs (dropped if the arena would overflow; runs that still
  do not fit are left out with a warning).
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
  mprotect) one byte per page is written over it. ``"none"``: no writes or reads are added. ``"perf"``:
  writes and reads come from real page faults recorded with
  ``perf record -e exceptions:page_fault_user -e exceptions:page_fault_kernel -k monotonic`` (pass the
  ``perf script`` text as *faults* and the realtime-monotonic clock offset); each fault inside a tracked
  anonymous region becomes a one-page
  ``write`` (error_code bit 1 set) or ``read``, merged with the syscalls by timestamp, and runs of faults at a
  constant page stride (e.g. one per 2 MiB in a THP region; descending runs are written ascending) are folded
  into one op with a ``stride``.

Problems never raise a traceback: a garbled line gives an :class:`ImportWarning` with its line number, or with
``strict=True`` a :class:`~thpsim.errors.TraceError` naming the line.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from thpsim.errors import TraceError
from thpsim.trace import format as fmt

PAGE = fmt.PAGE
GiB = fmt.GiB
TOUCH_POLICIES = ("write-all", "none", "perf")
ARENA_SLOTS = fmt.ARENA_SIZE // GiB

_PREFIX_RE = re.compile(
    r"^\s*(?:\[pid\s+(?P<bpid>\d+)\]\s+|(?P<pid>\d+)\s+(?=\S))?"
    r"(?:(?P<tod>\d{1,2}:\d{2}:\d{2}(?:\.\d+)?)\s+|(?P<sec>\d+\.\d+)\s+)?(?P<body>.*?)\s*$")
_RESUMED_RE = re.compile(r"^<\.\.\.\s+(?P<name>[A-Za-z_][\w]*)\s+resumed>\s?(?P<rest>.*)$")
_CALL_RE = re.compile(r"^(?P<name>[A-Za-z_][\w]*)\((?P<rest>.*)$")
_UNFINISHED = "<unfinished ...>"
_RET_RE = re.compile(r"\)\s+=\s+(?P<ret>-?\d+|0x[0-9a-fA-F]+|\?)(?:\s+(?P<err>E[A-Z0-9_]+))?(?:\s+\(.*\))?"
                     r"(?:\s+<(?:[\d.]+|unavailable)>)?\s*$")
_EXIT_RE = re.compile(r"^\+\+\+\s+(?:exited with -?\d+|killed by \S+(?:\s+\(core dumped\))?)\s+\+\+\+$")
_FAULT_RE = re.compile(
    r"(?P<tid>\d+)(?:/(?P<tid2>\d+))?\s+(?:\[\d+\]\s+)?(?P<t>\d+\.\d+):\s+(?:\d+\s+)?"
    r"exceptions:page_fault_(?:user|kernel):\s+address=(?P<addr>0x[0-9a-fA-F]+)\s+ip=\S+\s+"
    r"error_code=(?P<err>0x[0-9a-fA-F]+)")

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


@dataclass(frozen=True)
class ImportWarning:
    """A problem in the strace log that did not stop the import."""

    line: int
    message: str
    source: str = "strace.log"

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


@dataclass
class ImportResult:
    """The imported trace plus what happened to every syscall of the log."""

    trace: fmt.Trace
    text: str                                  # the trace as JSON Lines (what write_trace stores)
    stats: dict[str, Any]
    warnings: list[ImportWarning]
    procs: dict[str, int]                      # proc name -> real pid that created the mm
    op_times: tuple[float | None, ...]         # log timestamp of each trace op (None without -tt)
    windows: tuple[tuple[int, int], ...]       # (real 1 GiB window base, arena offset)
    clock: str = "none"                        # "epoch" (-ttt), "time-of-day" (-tt), "relative" or "none"

    def summary(self) -> str:
        ign = ", ".join(f"{k} {v}" for k, v in sorted(self.stats["ignored"].items())) or "none"
        return (f"{self.stats['syscalls_total']} syscalls, {self.stats['imported']} imported, "
                f"{len(self.trace.ops)} ops, {len(self.procs)} procs; ignored: {ign}; "
                f"{len(self.warnings)} warnings")


# ----------------------------------------------------------------------------------------------------------
# pass 1: lines -> events


@dataclass
class _Event:
    pos: int                 # line number where the event takes effect (ordering key)
    line: int                # line number of the call's first line (for messages)
    pid: int
    t: float | None
    kind: str                # "call" | "exit"
    name: str = ""
    args: str = ""
    ret: str = ""
    err: str = ""


def _split_args(s: str) -> list[str]:
    """Split a strace argument list at top-level commas (brackets, braces and quotes respected)."""
    out: list[str] = []
    depth = 0
    cur: list[str] = []
    quote = False
    esc = False
    for ch in s:
        if quote:
            cur.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                quote = False
            continue
        if ch == '"':
            quote = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    tail = "".join(cur).strip()
    if tail or out:
        out.append(tail)
    return out


class _Importer:
    def __init__(self, source: str, touch: str, strict: bool) -> None:
        self.source = source
        self.touch = touch
        self.strict = strict
        self.warnings: list[ImportWarning] = []
        self.seen: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.imported = 0
        self.other = 0
        self.signals = 0
        self.clock = "none"
        self.stats_touch = 0

    def warn(self, line: int, message: str) -> None:
        if self.strict:
            raise TraceError(message, line=line, source=self.source)
        self.warnings.append(ImportWarning(line, message, self.source))

    # -- pass 1 ------------------------------------------------------------------------------------------

    def read_events(self, lines: list[str]) -> list[_Event]:
        events: list[_Event] = []
        pending: dict[int, tuple[int, float | None, str, str]] = {}   # pid -> (line, t, name, args so far)
        day = 0.0
        last_tod: float | None = None
        for no, raw in enumerate(lines, 1):
            text = raw.rstrip("\n")
            if not text.strip():
                continue
            m = _PREFIX_RE.match(text)
            if m is None:   # pragma: no cover - the pattern matches any string
                self.warn(no, "unreadable line")
                continue
            body = m.group("body")
            pid = int(m.group("bpid") or m.group("pid") or 0)
            t: float | None = None
            if m.group("tod"):
                h, mi, s = m.group("tod").split(":")
                tod = int(h) * 3600 + int(mi) * 60 + float(s)
                if last_tod is not None and tod < last_tod - 43200:
                    day += 86400.0
                last_tod = tod
                t = tod + day
                self.clock = "time-of-day"
            elif m.group("sec"):
                t = float(m.group("sec"))
                self.clock = "epoch" if t > 1e8 else "relative"
            if body.startswith("strace:") or body.startswith("+++ superseded"):
                continue
            if body.startswith("---") and body.endswith("---"):
                self.signals += 1
                continue
            if body.startswith("+++"):
                if _EXIT_RE.match(body):
                    events.append(_Event(no, no, pid, t, "exit"))
                else:
                    self.warn(no, f"unrecognised exit line {body[:60]!r}")
                continue
            if body.startswith("<..."):
                r = _RESUMED_RE.match(body)
                if r is None:
                    self.warn(no, f"garbled 'resumed' line {body[:60]!r}")
                    continue
                name, rest = r.group("name"), r.group("rest")
                if pid not in pending or pending[pid][2] != name:
                    self.warn(no, f"'<... {name} resumed>' without a matching '<unfinished ...>' call of pid {pid}")
                    continue
                line0, t0, _n, args0 = pending.pop(pid)
                if rest.rstrip().endswith(_UNFINISHED):
                    pending[pid] = (line0, t0, name, args0 + rest.rstrip()[: -len(_UNFINISHED)])
                    continue
                self._complete(events, pid, line0, no, t0, t, name, args0 + rest)
                continue
            c = _CALL_RE.match(body)
            if c is None:
                self.warn(no, f"garbled line (not a syscall, signal or exit line): {body[:60]!r}")
                continue
            name, rest = c.group("name"), c.group("rest")
            if rest.rstrip().endswith(_UNFINISHED):
                if pid in pending:
                    self.warn(pending[pid][0], f"{pending[pid][2]} of pid {pid} never resumed")
                pending[pid] = (no, t, name, rest.rstrip()[: -len(_UNFINISHED)])
                continue
            self._complete(events, pid, no, no, t, t, name, rest)
        for pid, (line0, _t, name, _a) in sorted(pending.items(), key=lambda kv: kv[1][0]):
            self.seen[name] += 1
            if name in ("exit", "exit_group"):
                # the task died inside exit: as good as a finished exit
                events.append(_Event(line0, line0, pid, _t, "call", name, "", "?", ""))
                continue
            self.warn(line0, f"{name} of pid {pid} never finished (log truncated?); ignored")
            self.ignored["unfinished"] += 1
        events.sort(key=lambda e: e.pos)
        return events

    def _complete(self, events: list[_Event], pid: int, line0: int, line1: int, t0: float | None,
                  t1: float | None, name: str, rest: str) -> None:
        r = None
        for r in _RET_RE.finditer(rest):  # noqa: B007 - the last match is the result
            pass
        if r is None or r.end() != len(rest.rstrip()):
            self.warn(line1, f"garbled {name} call: no ') = RESULT' at the end")
            self.seen[name] += 1
            self.ignored["garbled"] += 1
            return
        args = rest[: r.start()]
        self.seen[name] += 1
        # process creation takes effect at the call's entry (the child may run before the call returns);
        # everything else at its completion.
        creates = name in ("clone", "clone3", "fork", "vfork")
        pos = line0 if creates else line1
        events.append(_Event(pos, line0, pid, t0 if creates else t1, "call", name, args, r.group("ret"),
                             r.group("err") or ""))


# ----------------------------------------------------------------------------------------------------------
# pass 2: simulate the address spaces


@dataclass
class _Seg:
    start: int
    end: int
    anon: bool
    prot: int = 3
    touched: bool = False
    dontfork: bool = False
    dead: bool = False


class _MM:
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


@dataclass
class _RawOp:
    d: dict[str, Any]
    t: float | None
    line: int
    ranges: tuple[tuple[int, int], ...]      # real address ranges the op names (for the arena mapping)


class _Sim:
    def __init__(self, imp: _Importer, events: list[_Event], faults: list[tuple[float, int, int, bool]] | None):
        self.imp = imp
        self.events = events
        self.faults = faults
        self.fault_pos = 0
        self.ops: list[_RawOp] = []
        self.pid_proc: dict[int, str | None] = {}
        self.tgid: dict[int, int] = {}
        self.proc_pids: dict[str, set[int]] = {}
        self.mms: dict[str, _MM] = {}
        self.procs: dict[str, int] = {}
        self.dead: set[str] = set()
        self.main_exit: _RawOp | None = None
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
        self.ops.append(_RawOp(d, t, line, ranges))

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
                self.main_exit = _RawOp({"op": "exit"}, t, line, ())
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

    def call(self, ev: _Event, proc: str) -> None:
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
        args = _split_args(ev.args)
        mm = self.mms[proc]
        before = len(self.ops)
        getattr(self, "_" + name.replace("2", "_2"), self._unhandled)(ev, proc, mm, args)
        if len(self.ops) > before:
            self.imp.imported += 1

    def _unhandled(self, ev: _Event, proc: str, mm: _MM, args: list[str]) -> None:  # pragma: no cover
        self.imp.other += 1

    # -- memory calls ------------------------------------------------------------------------------------

    def _mmap(self, ev: _Event, proc: str, mm: _MM, args: list[str]) -> None:
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

    def _brk(self, ev: _Event, proc: str, mm: _MM, args: list[str]) -> None:
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

    def _clipped(self, ev: _Event, mm: _MM, start: int, end: int, split: bool = False) -> list[_Seg]:
        segs = mm.pieces(start, end, split=split)
        if not any(s.anon for s in segs):
            self.imp.ignored["file mapping" if segs else "untracked range"] += 1
        return segs

    def _munmap(self, ev: _Event, proc: str, mm: _MM, args: list[str]) -> None:
        start, end = self._range(args)
        runs = _runs(self._clipped(ev, mm, start, end), start, end)
        mm.unmap(start, end)
        for a, b in runs:
            self.ranged(proc, "munmap", a, b, ev.t, ev.line)

    def _mprotect(self, ev: _Event, proc: str, mm: _MM, args: list[str], prot_arg: int = 2) -> None:
        start, end = self._range(args)
        prot = _prot(args[prot_arg])
        segs = self._clipped(ev, mm, start, end, split=True)
        for s in segs:
            s.prot = prot
        for a, b in _runs(segs):
            self.ranged(proc, "mprotect", a, b, ev.t, ev.line, prot=_PROT_NAMES[prot])
        self.touch(proc, segs, ev.t, ev.line)

    def _pkey_mprotect(self, ev: _Event, proc: str, mm: _MM, args: list[str]) -> None:
        self._mprotect(ev, proc, mm, args)

    def _madvise(self, ev: _Event, proc: str, mm: _MM, args: list[str]) -> None:
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

    def _mlock(self, ev: _Event, proc: str, mm: _MM, args: list[str], op: str = "mlock") -> None:
        start, end = self._range(args)
        kw: dict[str, Any] = {}
        if op == "mlock" and len(args) > 2 and "MLOCK_ONFAULT" in args[2]:
            kw["flags"] = ["onfault"]
        for a, b in _runs(self._clipped(ev, mm, start, end), start, end):
            self.ranged(proc, op, a, b, ev.t, ev.line, **kw)

    def _mlock_2(self, ev: _Event, proc: str, mm: _MM, args: list[str]) -> None:
        self._mlock(ev, proc, mm, args)

    def _munlock(self, ev: _Event, proc: str, mm: _MM, args: list[str]) -> None:
        self._mlock(ev, proc, mm, args, op="munlock")

    def _mremap(self, ev: _Event, proc: str, mm: _MM, args: list[str]) -> None:
        old = _num(args[0])
        old_len, new_len = _page_up(_num(args[1])), _page_up(_num(args[2]))
        flags = set(args[3].split("|")) if len(args) > 3 else set()
        new = _num(ev.ret)
        segs = mm.pieces(old, old + old_len, split=True)
        src = [s for s in segs if s.anon]
        if old_len == 0 or not src or len(src) != len(segs) or _runs(src) != [(old, old + old_len)]:
            # a file mapping, or a range the model cannot express as one anonymous region: the source is left
            # alone; whatever lands at the destination is unknown
            self.imp.ignored["file mapping" if segs else "untracked range"] += 1
            if new != old:
                for a, b in _runs(mm.pieces(new, new + new_len), new, new + new_len):
                    self.ranged(proc, "munmap", a, b, ev.t, ev.line)
                mm.map(_Seg(new, new + new_len, False))
                if "MREMAP_DONTUNMAP" not in flags:
                    mm.unmap(old, old + old_len)
            return
        prot, touched = src[0].prot, all(s.touched for s in src)
        dontunmap = "MREMAP_DONTUNMAP" in flags
        if new == old:
            if new_len < old_len:
                mm.unmap(old + new_len, old + old_len)
                self.ranged(proc, "mremap", old, old + old_len, ev.t, ev.line, new_len=new_len)
            elif new_len > old_len:
                self.ranged(proc, "mremap", old, old + old_len, ev.t, ev.line, new_len=new_len)
                seg = _Seg(old + old_len, old + new_len, True, prot)
                mm.map(seg)
                self.touch(proc, [seg], ev.t, ev.line)
            return
        for a, b in _runs(mm.pieces(new, new + new_len), new, new + new_len):
            if not (a >= old and b <= old + old_len):
                self.ranged(proc, "munmap", a, b, ev.t, ev.line)
        tflags = ["fixed", "maymove"] + (["dontunmap"] if dontunmap else [])
        self.emit(proc, "mremap", ev.t, ev.line, ((old, old + old_len), (new, new + new_len)), _at=old,
                  _len=old_len, new_len=new_len, flags=tflags, _to=new)
        moved = [_Seg(s.start - old + new, min(s.end, old + new_len) - old + new, True, s.prot, s.touched,
                      s.dontfork) for s in src if s.start < old + new_len]
        if dontunmap:
            for s in src:
                s.touched = False
        else:
            mm.unmap(old, old + old_len)
        mm.unmap(new, new + new_len)
        for s in moved:
            mm.map(s)
        if new_len > old_len:
            seg = _Seg(new + old_len, new + new_len, True, prot, False)
            mm.map(seg)
            if touched:
                self.touch(proc, [seg], ev.t, ev.line)

    # -- process calls -----------------------------------------------------------------------------------

    def _create(self, ev: _Event, proc: str, mm: _MM, share_vm: bool, thread: bool) -> None:
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

    def _clone(self, ev: _Event, proc: str, mm: _MM, args: list[str]) -> None:
        m = re.search(r"flags=([A-Za-z0-9_|]+)", ev.args)
        flags = set(m.group(1).split("|")) if m else set()
        self._create(ev, proc, mm, "CLONE_VM" in flags, "CLONE_THREAD" in flags)

    _clone3 = _clone

    def _fork(self, ev: _Event, proc: str, mm: _MM, args: list[str]) -> None:
        self._create(ev, proc, mm, False, False)

    def _vfork(self, ev: _Event, proc: str, mm: _MM, args: list[str]) -> None:
        self._create(ev, proc, mm, True, False)

    def _execve(self, ev: _Event, proc: str, mm: _MM, args: list[str]) -> None:
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


# ----------------------------------------------------------------------------------------------------------
# pass 3: real addresses -> arena offsets


def _arena_map(ops: list[_RawOp]) -> tuple[dict[int, int], list[int]]:
    """Real GiB window -> arena GiB slot. Returns (slot by window, dropped windows)."""
    first: dict[int, int] = {}
    for i, op in enumerate(ops):
        for a, b in op.ranges:
            for w in range(a >> 30, ((b - 1) >> 30) + 1):
                first.setdefault(w, i)
    runs: list[list[int]] = []
    for w in sorted(first):
        if runs and runs[-1][-1] == w - 1:
            runs[-1].append(w)
        else:
            runs.append([w])
    runs.sort(key=lambda r: min(first[w] for w in r))
    total = sum(len(r) for r in runs)
    gap = 1 if total + len(runs) - 1 <= ARENA_SLOTS else 0
    slots: dict[int, int] = {}
    dropped: list[int] = []
    cursor = 0
    for r in runs:
        if cursor + len(r) > ARENA_SLOTS:
            dropped.extend(r)
            continue
        for k, w in enumerate(r):
            slots[w] = cursor + k
        cursor += len(r) + gap
    return slots, dropped


def _convert(op: _RawOp, slots: dict[int, int]) -> dict[str, Any] | None:
    def arena(addr: int) -> int:
        return slots[addr >> 30] * GiB + (addr & (GiB - 1))

    try:
        d = {k: v for k, v in op.d.items() if not k.startswith("_")}
        if "_at" in op.d:
            start = op.d["_at"]
            end = start + op.d["_len"]
            # a range may end exactly on a window boundary; map its last byte
            d["at"] = fmt.format_size(arena(start))
            d["len"] = fmt.format_size(arena(end - 1) + 1 - arena(start))
        if "_to" in op.d:
            d["to"] = fmt.format_size(arena(op.d["_to"]))
        if "new_len" in d:
            d["new_len"] = fmt.format_size(d["new_len"])
        if "stride" in d:
            d["stride"] = fmt.format_size(d["stride"])
    except KeyError:
        return None
    order = ["op", "proc", "id", "at", "len", "prot", "advice", "new_len", "to", "flags", "stride", "child",
             "note"]
    return {k: d[k] for k in order if k in d}


# ----------------------------------------------------------------------------------------------------------
# faults (perf script)


def parse_perf_faults(text_or_lines: str | Iterable[str]) -> tuple[list[tuple[float, int, int, bool]], int]:
    """Read ``perf script`` output of exceptions:page_fault_{user,kernel}.

    Returns ([(time, tid, address, is_write)], number of unreadable lines). Lines of other events are skipped.
    """
    lines = text_or_lines.splitlines() if isinstance(text_or_lines, str) else text_or_lines
    out: list[tuple[float, int, int, bool]] = []
    bad = 0
    for raw in lines:
        if "page_fault_" not in raw:
            continue
        m = _FAULT_RE.search(raw)
        if m is None:
            bad += 1
            continue
        tid = int(m.group("tid2") or m.group("tid"))
        out.append((float(m.group("t")), tid, int(m.group("addr"), 16), bool(int(m.group("err"), 16) & 2)))
    out.sort(key=lambda f: f[0])
    return out, bad


def _align_fault_clock(faults: list[tuple[float, int, int, bool]], clock: str,
                       first_t: float | None) -> list[tuple[float, int, int, bool]]:
    if clock != "time-of-day" or not faults or faults[0][0] < 1e8:
        return faults
    out = []
    for ft, tid, addr, w in faults:
        lt = time.localtime(ft)
        tod = lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (ft - int(ft))
        out.append((tod, tid, addr, w))
    # unwrap midnight the same way the strace times were unwrapped
    day = 0.0
    prev = None
    res = []
    for tod, tid, addr, w in out:
        if prev is not None and tod < prev - 43200:
            day += 86400.0
        prev = tod
        res.append((tod + day, tid, addr, w))
    if first_t is not None and res and res[0][0] < first_t - 43200:
        res = [(t + 86400.0, a, b, c) for t, a, b, c in res]
    return res


# ----------------------------------------------------------------------------------------------------------
# public API


def import_strace(text_or_lines: str | Iterable[str], *, source: str = "strace.log", touch: str = "write-all",
                  strict: bool = False, faults: str | Iterable[str] | None = None,
                  fault_clock_offset: float = 0.0, name: str = "", notes: bool = True) -> ImportResult:
    """Turn an strace log into a validated thpsim trace (see the module docstring for the policies).

    *touch* is ``"write-all"``, ``"none"`` or ``"perf"`` (the latter needs *faults*, the ``perf script`` text of
    ``exceptions:page_fault_user``/``page_fault_kernel``, next to an strace log with ``-ttt`` or ``-tt``
    timestamps). perf on this kernel refuses ``-k CLOCK_REALTIME`` ("wrong clockid"), so record with
    ``-k monotonic`` and pass *fault_clock_offset* = CLOCK_REALTIME - CLOCK_MONOTONIC (seconds) measured at
    recording time; it is added to every fault time. *notes* adds ``"note": "strace:LINE"`` to each op.
    """
    if touch not in TOUCH_POLICIES:
        raise TraceError(f"unknown touch policy {touch!r}; use one of {', '.join(TOUCH_POLICIES)}", source=source)
    lines = text_or_lines.splitlines() if isinstance(text_or_lines, str) else [str(x) for x in text_or_lines]
    imp = _Importer(source, touch, strict)
    events = imp.read_events(lines)
    fault_list: list[tuple[float, int, int, bool]] | None = None
    bad_faults = 0
    if touch == "perf":
        if faults is None:
            raise TraceError("the 'perf' touch policy needs the perf script output of the page faults "
                             "(faults=...)", source=source)
        if imp.clock == "none":
            raise TraceError("the 'perf' touch policy needs strace timestamps (-tt or -ttt) to place the faults",
                             source=source)
        fault_list, bad_faults = parse_perf_faults(faults)
        if fault_clock_offset:
            fault_list = [(ft + fault_clock_offset, tid, a, w) for ft, tid, a, w in fault_list]
        first_t = next((e.t for e in events if e.t is not None), None)
        fault_list = _align_fault_clock(fault_list, imp.clock, first_t)
    sim = _Sim(imp, events, fault_list)
    sim.run()
    slots, dropped = _arena_map(sim.ops)
    if dropped:
        imp.warn(0, f"the anonymous memory spans more than {ARENA_SLOTS} 1 GiB windows; "
                    f"{len(dropped)} windows are left out of the trace")
    objs: list[dict[str, Any]] = []
    times: list[float | None] = []
    for op in sim.ops:
        d = _convert(op, slots)
        if d is None:
            imp.ignored["arena full"] += 1
            continue
        if notes and op.line:
            d["note"] = f"strace:{op.line}" + (f" {d['note']}" if "note" in d else "")
        elif "note" in d and not notes:
            del d["note"]
        objs.append(d)
        times.append(op.t)
    header: dict[str, Any] = {"thpsim": fmt.TRACE_VERSION, "name": name or f"strace:{source}",
                              "description": f"imported from strace log {source} (touch policy {touch})"}
    text = "\n".join([json.dumps(header)] + [json.dumps(d, separators=(", ", ": ")) for d in objs]) + "\n"
    try:
        trace = fmt.parse(text, source=f"{source} (imported)")
    except TraceError as e:   # an importer bug: report it as a clean one-line error
        raise TraceError(f"the imported trace is invalid ({e.reason}); please report this", line=e.line,
                         source=f"{source} (imported)") from None
    syscalls = dict(sorted(imp.seen.items()))
    stats: dict[str, Any] = {
        "lines": len(lines),
        "syscalls": syscalls,
        "syscalls_total": sum(syscalls.values()),
        "imported": imp.imported,
        "ignored": dict(sorted(imp.ignored.items())),
        "not_memory_related": imp.other,
        "signals": imp.signals,
        "touch_ops": imp.stats_touch,
        "ops": len(trace.ops),
        "procs": len(sim.procs),
        "arena_windows": len(slots),
    }
    if fault_list is not None:
        stats["faults"] = dict(sim.fault_stats)
        stats["faults"]["unreadable lines"] = bad_faults
    windows = tuple(sorted(((w << 30), s * GiB) for w, s in slots.items()))
    return ImportResult(trace=trace, text=text, stats=stats, warnings=imp.warnings, procs=dict(sim.procs),
                        op_times=tuple(times), windows=windows, clock=imp.clock)


def import_strace_file(path: str, **kw: Any) -> ImportResult:
    """Read *path* and :func:`import_strace` it (the source name in messages is *path*)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise TraceError(f"cannot read the strace log: {e.strerror}", source=path) from None
    return import_strace(text, source=path, **kw)
