"""How much page-table memory the lazy-PTE series would free on a host, or on a fleet of hosts.

Upstream deposits one PTE table per PMD mapping of an anonymous THP (and per huge-zero PMD) and keeps it until
the PMD is split or zapped (spec upstream.md §1, §2). The series "mm: thp: lazy PTE page table allocation at PMD
split" stops depositing except where ``arch_needs_pgtable_deposit()`` (powerpc hash), so every PMD-mapped
anonymous THP mapping frees one PTE table: ``mm->pgtables_bytes`` (``VmPTE``) and ``NR_PAGETABLE``
(``PageTables``) drop by one table each (series.md §5.6, §10).

Per process: ``THP mappings = smaps_rollup AnonHugePages / hpage_pmd_size`` and ``saved = mappings × PTE table
bytes`` (4096 on x86_64). Σ per-process is the right count of deposits because smaps counts per mapping and a
forked child has its own deposit; /proc/meminfo ``AnonHugePages`` counts each folio once and is reported next to
it. Results are plain dataclasses (``dataclasses.asdict`` gives JSON-able dicts) with deterministic ordering;
the snapshot capture time is deliberately not part of them.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from thpsim.analysis.snapshot import Snapshot, load_files, load_snapshot, selected_mode
from thpsim.errors import ThpsimError
from thpsim.live.snapshot import capture
from thpsim.model.arch import resolve_arch

DASK_HINT = "pip install 'thpsim[dask]'"
PTE_BYTES = 8          # sizeof(pte_t) on every 64-bit arch thpsim knows


# --------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ProcessEstimate:
    pid: int
    comm: str
    anon_huge_kb: int                   # smaps_rollup AnonHugePages
    vm_pte_kb: int                      # /proc/PID/status VmPTE
    thps: int                           # PMD mappings of anonymous THPs = AnonHugePages / hpage_pmd_size
    saved_bytes: int                    # thps × PTE table bytes (0 where the arch keeps the deposit)
    pct_of_vmpte: float | None          # saved_bytes as % of this process's VmPTE (None if VmPTE is 0)


@dataclass
class Estimate:
    source: str                         # "live" or the snapshot path
    hostname: str
    release: str
    machine: str
    arch: str                           # thpsim.model.arch profile name, or "generic"
    arch_note: str
    deposit_kept: bool                  # True where the series keeps the deposit (powerpc hash): nothing saved
    pte_table_bytes: int                # size of one deposited PTE table on this arch
    saved_per_thp_bytes: int            # what the series frees per PMD mapping (0 if deposit_kept)
    hpage_pmd_size: int                 # bytes
    thp_enabled: str
    thp_defrag: str
    use_zero_page: str
    processes: list[ProcessEstimate]    # processes with at least one THP mapping, by savings desc then pid
    processes_scanned: int              # processes with an mm that were read
    processes_with_thp: int
    no_mm: int                          # kernel threads and zombies
    vanished: int                       # exited during capture
    unreadable: int                     # not readable (permissions)
    thp_mappings: int                   # Σ per-process THPs = number of deposited tables for anon THPs
    anon_huge_kb: int                   # Σ per-process AnonHugePages (per mapping)
    vm_pte_kb: int                      # Σ per-process VmPTE
    saved_bytes: int
    pct_of_vmpte: float | None          # saved_bytes / Σ VmPTE
    host_anon_huge_kb: int              # /proc/meminfo AnonHugePages (each folio once)
    host_thp_folios: int                # host_anon_huge_kb / hpage_pmd_size
    host_page_tables_kb: int            # /proc/meminfo PageTables
    host_mem_total_kb: int              # /proc/meminfo MemTotal
    extra_mappings: int                 # thp_mappings - host_thp_folios (> 0: folios mapped by several mms)
    pct_of_page_tables: float | None
    pct_of_ram: float | None
    thp_zero_page_alloc: int | None     # vmstat: huge zero folio allocations (their PMDs are invisible here)
    skipped: list[str] = field(default_factory=list)      # processes left out at capture time, with the reason
    blind_spots: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)       # bad per-process entries (left out or partly counted)


@dataclass(frozen=True)
class FleetFailure:
    path: str
    error: str


@dataclass
class FleetEstimate:
    hosts: list[Estimate]               # by savings desc, then source
    failures: list[FleetFailure]        # snapshots that could not be loaded (by path)
    n_hosts: int
    thp_mappings: int
    anon_huge_kb: int
    saved_bytes: int
    vm_pte_kb: int
    host_thp_folios: int
    host_page_tables_kb: int
    host_mem_total_kb: int
    pct_of_page_tables: float | None
    pct_of_ram: float | None
    process_errors: int                 # Σ per-host per-process errors (listed in each host's ``errors``)


# --------------------------------------------------------------------------------------------------- arch


def _arch_terms(snap: Snapshot) -> tuple[str, int, bool, str]:
    """(arch name, PTE table bytes, deposit kept, note)."""
    arch, how = resolve_arch(snap.machine, snap.hpage_pmd_size, snap.page_size, snap.mmu)
    if arch is None:
        table = (snap.hpage_pmd_size // snap.page_size) * PTE_BYTES if snap.hpage_pmd_size else 0
        return "generic", table, False, (f"{how}; assuming the generic deposit: one PTE table of "
                                         f"PTRS_PER_PTE x 8 = {table} bytes per THP mapping, freed by the series")
    if arch.needs_pgtable_deposit:
        return arch.name, arch.pte_table_bytes, True, (
            f"{how}: the powerpc hash MMU needs the deposited table (it stores the hash-slot info), "
            "arch_needs_pgtable_deposit() is true and the series keeps the deposit, so nothing is saved")
    note = f"{how}: the series frees one {arch.pte_table_bytes}-byte PTE table per PMD-mapped anonymous THP"
    if arch.name == "s390x":
        note += " (VmPTE drops 2 KiB per table; since v6.7 each table occupies a full 4 KiB page)"
    elif arch.name == "ppc64-radix":
        note += " (256-byte fragments share 64 KiB pages, so PageTables only drops once a whole page empties)"
    elif not arch.validated_live:
        note += " (profile from the specs, not validated on a live kernel)"
    return arch.name, arch.pte_table_bytes, False, note


# --------------------------------------------------------------------------------------------------- estimate


def _pct(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole > 0 else None


def _blind_spots(snap: Snapshot, thp_mappings: int, host_folios: int, zero_alloc: int | None,
                 skipped: int) -> list[str]:
    out: list[str] = []
    zp = snap.thp.get("use_zero_page", "").strip()
    zero = ("Huge-zero PMDs (read faults on THP-eligible memory with use_zero_page=1) carry a deposited table "
            "too, but neither smaps nor meminfo AnonHugePages counts them, so this is a lower bound")
    if zp == "0":
        zero += "; use_zero_page=0 here, so only PMDs mapped before it was turned off can exist"
    elif zero_alloc is not None:
        zero += f"; vmstat thp_zero_page_alloc={zero_alloc}"
        zero += " (the huge zero folio has been allocated, so such PMDs may exist)" if zero_alloc else \
            " (the huge zero folio was never allocated, so there are none)"
    out.append(zero + ".")
    rel = "more than" if thp_mappings > host_folios else "fewer than" if thp_mappings < host_folios else "equal to"
    fork = (f"Deposits are per PMD mapping: a forked child gets its own deposit for every huge PMD it inherits, "
            f"and smaps counts per mapping, so the sum of per-process AnonHugePages ({thp_mappings} mappings) is "
            f"the right count; /proc/meminfo AnonHugePages counts each folio once ({host_folios} folios). "
            f"Mappings are {rel} folios here")
    if thp_mappings > host_folios:
        fork += f": {thp_mappings - host_folios} extra mappings of folios shared after fork"
    elif thp_mappings < host_folios:
        fork += (": some THPs are mapped by processes that were not read (unreadable, vanished or errors) "
                 "or changed during the capture")
    out.append(fork + ".")
    out.append("PTE-mapped THPs (after a PMD split, a partial mremap/mprotect/munmap, or mTHP sizes) carry no "
               "deposit and are not in AnonHugePages, so they are rightly left out; so are shmem/file PMD "
               "mappings (ShmemPmdMapped, FilePmdMapped), which deposit only on powerpc hash.")
    out.append(f"Kernel threads and zombies have no mm ({snap.no_mm} skipped); kernel page tables and the "
               "PMD/PUD/PGD tables are in PageTables but are not deposits, so PageTables != sum of VmPTE.")
    out.append("A snapshot is one instant: a THP that is later split gets its table allocated at split time, so "
               "the saving is the number of PMD-mapped anonymous THPs at that moment; processes sharing an mm "
               "(CLONE_VM without CLONE_THREAD, e.g. during vfork) would be counted twice.")
    if skipped:
        out.append(f"{skipped} process(es) could not be read, exited during the capture or had bad entries; "
                   "they are not counted, so this is a lower bound.")
    return out


def estimate_snapshot(snap: Snapshot) -> Estimate:
    """Estimate the savings for one snapshot (see the module docstring for the method)."""
    arch, table, kept, note = _arch_terms(snap)
    per_thp = 0 if kept else table
    pmd_kb = snap.hpage_pmd_size // 1024
    errors = [str(e) for e in snap.errors]
    rows: list[ProcessEstimate] = []
    vm_pte_total = 0
    anon_huge_total = 0
    for p in snap.procs:
        vm_pte_total += p.vm_pte_kb
        anon_huge_total += p.anon_huge_kb
        if p.anon_huge_kb == 0:
            continue
        if pmd_kb == 0:
            errors.append(f"pid {p.pid} ({p.comm}): AnonHugePages {p.anon_huge_kb} kB but the kernel reports no "
                          "hpage_pmd_size; not counted")
            continue
        thps, rest = divmod(p.anon_huge_kb, pmd_kb)
        if rest:
            errors.append(f"pid {p.pid} ({p.comm}): AnonHugePages {p.anon_huge_kb} kB is not a multiple of "
                          f"hpage_pmd_size {pmd_kb} kB; counted {thps} THPs")
        saved = thps * per_thp
        rows.append(ProcessEstimate(pid=p.pid, comm=p.comm, anon_huge_kb=p.anon_huge_kb, vm_pte_kb=p.vm_pte_kb,
                                    thps=thps, saved_bytes=saved, pct_of_vmpte=_pct(saved, p.vm_pte_kb * 1024)))
    rows.sort(key=lambda r: (-r.saved_bytes, -r.thps, r.pid))
    thp_mappings = sum(r.thps for r in rows)
    saved_total = sum(r.saved_bytes for r in rows)
    host_ah = snap.meminfo.get("AnonHugePages", 0)
    host_folios = host_ah // pmd_kb if pmd_kb else 0
    page_tables = snap.meminfo.get("PageTables", 0)
    mem_total = snap.meminfo.get("MemTotal", 0)
    zero_alloc = snap.vmstat.get("thp_zero_page_alloc")
    skipped = len(snap.vanished) + len(snap.unreadable) + len(snap.errors)
    return Estimate(
        source=snap.source, hostname=snap.hostname, release=snap.release, machine=snap.machine,
        arch=arch, arch_note=note, deposit_kept=kept, pte_table_bytes=table, saved_per_thp_bytes=per_thp,
        hpage_pmd_size=snap.hpage_pmd_size,
        thp_enabled=snap.thp_enabled, thp_defrag=selected_mode(snap.thp.get("defrag", "")),
        use_zero_page=snap.thp.get("use_zero_page", ""),
        processes=rows, processes_scanned=len(snap.procs), processes_with_thp=len(rows), no_mm=snap.no_mm,
        vanished=len(snap.vanished), unreadable=len(snap.unreadable),
        thp_mappings=thp_mappings, anon_huge_kb=anon_huge_total, vm_pte_kb=vm_pte_total,
        saved_bytes=saved_total, pct_of_vmpte=_pct(saved_total, vm_pte_total * 1024),
        host_anon_huge_kb=host_ah, host_thp_folios=host_folios, host_page_tables_kb=page_tables,
        host_mem_total_kb=mem_total, extra_mappings=thp_mappings - host_folios,
        pct_of_page_tables=_pct(saved_total, page_tables * 1024), pct_of_ram=_pct(saved_total, mem_total * 1024),
        thp_zero_page_alloc=zero_alloc,
        skipped=[f"pid {u.pid}: {u.reason}" for u in snap.unreadable]
        + [f"pid {pid}: exited during the capture" for pid in snap.vanished],
        blind_spots=_blind_spots(snap, thp_mappings, host_folios, zero_alloc, skipped),
        errors=errors,
    )


def estimate_live() -> Estimate:
    """Estimate the savings on the running host (reads /proc and sysfs; writes nothing)."""
    return estimate_snapshot(load_files(capture()))


# --------------------------------------------------------------------------------------------------- fleet


def _estimate_path(path: str) -> Estimate | FleetFailure:
    """Worker: load and estimate one snapshot; a snapshot that cannot be loaded becomes a FleetFailure."""
    try:
        return estimate_snapshot(load_snapshot(path))
    except ThpsimError as e:
        return FleetFailure(path=path, error=str(e))


def _run_pool(paths: list[str], workers: int | None) -> list[Estimate | FleetFailure]:
    n = workers if workers is not None else min(len(paths), os.cpu_count() or 1)
    if n < 1:
        raise ThpsimError(f"workers must be at least 1 (got {workers})")
    if n == 1:
        return [_estimate_path(p) for p in paths]       # one worker: no point in a pool
    # fork is cheap and needs no re-import of __main__; with other threads running (e.g. an in-process Dask
    # cluster) fork is unsafe, so use forkserver then.
    ctx = multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
    try:
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
            return list(pool.map(_estimate_path, paths))
    except BrokenProcessPool as e:
        raise ThpsimError(f"a fleet worker process died ({e}); retry with workers=1 to run in-process") from None


def _run_dask(paths: list[str], scheduler: str) -> list[Estimate | FleetFailure]:
    try:
        from dask.distributed import Client
    except ImportError:
        raise ThpsimError(f"--scheduler needs Dask distributed, which is not installed: {DASK_HINT}") from None
    try:
        client = Client(scheduler, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ThpsimError(f"cannot connect to the Dask scheduler at {scheduler!r}: {reason}") from None
    with client:
        futures = client.map(_estimate_path, paths, pure=False)
        return list(client.gather(futures))


def _fleet(results: list[Estimate | FleetFailure]) -> FleetEstimate:
    hosts = [r for r in results if isinstance(r, Estimate)]
    failures = sorted((r for r in results if isinstance(r, FleetFailure)), key=lambda f: f.path)
    hosts.sort(key=lambda e: (-e.saved_bytes, e.source))
    saved = sum(h.saved_bytes for h in hosts)
    pt = sum(h.host_page_tables_kb for h in hosts)
    ram = sum(h.host_mem_total_kb for h in hosts)
    return FleetEstimate(
        hosts=hosts, failures=failures, n_hosts=len(hosts),
        thp_mappings=sum(h.thp_mappings for h in hosts), anon_huge_kb=sum(h.anon_huge_kb for h in hosts),
        saved_bytes=saved, vm_pte_kb=sum(h.vm_pte_kb for h in hosts),
        host_thp_folios=sum(h.host_thp_folios for h in hosts), host_page_tables_kb=pt, host_mem_total_kb=ram,
        pct_of_page_tables=_pct(saved, pt * 1024), pct_of_ram=_pct(saved, ram * 1024),
        process_errors=sum(len(h.errors) for h in hosts),
    )


def estimate_fleet(paths: list[str], *, scheduler: str | None = None, workers: int | None = None) -> FleetEstimate:
    """Estimate many snapshots: a local process pool by default, Dask distributed if ``scheduler`` is given.

    With Dask, the snapshot paths must be readable by the workers (shared filesystem). Snapshots that cannot be
    loaded are listed in ``failures``; the others are still summed.
    """
    paths = list(paths)
    if not paths:
        return _fleet([])
    results = _run_dask(paths, scheduler) if scheduler else _run_pool(paths, workers)
    return _fleet(results)


# --------------------------------------------------------------------------------------------------- text


def _kib(nbytes: int) -> str:
    return f"{nbytes / 1024:,.0f} KiB" if nbytes < 10 << 20 else f"{nbytes / (1 << 20):,.1f} MiB"


def _fmt_pct(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}%"


def _table(header: list[str], rows: list[list[str]], left: set[int]) -> list[str]:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
              for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                               strict=True)))
    return [line(header).rstrip(), *(line(r).rstrip() for r in rows)]


def format_estimate(e: Estimate, *, top: int | None = None) -> str:
    """A plain-text report: header, per-process table (processes with THPs), totals, blind spots, errors."""
    out = [f"thpsim estimate: {e.source} (host {e.hostname}, Linux {e.release}, {e.machine})",
           f"arch: {e.arch_note}",
           f"THP: enabled={e.thp_enabled} defrag={e.thp_defrag} use_zero_page={e.use_zero_page} "
           f"hpage_pmd_size={e.hpage_pmd_size // 1024} kB",
           ""]
    procs = e.processes if top is None else e.processes[:top]
    rows = [[str(p.pid), p.comm, f"{p.anon_huge_kb}", f"{p.thps}", f"{p.vm_pte_kb}", f"{p.saved_bytes // 1024}",
             _fmt_pct(p.pct_of_vmpte)] for p in procs]
    out += _table(["PID", "COMM", "AnonHugePages kB", "THPs", "VmPTE kB", "saved kB", "of VmPTE"], rows, {1})
    if top is not None and len(e.processes) > top:
        out.append(f"... {len(e.processes) - top} more processes with THPs")
    if not e.processes:
        out.append("(no process has PMD-mapped anonymous THPs)")
    out.append("")
    totals = [
        ["processes read", f"{e.processes_scanned} ({e.processes_with_thp} with THPs; {e.no_mm} without mm, "
                           f"{e.vanished} vanished, {e.unreadable} unreadable)"],
        ["THP mappings (sum of smaps)", f"{e.thp_mappings} ({e.anon_huge_kb} kB AnonHugePages)"],
        ["THP folios (meminfo)", f"{e.host_thp_folios} ({e.host_anon_huge_kb} kB AnonHugePages)"],
        ["sum of VmPTE", f"{e.vm_pte_kb} kB"],
        ["PageTables", f"{e.host_page_tables_kb} kB"],
        ["MemTotal", f"{e.host_mem_total_kb} kB"],
        ["saved by the series", f"{e.saved_bytes} bytes = {_kib(e.saved_bytes)} "
                                f"({e.thp_mappings} x {e.saved_per_thp_bytes} B)"],
        ["  of sum of VmPTE", _fmt_pct(e.pct_of_vmpte)],
        ["  of PageTables", _fmt_pct(e.pct_of_page_tables)],
        ["  of RAM", _fmt_pct(e.pct_of_ram)],
    ]
    out += _table(["", ""], totals, {0, 1})[1:]
    out += ["", "Blind spots:"] + [f"  - {b}" for b in e.blind_spots]
    if e.skipped:
        out += ["", f"Skipped at capture ({len(e.skipped)}):"] + [f"  - {m}" for m in e.skipped]
    if e.errors:
        out += ["", f"Errors ({len(e.errors)} process entries not counted or counted partially):"]
        out += [f"  - {m}" for m in e.errors]
    return "\n".join(out) + "\n"


def format_fleet(f: FleetEstimate) -> str:
    """A plain-text fleet report: one line per host, totals, failures."""
    rows = [[h.hostname, h.source, h.machine, h.thp_enabled, str(h.thp_mappings), str(h.host_thp_folios),
             str(h.saved_bytes // 1024), str(h.host_page_tables_kb), _fmt_pct(h.pct_of_page_tables),
             _fmt_pct(h.pct_of_ram), str(len(h.errors))] for h in f.hosts]
    out = [f"thpsim fleet estimate: {f.n_hosts} hosts, {len(f.failures)} failed", ""]
    out += _table(["HOST", "SNAPSHOT", "MACHINE", "THP", "mappings", "folios", "saved kB", "PageTables kB",
                   "of PT", "of RAM", "errors"], rows, {0, 1, 2, 3})
    out += ["",
            f"total: {f.thp_mappings} THP mappings ({f.host_thp_folios} folios), saved {f.saved_bytes} bytes = "
            f"{_kib(f.saved_bytes)}; {_fmt_pct(f.pct_of_page_tables)} of PageTables "
            f"({f.host_page_tables_kb} kB), {_fmt_pct(f.pct_of_ram)} of RAM ({f.host_mem_total_kb} kB)"]
    if f.process_errors:
        out.append(f"{f.process_errors} per-process errors across hosts (see each host's errors)")
    if f.failures:
        out += ["", "Failed snapshots (not counted):"] + [f"  - {x.error}" for x in f.failures]
    return "\n".join(out) + "\n"
