"""The kernel lab: building blocks without a kernel (registry, series, initramfs, QEMU command line, job
confinement, injection parsing and stack classification) and, where a lab kernel is cached on this machine
(``thpsim lab build lazy-v3-7.3`` / ``upstream-7.3``), the guests themselves."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thpsim.errors import ThpsimError, TraceError
from thpsim.lab import build, guest, initramfs, kernels
from thpsim.live import inject
from thpsim.model.engine import run_model
from thpsim.observation import from_dict, to_dict
from thpsim.trace.format import INJECT_TIMES_ALL, dumps_op, parse

ROOT = Path(__file__).resolve().parents[1]


def _cpio_entries(blob: bytes) -> dict[str, tuple[int, bytes]]:
    out, i = {}, 0
    while True:
        hdr = blob[i:i + 110]
        assert hdr[:6] == b"070701"
        f = [int(hdr[6 + 8 * k:14 + 8 * k], 16) for k in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = blob[i + 110:i + 110 + namesize - 1].decode()
        i += 110 + namesize
        i += -i % 4
        data = blob[i:i + size]
        i += size
        i += -i % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data)


def test_cpio_newc_round_trip():
    blob = initramfs.cpio_newc([("bin", 0o40755, b""), ("init", 0o100755, b"#!/bin/sh\n"), ("x", 0o100644, b"abc")])
    ent = _cpio_entries(blob)
    assert ent["init"] == (0o100755, b"#!/bin/sh\n")
    assert ent["x"][1] == b"abc" and ent["bin"][0] == 0o40755


def test_init_script_mounts_host_read_only_under_a_ram_overlay():
    s = initramfs.INIT_SH
    assert "-o ro,trans=virtio" in s and "host0 /lower" in s
    assert "-t tmpfs" in s and "upperdir=/rw/upper" in s and "lowerdir=/lower" in s
    assert 'switch_root /newroot "$THPSIM_PYTHON" "$THPSIM_INIT"' in s


def test_module_load_order_puts_dependencies_first(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n"
        "kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n"
        "kernel/net/9p/9pnet.ko.xz:\nkernel/fs/netfs/netfs.ko.xz:\n")
    order = initramfs._load_order(tmp_path, ("9pnet_virtio", "9p", "virtio_pci"))
    assert order == ["kernel/net/9p/9pnet.ko.xz", "kernel/net/9p/9pnet_virtio.ko.xz", "kernel/fs/netfs/netfs.ko.xz",
                     "kernel/fs/9p/9p.ko.xz"]      # virtio_pci: built in (not in modules.dep), skipped


def test_registry_and_series_location():
    assert {"upstream-7.3", "lazy-v3-7.3"} <= kernels.KERNELS.keys()
    with pytest.raises(ThpsimError, match="unknown lab kernel 'nope'; known: host, "):
        kernels.get_kernel("nope")
    lazy = kernels.KERNELS["lazy-v3-7.3"]
    assert kernels.KERNELS["upstream-7.3"].series is None and lazy.series
    shared = kernels.shared_dir()
    if shared is None or not (shared / lazy.series).exists():
        pytest.skip("the project's shared/ folder is not beside this checkout")
    assert kernels.default_series(lazy) == shared / lazy.series


def test_series_files_order_and_errors(tmp_path):
    for n in ("02.patch", "01.patch", "README", "10.diff"):
        (tmp_path / n).write_text("x")
    assert [p.name for p in build.series_files(tmp_path)] == ["01.patch", "02.patch", "10.diff"]
    with pytest.raises(ThpsimError, match="no such series"):
        build.series_files(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ThpsimError, match=r"no \*\.patch"):
        build.series_files(empty)


def test_fragment_has_what_the_lab_needs():
    frag = build.fragment_text("x86_64")
    for opt in build.required_options():
        assert f"{opt}=y" in frag, opt
    assert "CONFIG_OVERLAY_FS=y" in frag and "CONFIG_PT_RECLAIM=y" in frag


def test_qemu_command_shares_the_host_read_only_and_kills_nothing_else(tmp_path):
    bk = build.BuiltKernel(name="k", version="7.3.4", package_version="1", series=None, series_sha256=None,
                           config_sha256="", key="0", directory=str(tmp_path), image=str(tmp_path / "bzImage"),
                           initrd=str(tmp_path / "initrd.img"), arch="x86_64", build_seconds=0, options=())
    cfg = guest.GuestConfig(cpus=2, memory_mb=1024)
    cmd = guest.qemu_command(bk, cfg, tmp_path, "tcg")
    fsdevs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-fsdev"]
    assert len(fsdevs) == 2 and all("readonly=on" in f for f in fsdevs)
    assert any("path=/," in f for f in fsdevs)
    assert "-no-reboot" in cmd and "-nodefaults" in cmd
    assert "max,la57=off" in cmd          # 4-level paging, as on the host
    assert not any(a.startswith("-drive") for a in cmd)
    assert cmd[cmd.index("-initrd") + 1] == bk.initrd


def test_guest_config_validates_and_sets_thp_first():
    with pytest.raises(ThpsimError, match="--cpus"):
        guest.GuestConfig(cpus=0)
    with pytest.raises(ThpsimError, match="--memory"):
        guest.GuestConfig(memory_mb=16)
    cfg = guest.GuestConfig(thp="always", sysfs=(("kernel/mm/transparent_hugepage/use_zero_page", "0"),))
    assert cfg.sysfs_values()[0] == ("kernel/mm/transparent_hugepage/enabled", "always")
    assert guest.guest_argv(["thpsim", "probe"])[1:] == ["-m", "thpsim", "probe"]


def test_unbuilt_kernel_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv("THPSIM_CACHE", str(tmp_path))
    with pytest.raises(ThpsimError, match=r"thpsim lab build upstream-7.3"):
        guest.run_in_guest("upstream-7.3", ["true"], guest.GuestConfig())


def test_host_kernel_runs_the_command_here():
    r = guest.run_in_guest("host", [sys.executable, "-c", "raise SystemExit(3)"], guest.GuestConfig())
    assert r.returncode == 3 and r.kernel == "host"


# ---- injection: the trace field, the model, the kernel log ----------------------------------------------------
INJ = """{"thpsim": 1, "name": "inj"}
{"op": "mmap", "id": "a", "len": "4M"}
{"op": "madvise", "id": "a", "advice": "hugepage"}
{"op": "write", "id": "a", "fill": true}
{"op": "munmap", "id": "a", "off": "1M", "len": "4K", "inject": {"at": "pte_alloc_one"}}
{"op": "read", "id": "a"}
"""


def test_inject_field_parses_round_trips_and_rejects_bad_values():
    t = parse(INJ)
    op = t.ops[3]
    assert op.inject is not None and (op.inject.at, op.inject.times) == ("pte_alloc_one", 1)
    assert '"inject": {"at": "pte_alloc_one", "times": 1}' in dumps_op(op)
    assert parse(INJ.replace('{"at": "pte_alloc_one"}', '{"at": "thp_folio", "times": "all"}')).ops[3] \
        .inject.times == INJECT_TIMES_ALL
    for bad, msg in (('{"at": "nowhere"}', "unknown injection point"), ('{"at": "pte_alloc_one", "times": 0}',
                     "times"), ('{"when": 1}', "must be")):
        with pytest.raises(TraceError, match=msg):
            parse(INJ.replace('{"at": "pte_alloc_one"}', bad))


def test_model_injection_fails_the_split_table_under_lazy_only():
    t = parse(INJ)
    lazy = run_model(t, design="lazy", check=True).steps
    up = run_model(t, design="upstream", check=True).steps
    # v3 01: __split_huge_pmd allocates the table before the PMD lock; -ENOMEM reaches munmap
    assert lazy[3].result == "ENOMEM" and lazy[3].injected == ("__split_huge_pmd",)
    assert lazy[3].counter("thp_split_pmd_failed") == 1 and lazy[4].result == 0
    # upstream withdraws the deposit: no allocation to fail, munmap succeeds
    assert up[3].result == 0 and up[3].injected == ()
    assert "injected" in to_dict(lazy[3]) and "injected" not in to_dict(lazy[2])
    assert from_dict(json.loads(json.dumps(to_dict(lazy[3])))).injected == ("__split_huge_pmd",)


def test_injection_refused_outside_a_lab_guest(monkeypatch):
    monkeypatch.delenv("THPSIM_LAB_KERNEL", raising=False)
    assert "only inside a lab guest" in (inject.injection_unavailable() or "")


KMSG = """6,1001,5000,-;FAULT_INJECTION: forcing a failure.
6,1002,5000,-;name fail_page_alloc, interval 1, probability 100, space 0, times 1
4,1003,5000,-;CPU: 1 UID: 0 PID: 77 Comm: python3 Not tainted 7.3.4-thplab #1
4,1004,5000,-;Call Trace:
4,1005,5000,-; <TASK>
4,1006,5000,-; dump_stack_lvl+0x3c/0x50
4,1007,5000,-; should_fail_ex+0x10b/0x120
4,1008,5000,-; ? kmem_cache_alloc+0x20/0x90
4,1009,5000,-; __alloc_frozen_pages_noprof+0xa6/0x2a0
4,1010,5000,-; pte_alloc_one+0x1a/0x80
4,1011,5000,-; __split_huge_pmd+0x66/0x140
4,1012,5000,-; vma_adjust_trans_huge+0x50/0x90
4,1013,5000,-; __split_vma+0x1b4/0x2f0
4,1014,5000,-; </TASK>
6,1015,5001,-;FAULT_INJECTION: forcing a failure.
4,1016,5001,-; pte_alloc_one+0x1a/0x80
4,1017,5001,-; __pte_alloc+0x2a/0x1a0
4,1018,5001,-; do_anonymous_page.constprop.0+0x40/0x400
"""


def test_kmsg_stacks_are_classified_with_the_model_vocabulary():
    stacks = inject.parse_kmsg(KMSG.splitlines(keepends=True))
    assert [inject.classify_stack(s) for s in stacks] == ["__split_huge_pmd", "__pte_alloc"]
    # reliable frames win over guessed ones; a guess-unwinder stack ("?" only) is read innermost first
    assert inject.classify_stack([" ? __pte_alloc+0x1/0x2", " __split_huge_pmd+0x1/0x2"]) == "__split_huge_pmd"
    assert inject.classify_stack([" ? pte_alloc_one+0x17/0x55", " ? __split_huge_pmd+0x39/0x8b",
                                  " ? vma_adjust_trans_huge+0x27/0x3f"]) == "__split_huge_pmd"
    assert inject.classify_stack([" something+0x1/0x2"]) == "?"


# ---- guests (need a cached lab kernel and QEMU) --------------------------------------------------------------
def _guest_skip(name: str) -> str | None:
    return guest.guest_unavailable(name)


def _thpsim_in(name: str, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "thpsim", "lab", "run", name, "--timeout", str(timeout), "--",
                           "thpsim", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout + 60)


def _diff_in(*args: str, timeout: int = 1200) -> tuple[int, dict]:
    """``thpsim diff --json ARGS`` from this checkout: (exit status, the parsed report)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "-m", "thpsim", "diff", "--json", *args], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=timeout)
    return r.returncode, json.loads(r.stdout)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "deposits", "per_thp_kb"), [("lazy-v3-7.3", False, 0), ("upstream-7.3", True, 4)])
