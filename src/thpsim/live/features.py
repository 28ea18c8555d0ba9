"""The kernel interfaces the live engine relies on, and the mainline release that introduced each.

:data:`KERNEL_FEATURES` is the table (docs/live.md "Kernel features" renders the same facts); :func:`since`
gives one entry's release for messages, so that a note and the table cannot disagree. Which of these the
running kernel really has is found by probing (:func:`thpsim.live.pagemap.probe_pagemap`, and the files
:func:`thpsim.live.env.detect` reads), never from the version number alone: distribution kernels backport.
The version number is used only to say *why* an op came back ``EINVAL`` (:func:`lacks`). Pure data; nothing
here reads the system or prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KernelFeature:
    key: str
    what: str
    since: str            # first mainline release ("" when not in mainline)
    used_for: str
    without: str          # what the live engine does when the kernel lacks it


KERNEL_FEATURES: tuple[KernelFeature, ...] = (
    KernelFeature("pagemap_scan", "PAGEMAP_SCAN ioctl on /proc/PID/pagemap (PRESENT, SWAPPED, PFNZERO, HUGE)",
                  "6.7", "page-map runs of every observation; access check",
                  "no run: skip_reason() and the reader give one error line naming 6.7"),
    KernelFeature("page_is_guard", "PAGE_IS_GUARD category of PAGEMAP_SCAN", "6.16",
                  "guard runs; access check", "scan without it (it is EINVAL there); guard markers are found in "
                  "the SWAPPED ranges by pagemap bit 58 or by their swap-entry encoding, else not observed"),
    KernelFeature("pm_guard_region", "/proc/PID/pagemap bit 58 (PM_GUARD_REGION)", "6.15",
                  "guard runs before PAGE_IS_GUARD", "swap-entry encoding of the marker (needs root)"),
    KernelFeature("madv_guard", "MADV_GUARD_INSTALL / MADV_GUARD_REMOVE (anonymous)", "6.13",
                  "guard_install / guard_remove ops", "EINVAL from the kernel, recorded with a note"),
    KernelFeature("madv_collapse", "MADV_COLLAPSE", "6.1", "collapse op", "EINVAL, recorded with a note"),
    KernelFeature("madv_dontneed_locked", "MADV_DONTNEED_LOCKED", "5.18", "dontneed_locked op",
                  "EINVAL, recorded with a note"),
    KernelFeature("madv_populate", "MADV_POPULATE_READ / MADV_POPULATE_WRITE", "5.14",
                  "the child's prefault; populate ops", "implied by pagemap_scan"),
    KernelFeature("madv_cold_pageout", "MADV_COLD / MADV_PAGEOUT", "5.4", "cold/pageout ops; LRU drain",
                  "implied by pagemap_scan"),
    KernelFeature("mremap_dontunmap", "MREMAP_DONTUNMAP", "5.7", "mremap dontunmap", "implied by pagemap_scan"),
    KernelFeature("map_fixed_noreplace", "MAP_FIXED_NOREPLACE", "4.17", "mmap fixed_noreplace",
                  "implied by pagemap_scan"),
    KernelFeature("mlock2", "mlock2(MLOCK_ONFAULT)", "4.4", "mlock onfault", "implied by pagemap_scan"),
    KernelFeature("kpageflags", "/proc/kpageflags KPF_THP, KPF_ZERO_PAGE (root, CONFIG_PROC_PAGE_MONITOR)", "4.0",
                  "pte_thp vs pte; huge-zero PMDs where PAGEMAP_SCAN leaves out PFNZERO",
                  "PTE-mapped pages read pte; noted in LiveEnv.notes"),
    KernelFeature("pagemap_pfn", "PFNs in /proc/PID/pagemap (CAP_SYS_ADMIN only)", "4.2",
                  "kpageflags look-ups; guard-marker encoding", "skip_reason() asks for root"),
    KernelFeature("status_rss_anon", "/proc/PID/status RssAnon (with VmPTE, VmRSS, VmLck, VmSwap)", "4.5",
                  "per-process deltas", "implied by pagemap_scan"),
    KernelFeature("smaps_lazyfree", "/proc/PID/smaps LazyFree (with Rss, Anonymous, AnonHugePages, Locked, Swap)",
                  "4.12", "per-VMA values", "implied by pagemap_scan"),
    KernelFeature("mthp_sysfs", "/sys/kernel/mm/transparent_hugepage/hugepages-<size>kB/enabled", "6.8",
                  "LiveEnv.mthp_enabled", "read as no mTHP sizes"),
    KernelFeature("thp_underused_split_page", "vmstat thp_underused_split_page", "6.12", "global deltas",
                  "absent counters read 0 and are listed in LiveEnv.vmstat_missing"),
    KernelFeature("thp_split_pmd_failed", "vmstat thp_split_pmd_failed", "", "has_split_pmd_failed (the lazy-PTE "
                  "series)", "series not applied (the normal upstream case)"),
    KernelFeature("config", "/proc/config.gz (CONFIG_IKCONFIG_PROC) or /boot/config-RELEASE", "",
                  "model knobs CONFIG_PT_RECLAIM (6.14), CONFIG_NO_PAGE_MAPCOUNT (6.15), "
                  "CONFIG_PERSISTENT_HUGE_ZERO_FOLIO (6.18), CONFIG_THP_SWAP, CONFIG_PGTABLE_LEVELS",
                  "knob defaults, noted in LiveEnv.notes"),
)

_BY_KEY = {f.key: f for f in KERNEL_FEATURES}

# the release each madvise advice of syscalls.MADV appeared in (older ones: before 4.4)
MADV_SINCE: dict[str, str] = {
    "free": "4.5", "wipeonfork": "4.14", "keeponfork": "4.14", "cold": "5.4", "pageout": "5.4",
    "populate_read": "5.14", "populate_write": "5.14", "dontneed_locked": "5.18", "collapse": "6.1",
    "guard_install": "6.13", "guard_remove": "6.13",
}


def since(key: str) -> str:
    """The release that introduced ``key`` of :data:`KERNEL_FEATURES` (KeyError for an unknown key)."""
    return _BY_KEY[key].since


def kernel_version(release: str) -> tuple[int, int] | None:
    """(major, minor) of a release string such as '6.12.8-200.fc41.x86_64' or '7.3.0-rc1'; None if unparsable."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def lacks(release: str, version: str) -> bool:
    """Is ``release`` older than ``version`` ('6.13')? False when either cannot be parsed."""
    have, want = kernel_version(release), kernel_version(version)
    return have is not None and want is not None and have < want


__all__ = ["KernelFeature", "KERNEL_FEATURES", "MADV_SINCE", "since", "kernel_version", "lacks"]
