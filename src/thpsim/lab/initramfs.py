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
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from thpsim.lab.apt import AptWorkspace, LabStepError
from thpsim.lab.kernels import KernelSpec

if TYPE_CHECKING:
    from thpsim.lab.build import BuiltKernel, Progress

__all__ = ["fetch_image", "write_initramfs", "cpio_newc", "INITRAMFS_MODULES", "INIT_SH"]

_IMAGE_RE = re.compile(r"linux-image-\d+\.\d+")   # a versioned image, not a metapackage

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
if [ -f /kconfig ]; then    # no /proc/config.gz in Debian's kernels: give thpsim the config where it looks next
  /bin/busybox mkdir -p /newroot/boot
  /bin/busybox cp /kconfig /newroot/boot/config-$(/bin/busybox uname -r)
fi
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
    """Module files (relative to mroot) for ``wanted``, dependencies first; built-in ones are skipped.

    The dependencies come from ``modules.dep`` when the tree has one; a Debian ``linux-image-*`` package
    ships none (depmod writes it in the postinst, which never runs here), so then they come from each
    module's own ``.modinfo`` ``depends=`` field, the same source depmod uses."""
    files = sorted(str(f.relative_to(mroot)) for f in (mroot / "kernel").rglob("*.ko*")) \
        if (mroot / "kernel").is_dir() else []
    depfile = mroot / "modules.dep"
    by_name = {_mod_name(m): m for m in files}
    deps: dict[str, list[str]] | None = None
    if depfile.exists():
        deps = {}
        for line in depfile.read_text().splitlines():
            if ":" in line:
                mod, rest = line.split(":", 1)
                deps[mod] = rest.split()
        by_name.update({_mod_name(m): m for m in deps})
    order: list[str] = []

    def direct(m: str) -> list[str]:
        if deps is not None:
            return deps.get(m, [])
        out = []
        for d in _modinfo(_decompress(mroot / m)).get("depends", ""):
            for n in d.split(","):
                n = n.strip().replace("-", "_")
                if n and n in by_name:
                    out.append(by_name[n])
        return out

    def visit(m: str, stack: tuple[str, ...] = ()) -> None:
        if m in order or m in stack:
            return
        for d in direct(m):
            visit(d, (*stack, m))
        order.append(m)

    for w in wanted:
        if w.replace("-", "_") in by_name:
            visit(by_name[w.replace("-", "_")])
    return order


def _builtin(mroot: Path) -> set[str]:
    try:
        return {_mod_name(x) for x in (mroot / "modules.builtin").read_text().split()}
    except OSError:
        return set()


