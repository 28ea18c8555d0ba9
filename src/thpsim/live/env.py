"""What the running kernel offers and how it is configured (read only: sysfs, /proc, /proc/config.gz).

:func:`detect` returns a frozen :class:`LiveEnv`; :meth:`LiveEnv.knobs` turns it into the model's
:class:`~thpsim.model.knobs.Knobs`; :func:`skip_reason` tells tests why the live engine cannot run here.
Nothing here writes anything or prints.
"""

from __future__ import annotations

import gzip
import os
import platform
import re
from dataclasses import dataclass

from thpsim.model.knobs import Knobs

THP_DIR = "/sys/kernel/mm/transparent_hugepage"
CONFIG_OPTIONS = ("CONFIG_PT_RECLAIM", "CONFIG_PERSISTENT_HUGE_ZERO_FOLIO", "CONFIG_PGTABLE_LEVELS",
                  "CONFIG_THP_SWAP", "CONFIG_NO_PAGE_MAPCOUNT", "CONFIG_TRANSPARENT_HUGEPAGE")
PMD_SIZE_KB = 2048


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def selected(text: str | None) -> str | None:
    """The bracketed choice of a sysfs selector ('always [madvise] never' -> 'madvise')."""
    if text is None:
        return None
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text.strip()


def parse_config(text: str) -> dict[str, str]:
    """Parse kernel .config text; '# CONFIG_X is not set' gives 'n'."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip('"')
            continue
        m = re.match(r"^# (CONFIG_\w+) is not set", line)
        if m:
            out[m.group(1)] = "n"
    return out


def _config() -> dict[str, str]:
    try:
        with gzip.open("/proc/config.gz", "rt", encoding="ascii", errors="replace") as f:
            return parse_config(f.read())
    except OSError:
        pass
    text = _read(f"/boot/config-{platform.release()}")
    return parse_config(text) if text else {}


def _vmstat() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read("/proc/vmstat") or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _has_swap() -> bool:
    lines = (_read("/proc/swaps") or "").splitlines()
    return len(lines) > 1


def _runtime_levels() -> int:
    # x86 clears X86_FEATURE_LA57 when 5-level paging is not in use (no5lvl, or no CPU support), so the
    # cpuinfo flag tells the run-time paging depth of a CONFIG_PGTABLE_LEVELS=5 kernel.
    return 5 if re.search(r"\bla57\b", _read("/proc/cpuinfo") or "") else 4


@dataclass(frozen=True)
class LiveEnv:
    kernel_release: str
    arch: str
    thp_available: bool
    is_root: bool
    thp_enabled: str | None
    thp_defrag: str | None
    use_zero_page: bool | None
    shmem_enabled: str | None
    mthp_enabled: tuple[tuple[str, str], ...]        # (size like "64kB", setting)
    khugepaged: tuple[tuple[str, int], ...]         # max_ptes_none/_swap/_shared, pages_to_scan, ...
    swap_present: bool
    config: tuple[tuple[str, str], ...]              # CONFIG_* of interest ("n" when not set, absent if unknown)
    pgtable_levels_runtime: int
    has_split_pmd_failed: bool
    huge_zero_allocated: bool
    pagemap_scan: bool
    unsupported: tuple[str, ...]

    def cfg(self, name: str) -> str | None:
        return dict(self.config).get(name)

    def cfg_bool(self, name: str, default: bool) -> bool:
        v = self.cfg(name)
        return default if v is None else v in ("y", "m")

    def knobs(self) -> Knobs:
        """The model knobs matching this kernel."""
        kh = dict(self.khugepaged)
        mode = self.thp_enabled if self.thp_enabled in ("always", "madvise", "never") else "never"
        return Knobs(
            thp_enabled=mode,
            thp_defrag=self.thp_defrag or "madvise",
            use_zero_page=bool(self.use_zero_page),
            pt_reclaim=self.cfg_bool("CONFIG_PT_RECLAIM", False),
            max_ptes_none=kh.get("max_ptes_none", 511),
            max_ptes_swap=kh.get("max_ptes_swap", 64),
            max_ptes_shared=kh.get("max_ptes_shared", 256),
            swap=self.swap_present,
            thp_swap=self.cfg_bool("CONFIG_THP_SWAP", True),
            pgtable_levels=self.pgtable_levels_runtime,
            persistent_huge_zero=self.cfg_bool("CONFIG_PERSISTENT_HUGE_ZERO_FOLIO", False),
            huge_zero_allocated=self.huge_zero_allocated,
            no_page_mapcount=self.cfg_bool("CONFIG_NO_PAGE_MAPCOUNT", False),
        )


def detect() -> LiveEnv:
    enabled_raw = _read(f"{THP_DIR}/enabled")
    enabled = selected(enabled_raw)
    defrag = selected(_read(f"{THP_DIR}/defrag"))
    uzp = _read(f"{THP_DIR}/use_zero_page")
    shmem = selected(_read(f"{THP_DIR}/shmem_enabled"))
    mthp: list[tuple[str, str]] = []
    try:
        names = sorted(os.listdir(THP_DIR))
    except OSError:
        names = []
    for n in names:
        m = re.fullmatch(r"hugepages-(\d+)kB", n)
        setting = selected(_read(f"{THP_DIR}/{n}/enabled")) if m else None
        if m and setting is not None:  # sizes with only shmem_enabled (e.g. order 1) have no anon setting
            mthp.append((f"{m.group(1)}kB", setting))
    mthp.sort(key=lambda x: int(x[0][:-2]))
    kh: list[tuple[str, int]] = []
    for k in ("max_ptes_none", "max_ptes_swap", "max_ptes_shared", "pages_to_scan", "scan_sleep_millisecs",
              "alloc_sleep_millisecs", "defrag"):
        v = _read(f"{THP_DIR}/khugepaged/{k}")
        if v is not None and v.isdigit():
            kh.append((k, int(v)))
    cfg = _config()
    config = tuple(sorted((k, cfg[k]) for k in CONFIG_OPTIONS if k in cfg))
    vm = _vmstat()
    levels = 4
    if platform.machine() == "x86_64" and cfg.get("CONFIG_PGTABLE_LEVELS") == "5":
        levels = _runtime_levels()
    unsupported: list[str] = []
    for size, setting in mthp:
        effective = enabled if setting == "inherit" else setting
        if size != f"{PMD_SIZE_KB}kB" and effective not in (None, "never"):
            unsupported.append(f"mTHP hugepages-{size} enabled={setting}: the model only has PMD-sized THPs")
    if shmem not in (None, "never", "deny"):
        unsupported.append(f"shmem_enabled={shmem}: the model does not model shmem THPs (the arena is anonymous)")
    if platform.machine() != "x86_64":
        unsupported.append(f"arch {platform.machine()}: the live runner is validated on x86_64 only")
    if levels == 5:
        unsupported.append("5-level paging at run time: the arena shares its P4D/PGD slot layout differently")
    thp_ok = enabled is not None and enabled != "never"
    return LiveEnv(
        kernel_release=platform.release(),
        arch=platform.machine(),
        thp_available=thp_ok,
        is_root=os.geteuid() == 0,
        thp_enabled=enabled,
        thp_defrag=defrag,
        use_zero_page=None if uzp is None else uzp.strip() == "1",
        shmem_enabled=shmem,
        mthp_enabled=tuple(mthp),
        khugepaged=tuple(kh),
        swap_present=_has_swap(),
        config=config,
        pgtable_levels_runtime=levels,
        has_split_pmd_failed="thp_split_pmd_failed" in vm,
        huge_zero_allocated=vm.get("thp_zero_page_alloc", 0) > 0,
        pagemap_scan=_kernel_at_least(platform.release(), (6, 7)),
        unsupported=tuple(unsupported),
    )


def _kernel_at_least(release: str, want: tuple[int, int]) -> bool:
    m = re.match(r"(\d+)\.(\d+)", release)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= want


def skip_reason(env: LiveEnv | None = None) -> str | None:
    """Why the live engine cannot run here (for tests and the CLI), or None."""
    e = env or detect()
    if e.arch != "x86_64":
        return f"the live engine needs x86_64 (this is {e.arch})"
    if e.thp_enabled is None:
        return f"THP is not available: {THP_DIR}/enabled does not exist"
    if not e.thp_available:
        return f"THP is not available: {THP_DIR}/enabled is [{e.thp_enabled}]"
    if not e.is_root:
        return "not root: PFNs in /proc/PID/pagemap and /proc/kpageflags need CAP_SYS_ADMIN"
    if not e.pagemap_scan:
        return f"kernel {e.kernel_release} has no PAGEMAP_SCAN ioctl (needs 6.7+)"
    return None


__all__ = ["LiveEnv", "detect", "skip_reason", "selected", "parse_config"]
