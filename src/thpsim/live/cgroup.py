"""THP events counted for the trace's own processes: a cgroup v2 memory cgroup created for one live run.

/proc/vmstat's thp_* counters are host-wide: any other process that faults a THP moves them, so a live
comparison on a busy host cannot tell its own events from a neighbour's. The memory controller of cgroup v2
counts some of the same events per cgroup (mm/memcontrol.c ``memcg_vm_event_stat[]``, shown in
``memory.stat``): ``thp_fault_alloc``, ``thp_collapse_alloc`` (charged to the mm's memcg by
``count_memcg_event_mm``), ``thp_swpout`` and ``thp_swpout_fallback`` (since 6.10). A run moves its arena-owning
child into a fresh cgroup (forked trace processes inherit it), and reads those four counters from there; the
other thp_* counters (splits, deferred splits, zero-page allocations, ...) have no per-cgroup count and stay
host-wide (see analysis.diff: they alone are retried and flagged as host noise).

Where this is possible: a cgroup2 mount with the memory controller enabled for the children of this process's
cgroup (``cgroup.subtree_control`` lists ``memory``), and permission to create a cgroup there. thpsim never
enables a controller on the host (a knob it must not change); inside a lab guest, whose kernel is the lab's,
``enable_in_guest`` turns it on for the root cgroup. Elsewhere :func:`RunCgroup.create` returns the reason it
could not, and the counters stay host-wide.

Leaves out: cgroup v1 (its memory.stat has no THP event counters), memory.events, and per-cgroup split counts
(the kernel has none).
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass

from thpsim.errors import ThpsimError
from thpsim.live.procfs import parse_flat, read_text

__all__ = ["CGROUP_THP_EVENTS", "RunCgroup", "cgroup2_mount", "enable_in_guest"]

CGROUP_THP_EVENTS = ("thp_fault_alloc", "thp_collapse_alloc", "thp_swpout", "thp_swpout_fallback")


def cgroup2_mount(mounts: str = "/proc/self/mounts") -> str | None:
    """Where cgroup2 is mounted (the first such mount), or None."""
    try:
        with open(mounts, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        return None
    return None


def _own_cgroup(proc: str = "/proc/self/cgroup") -> str | None:
    try:
        with open(proc, encoding="utf-8") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip() or "/"
    except OSError:
        return None
    return None


def enable_in_guest(root: str) -> None:
    """Inside a lab guest only: enable the memory controller for the root cgroup's children."""
    with contextlib.suppress(OSError, ThpsimError):
        if "memory" not in read_text(os.path.join(root, "cgroup.subtree_control")).split():
            with open(os.path.join(root, "cgroup.subtree_control"), "w", encoding="utf-8") as f:
                f.write("+memory")


@dataclass
class RunCgroup:
    """A memory cgroup holding one live run's processes; :meth:`counters` reads its THP events."""

    path: str

    @classmethod
    def create(cls, pid: int, name: str, *, mounts: str = "/proc/self/mounts",
               self_cgroup: str = "/proc/self/cgroup") -> tuple[RunCgroup | None, str]:
        """Move ``pid`` into a new cgroup ``name`` below this process's cgroup. Returns (cgroup, "") or
        (None, why not), never raises for an unavailable controller."""
        mnt = cgroup2_mount(mounts)
        own = _own_cgroup(self_cgroup)
        if mnt is None or own is None:
            return None, "no cgroup v2 hierarchy"
        parent = os.path.join(mnt, own.lstrip("/"))
        try:
            ctl = read_text(os.path.join(parent, "cgroup.subtree_control")).split()
        except ThpsimError as e:
            return None, str(e)
        if "memory" not in ctl:
            return None, f"the memory controller is not enabled for the children of {own} (cgroup.subtree_control)"
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        except OSError as e:
            return None, f"cannot create {path}: {errno.errorcode.get(e.errno or 0, str(e.errno))}"
        cg = cls(path)
        try:
            with open(os.path.join(path, "cgroup.procs"), "w", encoding="utf-8") as f:
                f.write(str(pid))
            cg.counters()
        except (OSError, ThpsimError) as e:
            cg.remove()
            return None, f"cannot use {path}: {e}"
        return cg, ""

    def counters(self) -> dict[str, int]:
        """The cgroup's THP event counters (a counter this kernel's memory.stat lacks is absent)."""
        src = os.path.join(self.path, "memory.stat")
        stat = parse_flat(read_text(src), src)     # a ProcError naming the file if unreadable or garbled
        return {k: stat[k] for k in CGROUP_THP_EVENTS if k in stat}

    def remove(self) -> None:
        """Remove the cgroup (its processes have exited; a straggler keeps it, harmlessly empty later)."""
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
