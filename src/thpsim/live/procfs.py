"""Parsers for the /proc files the live runner and the host snapshot capture read, plus thin readers.

The ``parse_*`` functions are pure (they take the file's text); the ``read_*`` functions read the file. A
truncated or garbled file raises :class:`thpsim.errors.ProcError` with one line naming the file and what is
missing. Nothing here prints.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from thpsim.errors import ProcError

STATUS_FIELDS = ("VmPTE", "VmRSS", "RssAnon", "VmLck", "VmSwap")
SMAPS_FIELDS = ("Rss", "Anonymous", "AnonHugePages", "LazyFree", "Locked", "Swap")

_KB_RE = re.compile(r"^\s*(\d+)\s*kB\s*$")
_VMA_HDR = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s+([r-][w-][x-][sp])\s+([0-9a-f]+)\s+(\S+)\s+(\d+)\s*(.*)$")


@dataclass(frozen=True)
class Status:
    """The /proc/PID/status values thpsim uses (kB)."""

    vm_pte_kb: int
    vm_rss_kb: int
    rss_anon_kb: int
    vm_lck_kb: int
    vm_swap_kb: int

    def minus(self, base: Status) -> Status:
        return Status(*(a - b for a, b in zip(self.astuple(), base.astuple(), strict=True)))

    def astuple(self) -> tuple[int, int, int, int, int]:
        return (self.vm_pte_kb, self.vm_rss_kb, self.rss_anon_kb, self.vm_lck_kb, self.vm_swap_kb)


@dataclass(frozen=True)
class SmapsVma:
    """One VMA of /proc/PID/smaps: absolute addresses, perms, and the kB fields (all of them, by name);
    ``header`` is the VMA's header line as the kernel printed it (start-end perms offset dev inode name)."""

    start: int
    end: int
    perms: str
    name: str
    fields: tuple[tuple[str, int], ...]
    header: str = field(default="", compare=False, repr=False)

    def get(self, key: str) -> int:
        return dict(self.fields).get(key, 0)


def _kb(value: str, what: str, fname: str) -> int:
    m = _KB_RE.match(value)
    if not m:
        raise ProcError(f"{fname}: cannot read {what} (expected '<n> kB', got {value.strip()!r})")
    return int(m.group(1))


def parse_status(text: str, fname: str = "/proc/PID/status") -> Status:
    """Parse VmPTE, VmRSS, RssAnon, VmLck and VmSwap (kB) from /proc/PID/status text."""
    vals: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if sep and key in STATUS_FIELDS:
            vals[key] = _kb(rest, key, fname)
    missing = [k for k in STATUS_FIELDS if k not in vals]
    if missing:
        raise ProcError(f"{fname} is truncated or not a status file: missing {', '.join(missing)}")
    return Status(vals["VmPTE"], vals["VmRSS"], vals["RssAnon"], vals["VmLck"], vals["VmSwap"])


def parse_smaps(text: str, fname: str = "/proc/PID/smaps", *,
                required: tuple[str, ...] = SMAPS_FIELDS) -> list[SmapsVma]:
    """Parse every VMA of /proc/PID/smaps (or smaps_rollup: one VMA). Each VMA must carry the ``required``
    fields; a VMA without one is reported as truncated ("... the VMA a-b has no AnonHugePages line")."""
    vmas: list[SmapsVma] = []
    cur: list = []  # [start, end, perms, name, {field: kB}, header line]

    def close() -> None:
        if cur:
            missing = [k for k in required if k not in cur[4]]
            if missing:
                raise ProcError(f"{fname} is truncated: the VMA {cur[0]:x}-{cur[1]:x} has no "
                                f"{', '.join(missing)} line")
            vmas.append(SmapsVma(cur[0], cur[1], cur[2], cur[3], tuple(sorted(cur[4].items())), cur[5]))

    for line in text.splitlines():
        if not line.strip():
            continue
        m = _VMA_HDR.match(line)
        if m:
            close()
            cur[:] = [int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(7).strip(), {}, line]
            continue
        key, sep, rest = line.partition(":")
        if not sep or not cur:
            raise ProcError(f"{fname} is garbled: unexpected line {line[:60]!r}")
        if key == "VmFlags" or key == "THPeligible" or key == "ProtectionKey":
            continue
        if rest.strip().endswith("kB"):
            cur[4][key] = _kb(rest, key, fname)
    close()
    return vmas


