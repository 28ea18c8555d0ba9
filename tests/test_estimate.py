"""Tests for the host/fleet savings estimator (thpsim.analysis.estimate, thpsim.analysis.snapshot)."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from thpsim.analysis.estimate import (
    Estimate,
    FleetEstimate,
    estimate_fleet,
    estimate_live,
    estimate_snapshot,
    format_estimate,
    format_fleet,
    resolve_arch,
)
from thpsim.analysis.snapshot import load_snapshot
from thpsim.errors import ProcError, ThpsimError
from thpsim.live.snapshot import take_snapshot

# ------------------------------------------------------------------------------------------- fake snapshots

ROLLUP = """55d0a0000000-7ffc00000000 ---p 00000000 00:00 0                          [rollup]
Rss:                {rss} kB
Pss:                {rss} kB
Anonymous:          {anon} kB
LazyFree:              0 kB
AnonHugePages:      {ah} kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Swap:                  0 kB
Locked:                0 kB
"""

STATUS = """Name:\t{comm}
State:\tS (sleeping)
Tgid:\t{pid}
Pid:\t{pid}
PPid:\t1
Kthread:\t0
VmRSS:\t{rss} kB
RssAnon:\t{anon} kB
RssFile:\t0 kB
RssShmem:\t0 kB
VmPTE:\t{pte} kB
VmSwap:\t0 kB
"""

# pid -> (comm, AnonHugePages kB, VmPTE kB)
HOST_A = {100: ("db", 8192, 200), 150: ("web", 8192, 100), 200: ("db-child", 4096, 64), 300: ("idle", 0, 44)}


def make_snapshot(root: Path, procs: dict[int, tuple[str, int, int]], *, machine: str = "x86_64",
                  hostname: str = "hostA", mem_total_kb: int = 16 << 20, page_tables_kb: int = 40960,
                  meminfo_ah_kb: int = 6144, hpage_pmd_size: int = 2 << 20, page_size: int = 4096,
                  mmu: str | None = None, sizes: bool = True) -> Path:
    """Write a hand-built snapshot directory with known numbers."""
    files: dict[str, str] = {
        "meminfo": (f"MemTotal:       {mem_total_kb} kB\nMemFree:        1000 kB\nAnonPages:      99999 kB\n"
                    f"PageTables:     {page_tables_kb} kB\nAnonHugePages:  {meminfo_ah_kb} kB\n"
                    "HugePages_Total:       0\nHugepagesize:       2048 kB\n"),
        "vmstat": "nr_free_pages 1000\nnr_page_table_pages 10240\nthp_fault_alloc 12\nthp_zero_page_alloc 0\n",
        "thp/enabled": "always [madvise] never\n",
        "thp/defrag": "always defer defer+madvise [madvise] never\n",
        "thp/use_zero_page": "1\n",
        "thp/hpage_pmd_size": f"{hpage_pmd_size}\n",
    }
    for pid, (comm, ah, pte) in procs.items():
        rss = ah + 1000
        files[f"proc/{pid}/comm"] = comm + "\n"
        files[f"proc/{pid}/status"] = STATUS.format(comm=comm, pid=pid, rss=rss, anon=ah + 500, pte=pte)
        files[f"proc/{pid}/smaps_rollup"] = ROLLUP.format(rss=rss, anon=ah + 500, ah=ah)
    manifest = {
        "format": "thpsim-snapshot", "version": 1, "captured_at": "2026-01-01T00:00:00+00:00",
        "hostname": hostname, "release": "6.18.0", "machine": machine, "page_size": page_size, "mmu": mmu,
        "pids": sorted(procs), "no_mm": [2, 3], "vanished": [4242], "unreadable": [], "absent": [],
    }
    if sizes:
        manifest["files"] = {k: len(v.encode()) for k, v in files.items()}
    files["manifest.json"] = json.dumps(manifest)
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def make_tar(src_dir: Path, out: Path, top: str = "snap") -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(src_dir, arcname=top)
    return out


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# ------------------------------------------------------------------------------------------- exact numbers


def test_fake_snapshot_exact_savings(tmp_path: Path) -> None:
    snap = load_snapshot(str(make_snapshot(tmp_path / "a", HOST_A)))
    assert snap.errors == [] and snap.no_mm == 2 and snap.vanished == (4242,)
    e = estimate_snapshot(snap)
    assert e.arch == "x86_64" and not e.deposit_kept and e.saved_per_thp_bytes == 4096
    assert [(p.pid, p.thps, p.saved_bytes) for p in e.processes] == [(100, 4, 16384), (150, 4, 16384),
                                                                     (200, 2, 8192)]
    assert e.processes[0].pct_of_vmpte == pytest.approx(100 * 16384 / (200 * 1024))
    assert e.processes[1].pct_of_vmpte == pytest.approx(16.0)
    assert e.thp_mappings == 10 and e.anon_huge_kb == 20480 and e.saved_bytes == 40960
    assert e.vm_pte_kb == 200 + 100 + 64 + 44 and e.processes_scanned == 4 and e.processes_with_thp == 3
    assert e.host_thp_folios == 3 and e.extra_mappings == 7
    assert e.host_page_tables_kb == 40960 and e.host_mem_total_kb == 16 << 20
    assert e.pct_of_page_tables == pytest.approx(100 * 40960 / (40960 * 1024))
    assert e.pct_of_ram == pytest.approx(100 * 40960 / ((16 << 20) * 1024))
    assert e.thp_enabled == "madvise" and e.thp_defrag == "madvise" and e.thp_zero_page_alloc == 0
    text = " ".join(e.blind_spots)
    for needle in ("Huge-zero", "lower bound", "fork", "counts each folio once", "PTE-mapped", "no mm"):
        assert needle in text
    # JSON-able and deterministic (no capture time in the result)
    d = dataclasses.asdict(e)
    assert json.loads(json.dumps(d)) == d and "2026-01-01" not in json.dumps(d)
    assert estimate_snapshot(load_snapshot(str(tmp_path / "a"))) == e
    report = format_estimate(e)
    assert "40960 bytes" in report and "db-child" in report and "Blind spots:" in report


def test_arch_handling(tmp_path: Path) -> None:
    hash_ = estimate_snapshot(load_snapshot(str(make_snapshot(
        tmp_path / "ppc", HOST_A, machine="ppc64le", hpage_pmd_size=16 << 20, page_size=65536,
        mmu="Hash", meminfo_ah_kb=16384))))
    assert hash_.arch == "ppc64-hash" and hash_.deposit_kept and hash_.saved_bytes == 0
    assert "keeps the deposit" in hash_.arch_note
    assert resolve_arch("ppc64le", 2 << 20, 65536, "Radix")[0].name == "ppc64-radix"    # type: ignore[union-attr]
    assert resolve_arch("aarch64", 32 << 20, 16384, None)[0].name == "arm64-16k"        # type: ignore[union-attr]
    assert resolve_arch("x86_64", 2 << 20, 4096, None)[0].pte_table_bytes == 4096       # type: ignore[union-attr]
    gen = estimate_snapshot(load_snapshot(str(make_snapshot(tmp_path / "la", HOST_A, machine="loongarch64"))))
    assert gen.arch == "generic" and gen.saved_per_thp_bytes == 4096 and gen.saved_bytes == 40960


# ------------------------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("rel, mutate, needle", [
    ("meminfo", lambda t: t[:-7], "truncated"),
    ("meminfo", lambda t: t.replace("PageTables", "PageTabl"), "missing PageTables"),
    ("vmstat", lambda t: t + "garbage here\n", "cannot read line"),
    ("manifest.json", lambda t: t[: len(t) // 2], "corrupt JSON"),
    ("manifest.json", lambda t: t.replace('"version": 1', '"version": 9'), "unsupported snapshot version 9"),
    ("thp/hpage_pmd_size", lambda t: "12abc\n", "power-of-two"),
    ("thp/enabled", None, "missing"),
    ("vmstat", None, "missing"),
])
def test_host_file_errors_are_one_line(tmp_path: Path, rel: str, mutate, needle: str) -> None:
    root = make_snapshot(tmp_path / "s", HOST_A, sizes=False)
    p = root / rel
    if mutate is None:
        p.unlink()
    else:
        p.write_text(mutate(p.read_text()))
    with pytest.raises(ProcError) as ei:
        load_snapshot(str(root))
    msg = one_line(ei)
    assert rel in msg and needle in msg


def test_size_mismatch_detects_line_boundary_truncation(tmp_path: Path) -> None:
    root = make_snapshot(tmp_path / "s", HOST_A)
    p = root / "vmstat"
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:-1]))   # still well-formed, one line short
    with pytest.raises(ProcError) as ei:
        load_snapshot(str(root))
    assert "vmstat: truncated (manifest says" in one_line(ei)


def test_bad_process_entries_are_reported_and_rest_counted(tmp_path: Path) -> None:
    root = make_snapshot(tmp_path / "s", HOST_A, sizes=False)
    rollup = root / "proc/150/smaps_rollup"
    rollup.write_text(rollup.read_text()[:200])                          # cut mid-line
    status = root / "proc/200/status"
    status.write_text("".join(ln for ln in status.read_text().splitlines(keepends=True)
                              if not ln.startswith("VmPTE")))
    snap = load_snapshot(str(root))
    assert sorted(e.pid for e in snap.errors) == [150, 200]
    by_pid = {e.pid: str(e) for e in snap.errors}
    assert "proc/150/smaps_rollup" in by_pid[150] and "truncated" in by_pid[150]
    assert "proc/200/status" in by_pid[200] and "no VmPTE line" in by_pid[200]
    e = estimate_snapshot(snap)
    assert [(p.pid, p.thps) for p in e.processes] == [(100, 4)]
    assert e.saved_bytes == 16384 and len(e.errors) == 2
    assert any("lower bound" in b and "bad entries" in b for b in e.blind_spots)
    assert "Errors (2 process entries" in format_estimate(e)


def test_missing_process_file_and_size_mismatch_are_per_process(tmp_path: Path) -> None:
    root = make_snapshot(tmp_path / "s", HOST_A)
    (root / "proc/100/smaps_rollup").unlink()
    comm = root / "proc/150/comm"
    comm.write_text("we\n")                                   # manifest size says 4 bytes
    snap = load_snapshot(str(root))
    msgs = {e.pid: e.message for e in snap.errors}
    assert msgs[100].startswith("missing") and "truncated (manifest says 4 bytes, found 3)" in msgs[150]
    assert estimate_snapshot(snap).saved_bytes == 8192


def test_per_vma_smaps_fallback(tmp_path: Path) -> None:
    root = make_snapshot(tmp_path / "s", HOST_A, sizes=False)
    (root / "proc/100/smaps_rollup").unlink()
    (root / "proc/100/smaps_thp").write_text(
        "7f0000000000-7f0000800000 rw-p 00000000 00:00 0 \nAnonHugePages:      6144 kB\n"
        "7f0000800000-7f0000a00000 rw-p 00000000 00:00 0 \nAnonHugePages:      2048 kB\n"
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n"
        "AnonHugePages:         0 kB\n")
    (root / "proc/150/smaps_rollup").unlink()
    (root / "proc/150/smaps_thp").write_text("7f0000000000-7f0000800000 rw-p 00000000 00:00 0 \n")
    snap = load_snapshot(str(root))
    p100 = next(p for p in snap.procs if p.pid == 100)
    assert p100.source == "smaps" and p100.anon_huge_kb == 8192
    assert [(e.pid, "no AnonHugePages line" in e.message) for e in snap.errors] == [(150, True)]
    assert estimate_snapshot(snap).saved_bytes == 16384 + 8192


def test_missing_snapshot_and_corrupt_tarball(tmp_path: Path) -> None:
    with pytest.raises(ProcError) as ei:
        load_snapshot(str(tmp_path / "nope"))
    assert "no such snapshot" in one_line(ei)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(ProcError) as ei:
        load_snapshot(str(bad))
    assert str(bad) in one_line(ei)
    good = make_tar(make_snapshot(tmp_path / "s", HOST_A), tmp_path / "good.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ProcError) as ei:
        load_snapshot(str(cut))
    assert "truncated or corrupt" in one_line(ei)


# ------------------------------------------------------------------------------------------- tarballs


def test_tarball_round_trip_fake(tmp_path: Path) -> None:
    d = make_snapshot(tmp_path / "a", HOST_A)
    t = make_tar(d, tmp_path / "a.tar.gz")
    e_dir, e_tar = (estimate_snapshot(load_snapshot(str(p))) for p in (d, t))
    assert dataclasses.replace(e_tar, source=e_dir.source) == e_dir


def test_take_snapshot_dir_and_tar_round_trip(tmp_path: Path) -> None:
    info = take_snapshot(str(tmp_path / "live"))
    assert info.processes > 0 and os.path.isfile(tmp_path / "live" / "manifest.json")
    snap = load_snapshot(info.path)
    assert snap.errors == [] and len(snap.procs) == info.processes
    assert snap.hostname == os.uname().nodename and snap.machine == os.uname().machine
    t = make_tar(tmp_path / "live", tmp_path / "live-copy.tar.gz", top="x")
    assert estimate_snapshot(load_snapshot(str(t))) == dataclasses.replace(estimate_snapshot(snap), source=str(t))
    tinfo = take_snapshot(str(tmp_path / "live2"), tar=True)
    assert tinfo.path.endswith("live2.tar.gz") and tarfile.is_tarfile(tinfo.path)
    tsnap = load_snapshot(tinfo.path)
    assert tsnap.errors == [] and len(tsnap.procs) == tinfo.processes
    with pytest.raises(ThpsimError) as ei:
        take_snapshot(str(tmp_path / "live"))                 # refuses a non-empty directory
    assert "already exists" in one_line(ei)
    with pytest.raises(ThpsimError) as ei:
        take_snapshot(str(tmp_path / "live2"), tar=True)      # and an existing tarball
    assert "live2.tar.gz: already exists" in one_line(ei)


# ------------------------------------------------------------------------------------------- fleet


def _fleet_paths(tmp_path: Path) -> list[str]:
    a = make_snapshot(tmp_path / "a", HOST_A)
    b = make_snapshot(tmp_path / "b", {7: ("java", 2 << 20, 9000)}, hostname="hostB",
                      meminfo_ah_kb=2 << 20, page_tables_kb=20000, mem_total_kb=64 << 20)
    c = make_tar(make_snapshot(tmp_path / "c", {9: ("tiny", 2048, 50), 10: ("none", 0, 40)}, hostname="hostC",
                               meminfo_ah_kb=2048, page_tables_kb=900, mem_total_kb=1 << 20),
                 tmp_path / "c.tar.gz")
    return [str(a), str(b), str(c)]


def test_fleet_process_pool_sums(tmp_path: Path) -> None:
    paths = _fleet_paths(tmp_path)
    singles = [estimate_snapshot(load_snapshot(p)) for p in paths]
    f = estimate_fleet(paths + [str(tmp_path / "missing")], workers=2)
    assert isinstance(f, FleetEstimate) and f.n_hosts == 3
    assert [h.hostname for h in f.hosts] == ["hostB", "hostA", "hostC"]
    assert f.saved_bytes == sum(s.saved_bytes for s in singles) == 40960 + 1024 * 4096 + 4096
    assert f.thp_mappings == 10 + 1024 + 1
    assert f.host_page_tables_kb == 40960 + 20000 + 900
    assert f.host_mem_total_kb == (16 << 20) + (64 << 20) + (1 << 20)
    assert f.pct_of_page_tables == pytest.approx(100 * f.saved_bytes / (f.host_page_tables_kb * 1024))
    assert sorted(f.hosts, key=lambda h: h.source) == sorted(singles, key=lambda h: h.source)
    assert [x.path for x in f.failures] == [str(tmp_path / "missing")]
    d = dataclasses.asdict(f)
    assert json.loads(json.dumps(d)) == d
    text = format_fleet(f)
    assert "hostB" in text and "Failed snapshots" in text and "no such snapshot" in text


def test_fleet_pool_with_threads_and_inline(tmp_path: Path) -> None:
    paths = _fleet_paths(tmp_path)
    ref = estimate_fleet(paths, workers=1)                 # in-process
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)    # another thread: the pool must not fork
    t.start()
    try:
        assert estimate_fleet(paths, workers=3) == ref
    finally:
        stop.set()
        t.join()


def test_fleet_empty() -> None:
    f = estimate_fleet([])
    assert f.n_hosts == 0 and f.saved_bytes == 0 and f.pct_of_ram is None


def test_fleet_dask_matches_process_pool(tmp_path: Path) -> None:
    distributed = pytest.importorskip("dask.distributed",
                                      reason="dask.distributed not installed (pip install 'thpsim[dask]')")
    paths = _fleet_paths(tmp_path)
    pool = estimate_fleet(paths, workers=2)
    with distributed.LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster:
        via_dask = estimate_fleet(paths, scheduler=cluster.scheduler_address)
    assert via_dask == pool


def test_fleet_dask_missing_gives_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(ThpsimError) as ei:
        estimate_fleet(["x"], scheduler="tcp://127.0.0.1:1")
    assert "pip install 'thpsim[dask]'" in one_line(ei)


# ------------------------------------------------------------------------------------------- live


THP_CHILD = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PMD, SIZE = 2 << 20, 8 << 20
raw = libc.mmap(None, SIZE + PMD, 3, 0x22, -1, 0)          # PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS
if raw is None or raw == ctypes.c_void_p(-1).value:
    print("error mmap", ctypes.get_errno(), flush=True); sys.exit(1)
addr = (raw + PMD - 1) & ~(PMD - 1)
if libc.madvise(addr, SIZE, 14) != 0:                       # MADV_HUGEPAGE
    print("error madvise", ctypes.get_errno(), flush=True); sys.exit(1)
buf = (ctypes.c_char * SIZE).from_address(addr)
for off in range(0, SIZE, 4096):
    buf[off] = b"x"
fork = len(sys.argv) > 1 and sys.argv[1] == "fork"
kid = os.fork() if fork else -1
if kid == 0:
    sys.stdin.readline(); os._exit(0)
print("ready", kid, flush=True)
sys.stdin.readline()
if kid > 0:
    os.waitpid(kid, 0)
"""


