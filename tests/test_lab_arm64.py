"""arm64 lab guests (thpsim.lab.arm64): the registry entry, the arm64 root folder, the initramfs, the QEMU
command line and, where ``thpsim lab build arm64-16k`` has been run here, a boot of Debian's 16K-page kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thpsim.errors import ThpsimError
from thpsim.lab import arm64, build, guest, initramfs, kernels

ROOT = Path(__file__).resolve().parents[1]


def _bk(tmp_path: Path, arch: str = "arm64") -> build.BuiltKernel:
    return build.BuiltKernel(name="arm64-16k", version="7.3.4+deb13-arm64-16k", package_version="1", series=None,
                             series_sha256=None, config_sha256="", key="0", directory=str(tmp_path),
                             image=str(tmp_path / "Image"), initrd=str(tmp_path / "initrd.img"), arch=arch,
                             build_seconds=0, options=(), kind="image",
                             initramfs_sha256=arm64.arm64_initramfs_sha256())


def test_registry_names_the_16k_image():
    k = kernels.get_kernel("arm64-16k")
    assert (k.kind, k.arch, k.page_size_kb, k.suite) == ("image", "arm64", 16, "trixie-backports")
    assert k.package == "linux-binary-unsigned-7.3.4+deb13-arm64-16k"
    k4 = kernels.get_kernel("arm64-4k")
    assert (k4.arch, k4.page_size_kb, k4.package) == ("arm64", 4, "linux-binary-unsigned-7.3.4+deb13-arm64")
    assert all(s.arch == "x86_64" for s in kernels.KERNELS.values() if not s.name.startswith("arm64-"))


def test_arm64_init_adds_only_the_read_only_checkout_share():
    s, x86 = arm64.INIT_SH_ARM64, initramfs.INIT_SH
    assert "checkout" not in x86 and "THPSIM_CHECKOUT" not in x86      # x86_64 guests are unchanged
    assert '-o ro,trans=virtio,version=9p2000.L,msize=262144 checkout "/newroot$THPSIM_CHECKOUT"' in s
    assert s.index("checkout") > s.index("guestroot /newroot") and s.endswith(x86.splitlines()[-1] + "\n")
    assert s.replace(arm64._CHECKOUT_MOUNT, "") == x86
    assert arm64.arm64_initramfs_sha256() != initramfs.initramfs_sha256()


def test_qemu_command_is_aarch64_tcg_with_read_only_shares(tmp_path, monkeypatch):
    monkeypatch.setenv("THPSIM_CACHE", str(tmp_path / "cache"))
    cmd = guest.qemu_command(_bk(tmp_path), guest.GuestConfig(cpus=1, memory_mb=1024), tmp_path, "tcg")
    assert cmd[0] == "qemu-system-aarch64" and cmd[cmd.index("-M") + 1] == "virt"
    assert cmd[cmd.index("-accel") + 1].startswith("tcg") and cmd[cmd.index("-cpu") + 1].startswith("max")
    fsdevs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-fsdev"]
    assert len(fsdevs) == 3 and all("readonly=on" in f for f in fsdevs)
    assert any(f"path={arm64.rootfs_dir()}," in f for f in fsdevs)
    assert any(f"path={ROOT}," in f for f in fsdevs)                 # the checkout, at its own path
    assert not any("path=/," in f for f in fsdevs)                   # never the host's /
    append = cmd[cmd.index("-append") + 1]
    assert "console=ttyAMA0" in append and f"THPSIM_PYTHON={arm64.GUEST_PYTHON}" in append
    assert f"THPSIM_CHECKOUT={ROOT}" in append
    assert "-no-reboot" in cmd and not any(a.startswith("-drive") for a in cmd)
    with pytest.raises(ThpsimError, match="TCG only"):
        guest.qemu_command(_bk(tmp_path), guest.GuestConfig(), tmp_path, "kvm")
    with pytest.raises(ThpsimError, match="TCG only"):
        guest._accel(guest.GuestConfig(accel="kvm"), _bk(tmp_path))
    assert guest._accel(guest.GuestConfig(), _bk(tmp_path)) == "tcg"


def test_x86_qemu_command_is_unchanged(tmp_path):
    cmd = guest.qemu_command(_bk(tmp_path, "x86_64"), guest.GuestConfig(cpus=2, memory_mb=1024), tmp_path, "tcg")
    assert cmd[0] == "qemu-system-x86_64" and "max,la57=off" in cmd and "-M" not in cmd


def test_guest_python_and_cwd():
    assert guest.guest_argv(["thpsim", "probe"], arm64.GUEST_PYTHON) == [arm64.GUEST_PYTHON, "-m", "thpsim",
                                                                               "probe"]
    assert guest.guest_argv(["thpsim", "probe"])[0] == os.path.realpath(sys.executable)
    assert guest.guest_argv(["uname", "-a"], arm64.GUEST_PYTHON) == ["uname", "-a"]
    assert arm64.guest_cwd(str(ROOT / "tests")) == str(ROOT / "tests")
    assert arm64.guest_cwd("/") == str(ROOT)


def test_busybox_applet_table_is_read():
    blob = b"\x7fELF junk \xae [\0[[\0acpid\0ash\0cat\0sh\0uname\0\0more junk"
    assert arm64.busybox_applets(blob) == ["[", "[[", "acpid", "ash", "cat", "sh", "uname"]
    assert arm64.busybox_applets(b"no table here") == []
    assert arm64.busybox_applets(b"[\0[[\0zz\0aa\0\0") == []           # not sorted: not the table


class FakeApt:
    """Stands in for AptWorkspace: every package unpacks a file or two (no network, no dpkg)."""

    def __init__(self, tmp: Path) -> None:
        self.log = tmp / "apt.log"
        self.downloads: list[str] = []

    def version(self, package: str) -> str:
        return "1.0"

    def download(self, package: str) -> Path:
        self.downloads.append(package)
        return Path(package)

    def extract(self, deb: Path, dest: Path) -> Path:
        name = str(deb)
        files = {"python3.13-minimal": {"usr/bin/python3.13": b"\x7fELF py"},
                 "busybox-static": {"usr/bin/busybox": b"\x7fELF [\0[[\0cat\0sh\0uname\0\0"},
                 "libc6": {"usr/lib/ld-linux-aarch64.so.1": b"ld", "lib/aarch64-linux-gnu/old.so": b"x"}}
        for rel, data in files.get(name, {f"usr/share/doc/{name}/copyright": b"c"}).items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data)
        return dest


def test_rootfs_layout_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THPSIM_CACHE", str(tmp_path / "cache"))
    apt = FakeApt(tmp_path)
    steps: list[str] = []
    root, digest = arm64.build_rootfs(apt, lambda s, d: steps.append(d))   # type: ignore[arg-type]
    assert root == tmp_path / "cache" / "lab" / "rootfs-arm64" and set(apt.downloads) == set(arm64.ROOTFS_PACKAGES)
    for d in ("bin", "sbin", "lib"):
        assert os.readlink(root / d) == f"usr/{d}"
    assert (root / "usr/lib/aarch64-linux-gnu/old.so").exists()          # merged into /usr
    assert os.readlink(root / "usr/bin/python3") == "python3.13"
    assert os.readlink(root / "usr/bin/uname") == "busybox" and os.readlink(root / "usr/bin/sh") == "busybox"
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777 and (root / "proc").is_dir()
    assert "root:x:0:0" in (root / "etc/passwd").read_text()
    apt.downloads.clear()
    assert arm64.build_rootfs(apt, lambda s, d: steps.append(d)) == (root, digest)   # type: ignore[arg-type]
    assert apt.downloads == [] and steps[-1].startswith("cached")


def test_unbuilt_or_stale_arm64_kernel_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("THPSIM_CACHE", str(tmp_path))
    with pytest.raises(ThpsimError, match=r"thpsim lab build arm64-16k"):
        guest.run_in_guest("arm64-16k", ["true"], guest.GuestConfig())
    with pytest.raises(ThpsimError, match=r"lab build arm64-16k --force"):
        build.fresh_initramfs(_bk(tmp_path))                             # no root folder


# ---- a real boot (needs `thpsim lab build arm64-16k` and qemu-system-aarch64) ---------------------------------
def _skip() -> str | None:
    return guest.guest_unavailable("arm64-16k")


@pytest.mark.slow
@pytest.mark.skipif(bool(_skip()), reason=str(_skip()))
def test_arm64_guest_has_16k_pages_and_32m_thps():
    code = ("import mmap, platform; print(platform.machine(), mmap.PAGESIZE, "
            "open('/sys/kernel/mm/transparent_hugepage/hpage_pmd_size').read().strip())")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "-m", "thpsim", "lab", "run", "arm64-16k", "--cpus", "1", "--timeout", "600",
                        "--", "python3", "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=700)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["aarch64", "16384", str(32 << 20)]


@pytest.mark.slow
@pytest.mark.skipif(bool(_skip()), reason=str(_skip()))
def test_scenarios_mapped_onto_16k_pages_match_the_arm64_16k_profile():
    # the arch profile comes from the guest's kernel, the traces are mapped onto 16 KiB pages / 32 MiB PMDs
    paths = ["scenarios/cold-partial.jsonl", "scenarios/munmap-straddle-two-thps.jsonl",
             "scenarios/fork-child-partial-munmap.jsonl", "scenarios/selftest-partial_munmap.jsonl"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "-m", "thpsim", "diff", "--kernel", "arm64-16k", "--cpus", "1", "--json",
                        *paths], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    out = json.loads(r.stdout)
    assert r.returncode == 0, out
    assert (out["arch"], out["page_size"], out["pmd_size"]) == ("arm64-16k", 16384, 32 << 20)
    assert out["identical"] == len(paths)