def test_guest_probe_sees_the_deposit_or_not(name: str, deposits: bool, per_thp_kb: int):
    if _guest_skip(name):
        pytest.skip(str(_guest_skip(name)))
    r = _thpsim_in(name, "probe", "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    # the series adds thp_split_pmd_failed and drops the per-THP deposit
    assert (p["deposits"], p["has_split_pmd_failed"], p["vm_pte_per_thp_kb"]) == (deposits, not deposits,
                                                                                  per_thp_kb)


@pytest.mark.slow
@pytest.mark.skipif(bool(_guest_skip("lazy-v3-7.3")), reason=str(_guest_skip("lazy-v3-7.3")))
def test_injected_split_failure_matches_the_model_in_the_lazy_guest(tmp_path):
    trace = tmp_path / "inj.jsonl"
    trace.write_text(INJ)
    rc, out = _diff_in("--kernel", "lazy-v3-7.3", "--design", "lazy", str(trace))
    assert rc == 0, out
    assert out["identical"] == 1


def test_initramfs_written_is_gzip_cpio(tmp_path, monkeypatch):
    # the writer's own format, without apt: a fake busybox tree stands in for Debian's package
    class FakeApt:
        log = tmp_path / "apt.log"

        def download(self, name: str) -> Path:
            return tmp_path / f"{name}.deb"

        def extract(self, deb: Path, dest: Path) -> Path:
            (dest / "bin").mkdir(parents=True, exist_ok=True)
            (dest / "bin" / "busybox").write_bytes(b"\x7fELF fake")
            return dest

    dest = tmp_path / "initrd.img"
    assert initramfs.write_initramfs(FakeApt(), dest, None) == 0   # type: ignore[arg-type]
    ent = _cpio_entries(gzip.decompress(dest.read_bytes()))
    assert ent["bin/busybox"][1] == b"\x7fELF fake" and ent["modules.order"][1] == b""
    assert ent["init"][1].decode() == initramfs.INIT_SH


def test_injection_variants_one_per_allocating_op(tmp_path):
    from thpsim.analysis.inject import injection_variants, write_variants
    from thpsim.trace import format as tf

    t = parse(INJ.replace(', "inject": {"at": "pte_alloc_one"}', ""))
    lazy = injection_variants("inj.jsonl", t, "pte_alloc_one", design="lazy")
    up = injection_variants("inj.jsonl", t, "pte_alloc_one", design="upstream")
    # upstream allocates its deposits at the THP faults (step 2); lazy allocates at the partial munmap's split
    assert [(v.step, v.sites) for v in up] == [(2, ("pte_alloc_one@fault",))]
    assert [(v.step, v.sites) for v in lazy] == [(3, ("pte_alloc_one@split",))]
    files = write_variants(lazy, tmp_path)
    (path, v), = files.items()
    again = tf.load(path)
    assert again.ops[3].inject is not None and again.ops[3].inject.at == "pte_alloc_one"
    assert [o.inject for i, o in enumerate(again.ops) if i != 3] == [None] * 4
    # the variant fails like the hand-written trace
    assert run_model(again, design="lazy").steps[3].result == "ENOMEM"


def test_a_guest_that_dies_keeps_the_traces_it_reported(monkeypatch, tmp_path):
    from thpsim.lab import remote
    from thpsim.lab.apt import LabStepError

    lines = list(remote.jsonl_lines([]))        # this kernel's environment record

    def fake_run(kernel, argv, cfg, *, stdout, stderr):
        stdout.write((lines[0] + "\n" + json.dumps({"path": "a.jsonl", "steps": []}) + "\n{\"path\": \"b.js")
                     .encode())
        raise LabStepError("guest run", "watchdog: the guest ran past its 5 s timeout and was killed")

    monkeypatch.setattr(guest, "run_in_guest", fake_run)
    b = remote.observe(["a.jsonl", "b.jsonl"], kernel="upstream-7.3", guest=guest.GuestConfig())
    assert b.get("a.jsonl").error is None
    err = b.get("b.jsonl").error or ""
    assert err.startswith("not run: lab guest run failed: watchdog")


@pytest.mark.slow
@pytest.mark.skipif(bool(_guest_skip("lazy-v3-7.3")), reason=str(_guest_skip("lazy-v3-7.3")))
def test_the_series_own_kselftest_passes_in_the_lazy_guest():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "-m", "thpsim", "lab", "kselftest", "lazy-v3-7.3", "--timeout", "900"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=1000)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "# PASSED: 5 / 5 tests passed." in r.stdout


