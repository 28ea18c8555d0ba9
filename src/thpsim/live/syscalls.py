"""Linux constants and thin ctypes wrappers for the memory syscalls the live runner issues (x86-64, arm64).

The page and PMD sizes are this kernel's (``sysconf(_SC_PAGESIZE)`` and ``transparent_hugepage/hpage_pmd_size``:
16 KiB and 32 MiB on arm64 with 16K pages). The mmap/madvise values are the generic ones both arches use; the
one syscall number issued directly (mlock2) is per arch. Values checked against include/uapi/asm-generic/mman-common.h, include/uapi/asm-generic/mman.h,
include/uapi/linux/mman.h and include/uapi/linux/fs.h (PAGEMAP_SCAN, PAGE_IS_*). Every wrapper returns
``(result, errno_name)``: ``errno_name`` is ``None`` on success and the errno.errorcode name on failure.
Nothing here prints.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import os
import platform


def _pmd_size(page: int) -> int:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return page * (page // 8)          # PTRS_PER_PTE 8-byte entries fill one page


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PMD_SIZE = _pmd_size(PAGE_SIZE)

# mmap prot / flags (asm-generic/mman-common.h, x86 asm/mman.h)
PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0, 1, 2, 4
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_FIXED_NOREPLACE = 0x100000
MMAP_FLAG_BITS = {"noreserve": MAP_NORESERVE, "populate": MAP_POPULATE, "locked": MAP_LOCKED}

# mremap (uapi/linux/mman.h)
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4

# mlock2 (asm-generic/mman-common.h)
MLOCK_ONFAULT = 0x01

# madvise (asm-generic/mman-common.h)
MADV = {
    "normal": 0, "random": 1, "sequential": 2, "willneed": 3, "dontneed": 4, "free": 8,
    "dontfork": 10, "dofork": 11, "hugepage": 14, "nohugepage": 15, "wipeonfork": 18, "keeponfork": 19,
    "cold": 20, "pageout": 21, "populate_read": 22, "populate_write": 23, "dontneed_locked": 24,
    "collapse": 25, "guard_install": 102, "guard_remove": 103,
}

# PAGEMAP_SCAN (uapi/linux/fs.h): _IOWR('f', 16, struct pm_scan_arg), sizeof(struct pm_scan_arg) == 96
PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7
PAGE_IS_GUARD = 1 << 8  # 6.16+ (EINVAL in a mask before: see pagemap.probe_pagemap)


class PmScanArg(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages", "category_inverted",
        "category_mask", "category_anyof_mask", "return_mask")]


class PageRegion(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


def _ioc(direction: int, typ: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (typ << 8) | nr


PAGEMAP_SCAN = _ioc(3, ord("f"), 16, ctypes.sizeof(PmScanArg))  # 0xc0606610

# /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
PM_PFN_MASK = (1 << 55) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_GUARD_REGION = 1 << 58  # 6.15+
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63

# /proc/kpageflags bits (uapi/linux/kernel-page-flags.h)
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_HUGE = 17
KPF_THP = 22
KPF_ZERO_PAGE = 24

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                             ctypes.c_long]
        lib.mremap.restype = ctypes.c_void_p
        lib.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
        for name in ("munmap", "mlock", "munlock"):
            getattr(lib, name).restype = ctypes.c_int
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.mprotect.restype = ctypes.c_int
        lib.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        lib.madvise.restype = ctypes.c_int
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        lib.syscall.restype = ctypes.c_long
        lib.ioctl.restype = ctypes.c_int
        lib.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        lib.memset.restype = ctypes.c_void_p
        lib.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
        _libc = lib
    return _libc


# the only syscall issued by number (glibc before 2.27 has no mlock2 wrapper): arch/x86/entry/syscalls/
# syscall_64.tbl and include/uapi/asm-generic/unistd.h (arm64, riscv64)
SYS_MLOCK2 = {"x86_64": 325, "aarch64": 284, "riscv64": 284}.get(platform.machine(), 325)
MAP_FAILED = ctypes.c_void_p(-1).value

# userfaultfd (uapi/linux/userfaultfd.h; WP_ASYNC and WP_UNPOPULATED are 6.7+)
SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282, "riscv64": 282}.get(platform.machine(), 323)
UFFD_USER_MODE_ONLY = 1
UFFD_API = 0xAA
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0


class UffdioApi(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class UffdioRange(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class UffdioRegister(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class UffdioWriteprotect(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64)]


UFFDIO_API = _ioc(3, UFFD_API, 0x3F, ctypes.sizeof(UffdioApi))                 # 0xc018aa3f
UFFDIO_REGISTER = _ioc(3, UFFD_API, 0x00, ctypes.sizeof(UffdioRegister))       # 0xc020aa00
UFFDIO_UNREGISTER = _ioc(2, UFFD_API, 0x01, ctypes.sizeof(UffdioRange))        # 0x8010aa01
UFFDIO_WRITEPROTECT = _ioc(3, UFFD_API, 0x06, ctypes.sizeof(UffdioWriteprotect))  # 0xc018aa06


def _err() -> str:
    e = ctypes.get_errno()
    return _errno.errorcode.get(e, f"E{e}")


def mmap(addr: int, length: int, prot: int, flags: int) -> tuple[int, str | None]:
    r = libc().mmap(addr, length, prot, flags, -1, 0)
    if r is None or r == MAP_FAILED:
        return -1, _err()
    return int(r), None


def mremap(old: int, old_len: int, new_len: int, flags: int, new_addr: int = 0) -> tuple[int, str | None]:
    r = libc().mremap(old, old_len, new_len, flags, new_addr)
    if r is None or r == MAP_FAILED:
        return -1, _err()
    return int(r), None


def _int_call(fn: str, *args: int) -> tuple[int, str | None]:
    r = getattr(libc(), fn)(*args)
    return (r, None) if r == 0 else (r, _err())


def munmap(addr: int, length: int) -> tuple[int, str | None]:
    return _int_call("munmap", addr, length)


def mprotect(addr: int, length: int, prot: int) -> tuple[int, str | None]:
    return _int_call("mprotect", addr, length, prot)


def madvise(addr: int, length: int, advice: int) -> tuple[int, str | None]:
    return _int_call("madvise", addr, length, advice)


def mlock(addr: int, length: int, onfault: bool = False) -> tuple[int, str | None]:
    if not onfault:
        return _int_call("mlock", addr, length)
    r = libc().syscall(ctypes.c_long(SYS_MLOCK2), ctypes.c_ulong(addr), ctypes.c_size_t(length),
                       ctypes.c_uint(MLOCK_ONFAULT))
    return (0, None) if r == 0 else (int(r), _err())


def munlock(addr: int, length: int) -> tuple[int, str | None]:
    return _int_call("munlock", addr, length)


def pagemap_scan(fd: int, start: int, end: int, *, anyof: int, ret_mask: int,
                 max_regions: int = 4096) -> list[tuple[int, int, int]]:
    """Run PAGEMAP_SCAN (get only, never write-protects) on an open pagemap fd; returns (start, end, cats).

    Loops until the whole [start, end) has been walked. Raises OSError on failure: ENOTTY before 6.7 (no ioctl),
    EINVAL for a category bit the kernel does not know (PAGE_IS_SOFT_DIRTY before 6.8, PAGE_IS_GUARD before 6.16).
    """
    out: list[tuple[int, int, int]] = []
    vec = (PageRegion * max_regions)()
    pos = start
    while pos < end:
        arg = PmScanArg(size=ctypes.sizeof(PmScanArg), flags=0, start=pos, end=end, walk_end=0,
                        vec=ctypes.addressof(vec), vec_len=max_regions, max_pages=0, category_inverted=0,
                        category_mask=0, category_anyof_mask=anyof, return_mask=ret_mask)
        n = libc().ioctl(fd, PAGEMAP_SCAN, ctypes.byref(arg))
        if n < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"PAGEMAP_SCAN failed: {_errno.errorcode.get(e, e)}")
        for i in range(n):
            out.append((int(vec[i].start), int(vec[i].end), int(vec[i].categories)))
        if arg.walk_end <= pos:
            break
        pos = int(arg.walk_end)
    return out


def userfaultfd_wp_async() -> tuple[int, str | None]:
    """A userfaultfd for this process (user faults only), API handshake with UFFD_FEATURE_WP_ASYNC: write faults
    on write-protected pages resolve themselves. ``(fd, None)`` or ``(-1, errno name)`` (EINVAL: the kernel
    lacks WP_ASYNC, before 6.7)."""
    fd = int(libc().syscall(ctypes.c_long(SYS_USERFAULTFD), ctypes.c_int(os.O_CLOEXEC | UFFD_USER_MODE_ONLY)))
    if fd < 0:
        return -1, _err()
    api = UffdioApi(UFFD_API, UFFD_FEATURE_WP_ASYNC, 0)
    if libc().ioctl(fd, UFFDIO_API, ctypes.byref(api)) != 0:
        e = _err()
        os.close(fd)
        return -1, e
    return fd, None


def uffdio_register_wp(fd: int, addr: int, length: int) -> tuple[int, str | None]:
    arg = UffdioRegister(UffdioRange(addr, length), UFFDIO_REGISTER_MODE_WP, 0)
    return (0, None) if libc().ioctl(fd, UFFDIO_REGISTER, ctypes.byref(arg)) == 0 else (-1, _err())


def uffdio_unregister(fd: int, addr: int, length: int) -> tuple[int, str | None]:
    arg = UffdioRange(addr, length)
    return (0, None) if libc().ioctl(fd, UFFDIO_UNREGISTER, ctypes.byref(arg)) == 0 else (-1, _err())


def uffdio_writeprotect(fd: int, addr: int, length: int) -> tuple[int, str | None]:
    arg = UffdioWriteprotect(UffdioRange(addr, length), UFFDIO_WRITEPROTECT_MODE_WP)
    return (0, None) if libc().ioctl(fd, UFFDIO_WRITEPROTECT, ctypes.byref(arg)) == 0 else (-1, _err())
