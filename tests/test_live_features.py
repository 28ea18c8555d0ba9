"""Kernel-feature detection and fallbacks of the live engine (thpsim.live.features / pagemap / env / runner).

Older kernels are simulated: :class:`FakeKernel` answers the probe like a given release would (EINVAL for
PAGE_IS_GUARD before 6.16, EINVAL for MADV_GUARD_INSTALL before 6.13, ENOTTY for PAGEMAP_SCAN before 6.7), and
readers get fake scan results. The tests marked ``live`` run short traces on this kernel with simulated older
features and check that the fallbacks see the same pages as the native path.
"""

from __future__ import annotations

import dataclasses
import errno
import re

import pytest

from thpsim.errors import ProcError
from thpsim.live import features as F
from thpsim.live import syscalls as S
from thpsim.live.env import detect, feature_notes, op_notes, skip_reason
from thpsim.live.pagemap import PagemapFeatures, PagemapReader, no_scan_message, probe_pagemap, split_guards
from thpsim.observation import Run

P = S.PAGE_SIZE
MARKER = 31 | (4 << 5)        # swap type 31 (SWP_PTE_MARKER), offset PTE_MARKER_GUARD: what this host shows
SWAP_ENTRY = S.PM_SWAP | 1 | (1234 << 5)   # a real swap entry (swap file 1)


class FakeKernel:
    """A probe target answering like kernel ``version`` on one page at ``addr``."""

    def __init__(self, version: tuple[int, int], *, root: bool = True, report_guard: bool = True) -> None:
        self.version, self.root, self.report_guard = version, root, report_guard
        self.addr = 0x7F0000000000
        self.guarded = False
        self.calls: list[tuple[str, int]] = []

    def scan(self, anyof: int, ret_mask: int) -> list[tuple[int, int, int]]:
        self.calls.append(("scan", anyof))
        if self.version < (6, 7):
            raise OSError(errno.ENOTTY, "PAGEMAP_SCAN failed: ENOTTY")
        if (anyof | ret_mask) & S.PAGE_IS_GUARD and self.version < (6, 16):
            raise OSError(errno.EINVAL, "PAGEMAP_SCAN failed: EINVAL")
        if not self.guarded:
            return []
        cats = S.PAGE_IS_SWAPPED
        if ret_mask & S.PAGE_IS_GUARD and self.report_guard:
            cats |= S.PAGE_IS_GUARD
        return [(self.addr, self.addr + P, cats)]

    def madvise(self, advice: int) -> str | None:
        self.calls.append(("madvise", advice))
        if advice in (S.MADV["guard_install"], S.MADV["guard_remove"]):
            if self.version < (6, 13):
                return "EINVAL"
            self.guarded = advice == S.MADV["guard_install"]
        return None

    def entry(self) -> int:
        if not self.guarded:
            return 0
        e = S.PM_SWAP | (MARKER if self.root else 0)
        return e | (S.PM_GUARD_REGION if self.version >= (6, 15) else 0)


# ------------------------------------------------------------------------------------------------ the probe

def test_probe_6_12_no_guard_category_no_guard_ops() -> None:
    k = FakeKernel((6, 12))
    f = probe_pagemap(k)
    assert f == PagemapFeatures(scan=True, scan_guard=False, guard_install=False)
    assert f.anyof & S.PAGE_IS_GUARD == 0 and f.return_mask & S.PAGE_IS_GUARD == 0
    assert [c for c in k.calls if c[0] == "scan"] == [("scan", f.anyof | S.PAGE_IS_GUARD), ("scan", f.anyof)]
    notes = feature_notes("6.12.8", f)
    assert "kernel 6.12.8 has no PAGE_IS_GUARD (6.16+): guard regions are not observed (none can be installed)" \
        in notes
    assert any("MADV_GUARD_INSTALL/REMOVE (6.13+)" in n and "EINVAL" in n for n in notes)


