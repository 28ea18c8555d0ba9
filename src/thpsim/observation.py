"""The observation record: what both engines (model and live kernel) report after every trace step.

Per-process values are changes since that process's baseline (the trace start for ``main``; for a forked child,
what a child forked from the untouched baseline would have), so they cover exactly the arena and nothing the
interpreter does. Addresses are arena offsets. Global counters (vmstat thp_*, meminfo) are changes since the
trace start; other processes can disturb them on a live host, so :func:`thpsim.analysis.diff` compares them
separately and marks them noisy.

Page-map run kinds (from PAGEMAP_SCAN categories + kpageflags on the live side):
  ``pmd``       present, mapped by a huge anonymous PMD
  ``pmd_zero``  the huge zero page mapped by a PMD
  ``pte_thp``   present, PTE-mapped page of a large (PMD-order) folio
  ``pte``       present, PTE-mapped order-0 page
  ``zero``      the 4 KiB shared zero page
  ``swap``      swapped out
  ``guard``     a guard region (MADV_GUARD_INSTALL)
Unpopulated ranges have no run.

A data-contract violation (model only: shadow memory disagreeing with the page-table model) is a
:class:`ContractViolation` record; the JSON form is its text (``"main: [4K, 8K): MADV_DONTNEED returned 0 but the
page still holds data"``), and :func:`from_dict` rebuilds the record from it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

RUN_KINDS = ("pmd", "pmd_zero", "pte_thp", "pte", "zero", "swap", "guard")
# global counters reported (deltas since trace start)
VMSTAT_FIELDS = (
    "thp_fault_alloc", "thp_fault_fallback", "thp_fault_fallback_charge", "thp_collapse_alloc",
    "thp_collapse_alloc_failed", "thp_split_page", "thp_split_page_failed", "thp_deferred_split_page",
    "thp_underused_split_page", "thp_split_pmd", "thp_split_pmd_failed", "thp_zero_page_alloc",
    "thp_zero_page_alloc_failed", "thp_swpout", "thp_swpout_fallback", "thp_migration_success",
    "thp_migration_fail", "thp_migration_split", "thp_scan_exceed_none_pte",
)
MEMINFO_FIELDS = ("AnonHugePages", "PageTables", "AnonPages")
# global counters that depend on state outside the trace (system-wide huge zero folio)
NOISY_ALWAYS = frozenset({"thp_zero_page_alloc"})


@dataclass(frozen=True)
class VmaObs:
    """One VMA inside the arena, as /proc/PID/smaps shows it (kB)."""

    start: int
    end: int
    perms: str           # "rw-p"
    rss_kb: int = 0
    anonymous_kb: int = 0
    anon_huge_kb: int = 0
    lazyfree_kb: int = 0
    locked_kb: int = 0
    swap_kb: int = 0


@dataclass(frozen=True)
class Run:
    start: int
    end: int
    kind: str


@dataclass(frozen=True)
class ProcObs:
    proc: str
    vm_pte_kb: int = 0
    vm_rss_kb: int = 0
    rss_anon_kb: int = 0
    vm_lck_kb: int = 0
    vm_swap_kb: int = 0
    vmas: tuple[VmaObs, ...] = ()
    pagemap: tuple[Run, ...] = ()

    def rollup(self) -> dict[str, int]:
        """smaps_rollup restricted to the arena."""
        keys = ("rss_kb", "anonymous_kb", "anon_huge_kb", "lazyfree_kb", "locked_kb", "swap_kb")
        return {k: sum(getattr(v, k) for v in self.vmas) for k in keys}


class ContractRule(Enum):
    """The data-contract rules shadow memory checks (``thpsim.model.shadow.compare``): what the page-table model
    returns for a page against what the syscall contracts say it holds. The value is the report's wording."""

    STILL_HOLDS_DATA = "still holds data"          # the contract says zero (discarded), the model has data
    LOST_ITS_DATA = "lost its data"                # the contract says data, the model reads zero
    HOLDS_DIFFERENT_DATA = "holds different data"  # both have data, not the same


_UNITS = (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10))
_VIOLATION_TEXT = re.compile(r"(?P<proc>[^:\s]+): \[(?P<lo>\w+), (?P<hi>\w+)\): (?P<cause>.+) but the page "
                             r"(?P<rule>.+)")


def _fmt_off(off: int) -> str:
    for unit, m in _UNITS:
        if off and off % m == 0:
            return f"{off // m}{unit}"
    return f"{off:#x}"


def _parse_off(s: str) -> int:
    """Inverse of :func:`_fmt_off` ("4K", "2M", "1G", "0x1800"); ValueError for anything else."""
    if s.startswith("0x"):
        n = int(s, 16)
    else:
        unit = dict(_UNITS).get(s[-1:])
        if unit is None or not s[:-1].isdigit():
            raise ValueError(f"bad offset {s!r}")
        n = int(s[:-1]) * unit
    if _fmt_off(n) != s:
        raise ValueError(f"bad offset {s!r}")
    return n


