"""Pure parser tests for thpsim.live.procfs / env / pagemap decoding (no kernel needed)."""

from __future__ import annotations

import pytest

from thpsim.errors import ProcError
from thpsim.live import procfs
from thpsim.live.env import parse_config, selected
from thpsim.live.pagemap import decode_entry

STATUS = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t  123456 kB
VmLck:\t       8 kB
VmRSS:\t   10240 kB
RssAnon:\t    4096 kB
RssFile:\t    6144 kB
VmPTE:\t      96 kB
VmSwap:\t       0 kB
Threads:\t1
"""

SMAPS = """200000000000-200000200000 rw-p 00000000 00:00 0
Size:               2048 kB
KernelPageSize:        4 kB
Rss:                2048 kB
Anonymous:          2048 kB
LazyFree:              0 kB
AnonHugePages:      2048 kB
Swap:                  0 kB
Locked:                0 kB
THPeligible:           1
VmFlags: rd wr mr mw me ac hg
7f0000000000-7f0000001000 r-xp 00001000 08:01 1234                       /usr/lib/libc.so.6
Rss:                   4 kB
Anonymous:             0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
Swap:                  0 kB
Locked:                0 kB
VmFlags: rd ex mr mw me
"""


def test_status_parses_the_five_fields() -> None:
    s = procfs.parse_status(STATUS)
    assert s == procfs.Status(vm_pte_kb=96, vm_rss_kb=10240, rss_anon_kb=4096, vm_lck_kb=8, vm_swap_kb=0)
    assert s.minus(procfs.Status(90, 10000, 4000, 8, 0)) == procfs.Status(6, 240, 96, 0, 0)


def test_status_truncated_names_file_and_fields() -> None:
    text = STATUS.split("VmPTE")[0]
    with pytest.raises(ProcError) as ei:
        procfs.parse_status(text, "/proc/42/status")
    msg = str(ei.value)
    assert "/proc/42/status" in msg and "VmPTE" in msg and "VmSwap" in msg
    assert "\n" not in msg


def test_status_garbled_value() -> None:
    with pytest.raises(ProcError, match="VmRSS"):
        procfs.parse_status(STATUS.replace("10240 kB", "lots"))


def test_smaps_two_vmas() -> None:
    vmas = procfs.parse_smaps(SMAPS)
    assert [(v.start, v.end, v.perms) for v in vmas] == [
        (0x200000000000, 0x200000200000, "rw-p"), (0x7F0000000000, 0x7F0000001000, "r-xp")]
    assert vmas[0].get("AnonHugePages") == 2048 and vmas[0].get("Rss") == 2048
    assert vmas[1].name == "/usr/lib/libc.so.6" and vmas[1].get("Rss") == 4


def test_smaps_truncated_vma() -> None:
    text = SMAPS[: SMAPS.index("AnonHugePages:      2048")]
    with pytest.raises(ProcError) as ei:
        procfs.parse_smaps(text, "/proc/7/smaps")
    assert "/proc/7/smaps" in str(ei.value) and "AnonHugePages" in str(ei.value)


def test_smaps_garbage_line() -> None:
    with pytest.raises(ProcError, match="garbled"):
        procfs.parse_smaps("this is not smaps\n")


def test_vmstat_and_meminfo() -> None:
    vm = procfs.parse_vmstat("nr_free_pages 100\nthp_fault_alloc 3\nthp_split_pmd 0\n")
    assert vm["thp_fault_alloc"] == 3
    mi = procfs.parse_meminfo("MemTotal: 100 kB\nAnonPages: 20 kB\nPageTables: 8 kB\nAnonHugePages: 2048 kB\n"
                              "HugePages_Total: 0\n")
    assert mi["AnonHugePages"] == 2048 and mi["HugePages_Total"] == 0


def test_vmstat_truncated_and_garbled() -> None:
    with pytest.raises(ProcError, match="nr_free_pages"):
        procfs.parse_vmstat("thp_fault_alloc 3\n")
    with pytest.raises(ProcError, match="/proc/vmstat"):
        procfs.parse_vmstat("nr_free_pages 1\nthp_fault_alloc\n")
    with pytest.raises(ProcError, match="PageTables"):
        procfs.parse_meminfo("MemTotal: 100 kB\nAnonPages: 20 kB\n")


def test_maps() -> None:
    m = procfs.parse_maps("200000000000-200000001000 ---p 00000000 00:00 0\n"
                          "7ffd0000-7ffd1000 rw-p 00000000 00:00 0                          [stack]\n")
    assert m == [(0x200000000000, 0x200000001000, "---p", ""), (0x7FFD0000, 0x7FFD1000, "rw-p", "[stack]")]
    with pytest.raises(ProcError):
        procfs.parse_maps("nonsense\n")


def test_env_helpers() -> None:
    assert selected("always [madvise] never") == "madvise"
    cfg = parse_config("CONFIG_PT_RECLAIM=y\n# CONFIG_NO_PAGE_MAPCOUNT is not set\nCONFIG_PGTABLE_LEVELS=5\n")
    assert cfg == {"CONFIG_PT_RECLAIM": "y", "CONFIG_NO_PAGE_MAPCOUNT": "n", "CONFIG_PGTABLE_LEVELS": "5"}


def test_pagemap_entry_decoding() -> None:
    e = decode_entry((1 << 63) | (1 << 56) | 0x1234)
    assert e.present and e.exclusive and e.pfn == 0x1234 and not e.guard
    g = decode_entry((1 << 62) | (1 << 58) | 159)
    assert g.guard and g.swapped and not g.present and g.pfn == 0


def test_smaps_keeps_the_header_line_and_takes_required_fields() -> None:
    vmas = procfs.parse_smaps(SMAPS)
    assert vmas[1].header == ("7f0000000000-7f0000001000 r-xp 00001000 08:01 1234                       "
                              "/usr/lib/libc.so.6")
    assert vmas[0] == procfs.SmapsVma(vmas[0].start, vmas[0].end, "rw-p", "", vmas[0].fields)   # not compared
    thp_only = "200000000000-200000200000 rw-p 00000000 00:00 0\nAnonHugePages:      2048 kB\n"
    assert [v.get("AnonHugePages") for v in procfs.parse_smaps(thp_only, required=("AnonHugePages",))] == [2048]
    with pytest.raises(ProcError) as ei:
        procfs.parse_smaps("200000000000-200000200000 rw-p 00000000 00:00 0\n", "snap/proc/1/smaps_thp",
                           required=("AnonHugePages",))
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("snap/proc/1/smaps_thp is truncated") and "no AnonHugePages line" in msg


def test_keyed_lines() -> None:
    assert procfs.parse_keyed(STATUS)["VmPTE"] == "96 kB" and "Threads" in procfs.parse_keyed(STATUS)