def test_probe_6_13_guard_marker_told_by_its_swap_encoding() -> None:
    f = probe_pagemap(FakeKernel((6, 13)))
    assert (f.scan, f.scan_guard, f.guard_install, f.pagemap_guard_bit) == (True, False, True, False)
    assert f.guard_marker_frame == MARKER and f.guards_visible and f.guards_from_entries
    (note,) = feature_notes("6.13.1", f)
    assert "no PAGE_IS_GUARD (6.16+)" in note and "swap type 31, offset 4" in note


def test_probe_6_13_without_root_cannot_see_guards() -> None:
    f = probe_pagemap(FakeKernel((6, 14), root=False))
    assert f.guard_install and f.guard_marker_frame == 0 and not f.guards_visible
    (note,) = feature_notes("6.14", f)
    assert "guard regions are not observed" in note
    assert op_notes("madvise", "guard_install", 0, f, "6.14")[0].endswith("missing from the page map")


def test_probe_6_15_pagemap_guard_bit() -> None:
    f = probe_pagemap(FakeKernel((6, 15)))
    assert f.pagemap_guard_bit and not f.scan_guard and f.guards_visible
    (note,) = feature_notes("6.15", f)
    assert "pagemap bit 58" in note and "(6.16+)" in note


@pytest.mark.parametrize("version", [(6, 16), (6, 18), (7, 2), (7, 3)])
def test_probe_current_kernels_have_everything(version: tuple[int, int]) -> None:
    k = FakeKernel(version)
    f = probe_pagemap(k)
    assert f.scan and f.scan_guard and f.guard_install and f.pagemap_guard_bit
    assert f.anyof & S.PAGE_IS_GUARD and not f.guards_from_entries
    assert feature_notes(f"{version[0]}.{version[1]}", f) == ()
    assert ("madvise", S.MADV["guard_remove"]) in k.calls   # the probe page is left unguarded


def test_probe_guard_accepted_but_not_reported() -> None:
    f = probe_pagemap(FakeKernel((6, 16), report_guard=False))
    assert f.scan and not f.scan_guard and f.pagemap_guard_bit


def test_probe_before_6_7_has_no_scan() -> None:
    f = probe_pagemap(FakeKernel((6, 6)))
    assert not f.scan and f.scan_error == "ENOTTY"
    with PagemapReader("self", f) as rd, pytest.raises(ProcError) as ei:
        rd.runs(0x10000, 0x20000)
    msg = str(ei.value)
    assert "\n" not in msg and "PAGEMAP_SCAN" in msg and "ENOTTY" in msg and "Linux 6.7+" in msg


def test_no_scan_message_names_the_cause() -> None:
    gone = PagemapFeatures(scan=False, scan_error="ENOENT: no /proc/self/pagemap (CONFIG_PROC_PAGE_MONITOR): x")
    msg = no_scan_message(gone, "6.12")
    assert "CONFIG_PROC_PAGE_MONITOR" in msg and "6.7+" in msg and "has no PAGEMAP_SCAN ioctl" not in msg
    assert no_scan_message(PagemapFeatures(scan=False, scan_error="ENOTTY"), "6.6").startswith(
        "kernel 6.6 has no PAGEMAP_SCAN ioctl on /proc/PID/pagemap (ENOTTY)")


def test_probe_of_this_kernel_is_consistent() -> None:
    f = probe_pagemap()
    assert f == probe_pagemap()
    if f.scan_guard:
        assert f.scan and f.guard_install


# ------------------------------------------------------------------------------------ LiveEnv and skip_reason

def test_detect_with_a_simulated_kernel_records_notes() -> None:
    e = detect(pagemap=probe_pagemap(FakeKernel((6, 12))))
    assert e.pagemap_scan and not e.guard_ops and not e.pagemap.scan_guard
    assert any("has no PAGE_IS_GUARD (6.16+): guard regions are not observed" in n for n in e.notes)
    old = detect(pagemap=probe_pagemap(FakeKernel((6, 5))))
    assert not old.pagemap_scan
    if old.arch == "x86_64" and old.thp_available and old.is_root:
        reason = skip_reason(old)
        assert reason is not None and "Linux 6.7+" in reason and "ENOTTY" in reason