@dataclass(frozen=True)
class ContractViolation:
    """Pages [start, end) (arena offsets, whole pages) of ``proc`` break ``rule``; ``cause`` is the operation
    whose contract defined what they should hold ("write", "MADV_DONTNEED returned 0", "mremap shrink", ...,
    or "the trace" when nothing did)."""

    proc: str
    start: int
    end: int
    rule: ContractRule
    cause: str

    def __str__(self) -> str:
        return f"{self.proc}: [{_fmt_off(self.start)}, {_fmt_off(self.end)}): {self.cause} but the page " \
               f"{self.rule.value}"

    @classmethod
    def parse(cls, text: str) -> ContractViolation:
        """The record whose ``str()`` is ``text``; ValueError (one line) if there is none."""
        m = _VIOLATION_TEXT.fullmatch(text) if isinstance(text, str) else None
        try:
            if m is None:
                raise ValueError("not of the form 'proc: [start, end): cause but the page rule'")
            v = cls(m["proc"], _parse_off(m["lo"]), _parse_off(m["hi"]), ContractRule(m["rule"]), m["cause"])
        except ValueError as e:
            raise ValueError(f"not a data-contract violation ({e}): {str(text)[:80]!r}") from None
        if str(v) != text:
            raise ValueError(f"not a data-contract violation: {text[:80]!r}")
        return v


@dataclass(frozen=True)
class StepViolation:
    """A data-contract violation as a run reports it: at trace step ``step`` (trace file line ``line``)."""

    step: int
    line: int
    violation: ContractViolation

    def __str__(self) -> str:
        return f"step {self.step} (line {self.line}): {self.violation}"


@dataclass(frozen=True)
class StepObs:
    step: int
    line: int
    op: str
    proc: str
    result: int | str | None = None      # return value (arena offset for mmap/mremap) or errno name / "SIGSEGV"
    data: str | None = None              # digest of the bytes a read returned
    procs: tuple[ProcObs, ...] = ()
    vmstat: tuple[tuple[str, int], ...] = ()   # nonzero deltas since trace start
    meminfo: tuple[tuple[str, int], ...] = ()  # kB deltas since trace start
    notes: tuple[str, ...] = ()          # engine remarks (e.g. "model-only op skipped on live")
    violations: tuple[ContractViolation, ...] = field(default=())  # data-contract violations (model, shadow)
    # allocations an op's ``inject`` failed, as the kernel functions that called the allocator (in order);
    # left out of to_dict() when empty, so traces without injection serialise as before
    injected: tuple[str, ...] = ()
    # the vmstat counters above that count only the trace's own processes (live: its memory cgroup,
    # thpsim.live.cgroup); the others are host-wide. Empty for the model and where no cgroup was possible.
    own_counters: tuple[str, ...] = ()

    def proc_obs(self, name: str) -> ProcObs | None:
        return next((p for p in self.procs if p.proc == name), None)

    def counter(self, name: str) -> int:
        return dict(self.vmstat).get(name, 0)


_OMIT_WHEN_EMPTY = frozenset({"injected", "own_counters"})


def no_process_note(proc: str) -> str:
    """Both engines' note for an op of a process that does not exist (its fork failed, or it exited)."""
    return f"process {proc!r} does not exist (its fork failed or it exited): op not run"


def to_dict(obj: Any) -> Any:
    """JSON-ready form of an observation (deterministic key order; a ContractViolation is its text)."""
    if isinstance(obj, ContractViolation):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)
                if not (f.name in _OMIT_WHEN_EMPTY and not getattr(obj, f.name))}
    if isinstance(obj, tuple):
        if obj and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in obj):
            return {k: to_dict(v) for k, v in obj}
        return [to_dict(x) for x in obj]
    return obj


def from_dict(d: dict[str, Any]) -> StepObs:
    """Inverse of to_dict for StepObs (the lab's JSON stream; ``thpsim live --jsonl``). A violation whose text is not
    a ContractViolation's raises ValueError (one line)."""
    procs = tuple(
        ProcObs(**{**p, "vmas": tuple(VmaObs(**v) for v in p.get("vmas", ())),
                   "pagemap": tuple(Run(**r) for r in p.get("pagemap", ()))})
        for p in d.get("procs", ())
    )
    return StepObs(
        step=d["step"], line=d["line"], op=d["op"], proc=d["proc"], result=d.get("result"), data=d.get("data"),
        procs=procs, vmstat=tuple(sorted(dict(d.get("vmstat") or {}).items())),
        meminfo=tuple(sorted(dict(d.get("meminfo") or {}).items())), notes=tuple(d.get("notes", ())),
        violations=tuple(ContractViolation.parse(v) for v in d.get("violations", ())),
        injected=tuple(d.get("injected", ())), own_counters=tuple(d.get("own_counters", ())),
    )


def dumps(steps: list[StepObs] | tuple[StepObs, ...]) -> str:
    return "\n".join(json.dumps(to_dict(s), sort_keys=False) for s in steps) + ("\n" if steps else "")


def merge_runs(runs: list[Run]) -> tuple[Run, ...]:
    """Sort and coalesce adjacent runs of the same kind."""
    out: list[Run] = []
    for r in sorted(runs, key=lambda r: r.start):
        if out and out[-1].kind == r.kind and out[-1].end == r.start:
            out[-1] = Run(out[-1].start, r.end, r.kind)
        else:
            out.append(r)
    return tuple(out)


__all__ = ["VmaObs", "Run", "ProcObs", "StepObs", "ContractRule", "ContractViolation", "StepViolation", "to_dict", "from_dict", "dumps", "merge_runs", "asdict",
           "RUN_KINDS", "VMSTAT_FIELDS", "MEMINFO_FIELDS", "NOISY_ALWAYS"]
