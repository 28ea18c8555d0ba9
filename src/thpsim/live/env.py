"""What the running kernel offers and how it is configured (read only: sysfs, /proc, /proc/config.gz).

:func:`detect` returns a frozen :class:`LiveEnv`; :meth:`LiveEnv.knobs` turns it into the model's
:class:`~thpsim.model.knobs.Knobs`; :func:`skip_reason` tells tests why the live engine cannot run here.

Kernel features (table: :data:`thpsim.live.features.KERNEL_FEATURES`) are detected, not inferred from the
release: the pagemap interfaces by :func:`thpsim.live.pagemap.probe_pagemap` (one private page of this
process, mapped, scanned, guarded and unmapped), the rest by which files and counters exist. What the live
engine must do without is listed in :attr:`LiveEnv.notes` (:func:`feature_notes`), and the runner copies those
notes onto the first step of every run; :func:`op_notes` explains an op the kernel does not know (``EINVAL``).
Nothing here writes anything (the probe page is this process's own) or prints.
"""

from __future__ import annotations

import gzip
import os
import platform
import re
from dataclasses import dataclass

from thpsim.live import features as F
from thpsim.live import syscalls as S
from thpsim.live.pagemap import PagemapFeatures, no_scan_message, pagemap_features
from thpsim.model.arch import resolve_arch
from thpsim.model.knobs import Knobs
from thpsim.observation import VMSTAT_FIELDS
from thpsim.trace.geometry import Geometry

THP_DIR = "/sys/kernel/mm/transparent_hugepage"
CONFIG_OPTIONS = ("CONFIG_PT_RECLAIM", "CONFIG_PERSISTENT_HUGE_ZERO_FOLIO", "CONFIG_PGTABLE_LEVELS",
                  "CONFIG_THP_SWAP", "CONFIG_NO_PAGE_MAPCOUNT", "CONFIG_TRANSPARENT_HUGEPAGE")
PMD_SIZE_KB = S.PMD_SIZE // 1024
LIVE_MACHINES = ("x86_64", "aarch64")
# Behaviour the model follows per release, measured on both sides: 6.12 (debian-6.12 lab guest) behaves the old
# way, 6.18 (this host) and 7.3.4 (lab guests) the new way; which release in between changed is not measured,
# so 6.13-6.17 are treated like 6.12 and say so in LiveEnv.notes (docs/findings.md L13).
NEW_BEHAVIOUR_MEASURED = "6.18"
PR_SET_THP_DISABLE, PR_GET_THP_DISABLE = 41, 42
OLD_BEHAVIOUR_MEASURED = "6.12"     # where the live runner's syscall numbers and arena layout are known


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


def _config() -> tuple[dict[str, str], str | None]:
    """The kernel config and where it came from (None: not available)."""
    try:
        with gzip.open("/proc/config.gz", "rt", encoding="ascii", errors="replace") as f:
            return parse_config(f.read()), "/proc/config.gz"
    except OSError:
        pass
    path = f"/boot/config-{platform.release()}"
    text = _read(path)
    return (parse_config(text), path) if text else ({}, None)