FORK_INJ = """{"thpsim": 1, "name": "fork-inj"}
{"op": "mmap", "id": "a", "len": "2M"}
{"op": "madvise", "id": "a", "advice": "hugepage"}
{"op": "write", "id": "a", "fill": true}
{"op": "fork", "child": "c", "inject": {"at": "pte_alloc_one"}}
{"op": "write", "proc": "c", "id": "a", "len": "4K"}
{"op": "read", "id": "a"}
"""


def test_ops_of_a_process_whose_fork_failed_are_not_run_by_the_model():
    steps = run_model(parse(FORK_INJ), design="upstream", check=True).steps
    # copy_huge_pmd's deposit for the child fails: fork returns ENOMEM, the child's op is not run
    assert steps[3].result == "ENOMEM" and steps[3].injected == ("copy_huge_pmd",)
    assert steps[4].result is None and "does not exist" in steps[4].notes[0]
    assert steps[5].result == 0


@pytest.mark.slow
@pytest.mark.skipif(bool(_guest_skip("upstream-7.3")), reason=str(_guest_skip("upstream-7.3")))
def test_injected_fork_failure_matches_the_model_in_the_upstream_guest(tmp_path):
    trace = tmp_path / "fork-inj.jsonl"
    trace.write_text(FORK_INJ)
    rc, out = _diff_in("--kernel", "upstream-7.3", str(trace))
    assert rc == 0 and out["identical"] == 1, out


@pytest.mark.slow
@pytest.mark.skipif(bool(_guest_skip("lazy-v3-7.3")), reason=str(_guest_skip("lazy-v3-7.3")))
def test_khugepaged_op_runs_for_real_in_the_lazy_guest():
    # the khugepaged op wakes the guest's khugepaged: every step is compared, collapse counts included
    paths = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scenarios").glob("khugepaged-*.jsonl"))
    assert len(paths) >= 5
    rc, out = _diff_in("--kernel", "lazy-v3-7.3", "--design", "lazy", "--cpus", "1", *paths, timeout=1800)
    # name the trace that differed and how (the summary dict alone gets cut off in pytest's message)
    assert rc == 0, json.dumps([r for r in out.get("results", []) if not r.get("identical")], indent=1)[:4000]
    for res in out["results"]:
        n_ops = sum(1 for line in (ROOT / res["trace"]).read_text().splitlines()[1:] if line.strip())
        assert res["identical"] and res["compared_steps"] == n_ops, res