def test_live_env_round_trips_as_plain_json() -> None:
    import json

    from thpsim.lab.remote import env_from_dict, env_to_dict  # how a lab guest's LiveEnv reaches the host

    f = probe_pagemap(FakeKernel((6, 13)))
    e = detect(pagemap=f)
    back = env_from_dict(json.loads(json.dumps(env_to_dict(e))))
    assert back == e and back.pagemap == f and back.notes == e.notes


def test_notes_for_missing_files_and_counters() -> None:
    f = PagemapFeatures(scan=True, scan_guard=True, guard_install=True, pagemap_guard_bit=True)
    notes = feature_notes("6.11", f, kpageflags=False, config_source=None,
                          vmstat_missing=("thp_underused_split_page", "thp_split_pmd_failed"))
    assert len(notes) == 3
    assert "kpageflags" in notes[0] and "pte_thp" in notes[0]
    assert "/boot/config-6.11" in notes[1] and "CONFIG_PT_RECLAIM" in notes[1]
    assert "thp_underused_split_page" in notes[2] and "thp_split_pmd_failed" not in notes[2]


def test_cfg_bool_known_config_without_the_option_means_not_set() -> None:
    e = detect(pagemap=PagemapFeatures(scan=True))
    known = dataclasses.replace(e, config=(), config_source="/proc/config.gz")
    unknown = dataclasses.replace(e, config=(), config_source=None)
    assert known.cfg_bool("CONFIG_THP_SWAP", True) is False
    assert unknown.cfg_bool("CONFIG_THP_SWAP", True) is True
    assert known.knobs().thp_swap is False and unknown.knobs().thp_swap is True


# -------------------------------------------------------------------------------------------------- op notes

def test_op_notes() -> None:
    old = probe_pagemap(FakeKernel((6, 12)))
    new = probe_pagemap(FakeKernel((6, 18)))
    assert op_notes("madvise", "guard_install", "EINVAL", old, "6.12") == (
        "MADV_GUARD_INSTALL is not in kernel 6.12 (6.13+): EINVAL",)
    assert op_notes("madvise", "guard_remove", "EINVAL", old, "6.12")[0].startswith("MADV_GUARD_REMOVE")
    assert op_notes("madvise", "guard_install", "EINVAL", new, "6.18") == ()   # a real EINVAL (e.g. VM_LOCKED)
    assert op_notes("madvise", "guard_install", 0, new, "6.18") == ()
    assert op_notes("madvise", "collapse", "EINVAL", new, "5.15.0") == ("MADV_COLLAPSE is not in kernel 5.15.0 "
                                                                        "(6.1+): EINVAL",)
    assert op_notes("madvise", "collapse", "EINVAL", new, "6.12") == ()
    assert op_notes("munmap", "", "EINVAL", old, "6.12") == ()


def test_feature_table() -> None:
    assert F.since("pagemap_scan") == "6.7"
    assert F.since("page_is_guard") == "6.16"
    assert F.since("pm_guard_region") == "6.15"
    assert F.since("madv_guard") == "6.13"
    assert F.since("madv_collapse") == F.MADV_SINCE["collapse"] == "6.1"
    assert F.MADV_SINCE["populate_read"] == F.since("madv_populate") == "5.14"
    assert set(F.MADV_SINCE) <= set(S.MADV)
    assert len({f.key for f in F.KERNEL_FEATURES}) == len(F.KERNEL_FEATURES)
    assert F.kernel_version("7.3.0-rc1") == (7, 3) and F.kernel_version("x") is None
    assert F.lacks("6.12.8-200.fc41.x86_64", "6.13") and not F.lacks("7.2", "6.16") and not F.lacks("?", "6.1")