def _readable(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY))
        return True
    except OSError:
        return False


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
    # probed pagemap features (PagemapFeatures, kept flat so that the record stays plain JSON: lab/remote.py)
    pagemap_scan_error: str | None = None      # errno name of the failed PAGEMAP_SCAN (ENOTTY: before 6.7)
    scan_guard: bool = False                   # PAGEMAP_SCAN takes PAGE_IS_GUARD (6.16+)
    guard_ops: bool = False                    # MADV_GUARD_INSTALL / REMOVE work (6.13+)
    pagemap_guard_bit: bool = False            # pagemap bit 58 marks guard markers (6.15+)
    guard_marker_frame: int = 0                # pagemap bits 0-54 of a guard marker (0: unknown)
    kpageflags: bool = False                   # /proc/kpageflags readable
    config_source: str | None = None           # where `config` came from (None: unknown)
    vmstat_missing: tuple[str, ...] = ()       # VMSTAT_FIELDS absent from /proc/vmstat (their deltas read 0)
    notes: tuple[str, ...] = ()                # what the live engine does without, and how (feature_notes)
    collapse_small_einval: bool = True         # MADV_COLLAPSE of a range with no whole PMD: EINVAL (6.18) or 0 (7.3)
    page_size: int = 4096                      # sysconf(_SC_PAGESIZE)
    pmd_size: int = 2 << 20                    # transparent_hugepage/hpage_pmd_size
    arch_profile: str | None = "x86_64"        # the model's arch profile for this machine (None: none fits)

    @property
    def geometry(self) -> Geometry:
        """This kernel's page and PMD size: traces are mapped onto it (thpsim.trace.geometry)."""
        return Geometry(self.page_size, self.pmd_size)

    @property
    def pagemap(self) -> PagemapFeatures:
        """The probed pagemap features, as the reader and the runner take them."""
        return PagemapFeatures(scan=self.pagemap_scan, scan_guard=self.scan_guard, guard_install=self.guard_ops,
                               pagemap_guard_bit=self.pagemap_guard_bit, guard_marker_frame=self.guard_marker_frame,
                               scan_error=self.pagemap_scan_error)

    def cfg(self, name: str) -> str | None:
        return dict(self.config).get(name)

    def cfg_bool(self, name: str, default: bool) -> bool:
        """A CONFIG_* bool: ``default`` when the config is unknown; not set when the config is known but lacks it
        (an option of a later release, or one whose dependencies are not met)."""
        v = self.cfg(name)
        if v is None:
            return default if self.config_source is None else False
        return v in ("y", "m")

    def knobs(self) -> Knobs:
        """The model knobs matching this kernel."""
        kh = dict(self.khugepaged)
        mode = self.thp_enabled if self.thp_enabled in ("always", "madvise", "never") else "never"
        return Knobs(
            thp_enabled=mode,
            thp_defrag=self.thp_defrag or "madvise",
            use_zero_page=bool(self.use_zero_page),
            pt_reclaim=self.cfg_bool("CONFIG_PT_RECLAIM", False),
            max_ptes_none=kh.get("max_ptes_none"),
            max_ptes_swap=kh.get("max_ptes_swap"),
            max_ptes_shared=kh.get("max_ptes_shared"),
            swap=self.swap_present,
            thp_swap=self.cfg_bool("CONFIG_THP_SWAP", True),
            pgtable_levels=self.pgtable_levels_runtime,
            persistent_huge_zero=self.cfg_bool("CONFIG_PERSISTENT_HUGE_ZERO_FOLIO", False),
            huge_zero_allocated=self.huge_zero_allocated,
            no_page_mapcount=self.cfg_bool("CONFIG_NO_PAGE_MAPCOUNT", False),
            madv_guard=self.guard_ops,
            collapse_small_einval=self.collapse_small_einval,
            collapse_needs_writable=self.old_behaviour,
            huge_zero_wp_thp=not self.old_behaviour,
            pte_batch_unmap=not self.old_behaviour,
            lazyfree_pmd_discard=lazyfree_pmd_discard(self.kernel_release),
        )

    @property
    def old_behaviour(self) -> bool:
        """6.12's collapse, huge-zero write fault and unmap batching (see NEW_BEHAVIOUR_MEASURED)."""
        return F.lacks(self.kernel_release, NEW_BEHAVIOUR_MEASURED)


