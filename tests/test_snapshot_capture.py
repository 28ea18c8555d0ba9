"""The host snapshot capture (thpsim.live.snapshot): it reads /proc read-only, through live/procfs's parsers,
and writes the snapshot format that thpsim.analysis.snapshot loads."""

from __future__ import annotations

import os
import re
from pathlib import Path

from thpsim.analysis.snapshot import load_files, load_snapshot
from thpsim.live import snapshot as cap

# the per-VMA reduction as the capture wrote it before it used procfs.parse_smaps: the raw header lines and
# AnonHugePages lines of /proc/PID/smaps
_OLD_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S{4} [0-9a-f]+ \S+ \d+")


def _old_smaps_thp(text: str) -> str:
    return "".join(ln + "\n" for ln in text.splitlines() if _OLD_HEADER.match(ln) or ln.startswith("AnonHugePages:"))


def test_smaps_thp_is_byte_identical_to_the_old_reduction() -> None:
    text = Path("/proc/self/smaps").read_text()
    assert cap._smaps_thp(text, "/proc/self/smaps") == _old_smaps_thp(text)


def test_capture_per_vma_loads_back(tmp_path: Path) -> None:
    files = cap.capture(per_vma=True)
    me = f"proc/{os.getpid()}"
    assert f"{me}/smaps_thp" in files and f"{me}/smaps_rollup" in files
    snap = load_files(files)
    mine = next(p for p in snap.procs if p.pid == os.getpid())
    assert mine.source == "smaps_rollup" and mine.vm_pte_kb > 0
    info = cap.take_snapshot(str(tmp_path / "s"), per_vma=True)
    again = load_snapshot(info.path)
    assert again.hostname == snap.hostname and any(p.pid == os.getpid() for p in again.procs)


def test_a_corrupt_smaps_thp_is_one_line(tmp_path: Path) -> None:
    files = cap.capture(per_vma=True)
    rel = f"proc/{os.getpid()}/smaps_thp"
    files[rel] = files[rel].replace("AnonHugePages:", "AnonHugePagez:", 1)
    files.pop(f"proc/{os.getpid()}/smaps_rollup")
    snap = load_files(files)
    (err,) = [e for e in snap.errors if e.pid == os.getpid()]
    assert "\n" not in str(err) and rel in str(err) and "no AnonHugePages line" in str(err)
