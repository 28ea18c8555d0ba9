"""The lab guests' initramfs, and Debian's prebuilt kernel images as lab guests.

Every lab guest boots through a small initramfs (newc cpio, written here): Debian's static busybox, the
modules a modular kernel needs for a 9p root, virtio-serial, overlayfs and zram (with their dependencies
from ``modules.dep``, decompressed; none for the lab's own builds, which have them built in), and an
``/init`` that mounts the host's ``/`` **read-only** over 9p as the lower layer of an overlay whose upper
layer is a tmpfs in guest RAM. The guest so sees exactly the host's files (the checkout, the Python) and
can write anywhere, and none of its writes can reach the host. ``/init`` then switches to
:mod:`thpsim.lab.guest_init`.

:func:`fetch_image` makes a lab guest of a Debian ``linux-image-*`` package (following a metapackage such
as ``linux-image-amd64`` to the real image). Debian does not enable FAIL_PAGE_ALLOC, so these guests have
no fault injection; they run the live runner on other kernel versions.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from thpsim.lab.apt import AptWorkspace, LabStepError
from thpsim.lab.kernels import KernelSpec

if TYPE_CHECKING:
    from thpsim.lab.build import BuiltKernel, Progress

__all__ = ["fetch_image", "write_initramfs", "cpio_newc", "INITRAMFS_MODULES", "INIT_SH"]

INITRAMFS_MODULES = ("virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay", "zram", "virtio_blk")

INIT_SH = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in $(/bin/busybox cat /modules.order); do
  /bin/busybox insmod /lib/modules/$m || echo "thpsim lab initramfs: insmod $m failed"
done
/bin/busybox mkdir -p /lower /rw
/bin/busybox mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144 host0 /lower || {
  echo "thpsim lab initramfs: cannot mount the host root over 9p"; exit 1; }
/bin/busybox mount -t tmpfs -o mode=0755 scratch /rw
/bin/busybox mkdir -p /rw/upper /rw/work
/bin/busybox mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work guestroot /newroot || {
  echo "thpsim lab initramfs: cannot mount the overlay root (CONFIG_OVERLAY_FS?)"; exit 1; }
/bin/busybox umount /proc /sys /dev
exec /bin/busybox switch_root /newroot "$THPSIM_PYTHON" "$THPSIM_INIT"
"""


def cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data) entries (symlinks: mode S_IFLNK, data = target)."""
    out = io.BytesIO()
    ino = 1
    for path, mode, data in [*entries, ("TRAILER!!!", 0, b"")]:
        name = path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        hdr = "070701" + "".join(f"{v:08x}" for v in (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0,
                                                        len(name), 0))
        out.write(hdr.encode() + name)
        out.write(b"\0" * (-(110 + len(name)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
        ino += 1
    return out.getvalue()


def _module_root(tree: Path) -> Path:
    for base in (tree / "lib" / "modules", tree / "usr" / "lib" / "modules"):
        if base.is_dir():
            dirs = [d for d in base.iterdir() if d.is_dir()]
            if dirs:
                return dirs[0]
    raise LabStepError("fetch", f"no lib/modules/<version> in {tree}")


def _load_order(mroot: Path, wanted: tuple[str, ...]) -> list[str]:
    """Module files (relative to mroot) for ``wanted``, dependencies first; built-in ones are skipped."""
    deps: dict[str, list[str]] = {}
    for line in (mroot / "modules.dep").read_text().splitlines():
        if ":" in line:
            mod, rest = line.split(":", 1)
            deps[mod] = rest.split()
    by_name = {_mod_name(m): m for m in deps}
    order: list[str] = []

    def visit(m: str) -> None:
        if m in order:
            return
        for d in deps.get(m, []):
            visit(d)
        order.append(m)

    for w in wanted:
        if w.replace("-", "_") in by_name:
            visit(by_name[w.replace("-", "_")])
    return order


def _mod_name(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base.replace("-", "_")


def _decompress(p: Path) -> bytes:
    data = p.read_bytes()
    if p.name.endswith(".xz"):
        return lzma.decompress(data)
    if p.name.endswith(".gz"):
        return gzip.decompress(data)
    if p.name.endswith(".zst"):
        raise LabStepError("fetch", f"{p.name} is zstd-compressed; the lab's initramfs writer reads .ko, .ko.xz "
                           "and .ko.gz only")
    return data


def write_initramfs(apt: AptWorkspace, dest: Path, mroot: Path | None) -> int:
    """Write the lab initramfs to ``dest`` (modules from ``mroot``, a lib/modules/<version> folder, or
    none for a kernel with everything built in); return the number of modules it loads."""
    work = dest.parent / "busybox-static"
    bb_tree = apt.extract(apt.download("busybox-static"), work)
    busybox = next((p for p in (bb_tree / "bin" / "busybox", bb_tree / "usr" / "bin" / "busybox") if p.exists()),
                   None)
    if busybox is None:
        raise LabStepError("initramfs", f"busybox-static holds no bin/busybox ({bb_tree})", apt.log)
    mods = _load_order(mroot, INITRAMFS_MODULES) if mroot else []
    entries: list[tuple[str, int, bytes]] = [
        ("bin", stat.S_IFDIR | 0o755, b""), ("lib", stat.S_IFDIR | 0o755, b""),
        ("lib/modules", stat.S_IFDIR | 0o755, b""), ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
        ("init", stat.S_IFREG | 0o755, INIT_SH.encode())]
    names = []
    for m in mods:
        assert mroot is not None
        n = _mod_name(m) + ".ko"
        names.append(n)
        entries.append((f"lib/modules/{n}", stat.S_IFREG | 0o644, _decompress(mroot / m)))
    entries.append(("modules.order", stat.S_IFREG | 0o644, "".join(x + "\n" for x in names).encode()))
    dest.write_bytes(gzip.compress(cpio_newc(entries), 6, mtime=0))
    shutil.rmtree(work, ignore_errors=True)
    return len(mods)


def initramfs_sha256() -> str:
    return hashlib.sha256(json.dumps([INIT_SH, INITRAMFS_MODULES]).encode()).hexdigest()


def fetch_image(spec: KernelSpec, *, name: str, progress: Progress, force: bool = False) -> BuiltKernel:
    from thpsim.lab.build import BUILDER_VERSION, BuiltKernel, cache_root, find_built, write_index

    root = cache_root() / "lab"
    progress("fetch", f"{spec.package} from Debian {spec.suite} (private apt configuration)")
    apt = AptWorkspace(root / "apt" / spec.suite, (spec.suite,))
    apt.update()
    package = spec.package
    real = [d for d in apt.depends(package) if d.startswith("linux-image-")]
    if real and not package.startswith("linux-image-") or (real and "+" not in package and package.endswith("amd64")
                                                           and package.count("-") == 2):
        package = real[0]          # a metapackage such as linux-image-amd64: the image it depends on
    ver = apt.version(package)
    key = hashlib.sha256(json.dumps([BUILDER_VERSION, "image", package, ver,
                                     initramfs_sha256()]).encode()).hexdigest()[:16]
    cached = find_built(name)
    if not force and cached and cached.key == key:
        progress("cached", cached.image)
        return cached
    t0 = time.monotonic()
    bdir = root / "builds" / f"{name}-{key}"
    shutil.rmtree(bdir, ignore_errors=True)
    tree = apt.extract(apt.download(package), bdir / "pkg")
    images = sorted(tree.glob("boot/vmlinuz-*"))
    if not images:
        raise LabStepError("fetch", f"{package} holds no /boot/vmlinuz", apt.log)
    progress("initramfs", f"busybox + {', '.join(INITRAMFS_MODULES)}")
    initrd = bdir / "initrd.img"
    nmods = write_initramfs(apt, initrd, _module_root(tree))
    image = bdir / "vmlinuz"
    shutil.copy2(images[0], image)
    cfgs = sorted(tree.glob("boot/config-*"))
    if cfgs:
        shutil.copy2(cfgs[0], bdir / "config")
    shutil.rmtree(tree)
    bk = BuiltKernel(name=name, version=images[0].name.removeprefix("vmlinuz-"), package_version=f"{package} {ver}",
                     series=None, series_sha256=None, config_sha256="", key=key, directory=str(bdir),
                     image=str(image), initrd=str(initrd), arch=spec.arch,
                     build_seconds=round(time.monotonic() - t0, 1), options=(), kind="image")
    (bdir / "meta.json").write_text(json.dumps(asdict(bk), indent=1))
    write_index(name, bk)
    progress("done", f"{image} + {initrd.name} ({nmods} modules)")
    return bk