def feature_notes(release: str, pm: PagemapFeatures, *, kpageflags: bool = True,
                  config_source: str | None = "/proc/config.gz", vmstat_missing: tuple[str, ...] = ()) -> tuple[str, ...]:
    """One line per kernel feature the live engine has to do without, and what it does instead."""
    k = f"kernel {release}"
    out: list[str] = []
    if not pm.scan:
        out.append(no_scan_message(pm, release))
    if not pm.guard_install:
        out.append(f"{k} has no MADV_GUARD_INSTALL/REMOVE ({F.since('madv_guard')}+): guard ops come back EINVAL")
    if pm.scan and not pm.scan_guard:
        head = f"{k} has no PAGE_IS_GUARD ({F.since('page_is_guard')}+)"
        if not pm.guard_install:
            out.append(f"{head}: guard regions are not observed (none can be installed)")
        elif pm.pagemap_guard_bit:
            out.append(f"{head}: guard markers are found in the swapped ranges by pagemap bit 58 (PM_GUARD_REGION, "
                       f"{F.since('pm_guard_region')}+)")
        elif pm.guard_marker_frame:
            out.append(f"{head} and no pagemap guard bit ({F.since('pm_guard_region')}+): guard markers are told "
                       f"from swap entries by their pagemap encoding (swap type {pm.guard_marker_frame & 31}, "
                       f"offset {pm.guard_marker_frame >> 5})")
        else:
            out.append(f"{head} and no pagemap guard bit ({F.since('pm_guard_region')}+): guard regions are not "
                       "observed (they read as swap runs, and an access to one kills the trace process)")
    if not kpageflags:
        out.append("/proc/kpageflags is not readable (root and CONFIG_PROC_PAGE_MONITOR): PTE-mapped pages of a THP "
                   "read pte, not pte_thp")
    if config_source is None:
        out.append(f"the config of {k} is unknown (no /proc/config.gz, no /boot/config-{release}): the model knobs "
                   "use their defaults for " + ", ".join(o for o in CONFIG_OPTIONS if o != "CONFIG_PGTABLE_LEVELS"))
    missing = [m for m in vmstat_missing if m != "thp_split_pmd_failed"]   # that one marks the lazy-PTE series
    if missing:
        out.append(f"/proc/vmstat of {k} has no {', '.join(missing)}: their deltas read 0")
    return tuple(out)


def lazyfree_pmd_discard(release: str) -> bool:
    """Does reclaim discard a clean PMD-mapped lazyfree THP whole (Knobs.lazyfree_pmd_discard)? From 6.15
    (Barry Song's "mm: Avoid splitting pmd for lazyfree pmd-mapped THP in try_to_unmap") until the stable fix
    "mm/rmap: don't discard lazyfree THPs at PMD level" (7.3.2; the host's 6.18.44 has it too). Measured: 7.2.13
    yes; 6.12, 6.18.44, 7.3.4 no (docs/findings.md L14). 6.15-6.17 and 7.0-7.1 follow 7.2; early 6.18.y are
    unmeasured and follow 6.18.44."""
    return not F.lacks(release, "6.15") and (F.lacks(release, "6.18") or
                                             (not F.lacks(release, "7.0") and F.lacks(release, "7.3")))


def behaviour_notes(release: str) -> tuple[str, ...]:
    """A note where the model's per-release behaviour (LiveEnv.old_behaviour, lazyfree_pmd_discard) is a guess,
    not a measurement."""
    out: list[str] = []
    if F.lacks(release, NEW_BEHAVIOUR_MEASURED) and not F.lacks(release, "6.13"):
        out.append(f"kernel {release}: the model follows 6.12 for the collapse writable rule, the huge-zero write "
                   f"fault and PTE-batched unmapping (measured on {OLD_BEHAVIOUR_MEASURED} and "
                   f"{NEW_BEHAVIOUR_MEASURED}; releases in between are not)")
    if lazyfree_pmd_discard(release) and F.kernel_version(release) != (7, 2):
        out.append(f"kernel {release}: the model discards a clean lazyfree THP at PMD level, as measured on 7.2.13 "
                   "(releases 6.15-6.17 and 7.0-7.1 are not measured; a stable backport of \"mm/rmap: don't "
                   "discard lazyfree THPs at PMD level\" would make them split first)")
    return tuple(out)