def _modinfo(ko: bytes) -> dict[str, list[str]]:
    """The ``key=value`` strings of an ELF64 module's ``.modinfo`` section."""
    import struct

    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise LabStepError("initramfs", "a module is not an ELF64 object")
    end = "<" if ko[5] == 1 else ">"
    shoff, = struct.unpack_from(end + "Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", ko, 0x3A)

    def sect(i: int) -> tuple[int, int, int]:
        name, _t, _f, _a, off, size = struct.unpack_from(end + "IIQQQQ", ko, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = sect(shstrndx)
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name, off, size = sect(i)
        if ko[stroff + name: ko.index(b"\0", stroff + name)] == b".modinfo":
            for item in ko[off: off + size].split(b"\0"):
                if b"=" in item:
                    k, v = item.decode("utf-8", "replace").split("=", 1)
                    info.setdefault(k, []).append(v)
    return info


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
        return _unzstd(p, data)
    return data


def _unzstd(p: Path, data: bytes) -> bytes:
    """zstd is not in Python 3.11's standard library: the ``zstandard`` module if installed, else ``zstd -dc``."""
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        zstandard = None
    if zstandard is not None:
        return bytes(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read())
    exe = shutil.which("zstd")
    if exe is None:
        raise LabStepError("initramfs", f"{p.name} is zstd-compressed and neither the zstd command nor the "
                           "Python module zstandard is installed (apt-get install zstd, or pip install zstandard)")
    r = subprocess.run([exe, "-dc", "-q", str(p)], capture_output=True)
    if r.returncode != 0:
        raise LabStepError("initramfs", f"zstd -dc {p.name} exited {r.returncode}: "
                           f"{r.stderr.decode(errors='replace').strip()[:200]}")
    return r.stdout


def write_initramfs(apt: AptWorkspace, dest: Path, mroot: Path | None, config: Path | None = None,
                    init: str = INIT_SH) -> int:
    """Write the lab initramfs to ``dest`` (modules from ``mroot``, a lib/modules/<version> folder, or
    none for a kernel with everything built in); return the number of modules it loads. ``config`` (the
    kernel's .config) is copied to the guest's /boot/config-<release>, in its RAM overlay. ``init`` is the
    /init script (the arm64 guests' adds the checkout share, :mod:`thpsim.lab.arm64`)."""
    work = dest.parent / "busybox-static"
    bb_tree = apt.extract(apt.download("busybox-static"), work)
    busybox = next((p for p in (bb_tree / "bin" / "busybox", bb_tree / "usr" / "bin" / "busybox") if p.exists()),
                   None)
    if busybox is None:
        raise LabStepError("initramfs", f"busybox-static holds no bin/busybox ({bb_tree})", apt.log)
    mods = _load_order(mroot, INITRAMFS_MODULES) if mroot else []
    if mroot and (mroot / "modules.builtin").exists():
        have = {_mod_name(m) for m in mods} | _builtin(mroot)
        missing = [w for w in INITRAMFS_MODULES if w.replace("-", "_") not in have]
        if missing:
            raise LabStepError("initramfs", f"{mroot.name} has neither a module nor a built-in "
                               f"{', '.join(missing)}")
    entries: list[tuple[str, int, bytes]] = [
        ("bin", stat.S_IFDIR | 0o755, b""), ("lib", stat.S_IFDIR | 0o755, b""),
        ("lib/modules", stat.S_IFDIR | 0o755, b""), ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
        ("init", stat.S_IFREG | 0o755, init.encode())]
    names = []
    for m in mods:
        assert mroot is not None
        n = _mod_name(m) + ".ko"
        names.append(n)
        entries.append((f"lib/modules/{n}", stat.S_IFREG | 0o644, _decompress(mroot / m)))
    if config is not None:
        entries.append(("kconfig", stat.S_IFREG | 0o644, config.read_bytes()))
    entries.append(("modules.order", stat.S_IFREG | 0o644, "".join(x + "\n" for x in names).encode()))
    dest.write_bytes(gzip.compress(cpio_newc(entries), 6, mtime=0))
    shutil.rmtree(work, ignore_errors=True)
    return len(mods)


def initramfs_sha256() -> str:
    return hashlib.sha256(json.dumps([INIT_SH, INITRAMFS_MODULES]).encode()).hexdigest()


def _image_parts(apt: AptWorkspace, package: str, release: str) -> list[str]:
    """``package`` and the packages of the same kernel release it depends on, transitively. Up to trixie
    ``linux-image-<release>`` holds the kernel and its modules; sid splits it into ``linux-binary-<release>``
    (vmlinuz), ``linux-modules-<release>`` (lib/modules) and ``linux-base-<release>`` (config, System.map),
    leaving ``linux-image-<release>`` an empty package that depends on them."""
    same = re.compile(r"linux-[a-z]+(?:-[a-z]+)*-" + re.escape(release) + "$")
    parts, todo = [package], [package]
    while todo:
        for d in apt.depends(todo.pop()):
            if same.match(d) and d not in parts:
                parts.append(d)
                todo.append(d)
    return parts


def fetch_image(spec: KernelSpec, *, name: str, progress: Progress, force: bool = False) -> BuiltKernel:
    from thpsim.lab.build import (
        BUILDER_VERSION,
        BuiltKernel,
        cache_root,
        cached_build,
        fresh_build_dir,
        record_build,
        suites_for,
    )

    root = cache_root() / "lab"
    progress("fetch", f"{spec.package} from Debian {spec.suite} (private apt configuration)")
    apt = AptWorkspace(root / "apt" / spec.suite, suites_for(spec.suite))
    apt.update()
    package = spec.package
    if not _IMAGE_RE.match(package):
        # a metapackage such as linux-image-amd64 (which also depends on linux-base-amd64 in sid):
        # the one versioned image it depends on
        real = [d for d in apt.depends(package) if _IMAGE_RE.match(d)]
        if len(real) != 1:
            raise LabStepError("fetch", f"{package} in {spec.suite} depends on {len(real)} kernel images "
                               f"({', '.join(real) or 'none'}), expected one", apt.log)
        package = real[0]
    release = package.removeprefix("linux-image-")
    if not (release == spec.version or release.startswith(spec.version + ".")
            or release.startswith(spec.version + "+") or release.startswith(spec.version + "-")):
        raise LabStepError("fetch", f"{spec.package} in Debian {spec.suite} is now {package}, not a "
                           f"{spec.version} kernel: update {spec.name} in thpsim/lab/kernels.py", apt.log)
    ver = apt.version(package)
    key = hashlib.sha256(json.dumps([BUILDER_VERSION, "image", package, ver,
                                     initramfs_sha256()]).encode()).hexdigest()[:16]
    cached = cached_build(name, key, force, progress)
    if cached:
        return cached
    t0 = time.monotonic()
    bdir = fresh_build_dir(name, key)
    try:    # a failed fetch leaves no half-unpacked image (hundreds of MB) in the cache
        tree = bdir / "pkg"
        parts = _image_parts(apt, package, release)
        for part in parts:
            apt.extract(apt.download(part), tree)
        # the kernel and its config: in boot/ up to trixie, beside the modules in lib/modules/<release>/ in sid
        mroot = _module_root(tree)
        images = sorted(tree.glob("boot/vmlinuz-*")) or [p for p in (mroot / "vmlinuz",) if p.exists()]
        if not images:
            raise LabStepError("fetch", f"{', '.join(parts)} hold no /boot/vmlinuz-* or lib/modules/*/vmlinuz",
                               apt.log)
        progress("initramfs", f"busybox + {', '.join(INITRAMFS_MODULES)}")
        cfgs = sorted(tree.glob("boot/config-*")) or [p for p in (mroot / "config",) if p.exists()]
        initrd = bdir / "initrd.img"
        nmods = write_initramfs(apt, initrd, mroot, cfgs[0] if cfgs else None)
        image = bdir / "vmlinuz"
        shutil.copy2(images[0], image)
        if cfgs:
            shutil.copy2(cfgs[0], bdir / "config")
        kernel_release = mroot.name
        shutil.rmtree(tree)
    except BaseException:
        shutil.rmtree(bdir, ignore_errors=True)
        raise
    bk = BuiltKernel(name=name, version=kernel_release, package_version=f"{package} {ver}",
                     series=None, series_sha256=None, config_sha256="", key=key, directory=str(bdir),
                     image=str(image), initrd=str(initrd), arch=spec.arch,
                     build_seconds=round(time.monotonic() - t0, 1), options=(), kind="image",
                     initramfs_sha256=initramfs_sha256())
    return record_build(bk, progress, f"{image} + {initrd.name} ({nmods} modules)")