# ------------------------------------------------------------------------------- classification fallbacks

def test_split_guards() -> None:
    f = PagemapFeatures(scan=True, guard_install=True, guard_marker_frame=MARKER)
    ents = [SWAP_ENTRY, S.PM_SWAP | MARKER, S.PM_SWAP | MARKER, SWAP_ENTRY, S.PM_PRESENT | MARKER]
    sw, g = S.PAGE_IS_SWAPPED, S.PAGE_IS_SWAPPED | S.PAGE_IS_GUARD
    assert split_guards(0x1000, ents, sw, f) == [(0x1000, 0x2000, sw), (0x2000, 0x4000, g), (0x4000, 0x6000, sw)]
    bit = PagemapFeatures(scan=True, guard_install=True, pagemap_guard_bit=True, guard_marker_frame=MARKER)
    assert bit.is_guard_entry(S.PM_SWAP | S.PM_GUARD_REGION) and not bit.is_guard_entry(S.PM_SWAP | MARKER)
    assert not PagemapFeatures(scan=True, guard_install=True).is_guard_entry(S.PM_SWAP | MARKER)


def _fake_reader(monkeypatch: pytest.MonkeyPatch, f: PagemapFeatures, regions: list[tuple[int, int, int]],
                 entries: dict[int, int], flags: dict[int, int]) -> PagemapReader:
    """A reader of /proc/self whose scan, pagemap entries and kpageflags are the given ones."""

    def fake_scan(fd: int, start: int, end: int, *, anyof: int, ret_mask: int,
                  max_regions: int = 4096) -> list[tuple[int, int, int]]:
        if (anyof | ret_mask) & S.PAGE_IS_GUARD:      # what a pre-6.16 kernel answers
            raise OSError(errno.EINVAL, "PAGEMAP_SCAN failed: EINVAL")
        return [r for r in regions if r[0] < end and r[1] > start]

    monkeypatch.setattr(S, "pagemap_scan", fake_scan)
    rd = PagemapReader("self", f)
    monkeypatch.setattr(rd, "entries", lambda s, e: [entries.get(a, 0) for a in range(s, e, P)])
    monkeypatch.setattr(rd, "kpageflags", lambda pfns: [flags.get(p, 0) for p in pfns])
    return rd


def test_reader_pre_6_16_marks_guards_from_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    base = 0x200000000000
    f = PagemapFeatures(scan=True, guard_install=True, guard_marker_frame=MARKER)
    regions = [(base, base + 3 * P, S.PAGE_IS_SWAPPED), (base + 3 * P, base + 4 * P, S.PAGE_IS_PRESENT)]
    entries = {base: SWAP_ENTRY, base + P: S.PM_SWAP | MARKER, base + 2 * P: SWAP_ENTRY,
               base + 3 * P: S.PM_PRESENT | 0x500}
    with _fake_reader(monkeypatch, f, regions, entries, {0x500: 1 << S.KPF_THP}) as rd:
        assert rd.runs(base, base + 8 * P, base=base) == (
            Run(0, P, "swap"), Run(P, 2 * P, "guard"), Run(2 * P, 3 * P, "swap"), Run(3 * P, 4 * P, "pte_thp"))
        assert rd.guard_ranges(base + P + 1, base + P + 2) == [(base + P, base + 2 * P)]


def test_reader_6_12_never_asks_for_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    base = 0x200000000000
    f = PagemapFeatures(scan=True)       # 6.12: no PAGE_IS_GUARD, no guard ops
    regions = [(base, base + P, S.PAGE_IS_SWAPPED), (base + P, base + 2 * P, S.PAGE_IS_PRESENT | S.PAGE_IS_PFNZERO)]
    with _fake_reader(monkeypatch, f, regions, {}, {}) as rd:
        assert rd.runs(base, base + 4 * P, base=base) == (Run(0, P, "swap"), Run(P, 2 * P, "zero"))
        assert rd.guard_ranges(base, base + P) == []