def op_notes(kind: str, advice: str | None, result: object, pm: PagemapFeatures,
             release: str | None = None) -> tuple[str, ...]:
    """Notes for one live op whose outcome depends on a kernel feature (an advice the kernel lacks, a guard
    region it cannot show)."""
    if kind != "madvise" or not advice:
        return ()
    rel = release or platform.release()
    name = f"MADV_{advice.upper()}"
    if advice in ("guard_install", "guard_remove"):
        if result == "EINVAL" and not pm.guard_install:
            return (f"{name} is not in kernel {rel} ({F.since('madv_guard')}+): EINVAL",)
        if result == 0 and advice == "guard_install" and not pm.guards_visible:
            return (f"kernel {rel} cannot report guard markers (PAGE_IS_GUARD {F.since('page_is_guard')}+, pagemap "
                    f"bit 58 {F.since('pm_guard_region')}+): this guard region is missing from the page map",)
        return ()
    want = F.MADV_SINCE.get(advice)
    if result == "EINVAL" and want and F.lacks(rel, want):
        return (f"{name} is not in kernel {rel} ({want}+): EINVAL",)
    return ()


def detect(pagemap: PagemapFeatures | None = None) -> LiveEnv:
    """Describe this kernel. ``pagemap`` replaces the probed pagemap features (tests simulate other kernels)."""
    pm = pagemap if pagemap is not None else pagemap_features()
    release = platform.release()
    enabled = selected(_read(f"{THP_DIR}/enabled"))
    shmem = selected(_read(f"{THP_DIR}/shmem_enabled"))
    uzp = _read(f"{THP_DIR}/use_zero_page")
    mthp = _mthp_settings()
    cfg, config_source = _config()
    vm = _vmstat()
    levels = _pgtable_levels(cfg)
    machine = platform.machine()
    profile, how = resolve_arch(machine, S.PMD_SIZE if enabled is not None else 0, S.PAGE_SIZE, None)
    unsupported = (_unsupported_thp(mthp, enabled, shmem) + _unsupported_arch(machine, profile is None, how)
                   + (["5-level paging at run time: the arena shares its P4D/PGD slot layout differently"]
                      if levels == 5 else []))
    vm_missing = tuple(k for k in VMSTAT_FIELDS if vm and k not in vm)
    kpf = _readable("/proc/kpageflags")
    return LiveEnv(
        kernel_release=release,
        arch=platform.machine(),
        thp_available=enabled is not None and enabled != "never",
        is_root=os.geteuid() == 0,
        thp_enabled=enabled,
        thp_defrag=selected(_read(f"{THP_DIR}/defrag")),
        use_zero_page=None if uzp is None else uzp.strip() == "1",
        shmem_enabled=shmem,
        mthp_enabled=tuple(mthp),
        khugepaged=_khugepaged_settings(),
        swap_present=_has_swap(),
        config=tuple(sorted((k, cfg[k]) for k in CONFIG_OPTIONS if k in cfg)),
        pgtable_levels_runtime=levels,
        has_split_pmd_failed="thp_split_pmd_failed" in vm,
        huge_zero_allocated=vm.get("thp_zero_page_alloc", 0) > 0,
        pagemap_scan=pm.scan,
        unsupported=tuple(unsupported),
        pagemap_scan_error=pm.scan_error,
        scan_guard=pm.scan_guard,
        guard_ops=pm.guard_install,
        pagemap_guard_bit=pm.pagemap_guard_bit,
        guard_marker_frame=pm.guard_marker_frame,
        kpageflags=kpf,
        config_source=config_source,
        vmstat_missing=vm_missing,
        notes=feature_notes(release, pm, kpageflags=kpf, config_source=config_source, vmstat_missing=vm_missing)
        + behaviour_notes(release),
        collapse_small_einval=probe_collapse_small_range() == "EINVAL",
        page_size=S.PAGE_SIZE,
        pmd_size=S.PMD_SIZE,
        arch_profile=profile.name if profile else None,
    )


def _mthp_settings() -> list[tuple[str, str]]:
    """(size, enabled) of every anonymous mTHP size, smallest first: ``hugepages-<size>kB/enabled``."""
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
    return mthp


def _khugepaged_settings() -> tuple[tuple[str, int], ...]:
    """The numeric ``khugepaged/*`` tunables that exist on this kernel."""
    kh: list[tuple[str, int]] = []
    for k in ("max_ptes_none", "max_ptes_swap", "max_ptes_shared", "pages_to_scan", "scan_sleep_millisecs",
              "alloc_sleep_millisecs", "defrag"):
        v = _read(f"{THP_DIR}/khugepaged/{k}")
        if v is not None and v.isdigit():
            kh.append((k, int(v)))
    return tuple(kh)