def _thp_precheck() -> None:
    if os.geteuid() != 0:
        pytest.skip("live estimator test needs root (smaps_rollup of every process)")
    try:
        enabled = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        pytest.skip("kernel has no transparent hugepages (/sys/kernel/mm/transparent_hugepage missing)")
    if "[never]" in enabled:
        pytest.skip("transparent_hugepage/enabled is [never]: no THPs can be created")
    if Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size").read_text().strip() != str(2 << 20):
        pytest.skip("live test assumes 2 MiB PMD THPs (x86_64)")


def _anon_huge_kb(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for ln in f:
                if ln.startswith("AnonHugePages:"):
                    return int(ln.split()[1])
    except OSError:
        return None
    return 0


def _host_anon_huge_kb() -> int:
    with open("/proc/meminfo") as f:
        for ln in f:
            if ln.startswith("AnonHugePages:"):
                return int(ln.split()[1])
    raise AssertionError("/proc/meminfo has no AnonHugePages")


def _hand_total_kb() -> int:
    """Independent computation: Σ AnonHugePages over every readable /proc/*/smaps_rollup."""
    total = 0
    for d in glob.glob("/proc/[0-9]*"):
        total += _anon_huge_kb(os.path.basename(d)) or 0
    return total


@pytest.fixture
def thp_child(request: pytest.FixtureRequest):
    _thp_precheck()
    mode = getattr(request, "param", "")
    proc = subprocess.Popen([sys.executable, "-c", THP_CHILD, mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != "ready":
            pytest.skip(f"THP helper could not set up its mapping: {' '.join(line) or 'no output'}")
        pids = [proc.pid] + ([int(line[1])] if mode == "fork" else [])
        for pid in pids:
            got = _anon_huge_kb(str(pid))
            if got != 8192:
                pytest.skip(f"kernel backed the helper's 8 MiB MADV_HUGEPAGE range with {got} kB of THPs, not "
                            "8192 (memory too fragmented for THP allocation?)")
        yield pids
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=30)


@pytest.mark.live
def test_live_estimate_matches_hand_computation(thp_child: list[int]) -> None:
    (pid,) = thp_child
    for _ in range(5):
        before = _hand_total_kb()
        e: Estimate = estimate_live()
        after = _hand_total_kb()
        row = {p.pid: p for p in e.processes}.get(pid)
        assert row is not None, f"estimator did not see THP helper pid {pid}"
        assert row.thps == 4 and row.saved_bytes == 16384 and row.anon_huge_kb == 8192
        assert row.vm_pte_kb * 1024 >= 16384 and row.pct_of_vmpte is not None and 0 < row.pct_of_vmpte <= 100
        assert e.arch == "x86_64" and e.saved_per_thp_bytes == 4096
        assert e.host_anon_huge_kb >= 8192 and e.host_page_tables_kb > 0
        if before == after == e.anon_huge_kb:     # nobody faulted or freed a THP around or during the capture
            break
    else:
        # another process faulted and freed THPs during each capture (a busy host): the host total of one capture
        # is not bracketed by two hand counts taken around it, so only the per-process row could be checked
        pytest.skip("the host's THPs changed during each of 5 captures (another process faults THPs): the host "
                    "total cannot be checked against a hand count here; the helper's own row was")
    assert e.saved_bytes == before // 2048 * 4096
    assert e.anon_huge_kb == before
    assert f"{pid}" in format_estimate(e)


@pytest.mark.live
@pytest.mark.parametrize("thp_child", ["fork"], indirect=True)
def test_live_fork_counts_each_mapping(thp_child: list[int]) -> None:
    parent, child = thp_child
    for _ in range(5):
        before = _host_anon_huge_kb()
        e = estimate_live()
        rows = {p.pid: p for p in e.processes}
        assert rows[parent].thps == 4 and rows[child].thps == 4     # one deposit per PMD mapping
        if before == e.host_anon_huge_kb == _host_anon_huge_kb():
            break
    else:
        # meminfo's AnonHugePages is host-wide and read at one instant while each process's smaps is read at
        # its own: another THP user (a busy host) makes "mappings - folios" off by its own THPs
        pytest.skip("host AnonHugePages moved during each of 5 captures (another process faults THPs): "
                    "the extra-mapping count cannot be checked here; the per-process counts were")
    assert e.extra_mappings >= 4                                     # meminfo counts the 4 folios once
    assert any("extra mappings" in b for b in e.blind_spots)