def test_reader_huge_zero_without_pfnzero(monkeypatch: pytest.MonkeyPatch) -> None:
    # kernels whose scan tests only the 4 KiB zero pfn report a huge-zero PMD as PRESENT|HUGE
    base, pmd = 0x200000000000, S.PMD_SIZE
    f = PagemapFeatures(scan=True)
    regions = [(base, base + 2 * pmd, S.PAGE_IS_PRESENT | S.PAGE_IS_HUGE)]
    entries = {base: S.PM_PRESENT | 0x1000, base + pmd: S.PM_PRESENT | 0x2000}
    flags = {0x1000: (1 << S.KPF_ZERO_PAGE) | (1 << S.KPF_THP), 0x2000: 1 << S.KPF_THP}
    with _fake_reader(monkeypatch, f, regions, entries, flags) as rd:
        assert rd.runs(base, base + 4 * pmd, base=base) == (Run(0, pmd, "pmd_zero"), Run(pmd, 2 * pmd, "pmd"))


def test_reader_error_names_the_real_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    def einval(*_a: object, **_k: object) -> list[tuple[int, int, int]]:
        raise OSError(errno.EINVAL, "PAGEMAP_SCAN failed: EINVAL")

    monkeypatch.setattr(S, "pagemap_scan", einval)
    f = PagemapFeatures(scan=True, scan_guard=True, guard_install=True)
    with PagemapReader("self", f) as rd, pytest.raises(ProcError) as ei:
        rd.scan(0x10000, 0x20000)
    msg = str(ei.value)
    assert "EINVAL" in msg and f"{f.anyof:#x}" in msg and "6.7+" not in msg and "\n" not in msg


# --------------------------------------------------------------------------- live: fallbacks on this kernel

_REASON = skip_reason()
live = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

GUARD_TRACE = """
{"op": "mmap", "id": "a", "len": "4M"}
{"op": "madvise", "id": "a", "advice": "hugepage"}
{"op": "write", "id": "a", "stride": "2M"}
{"op": "madvise", "id": "a", "off": "2M", "len": "8K", "advice": "guard_install"}
{"op": "write", "id": "a", "off": "2M", "len": "4K"}
{"op": "read", "id": "a", "off": "2M+4K", "len": "4K"}
{"op": "madvise", "id": "a", "off": "2M+4K", "len": "4K", "advice": "guard_remove"}
{"op": "write", "id": "a", "off": "2M+4K", "len": "4K"}
{"op": "mmap", "id": "z", "at": "64M", "len": "2M"}
{"op": "madvise", "id": "z", "advice": "hugepage"}
{"op": "read", "id": "z", "len": "4K"}
"""


def _run(text: str, features: PagemapFeatures | None = None) -> list:
    from thpsim.live.runner import run_live
    from thpsim.trace.format import parse

    return run_live(parse('{"thpsim": 1, "name": "features"}\n' + text, source="test"), timeout=60,
                    features=features)


def _obs(steps: list) -> list:
    return [(s.result, s.data, [(r.start, r.end, r.kind) for p in s.procs for r in p.pagemap]) for s in steps]


def _refuse_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this kernel's PAGEMAP_SCAN refuse PAGE_IS_GUARD as a pre-6.16 kernel does."""
    real = S.pagemap_scan

    def scan(fd: int, start: int, end: int, *, anyof: int, ret_mask: int,
             max_regions: int = 4096) -> list[tuple[int, int, int]]:
        if (anyof | ret_mask) & S.PAGE_IS_GUARD:
            raise OSError(errno.EINVAL, "PAGEMAP_SCAN failed: EINVAL")
        return real(fd, start, end, anyof=anyof, ret_mask=ret_mask, max_regions=max_regions)

    monkeypatch.setattr(S, "pagemap_scan", scan)


