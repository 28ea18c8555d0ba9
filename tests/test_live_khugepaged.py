"""live/khugepaged.py: the khugepaged op's protocol (against a fake sysfs) and the lab-guest-only guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from thpsim.live import khugepaged as kh


def test_never_writes_sysfs_outside_a_lab_guest(monkeypatch: pytest.MonkeyPatch) -> None:
    # the environment variable alone is not enough: PID 1 must be thpsim's guest init
    monkeypatch.setenv("THPSIM_LAB_KERNEL", "lazy-v3-7.3")
    if b"guest_init.py" in Path("/proc/1/cmdline").read_bytes():
        pytest.skip("running inside a lab guest")
    assert not kh.in_lab_guest()
    why = kh.KhugepagedTrigger.unavailable()
    assert why is not None and "lab guest" in why


class FakeKhugepaged:
    """A sysfs folder whose full_scans moves by ``passes`` each time scan_sleep_millisecs is written (the wake
    khugepaged does), collapsing ``per_wake`` ranges on the first wake-up only."""

    def __init__(self, root: Path, passes: int = 2, per_wake: int = 3) -> None:
        self.root, self.passes, self.per_wake = root, passes, per_wake
        self.wakes, self.collapsed = 0, 0
        for name, v in (("scan_sleep_millisecs", 3600000), ("pages_to_scan", 4096), ("full_scans", 7)):
            (root / name).write_text(f"{v}\n")

    def write(self, name: str, value: int) -> None:
        (self.root / name).write_text(f"{value}\n")
        if name == "scan_sleep_millisecs":
            self.wakes += 1
            scans = int((self.root / "full_scans").read_text())
            (self.root / "full_scans").write_text(f"{scans + self.passes}\n")
            if self.wakes == 1:
                self.collapsed += self.per_wake


def test_two_wakeups_then_limits_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKhugepaged(tmp_path)
    pages_seen: list[int] = []
    monkeypatch.setattr(kh, "KH_DIR", str(tmp_path))
    monkeypatch.setattr(kh, "_collapses", lambda: fake.collapsed)

    def write(name: str, value: int) -> None:
        if name == "scan_sleep_millisecs":
            pages_seen.append(int((tmp_path / "pages_to_scan").read_text()))
        fake.write(name, value)

    monkeypatch.setattr(kh, "_write", write)
    collapsed, notes = kh.KhugepagedTrigger().full_scan()
    assert (collapsed, notes) == (3, ())
    assert fake.wakes == 2 and pages_seen == [kh.SCAN_PAGES, kh.SCAN_PAGES]   # each wake-up scans every mm
    assert (tmp_path / "pages_to_scan").read_text().strip() == "4096"           # put back
    assert (tmp_path / "scan_sleep_millisecs").read_text().strip() == "3600000"  # written with its own value


def test_a_scan_that_never_finishes_is_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKhugepaged(tmp_path, passes=0)
    monkeypatch.setattr(kh, "KH_DIR", str(tmp_path))
    monkeypatch.setattr(kh, "_collapses", lambda: 0)
    monkeypatch.setattr(kh, "_write", fake.write)
    monkeypatch.setattr(kh, "WAIT_SECONDS", 0.2)
    collapsed, notes = kh.KhugepagedTrigger().full_scan()
    assert collapsed == 0 and len(notes) == 1 and "did not finish" in notes[0]
    assert (tmp_path / "pages_to_scan").read_text().strip() == "4096"
