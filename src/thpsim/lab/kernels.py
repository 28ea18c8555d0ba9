"""The kernel lab's named kernels: which source or image, which patch series, which guest config.

A :class:`KernelSpec` says how to obtain one guest kernel. ``source`` kernels are built from a Debian
``linux-source-X.Y`` package (optionally with a patch series applied) with the lab's config fragment;
``image`` kernels are Debian's prebuilt ``linux-image-*`` packages (no fault injection, modules loaded from
a generated initramfs). ``host`` is not a guest: commands run on this machine as they are. ``arm64`` images boot under
``qemu-system-aarch64`` with a root folder of Debian arm64 packages (:mod:`thpsim.lab.arm64`).

The lazy series' default location is ``shared/kernel/lazy-pte-v3/port-7.3.4.diff`` beside the checkout
(``THPSIM_SHARED`` overrides the folder); ``thpsim lab build --series DIR|MBOX`` takes any other series.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from thpsim.errors import ThpsimError

__all__ = ["KernelSpec", "KERNELS", "HOST", "get_kernel", "shared_dir", "default_series"]

HOST = "host"


@dataclass(frozen=True)
class KernelSpec:
    name: str
    version: str                 # upstream version, e.g. "7.3.4"
    kind: str                    # "source" (built here) | "image" (Debian's prebuilt image)
    package: str                 # Debian package to fetch
    suite: str                   # Debian suite holding it
    arch: str = "x86_64"        # guest architecture (QEMU system and userspace)
    series: str | None = None    # relative to shared_dir(), or None
    description: str = ""
    page_size_kb: int = 4


KERNELS: dict[str, KernelSpec] = {k.name: k for k in (
    KernelSpec("upstream-7.3", "7.3.4", "source", "linux-source-7.3", "trixie-backports",
               description="Debian's linux-source 7.3.4, lab config (fault injection, zram, PT_RECLAIM)"),
    KernelSpec("lazy-v3-7.3", "7.3.4", "source", "linux-source-7.3", "trixie-backports",
               series="kernel/lazy-pte-v3/port-7.3.4.diff",
               description="7.3.4 + 'mm: thp: lazy PTE page table allocation at PMD split' v3 (port)"),
    KernelSpec("debian-7.3", "7.3.4", "image", "linux-image-7.3.4+deb13-amd64", "trixie-backports",
               description="Debian's prebuilt 7.3.4 amd64 image (no fault injection)"),
    KernelSpec("debian-6.12", "6.12", "image", "linux-image-amd64", "trixie",
               description="Debian trixie's prebuilt 6.12 amd64 image (no fault injection)"),
    KernelSpec("debian-7.2", "7.2", "image", "linux-image-amd64", "sid",
               description="Debian sid's prebuilt 7.2 amd64 image (no fault injection; build fails once sid moves on)"),
    KernelSpec("arm64-16k", "7.3.4", "image", "linux-binary-unsigned-7.3.4+deb13-arm64-16k", "trixie-backports",
               arch="arm64", page_size_kb=16,
               description="Debian's prebuilt 7.3.4 arm64 16K-page image under qemu-system-aarch64 (TCG), "
               "arm64 trixie userspace"),
    KernelSpec("arm64-4k", "7.3.4", "image", "linux-binary-unsigned-7.3.4+deb13-arm64", "trixie-backports",
               arch="arm64", page_size_kb=4,
               description="Debian's prebuilt 7.3.4 arm64 4K-page image under qemu-system-aarch64 (TCG), "
               "arm64 trixie userspace"),
)}


def get_kernel(name: str) -> KernelSpec:
    if name in KERNELS:
        return KERNELS[name]
    known = ", ".join([HOST, *KERNELS])
    raise ThpsimError(f"unknown lab kernel {name!r}; known: {known}")


def shared_dir() -> Path | None:
    """The project's shared/ folder: $THPSIM_SHARED, else ../shared beside the checkout (as CI lays it)."""
    env = os.environ.get("THPSIM_SHARED")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for up in here.parents:
        cand = up.parent / "shared"
        if (up / "pyproject.toml").exists() and cand.is_dir():
            return cand
    return None


def default_series(spec: KernelSpec) -> Path | None:
    if spec.series is None:
        return None
    base = shared_dir()
    path = base / spec.series if base else None
    if path is None or not path.exists():
        raise ThpsimError(f"{spec.name} needs the series {spec.series} from the project's shared/ folder, "
                          "which was not found; set THPSIM_SHARED=/path/to/shared or pass --series DIR|MBOX")
    return path