def parse_keyed(text: str) -> dict[str, str]:
    """The 'Key: value' lines of a file such as /proc/PID/status, values stripped (other lines ignored)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if sep:
            out[key] = rest.strip()
    return out


def parse_flat(text: str, fname: str, *, kb: bool = False, required: tuple[str, ...] = ()) -> dict[str, int]:
    """Parse 'name value' (/proc/vmstat) or 'Name: value kB' (/proc/meminfo) text into a dict."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if kb:
            key, sep, rest = line.partition(":")
            parts = rest.split()
            if not sep or not parts or not parts[0].isdigit():
                raise ProcError(f"{fname} is garbled: cannot read line {line[:60]!r}")
            out[key.strip()] = int(parts[0])
        else:
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ProcError(f"{fname} is garbled: cannot read line {line[:60]!r}")
            out[parts[0]] = int(parts[1])
    missing = [k for k in required if k not in out]
    if missing:
        raise ProcError(f"{fname} is truncated: missing {', '.join(missing)}")
    return out


def parse_vmstat(text: str, fname: str = "/proc/vmstat") -> dict[str, int]:
    return parse_flat(text, fname, required=("nr_free_pages",))


def parse_meminfo(text: str, fname: str = "/proc/meminfo") -> dict[str, int]:
    return parse_flat(text, fname, kb=True, required=("MemTotal", "AnonPages", "PageTables"))


def parse_maps(text: str, fname: str = "/proc/PID/maps") -> list[tuple[int, int, str, str]]:
    """Parse /proc/PID/maps into (start, end, perms, name)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _VMA_HDR.match(line)
        if not m:
            raise ProcError(f"{fname} is garbled: cannot read line {line[:60]!r}")
        out.append((int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(7).strip()))
    return out


# ---------------------------------------------------------------------------------------------- readers

def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError as e:
        raise ProcError(f"cannot read {path}: {e.strerror}") from None


def stat_refresh() -> None:
    """Fold per-CPU vmstat deltas into the global counters (changes no setting). Failure is ignored."""
    try:
        with open("/proc/sys/vm/stat_refresh", "w") as f:
            f.write("1")
    except OSError:
        pass


def read_status(pid: int | str = "self") -> Status:
    path = f"/proc/{pid}/status"
    return parse_status(_read(path), path)


def read_smaps(pid: int | str = "self") -> list[SmapsVma]:
    path = f"/proc/{pid}/smaps"
    return parse_smaps(_read(path), path)


def read_maps(pid: int | str = "self") -> list[tuple[int, int, str, str]]:
    path = f"/proc/{pid}/maps"
    return parse_maps(_read(path), path)


def read_vmstat(refresh: bool = True) -> dict[str, int]:
    if refresh:
        stat_refresh()
    return parse_vmstat(_read("/proc/vmstat"))


def vmstat_drift(keys: Iterable[str], seconds: float = 2.0) -> dict[str, int]:
    """How much each of ``keys`` moves in /proc/vmstat over ``seconds`` while thpsim runs nothing: other
    processes' THP events (a busy host, QEMU guests backed by THPs). Only the keys that moved."""
    import time

    want = sorted(set(keys))
    a = read_vmstat(refresh=False)
    time.sleep(seconds)
    b = read_vmstat(refresh=False)
    return {k: b.get(k, 0) - a.get(k, 0) for k in want if b.get(k, 0) != a.get(k, 0)}


def read_meminfo(refresh: bool = True) -> dict[str, int]:
    if refresh:
        stat_refresh()
    return parse_meminfo(_read("/proc/meminfo"))


def read_text(path: str) -> str:
    """Read a small text file; ProcError naming the file if it cannot be read."""
    return _read(path)