def _pgtable_levels(cfg: dict[str, str]) -> int:
    """Page-table levels in use: 4, unless an x86-64 kernel built for 5 levels runs with them."""
    if platform.machine() == "x86_64" and cfg.get("CONFIG_PGTABLE_LEVELS") == "5":
        return _runtime_levels()
    return 4


def _unsupported_thp(mthp: list[tuple[str, str]], enabled: str | None, shmem: str | None) -> list[str]:
    """THP settings the model has no counterpart for: enabled mTHP sizes other than the PMD's, shmem THPs."""
    out: list[str] = []
    for size, setting in mthp:
        effective = enabled if setting == "inherit" else setting
        if size != f"{PMD_SIZE_KB}kB" and effective not in (None, "never"):
            out.append(f"mTHP hugepages-{size} enabled={setting}: the model only has PMD-sized THPs")
    if shmem not in (None, "never", "deny"):
        out.append(f"shmem_enabled={shmem}: the model does not model shmem THPs (the arena is anonymous)")
    return out


def _unsupported_arch(machine: str, no_profile: bool, how: str) -> list[str]:
    """A machine the live runner has no syscall numbers for, or no arch profile fits."""
    if machine not in LIVE_MACHINES:
        return [f"arch {machine}: the live runner knows the syscalls of {', '.join(LIVE_MACHINES)} only"]
    if no_profile:
        return [f"arch {machine}: {how}"]
    return []


def probe_collapse_small_range() -> str | None:
    """What MADV_COLLAPSE returns for a one-page range inside a fresh two-PMD anonymous mapping of this process
    (madvise_collapse's ``hstart >= hend`` case: EINVAL on 6.18, 0 on Debian's 7.3.4); None: 0. The mapping is
    this process's own (its first page is written) and is unmapped again."""
    import ctypes

    size, page = 2 * S.PMD_SIZE, S.PAGE_SIZE
    # a lab guest runs thpsim's own processes with PR_SET_THP_DISABLE (thpsim.lab.guest_init): MADV_COLLAPSE
    # would be EINVAL for that reason alone, so the probe lifts it for its duration, as the trace child does
    libc = S.libc()
    disabled = libc.prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1
    if disabled:
        libc.prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0)
    try:
        addr, err = S.mmap(0, size, S.PROT_READ | S.PROT_WRITE, S.MAP_PRIVATE | S.MAP_ANONYMOUS)
        if err:
            return None
        try:
            ctypes.memset(addr, 1, page)      # an anon_vma: without one both kernels say EINVAL
            return S.madvise(addr + page, page, S.MADV["collapse"])[1]
        finally:
            S.munmap(addr, size)
    finally:
        if disabled:
            libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)


def skip_reason(env: LiveEnv | None = None) -> str | None:
    """Why the live engine cannot run here (for tests and the CLI), or None."""
    e = env or detect()
    if e.arch not in LIVE_MACHINES:
        return f"the live engine needs {' or '.join(LIVE_MACHINES)} (this is {e.arch})"
    if e.arch_profile is None:
        return f"no thpsim arch profile fits this {e.arch} kernel ({e.page_size}-byte pages, {e.pmd_size}-byte PMD)"
    if e.thp_enabled is None:
        return f"THP is not available: {THP_DIR}/enabled does not exist"
    if not e.thp_available:
        return f"THP is not available: {THP_DIR}/enabled is [{e.thp_enabled}]"
    if not e.is_root:
        return "not root: PFNs in /proc/PID/pagemap and /proc/kpageflags need CAP_SYS_ADMIN"
    if not e.pagemap_scan:
        return no_scan_message(e.pagemap, e.kernel_release)
    return None


__all__ = ["LiveEnv", "detect", "skip_reason", "selected", "parse_config", "feature_notes", "op_notes"]