@pytest.mark.live
@live
def test_live_guard_fallbacks_see_what_page_is_guard_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    native = _run(GUARD_TRACE)
    assert [s.result for s in native[3:8]] == [0, "SIGSEGV", "SIGSEGV", 0, 0]
    assert any(r.kind == "guard" for p in native[3].procs for r in p.pagemap)
    assert [r.kind for p in native[-1].procs for r in p.pagemap if r.start >= 64 << 20] == ["pmd_zero"]
    here = probe_pagemap()
    _refuse_guard(monkeypatch)
    as_6_15 = PagemapFeatures(scan=True, guard_install=True, pagemap_guard_bit=True,
                              guard_marker_frame=here.guard_marker_frame)
    as_6_13 = PagemapFeatures(scan=True, guard_install=True, guard_marker_frame=here.guard_marker_frame)
    for f in (as_6_15, as_6_13):
        steps = _run(GUARD_TRACE, f)
        assert _obs(steps) == _obs(native)
        assert any("no PAGE_IS_GUARD (6.16+)" in n for n in steps[0].notes)
        assert [s.notes for s in steps[1:]] == [s.notes for s in native[1:]]   # only "access would fault"


@pytest.mark.live
@live
def test_live_6_12_features_run_without_guard_category(monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_guard(monkeypatch)
    f = PagemapFeatures(scan=True)       # 6.12: the runner must not ask for PAGE_IS_GUARD at all
    steps = _run("""
{"op": "mmap", "id": "a", "len": "2M"}
{"op": "madvise", "id": "a", "advice": "hugepage"}
{"op": "write", "id": "a", "len": "4K"}
{"op": "mlock", "id": "a"}
{"op": "madvise", "id": "a", "len": "4K", "advice": "guard_install"}
{"op": "munmap", "id": "a", "off": "8K", "len": "4K"}
""", f)
    assert steps[0].notes[:2] == (
        f"kernel {detect().kernel_release} has no MADV_GUARD_INSTALL/REMOVE (6.13+): guard ops come back EINVAL",
        f"kernel {detect().kernel_release} has no PAGE_IS_GUARD (6.16+): guard regions are not observed "
        "(none can be installed)")
    assert [r.kind for p in steps[2].procs for r in p.pagemap] == ["pmd"]
    # guard install on an mlocked VMA is EINVAL on every kernel: here it stands in for a kernel without the op
    assert steps[4].result == "EINVAL"
    assert re.fullmatch(r"MADV_GUARD_INSTALL is not in kernel \S+ \(6\.13\+\): EINVAL", steps[4].notes[0])
    assert steps[5].result == 0 and {r.kind for p in steps[5].procs for r in p.pagemap} <= {"pte_thp", "pte"}


@pytest.mark.live
@live
def test_live_huge_zero_without_pfnzero(monkeypatch: pytest.MonkeyPatch) -> None:
    real = S.pagemap_scan

    def scan(fd: int, start: int, end: int, *, anyof: int, ret_mask: int,
             max_regions: int = 4096) -> list[tuple[int, int, int]]:
        out = real(fd, start, end, anyof=anyof, ret_mask=ret_mask, max_regions=max_regions)
        return [(s, e, c & ~S.PAGE_IS_PFNZERO if c & S.PAGE_IS_HUGE else c) for s, e, c in out]

    monkeypatch.setattr(S, "pagemap_scan", scan)
    steps = _run("""
{"op": "mmap", "id": "z", "len": "4M"}
{"op": "madvise", "id": "z", "advice": "hugepage"}
{"op": "read", "id": "z", "len": "4K"}
{"op": "write", "id": "z", "off": "2M", "len": "4K"}
""")
    assert [(r.start, r.end, r.kind) for p in steps[-1].procs for r in p.pagemap] == [
        (0, 2 << 20, "pmd_zero"), (2 << 20, 4 << 20, "pmd")]
