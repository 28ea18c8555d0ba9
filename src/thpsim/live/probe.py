"""Measure, on the running kernel, whether PMD-mapped THPs carry a deposited PTE table, and what the lazy-PTE
series would save on this host right now.

:func:`probe` runs a small trace in a fresh child (through :func:`thpsim.live.runner.run_live`): one THP to
create the arena's PUD and PMD tables, then N more THPs under the same PMD table (so no upper table is added) and N
huge-zero read faults. The VmPTE delta per THP is the deposit. The result is a frozen dataclass
(``dataclasses.asdict`` gives JSON-able data); :func:`format_probe` renders it as text.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from thpsim.errors import ProcError
from thpsim.live import env as live_env
from thpsim.live import syscalls as S
from thpsim.live.runner import run_live
from thpsim.trace.format import parse
from thpsim.trace.geometry import Geometry, map_offset

PMD_KB = S.PMD_SIZE // 1024               # this kernel's (32 MiB on arm64 with 16K pages)
PTE_TABLE_KB = S.PAGE_SIZE // 1024        # one PTE table is one page on x86-64 and arm64


@dataclass(frozen=True)
class ProbeResult:
    kernel_release: str
    thp_enabled: str | None
    thp_defrag: str | None
    use_zero_page: bool | None
    has_split_pmd_failed: bool
    thps_requested: int
    thps_pmd_mapped: int
    vm_pte_first_thp_kb: int         # first THP in the arena: its upper tables (PUD where its own) + PMD table + deposit
    upper_tables_kb: int              # of which PUD + PMD tables
    vm_pte_per_thp_kb: float          # per further THP under the same PMD table (the deposit)
    rss_anon_per_thp_kb: float
    zero_pmds: int
    vm_pte_per_zero_pmd_kb: float     # per huge-zero PMD
    deposits: bool
    host_anon_huge_kb: int            # sum of AnonHugePages over /proc/*/smaps_rollup
    host_thp_mappings: int
    host_processes_scanned: int
    host_processes_unreadable: int
    series_saving_kb: int             # host_thp_mappings x one 4 KiB PTE table
    notes: tuple[str, ...] = ()

    @property
    def deposit_summary(self) -> str:
        if self.deposits:
            return f"deposits: yes, {self.vm_pte_per_thp_kb:g} KiB per THP"
        return "deposits: no (VmPTE does not grow per PMD-mapped THP: the lazy-PTE series looks applied)"


def _host_anon_huge() -> tuple[int, int, int]:
    total = scanned = unreadable = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/smaps_rollup", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError as err:
            if err.errno not in (errno.ESRCH, errno.ENOENT):  # kernel threads (no mm) and exited processes
                unreadable += 1
            continue
        scanned += 1
        for line in text.splitlines():
            if line.startswith("AnonHugePages:"):
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    total += int(parts[1])
    return total, scanned, unreadable


def probe(n: int = 8, *, timeout: float = 60.0) -> ProbeResult:
    """Run the probe in a fresh child; see the module docstring."""
    e = live_env.detect()
    reason = live_env.skip_reason(e)
    if reason:
        raise ProcError(f"cannot probe the live kernel: {reason}")
    text = "\n".join([
        '{"thpsim": 1, "name": "probe"}',
        '{"op": "mmap", "id": "first", "at": "0", "len": "2M"}',
        '{"op": "madvise", "id": "first", "advice": "hugepage"}',
        '{"op": "write", "id": "first", "len": "4K"}',
        f'{{"op": "mmap", "id": "thps", "at": "64M", "len": "{2 * n}M"}}',
        '{"op": "madvise", "id": "thps", "advice": "hugepage"}',
        '{"op": "write", "id": "thps", "stride": "2M"}',
        f'{{"op": "mmap", "id": "zero", "at": "256M", "len": "{2 * n}M"}}',
        '{"op": "madvise", "id": "zero", "advice": "hugepage"}',
        '{"op": "read", "id": "zero", "stride": "2M"}',
    ])
    steps = run_live(parse(text, source="probe"), timeout=timeout)
    first = steps[2].proc_obs("main")
    before, after = steps[4].proc_obs("main"), steps[5].proc_obs("main")
    zb, za = steps[7].proc_obs("main"), steps[8].proc_obs("main")
    assert first and before and after and zb and za
    # run_live mapped the 4K/2M probe onto this kernel's pages (thpsim.trace.geometry): so are the offsets here
    geo, pmd = Geometry(S.PAGE_SIZE, S.PMD_SIZE), S.PMD_SIZE
    base = map_offset(64 << 20, geo)
    pmd_mapped = sum((r.end - r.start) // pmd for r in after.pagemap
                     if r.kind == "pmd" and base <= r.start < base + n * pmd)
    zero_base = map_offset(256 << 20, geo)
    zero_pmds = sum((r.end - r.start) // pmd for r in za.pagemap
                    if r.kind == "pmd_zero" and zero_base <= r.start < zero_base + n * pmd)
    notes: list[str] = list(e.notes)   # kernel features this kernel lacks (env.feature_notes)
    per = (after.vm_pte_kb - before.vm_pte_kb) / pmd_mapped if pmd_mapped else 0.0
    rss_per = (after.rss_anon_kb - before.rss_anon_kb) / pmd_mapped if pmd_mapped else 0.0
    zper = (za.vm_pte_kb - zb.vm_pte_kb) / zero_pmds if zero_pmds else 0.0
    if pmd_mapped < n:
        notes.append(f"only {pmd_mapped} of {n} faults got a PMD-mapped THP (fragmented memory?); the "
                     "per-THP figure is over the PMD-mapped ones only and may include fallback PTE tables")
    if not zero_pmds:
        notes.append("no huge-zero PMD was mapped (use_zero_page=0?)")
    huge_kb, scanned, unreadable = _host_anon_huge()
    mappings = huge_kb // PMD_KB
    notes.append("blind spots of the host estimate: huge-zero PMDs (each also carries a deposit) and PMD-mapped "
                 "THPs of processes whose smaps_rollup could not be read are not in AnonHugePages; a THP "
                 "mapped by several processes (after fork) counts once per mapping, as does its deposit")
    return ProbeResult(
        kernel_release=e.kernel_release, thp_enabled=e.thp_enabled, thp_defrag=e.thp_defrag,
        use_zero_page=e.use_zero_page, has_split_pmd_failed=e.has_split_pmd_failed, thps_requested=n,
        thps_pmd_mapped=pmd_mapped, vm_pte_first_thp_kb=first.vm_pte_kb,
        upper_tables_kb=first.vm_pte_kb - round(per), vm_pte_per_thp_kb=per, rss_anon_per_thp_kb=rss_per,
        zero_pmds=zero_pmds, vm_pte_per_zero_pmd_kb=zper, deposits=per >= PTE_TABLE_KB,
        host_anon_huge_kb=huge_kb, host_thp_mappings=mappings, host_processes_scanned=scanned,
        host_processes_unreadable=unreadable, series_saving_kb=mappings * PTE_TABLE_KB if per >= PTE_TABLE_KB else 0,
        notes=tuple(notes))


def format_probe(p: ProbeResult) -> str:
    lines = [
        f"kernel {p.kernel_release}: THP enabled={p.thp_enabled} defrag={p.thp_defrag} "
        f"use_zero_page={'1' if p.use_zero_page else '0'}",
        f"thp_split_pmd_failed in /proc/vmstat: {'yes (lazy-PTE series applied)' if p.has_split_pmd_failed else 'no'}",
        p.deposit_summary,
        f"  {p.thps_pmd_mapped}/{p.thps_requested} THPs PMD-mapped; VmPTE +{p.vm_pte_per_thp_kb:g} KiB and "
        f"RssAnon +{p.rss_anon_per_thp_kb:g} KiB per THP",
        f"  first THP in the arena: VmPTE +{p.vm_pte_first_thp_kb} KiB "
        f"(of which upper tables {p.upper_tables_kb} KiB)",
        f"  huge-zero PMDs: {p.zero_pmds}, VmPTE +{p.vm_pte_per_zero_pmd_kb:g} KiB each",
        f"host now: {p.host_anon_huge_kb} kB AnonHugePages = {p.host_thp_mappings} PMD mappings in "
        f"{p.host_processes_scanned} processes ({p.host_processes_unreadable} unreadable)",
        (f"the lazy-PTE series would save about {p.series_saving_kb} KiB of page tables on this host right now"
         if p.deposits else "this kernel deposits no PTE table per THP: the series' saving is already taken here"),
    ]
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


__all__ = ["ProbeResult", "probe", "format_probe"]
