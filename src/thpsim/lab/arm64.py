"""arm64 lab guests: Debian's prebuilt arm64 kernels (the 16K-page flavour) under ``qemu-system-aarch64``.

An x86_64 host cannot run its own ``/`` in an arm64 guest, so an arm64 guest gets its own root: a folder
under the lab cache (``lab/rootfs-arm64/``) assembled from Debian trixie arm64 packages, unpacked with
``dpkg-deb -x`` (never installed): glibc, Python 3.13 (``python3.13-minimal`` and its standard library) and
the static busybox, whose applets are symlinked into ``/usr/bin``. The guest mounts that folder read-only
over 9p as the lower layer of its RAM overlay (as x86_64 guests mount the host's ``/``), and the checkout
(thpsim is pure Python) read-only over a second 9p share at the same absolute path, so ``PYTHONPATH``,
``guest_init.py`` and the command's working directory are where they are on the host.

The kernel is ``linux-binary-unsigned-<release>`` (an uncompressed arm64 ``Image``), with the modules of
``linux-modules-<release>`` (9p, overlay, zram) and the config of ``linux-base-<release>``. QEMU:
``-M virt -cpu max,pauth-impdef=on -accel tcg`` (``pauth-impdef``: QEMU's cheap pointer-authentication
hash, the architected QARMA is very slow under TCG; the guest sees the same features), console on the PL011.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from thpsim.errors import ThpsimError
from thpsim.lab.apt import AptWorkspace, LabStepError
from thpsim.lab.kernels import KernelSpec

if TYPE_CHECKING:
    from thpsim.lab.build import BuiltKernel, Progress
    from thpsim.lab.guest import GuestConfig

__all__ = ["ROOTFS_PACKAGES", "GUEST_PYTHON", "INIT_SH_ARM64", "ROOTFS_LAYOUT", "fetch_arm64_image",
           "rootfs_dir", "build_rootfs", "busybox_applets", "qemu_command_arm64", "arm64_initramfs_sha256",
           "check_ready", "checkout_dir", "guest_cwd", "ARM64_APT"]

ARM64_APT = "trixie-backports-arm64"     # the private apt workspace (lab/apt/NAME) for arm64 packages
ROOTFS_SUITE = "trixie"
ROOTFS_LAYOUT = 1                         # bump when build_rootfs lays the folder out differently

# Debian trixie arm64: what python3.13-minimal and the parts of libpython3.13-stdlib that thpsim (or a
# module it imports) loads need; tzdata, media-types, netbase, debconf and the like are left out.
ROOTFS_PACKAGES = (
    "libc6", "libgcc-s1", "zlib1g", "libexpat1", "libffi8", "libssl3t64", "libbz2-1.0", "liblzma5",
    "libzstd1", "libuuid1", "libtinfo6", "libncursesw6", "libreadline8t64", "libsqlite3-0",
    "libpython3.13-minimal", "libpython3.13-stdlib", "python3.13-minimal", "busybox-static",
)
GUEST_PYTHON = "/usr/bin/python3.13"

# The x86_64 /init (initramfs.INIT_SH) plus the checkout share, mounted read-only at its host path inside
# the overlay (the mount point is created in the overlay's RAM upper layer, never on the host).
_CHECKOUT_MOUNT = """/bin/busybox mkdir -p "/newroot$THPSIM_CHECKOUT"
/bin/busybox mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144 checkout "/newroot$THPSIM_CHECKOUT" || {
  echo "thpsim lab initramfs: cannot mount the checkout over 9p"; exit 1; }
