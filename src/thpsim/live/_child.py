"""The process that owns the arena: ``python -m thpsim.live._child RLIMIT_AS_BYTES``.

It reads one JSON command per line on fd 0 and answers one JSON line on fd 1 (raw fds, no Python buffering,
so nothing is duplicated across fork). Forked trace processes run the same loop on a socketpair; a process
relays a command whose ``path`` names one of its children down to that child and relays the answer back.

Commands: ``{"path": [...], "cmd": "hello" | "warmup" | "op", "op": {...}}``. Observation is done from the
outside (the runner reads /proc/PID/*), so this loop never reads /proc itself after setup; it only issues the
syscalls and memory accesses of the trace. Nothing here prints: answers go to the command channel.

An "op" command runs through :data:`CHILD_OPS`, one handler per op kind of ``trace.ops.OP_DEFS`` that the
live kernel can run (every kind that is not model-only, except ``expect``, which the runner answers itself).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import json
import os
import resource
import socket
import sys
import zlib
from collections.abc import Callable
from typing import Any

from thpsim.live import syscalls as S
from thpsim.trace.format import ARENA_BASE, PROTS
from thpsim.trace.geometry import Geometry, arena_size
from thpsim.trace.ops import OP_DEFS

_SKIP_NAMES = ("[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]")


class Chan:
    """Line-oriented JSON over raw file descriptors."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.buf = b""

    def recv(self) -> dict[str, Any] | None:
        while b"\n" not in self.buf:
            data = os.read(self.rfd, 65536)
            if not data:
                return None
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def send(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        while data:
            n = os.write(self.wfd, data)
            data = data[n:]


def _maps() -> list[tuple[int, int, str, str]]:
    out = []
    with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
        for line in f:
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[1], parts[5].strip() if len(parts) > 5 else ""))
    return out


def prefault(write: bool) -> None:
    """Populate every readable mapping outside the arena, so the interpreter faults nothing later.

    ``write`` (the first process only): writable private mappings are populated for write (COWed once, so a
    later fork copies their page tables), and anonymous ones are marked MADV_NOHUGEPAGE so that neither the
    fault path nor khugepaged ever puts a THP in the interpreter's own memory.
    """
    for lo, hi, perms, name in _maps():
        if lo < ARENA_BASE + arena_size(Geometry(S.PAGE_SIZE, S.PMD_SIZE)) and hi > ARENA_BASE:
            continue
        if name in _SKIP_NAMES or "r" not in perms:
            continue
        anon = not name.startswith("/")
        if write and anon and "w" in perms and perms[3] == "p":
            S.madvise(lo, hi - lo, S.MADV["nohugepage"])
        adv = "populate_write" if write and "w" in perms and perms[3] == "p" else "populate_read"
        S.madvise(lo, hi - lo, S.MADV[adv])


_scratch = 0


def make_scratch() -> None:
    """One pre-faulted page outside the arena, used only to drain this CPU's LRU batches (see drain_lru)."""
    global _scratch
    addr, err = S.mmap(0, S.PAGE_SIZE, S.PROT_READ | S.PROT_WRITE, S.MAP_PRIVATE | S.MAP_ANONYMOUS)
    if err is None:
        ctypes.memset(addr, 1, 1)
        _scratch = addr


def drain_lru() -> None:
    """Flush this CPU's folio batches (lru_add, lazyfree, deactivate) so that smaps (LazyFree, ...) shows the
    op's full effect: MADV_COLD runs lru_add_drain() before it deactivates the scratch page."""
    if _scratch:
        S.madvise(_scratch, S.PAGE_SIZE, S.MADV["cold"])


def pin_cpu() -> None:
    """Run every trace process on one CPU, so per-CPU batches and counters stay on it."""
    with contextlib.suppress(OSError, AttributeError):
        cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(cpus)})


class Proc:
    def __init__(self, chan: Chan) -> None:
        self.chan = chan
        self.children: dict[str, tuple[int, Chan, socket.socket]] = {}
        self.uffd = -1      # this process's userfaultfd (WP_ASYNC), created by its first uffd op

    # -- the loop
    def loop(self) -> None:
        while True:
            msg = self.chan.recv()
            if msg is None:
                self.kill_children()
                os._exit(0)
            path = msg.get("path", [])
            if path:
                self.relay(path[0], {**msg, "path": path[1:]})
                continue
            reply, exiting = self.handle(msg)
            if exiting:
                self.kill_children()
            self.chan.send(reply)
            if exiting:
                os._exit(0)

    def relay(self, name: str, msg: dict[str, Any]) -> None:
        if name not in self.children:
            self.chan.send({"error": f"no process {name!r} under pid {os.getpid()}"})
            return
        pid, chan, sock = self.children[name]
        chan.send(msg)
        reply = chan.recv()
        if reply is None:
            reply = {"error": f"process {name!r} (pid {pid}) died"}
        if reply.get("exited") and not msg.get("path"):
            os.waitpid(pid, 0)
            sock.close()
            del self.children[name]
        self.chan.send(reply)

    def kill_children(self) -> None:
        for _name, (pid, chan, sock) in list(self.children.items()):
            with contextlib.suppress(OSError):
                chan.send({"cmd": "op", "op": {"kind": "exit"}})
                chan.recv()
            sock.close()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()

    def handle(self, msg: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        cmd = msg.get("cmd")
        if cmd == "hello":
            return {"pid": os.getpid()}, False
        if cmd == "warmup":
            self.warmup()
            return {"pid": os.getpid()}, False
        if cmd == "op":
            op = msg["op"]
            handler = CHILD_OPS.get(op["kind"])
            if handler is None:
                return {"error": f"op {op['kind']!r} is not supported by the live child"}, False
            try:
                reply = handler(self, op)
            except Exception as e:  # never crash the command loop
                return {"error": f"{type(e).__name__}: {e}"}, False
            if reply.get("exited"):
                return reply, True
            drain_lru()
            return reply, False
        return {"error": f"unknown command {cmd!r}"}, False

    def warmup(self) -> None:
        """Run every handler once with harmless arguments (an empty arena: nothing changes)."""
        ops: tuple[dict[str, Any], ...] = (
            {"kind": "munmap", "start": 0, "length": S.PAGE_SIZE},
            {"kind": "mprotect", "start": 0, "length": S.PAGE_SIZE, "prot": "r"},
            {"kind": "madvise", "start": 0, "length": S.PAGE_SIZE, "advice": "normal"},
            {"kind": "mlock", "start": 0, "length": S.PAGE_SIZE, "flags": []},
            {"kind": "mlock", "start": 0, "length": S.PAGE_SIZE, "flags": ["onfault"]},
            {"kind": "munlock", "start": 0, "length": S.PAGE_SIZE},
            {"kind": "mremap", "start": 0, "length": S.PAGE_SIZE, "new_length": S.PAGE_SIZE, "flags": []},
            {"kind": "write", "start": 0, "length": 0, "stride": S.PAGE_SIZE, "byte": 1, "fill": False},
            {"kind": "write", "start": 0, "length": 0, "stride": S.PAGE_SIZE, "byte": 1, "fill": True},
            {"kind": "read", "start": 0, "length": 0, "stride": S.PAGE_SIZE})
        for op in ops:
            CHILD_OPS[op["kind"]](self, op)
        drain_lru()

    def fork(self, name: str) -> dict[str, Any]:
        parent_sock, child_sock = socket.socketpair()
        try:
            pid = os.fork()
        except OSError as e:    # ENOMEM (e.g. an injected page-table allocation failure in copy_page_range)
            parent_sock.close()
            child_sock.close()
            return {"result": errno.errorcode.get(e.errno or 0, str(e.errno))}
        if pid == 0:
            parent_sock.close()
            for _n, (_p, _c, s) in self.children.items():
                s.close()
            self.children = {}
            if self.uffd >= 0:      # the parent's context acts on the parent's mm: the child makes its own
                os.close(self.uffd)
                self.uffd = -1
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.close(devnull)
            prefault(write=False)
            self.chan = Chan(child_sock.fileno(), child_sock.fileno())
            self._sock = child_sock
            self.chan.send({"ready": os.getpid()})
            try:
                self.loop()
            finally:
                os._exit(0)
        child_sock.close()
        chan = Chan(parent_sock.fileno(), parent_sock.fileno())
        ready = chan.recv()
        if ready is None:
            os.waitpid(pid, 0)
            return {"error": f"forked process {name!r} died during setup"}
        self.children[name] = (pid, chan, parent_sock)
        return {"result": 0, "pid": pid}


# ---- the live op table: one handler per op kind the live kernel runs (trace.ops.OP_DEFS) ---------------------------
# A command's "op" is the wire form of a trace op (live.runner.op_message): "kind", and for a range op "start" and
# "length" (arena offsets), then the kind's own fields under their trace.ops names ("prot", "flags", ...).
ChildHandler = Callable[[Proc, dict[str, Any]], dict[str, Any]]
CHILD_OPS: dict[str, ChildHandler] = {}


def _live(kind: str) -> Callable[[ChildHandler], ChildHandler]:
    """Register the live handler of op ``kind``; model-only kinds and unknown names are refused."""
    def register(fn: ChildHandler) -> ChildHandler:
        d = OP_DEFS.get(kind)
        if d is None or d.model_only or kind in CHILD_OPS:
            raise AssertionError(f"no live handler can be registered for op {kind!r}")
        CHILD_OPS[kind] = fn
        return fn
    return register


def _range(op: dict[str, Any]) -> tuple[int, int]:
    return ARENA_BASE + op.get("start", 0), op.get("length", 0)


@_live("mmap")
def _mmap(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    addr, length = _range(op)
    flags = op.get("flags", [])
    f = S.MAP_PRIVATE | S.MAP_ANONYMOUS
    f |= S.MAP_FIXED_NOREPLACE if "fixed_noreplace" in flags else S.MAP_FIXED
    for name in flags:
        f |= S.MMAP_FLAG_BITS.get(name, 0)
    r, err = S.mmap(addr, length, PROTS[op.get("prot", "rw")], f)
    return {"result": err or r - ARENA_BASE}


@_live("munmap")
def _munmap(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    return {"result": S.munmap(*_range(op))[1] or 0}


@_live("mprotect")
def _mprotect(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    return {"result": S.mprotect(*_range(op), PROTS[op["prot"]])[1] or 0}


@_live("madvise")
def _madvise(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    return {"result": S.madvise(*_range(op), S.MADV[op["advice"]])[1] or 0}


@_live("mlock")
def _mlock(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    return {"result": S.mlock(*_range(op), "onfault" in op.get("flags", []))[1] or 0}


@_live("munlock")
def _munlock(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    return {"result": S.munlock(*_range(op))[1] or 0}


@_live("mremap")
def _mremap(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    addr, length = _range(op)
    flags = op.get("flags", [])
    new_len = op["new_length"]
    dest = op.get("dest")
    if "maymove" not in flags:
        r, err = S.mremap(addr, length, new_len, 0)
    elif "fixed" in flags or "dontunmap" in flags:
        f = S.MREMAP_MAYMOVE | S.MREMAP_FIXED | (S.MREMAP_DONTUNMAP if "dontunmap" in flags else 0)
        r, err = S.mremap(addr, length, new_len, f, ARENA_BASE + (dest or 0))
    else:
        r, err = S.mremap(addr, length, new_len, 0)
        if err == "ENOMEM":
            r, err = S.mremap(addr, length, new_len, S.MREMAP_MAYMOVE | S.MREMAP_FIXED, ARENA_BASE + (dest or 0))
    return {"result": err or r - ARENA_BASE}


@_live("write")
def _write(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    addr, length = _range(op)
    byte = op.get("byte", 0xAA)
    if op.get("fill"):
        if length:
            ctypes.memset(addr, byte, length)
    else:
        memset = ctypes.memset
        for a in range(addr, addr + length, op.get("stride", S.PAGE_SIZE)):
            memset(a, byte, 1)
    return {"result": 0}


@_live("read")
def _read(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    addr, length = _range(op)
    stride = op.get("stride", S.PAGE_SIZE)
    data = bytes((ctypes.c_ubyte * length).from_address(addr)[0:length:stride]) if length else b""
    return {"result": 0, "data": f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"}


@_live("fork")
def _fork(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    return p.fork(op["child"])


def _uffd(p: Proc) -> tuple[int, str | None]:
    if p.uffd < 0:
        fd, err = S.userfaultfd_wp_async()
        if err:
            return -1, err
        p.uffd = fd
    return p.uffd, None


def _uffd_call(p: Proc, op: dict[str, Any], call: Callable[[int, int, int], tuple[int, str | None]]
               ) -> dict[str, Any]:
    fd, err = _uffd(p)
    return {"result": err or call(fd, *_range(op))[1] or 0}


@_live("uffd_register")
def _uffd_register(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    return _uffd_call(p, op, S.uffdio_register_wp)


@_live("uffd_wp")
def _uffd_wp(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    return _uffd_call(p, op, S.uffdio_writeprotect)


@_live("uffd_unregister")
def _uffd_unregister(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    return _uffd_call(p, op, S.uffdio_unregister)


@_live("exit")
def _exit(p: Proc, op: dict[str, Any]) -> dict[str, Any]:
    return {"result": 0, "exited": True}     # the loop kills this process's children, answers, then exits


def main(argv: list[str]) -> None:
    gc.disable()
    if os.environ.get("THPSIM_THP_DISABLE") == "1":   # a lab guest disabled THP for thpsim's own processes:
        S.libc().prctl(41, 0, 0, 0, 0)                # PR_SET_THP_DISABLE 0 — the trace's processes get THPs
    if len(argv) > 1:
        lim = int(argv[1])
        if lim > 0:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    pin_cpu()
    make_scratch()
    prefault(write=True)
    Proc(Chan(0, 1)).loop()


if __name__ == "__main__":
    main(sys.argv)