"""


def _init_sh() -> str:
    from thpsim.lab.initramfs import INIT_SH

    anchor = "if [ -f /kconfig ]; then"
    if anchor not in INIT_SH:      # pragma: no cover - a guard for whoever edits INIT_SH
        raise ThpsimError("initramfs.INIT_SH changed: update thpsim.lab.arm64._init_sh")
    return INIT_SH.replace(anchor, _CHECKOUT_MOUNT + anchor, 1)


INIT_SH_ARM64 = _init_sh()


def arm64_initramfs_sha256() -> str:
    from thpsim.lab.initramfs import INITRAMFS_MODULES

    return hashlib.sha256(json.dumps([INIT_SH_ARM64, INITRAMFS_MODULES, "arm64"]).encode()).hexdigest()


def checkout_dir() -> Path:
    """The checkout thpsim runs from (the folder holding ``src/thpsim``), shared with the guest."""
    return Path(__file__).resolve().parents[3]


def guest_cwd(cwd: str) -> str:
    """The command's working directory in the guest: the host's when it is inside the checkout (the only
    host folder the guest sees), else the checkout itself."""
    co = checkout_dir()
    try:
        Path(cwd).resolve().relative_to(co)
        return cwd
    except ValueError:
        return str(co)


def rootfs_dir() -> Path:
    from thpsim.lab.build import cache_root

    return cache_root() / "lab" / "rootfs-arm64"


def _workspace() -> AptWorkspace:
    from thpsim.lab.build import cache_root

    return AptWorkspace(cache_root() / "lab" / "apt" / ARM64_APT, ("trixie-backports", ROOTFS_SUITE),
                        arch="arm64")


def busybox_applets(binary: bytes) -> list[str]:
    """The applet names compiled into a busybox binary: its NUL-separated, sorted ``applet_names`` table,
    which starts with ``[`` and ``[[``."""
    start = binary.find(b"[\0[[\0")
    if start < 0:
        return []
    end = binary.find(b"\0\0", start)
    names = binary[start:end].split(b"\0")
    out = [n.decode() for n in names if n and all(32 < c < 127 and c != ord("/") for c in n)]
    return out if out == sorted(out) else []


def _manifest(apt: AptWorkspace) -> list[tuple[str, str]]:
    return [(p, apt.version(p)) for p in ROOTFS_PACKAGES]


def build_rootfs(apt: AptWorkspace, progress: Progress, *, force: bool = False) -> tuple[Path, str]:
    """Assemble (or reuse) the arm64 root folder; return it and the hash of what it holds."""
    manifest = _manifest(apt)
    digest = hashlib.sha256(json.dumps([ROOTFS_LAYOUT, manifest]).encode()).hexdigest()[:16]
    dest = rootfs_dir()
    stamp = dest / ".thpsim-rootfs.json"
    try:
        if not force and json.loads(stamp.read_text())["digest"] == digest:
            progress("rootfs", f"cached {dest}")
            return dest, digest
    except (OSError, ValueError, KeyError):
        pass
    tmp = dest.with_name(dest.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for pkg, ver in manifest:
            progress("rootfs", f"{pkg} {ver}")
            apt.extract(apt.download(pkg), tmp)
        _usrmerge(tmp)
        py = tmp / GUEST_PYTHON.lstrip("/")
        if not py.exists():
            raise LabStepError("rootfs", f"python3.13-minimal left no {GUEST_PYTHON}", apt.log)
        for link in ("usr/bin/python3", "usr/bin/python"):
            if not os.path.lexists(tmp / link):
                os.symlink("python3.13", tmp / link)
        bb = tmp / "usr" / "bin" / "busybox"
        if not bb.exists():
            raise LabStepError("rootfs", "busybox-static left no /usr/bin/busybox", apt.log)
        applets = busybox_applets(bb.read_bytes())
        if "sh" not in applets or "uname" not in applets:
            raise LabStepError("rootfs", "cannot read the applet list of busybox-static's binary", apt.log)
        for a in applets:
            if a not in ("busybox",) and not os.path.lexists(tmp / "usr" / "bin" / a) \
                    and not os.path.lexists(tmp / "usr" / "sbin" / a):
                os.symlink("busybox", tmp / "usr" / "bin" / a)
        for d, mode in (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("run", 0o755), ("root", 0o700),
                        ("tmp", 0o1777), ("var/tmp", 0o1777), ("etc", 0o755), ("home", 0o755), ("mnt", 0o755)):
            (tmp / d).mkdir(parents=True, exist_ok=True)
            os.chmod(tmp / d, mode)
        etc = tmp / "etc"
        (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
        (etc / "hostname").write_text("thpsim-lab\n")
        (etc / "hosts").write_text("127.0.0.1 localhost thpsim-lab\n")
        (tmp / ".thpsim-rootfs.json").write_text(json.dumps({"digest": digest, "packages": manifest,
                                                            "applets": len(applets)}, indent=1))
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, digest


def _usrmerge(root: Path) -> None:
    """Debian's merged /usr: /bin, /sbin and /lib are symlinks into /usr (a package that still ships a file
    there has it moved)."""
    for d in ("bin", "sbin", "lib"):
        top, usr = root / d, root / "usr" / d
        usr.mkdir(parents=True, exist_ok=True)
        if top.is_dir() and not top.is_symlink():
            for child in list(top.iterdir()):
                target = usr / child.name
                if not os.path.lexists(target):
                    child.rename(target)
                elif child.is_dir() and not child.is_symlink():
                    shutil.copytree(child, target, symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(top)
        if not os.path.lexists(top):
            os.symlink(f"usr/{d}", top)


def fetch_arm64_image(spec: KernelSpec, *, name: str, progress: Progress, force: bool = False) -> BuiltKernel:
    """Fetch Debian's arm64 kernel ``spec.package`` (its image, modules and config), write the arm64
    initramfs and assemble the arm64 root folder."""
    from thpsim.lab.build import (
        BUILDER_VERSION,
        BuiltKernel,
        cached_build,
        fresh_build_dir,
        record_build,
    )
    from thpsim.lab.initramfs import INITRAMFS_MODULES, _module_root, write_initramfs

    progress("fetch", f"{spec.package} (arm64) from Debian {spec.suite} (private apt configuration)")
    apt = _workspace()
    apt.update()
    package = spec.package
    prefix = "linux-binary-unsigned-"
    if not package.startswith(prefix):
        raise LabStepError("fetch", f"{spec.name}: an arm64 lab kernel names its linux-binary-unsigned-* package")
    release = package.removeprefix(prefix)
    if not (release.startswith(spec.version + "+") or release.startswith(spec.version + "-")):
        raise LabStepError("fetch", f"{package} is not a {spec.version} kernel: update {spec.name} in "
                           "thpsim/lab/kernels.py")
    parts = [package, f"linux-modules-{release}", f"linux-base-{release}"]
    vers = [apt.version(p) for p in parts]
    rootfs, rootfs_digest = build_rootfs(apt, progress, force=force)
    key = hashlib.sha256(json.dumps([BUILDER_VERSION, "image-arm64", parts, vers, arm64_initramfs_sha256(),
                                     rootfs_digest]).encode()).hexdigest()[:16]
    cached = cached_build(name, key, force, progress)
    if cached:
        return cached
    t0 = time.monotonic()
    bdir = fresh_build_dir(name, key)
    try:
        tree = bdir / "pkg"
        for part in parts:
            progress("fetch", part)
            apt.extract(apt.download(part), tree)
        mroot = _module_root(tree)
        images = sorted(mroot.glob("vmlinuz*")) + sorted(tree.glob("boot/vmlinuz-*"))
        if not images:
            raise LabStepError("fetch", f"{package} holds no lib/modules/{release}/vmlinuz*", apt.log)
        head = images[0].read_bytes()[:64]
        if head[56:60] != b"ARM\x64":
            raise LabStepError("fetch", f"{images[0].name} is not an uncompressed arm64 Image", apt.log)
        cfg = mroot / "config"
        progress("initramfs", f"busybox (arm64) + {', '.join(INITRAMFS_MODULES)}")
        initrd = bdir / "initrd.img"
        nmods = write_initramfs(apt, initrd, mroot, cfg if cfg.exists() else None, init=INIT_SH_ARM64)
        image = bdir / "Image"
        shutil.copy2(images[0], image)
        if cfg.exists():
            shutil.copy2(cfg, bdir / "config")
        kernel_release = mroot.name
        shutil.rmtree(tree)
    except BaseException:
        shutil.rmtree(bdir, ignore_errors=True)
        raise
    bk = BuiltKernel(name=name, version=kernel_release, package_version=f"{package} {vers[0]}",
                     series=None, series_sha256=None, config_sha256="", key=key, directory=str(bdir),
                     image=str(image), initrd=str(initrd), arch="arm64",
                     build_seconds=round(time.monotonic() - t0, 1), options=(), kind="image",
                     initramfs_sha256=arm64_initramfs_sha256())
    return record_build(bk, progress, f"{image} + {initrd.name} ({nmods} modules) + {rootfs}")


def check_ready(bk: BuiltKernel) -> BuiltKernel:
    """``bk`` if its initramfs and the root folder are what this thpsim writes, else a clear error."""
    stamp = rootfs_dir() / ".thpsim-rootfs.json"
    if bk.initramfs_sha256 != arm64_initramfs_sha256() or not stamp.exists():
        raise ThpsimError(f"lab kernel {bk.name} was fetched by an older thpsim or its root folder "
                          f"{rootfs_dir()} is missing: run `thpsim lab build {bk.name} --force` (a download)")
    return bk


def qemu_command_arm64(bk: BuiltKernel, cfg: GuestConfig, run: Path, accel: str, ports: tuple[str, ...],
                       init: str) -> list[str]:
    if accel != "tcg":
        raise ThpsimError(f"lab kernel {bk.name} is arm64: this x86_64 host runs it under TCG only (--accel tcg)")
    if not bk.initrd:
        raise ThpsimError(f"lab kernel {bk.name} has no initramfs: run `thpsim lab build {bk.name} --force`")
    co = str(checkout_dir())
    if any(c.isspace() for c in co + init):
        raise ThpsimError(f"the checkout path {co!r} has white space, which the kernel command line cannot carry")
    append = (f"console=ttyAMA0 panic=-1 oops=panic loglevel=4 rdinit=/init THPSIM_PYTHON={GUEST_PYTHON} "
              f"THPSIM_INIT={init} THPSIM_CHECKOUT={co}")
    cmd = ["qemu-system-aarch64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
           "-M", "virt", "-accel", "tcg,thread=multi", "-cpu", "max,pauth-impdef=on",
           "-smp", str(cfg.cpus), "-m", f"{cfg.memory_mb}M", "-kernel", bk.image, "-append", append,
           "-serial", f"file:{run / 'console.log'}", "-monitor", "none",
           "-fsdev", f"local,id=root,path={rootfs_dir()},security_model=none,readonly=on,multidevs=remap",
           "-device", "virtio-9p-pci,fsdev=root,mount_tag=host0",
           "-fsdev", f"local,id=checkout,path={co},security_model=none,readonly=on,multidevs=remap",
           "-device", "virtio-9p-pci,fsdev=checkout,mount_tag=checkout",
           "-fsdev", f"local,id=job,path={run / 'job'},security_model=none,readonly=on",
           "-device", "virtio-9p-pci,fsdev=job,mount_tag=thpsimjob",
           "-device", "virtio-serial-pci", "-initrd", bk.initrd]
    for i, name in enumerate(ports):
        cmd += ["-chardev", f"socket,id=p{i},path={run / f'p{i}.sock'},server=on,wait=on",
                "-device", f"virtserialport,chardev=p{i},name={name}"]
    return cmd

